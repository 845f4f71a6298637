"""Estimation as a Lightning fit on a tiny model saved to disk (the from_pretrained path)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fit_tiny import run
from reference import full_forward_map, reference_jacobian

from lre_pl.models import load_language_model
from lre_pl.operator import LinearRelationOperator, fill_subject
from lre_pl.prompts import EncodedPrompt, encode_prompt

HERE = Path(__file__).parent


def test_fit_writes_the_mean_jacobian_operator(tiny_model_dir, tmp_path):
    module = run(tiny_model_dir, str(tmp_path), devices=1)
    run_dir = tmp_path / "run"
    operator = LinearRelationOperator.load(run_dir / "operator.pt")
    payload = torch.load(run_dir / "operator.pt", weights_only=True)
    assert {"weight", "bias", "beta", "layer", "relation", "model", "n_train", "seed", "train_prompts",
            "train_subject_token_index", "test_prompt_template", "version"} <= set(payload)  # fmt: skip
    assert operator.layer == 1 and operator.model == tiny_model_dir and operator.n_train == 5
    assert payload["weight"].dtype == torch.float32 and payload["weight"].shape == (32, 32)

    # W and b against the mean of independently computed full-forward Jacobians of the exact prompts.
    lm = load_language_model(tiny_model_dir)
    jacobians, biases = [], []
    for text, index in zip(operator.train_prompts, operator.train_subject_token_index):
        ids = lm.tokenizer(text)["input_ids"]
        prompt = EncodedPrompt(text, tuple(ids), index)
        jacobian, output = reference_jacobian(lm, prompt, 1)
        _, state = full_forward_map(lm, prompt, 1)
        jacobians.append(jacobian)
        biases.append(output - jacobian @ state)
    torch.testing.assert_close(operator.weight, torch.stack(jacobians).mean(0), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(operator.bias, torch.stack(biases).mean(0), atol=1e-5, rtol=1e-4)

    # The subject index is where the tokenizer puts the subject in the stored prompt.
    data = module.trainer.datamodule
    for item, text, index in zip(
        data.prompts.train, operator.train_prompts, operator.train_subject_token_index
    ):
        assert encode_prompt(lm.tokenizer, text, item.sample.subject).subject_index == index

    # Every requested layer has its own operator; the checkpoint holds no LM weight.
    assert LinearRelationOperator.load(run_dir / "operators" / "layer_emb.pt").layer == "emb"
    checkpoint = torch.load(run_dir / "checkpoints" / "lre.ckpt", weights_only=False)
    assert set(checkpoint["state_dict"]) == {"log_beta"}
    torch.testing.assert_close(checkpoint["lre"]["weights"][0], operator.weight)
    assert checkpoint["hyper_parameters"]["model"] == tiny_model_dir

    # The per-sample table has one row per validated sample.
    table = (run_dir / "predictions.tsv").read_text().splitlines()
    assert table[0].split("\t") == ["subject", "object", "lm_top1", "lre_top3", "norm_Ws", "norm_b"]
    assert len(table) - 1 == len(data.known.samples) == len(data.prompts.test_samples)

    # The API applies the operator to a subject: decode(beta W s + b) of the test prompt.
    subject = data.prompts.test_samples[0].subject
    top = operator.predict(subject, lm, k=3)
    prompt = encode_prompt(lm.tokenizer, fill_subject(operator.test_prompt_template, subject), subject)
    assert prompt.text.endswith(subject + " is")
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]


def test_two_ddp_processes_estimate_what_one_process_does(tiny_model_dir, tmp_path):
    for devices in (1, 2):
        subprocess.run(
            [
                sys.executable,
                str(HERE / "fit_tiny.py"),
                tiny_model_dir,
                str(tmp_path / str(devices)),
                str(devices),
            ],
            check=True,
            cwd=HERE,
            timeout=600,
        )
    one = LinearRelationOperator.load(tmp_path / "1" / "run" / "operator.pt")
    two = LinearRelationOperator.load(tmp_path / "2" / "run" / "operator.pt")
    assert one.weight.abs().max() > 0
    torch.testing.assert_close(two.weight, one.weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(two.bias, one.bias, atol=1e-6, rtol=1e-5)
    assert two.train_prompts == one.train_prompts
    # Validation metrics and the gathered table match too (no sample repeated by a padded sampler).
    table_one = (tmp_path / "1" / "run" / "predictions.tsv").read_text().splitlines()
    table_two = (tmp_path / "2" / "run" / "predictions.tsv").read_text().splitlines()
    assert sorted(table_one) == sorted(table_two)


def test_learned_beta_lowers_the_training_loss_and_is_saved(tiny_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module = run(tiny_model_dir, str(tmp_path), devices=1, learn_beta=True, beta_steps=40, beta_lr=0.1)
    # A random tiny LM decodes almost uniformly: the loss moves little, but it must move down.
    assert module.last_metrics["beta_loss_final"] < module.last_metrics["beta_loss_initial"]
    operator = LinearRelationOperator.load(tmp_path / "run" / "operator.pt")
    assert operator.beta == module.beta != 1.0
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    betas = [event.value for event in events.Scalars("beta/value")]
    assert len(betas) == 41 and betas[0] == 1.0 and betas[-1] == pytest.approx(operator.beta, rel=1e-5)
