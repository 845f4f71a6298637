"""Estimation as a Lightning fit on a tiny model saved to disk (the from_pretrained path)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fit_tiny import run
from reference import full_forward_map, reference_jacobian

from lre_pl.dataset.prompts import EncodedPrompt, PromptText, encode_prompt, fill_subject
from lre_pl.lm.models import load_language_model
from lre_pl.lre.operator import LinearRelationOperator

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
        start = text.rindex(
            item.sample.subject
        )  # the query line is last; its subject is the last occurrence here
        assert (
            encode_prompt(
                lm.tokenizer, PromptText(text, start, start + len(item.sample.subject))
            ).subject_index
            == index
        )

    # Every requested layer has its own operator file, holding its own layer only (a view of one
    # layer of the [layer, d, d] stack used to save the whole stack); the checkpoint holds no LM weight.
    for layer in (1, "emb"):
        payload = torch.load(run_dir / "operators" / f"layer_{layer}.pt", weights_only=True)
        assert payload["layer"] == layer and payload["weight"].untyped_storage().nbytes() == 32 * 32 * 4
        assert payload["bias"].untyped_storage().nbytes() == 32 * 4
    assert (
        torch.load(run_dir / "operator.pt", weights_only=True)["weight"].untyped_storage().nbytes()
        == 32 * 32 * 4
    )
    checkpoint = torch.load(run_dir / "checkpoints" / "lre.ckpt", weights_only=False)
    assert set(checkpoint["state_dict"]) == {"log_beta"} and checkpoint["state_dict"]["log_beta"].shape == (
        2,
    )
    torch.testing.assert_close(checkpoint["lre"]["weights"][0], operator.weight)
    assert checkpoint["hyper_parameters"]["model"] == tiny_model_dir

    # The per-sample table has one row per validated sample.
    table = (run_dir / "predictions.tsv").read_text().splitlines()
    assert table[0].split("\t") == ["subject", "object", "lm_top1", "lre_top3", "norm_Ws", "norm_b"]
    assert len(table) - 1 == len(data.known.samples) == len(data.prompts.test_samples)

    # The API applies the operator to a subject: decode(beta W s + b) of the test prompt.
    subject = data.prompts.test_samples[0].subject
    top = operator.predict(subject, lm, k=3)
    prompt = encode_prompt(lm.tokenizer, fill_subject(operator.test_prompt_template, subject))
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
    # Causality: the edits are sharded over the two processes and their counts summed.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = []
    for devices in (1, 2):
        events = EventAccumulator(str(tmp_path / str(devices) / "run"))
        events.Reload()
        scalars.append(
            {tag: events.Scalars(tag)[0].value for tag in events.Tags()["scalars"] if "causality" in tag}
        )
    assert (
        len(scalars[0]) == 2 * 2 + 2 + 1 and scalars[1] == scalars[0]
    )  # per layer and rank, first layer, edits


def test_learned_beta_is_fitted_per_layer_and_saved(tiny_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lre_pl.lre.beta import learn_beta

    module = run(tiny_model_dir, str(tmp_path), devices=1, learn_beta=True, beta_steps=40, beta_lr=0.1)
    assert module.layers == [1, "emb"]
    states = module.training_samples.subject_states  # [n_train, layer, d]
    targets = module.training_samples.object_tokens
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    for i, layer in enumerate(module.layers):
        # Each layer's beta is what learn_beta gives on that layer's own W s_i + b, run independently.
        expected = learn_beta(
            states[:, i] @ module.weights[i].T, module.biases[i], targets, module._decode, steps=40, lr=0.1
        )
        assert module.betas[i] == pytest.approx(expected.betas[-1], rel=1e-5) and module.betas[i] != 1.0
        # A random tiny LM decodes almost uniformly: the loss moves little, but it must move down.
        assert expected.losses[-1] < expected.losses[0]
        operator = LinearRelationOperator.load(tmp_path / "run" / "operators" / f"layer_{layer}.pt")
        assert operator.beta == pytest.approx(module.betas[i], rel=1e-6)
        betas = [event.value for event in events.Scalars(f"beta/layer_{layer}/value")]
        assert len(betas) == 41 and betas[0] == 1.0 and betas[-1] == pytest.approx(operator.beta, rel=1e-5)
        assert module.last_metrics[f"val/layer_{layer}/beta"] == pytest.approx(operator.beta)
    assert module.betas[0] != module.betas[1]
    # The validation scalars are written once (log_hyperparams used to write them a second time).
    assert (
        len(events.Scalars("val/faithfulness@1")) == 1
        and len(events.Scalars("val/layer_emb/faithfulness@1")) == 1
    )


def test_duplicate_layers_are_estimated_once(tiny_model_dir, tmp_path, monkeypatch):
    import lre_pl.lightning.module

    calls = []
    original = lre_pl.lightning.module.compute_jacobians
    monkeypatch.setattr(
        lre_pl.lightning.module,
        "compute_jacobians",
        lambda lm, prompts, layers, *a: calls.append(layers) or original(lm, prompts, layers, *a),
    )
    module = run(tiny_model_dir, str(tmp_path), devices=1, layers=[1, "emb", "1", -2, "emb"])
    assert module.layers == [1, "emb"] and all(layers == [1, "emb"] for layers in calls)
    assert len(module.recall) == 2 and module.log_beta.shape == (2,)


def test_a_plain_default_trainer_fits_and_skips_the_sanity_check(tiny_model_dir, tmp_path):
    """The design card's script: pl.Trainer(max_epochs=...) with every other default (sanity validation
    before fitting, ModelCheckpoint, Lightning's logger); more epochs do not repeat the estimate."""
    import pytorch_lightning as pl

    from lre_pl import LinearRelationModule, RelationDataModule

    reference = run(tiny_model_dir, str(tmp_path / "reference"), devices=1, layers=1)
    module = LinearRelationModule(model=tiny_model_dir, layers=1)
    data = RelationDataModule(model=tiny_model_dir, filter_known=False, batch_size=2)
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    assert trainer.current_epoch == 1 and module.jacobian_sums.count == 5
    operator = LinearRelationOperator.load(next(tmp_path.glob("lightning_logs/version_*/operator.pt")))
    torch.testing.assert_close(operator.weight, reference.weights[0].cpu(), atol=1e-6, rtol=1e-5)


def test_data_module_of_another_dtype_is_refused(tiny_model_dir, tmp_path):
    import pytorch_lightning as pl

    from lre_pl import LinearRelationModule, RelationDataModule
    from lre_pl.errors import InputError

    module = LinearRelationModule(model=tiny_model_dir, layers=1)
    data = RelationDataModule(model=tiny_model_dir, dtype="float64", filter_known=False)
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", default_root_dir=tmp_path, enable_progress_bar=False
    )
    with pytest.raises(InputError, match=r"data.dtype='float64' differs from model.dtype='float32'"):
        trainer.fit(module, datamodule=data)
    assert not list(tmp_path.glob("lightning_logs/*"))  # the failed run's folder is gone


@pytest.mark.parametrize("estimator", ["Translation", "LinearRegression", "Identity"])
def test_baseline_estimators_fit_their_closed_form_on_independent_states(
    tiny_model_dir, tmp_path, monkeypatch, estimator
):
    """W and b of a baseline from s_i and o_i read by the independent full-forward reference."""
    import lre_pl.lightning.module
    import lre_pl.lre.estimators as estimators

    calls = []
    monkeypatch.setattr(
        lre_pl.lightning.module, "compute_jacobians", lambda *args, **kwargs: calls.append(args)
    )
    module = run(tiny_model_dir, str(tmp_path), devices=1, estimator=getattr(estimators, estimator)())
    assert calls == []  # a baseline needs no Jacobian
    operator = LinearRelationOperator.load(tmp_path / "run" / "operator.pt")
    assert (
        operator.estimator == f"{estimator}()"
        if estimator != "LinearRegression"
        else "ridge=0.001" in operator.estimator
    )
    lm = load_language_model(tiny_model_dir)
    states, outputs = [], []
    for text, index in zip(operator.train_prompts, operator.train_subject_token_index):
        prompt = EncodedPrompt(text, tuple(lm.tokenizer(text)["input_ids"]), index)
        function, state = full_forward_map(lm, prompt, 1)
        with torch.no_grad():
            outputs.append(function(state))
        states.append(state)
    s, o = torch.stack(states).double(), torch.stack(outputs).double()  # [n_train, d]
    if estimator == "Translation":
        expected = torch.eye(32), (o - s).mean(0)
    elif estimator == "Identity":
        expected = torch.eye(32), torch.zeros(32)
    else:  # ridge, primal normal equations with lambda = 0.001 * mean |s_i - s_mean|^2
        s_c, o_c = s - s.mean(0), o - o.mean(0)
        penalty = 0.001 * (s_c**2).sum() / len(s)
        weight = torch.linalg.solve(s_c.T @ s_c + penalty * torch.eye(32, dtype=s.dtype), s_c.T @ o_c).T
        expected = weight, o.mean(0) - weight @ s.mean(0)
    torch.testing.assert_close(operator.weight, expected[0].float(), atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(operator.bias, expected[1].float(), atol=1e-4, rtol=1e-3)
    assert module.last_metrics["val/known_test_samples"] == 19


def test_causality_of_a_fit_matches_a_hand_written_edit_loop(tiny_model_dir, tmp_path, monkeypatch):
    """val/causality@r: the batched suffix edits against full forwards with an independent pinv.

    The edited outputs o are compared vector by vector. A random tiny LM never names a capital, so
    success is redefined (in both) as a deterministic coin on (edited token, target object), and the
    counts are compared too.
    """
    import zlib

    from reference import edited_output

    import lre_pl.evaluation.causality

    def is_prefix_match(token: str, target: str) -> bool:
        return zlib.crc32(f"{token}|{target}".encode()) % 2 == 0

    recorded = []  # (layer, outputs) of every batched edit call, in call order

    def recording(lm, prompts, deltas, shared=None):
        outputs = real_edited_outputs(lm, prompts, deltas, shared)
        recorded.extend(outputs.items())
        return outputs

    real_edited_outputs = lre_pl.evaluation.causality.edited_outputs
    monkeypatch.setattr(lre_pl.evaluation.causality, "is_prefix_match", is_prefix_match)
    monkeypatch.setattr(lre_pl.evaluation.causality, "edited_outputs", recording)
    module = run(tiny_model_dir, str(tmp_path), devices=1, ranks=[4, 32], causality_targets="all_pairs")
    known = module.trainer.datamodule.known
    lm, weight = module.lm, module.weights[0].double()  # layer 1
    u, sigma, vh = torch.linalg.svd(weight)
    inverses = {4: (vh[:4].T / sigma[:4]) @ u[:, :4].T, 32: torch.linalg.pinv(weight)}
    objects = [sample.object for sample in known.samples]
    subjects = [sample.subject for sample in known.samples]
    pairs = [
        (s, t) for s in range(len(objects)) for t in range(len(objects))
        if subjects[s] != subjects[t] and objects[s].lower() != objects[t].lower()
    ]  # fmt: skip
    assert module.last_metrics["val/causality_edits"] == len(pairs) > 300
    batched = {
        rank: torch.cat([outputs[k] for layer, outputs in recorded if layer == 1])
        for k, rank in enumerate((4, 32))
    }
    o = known.states.output_states.double()
    for rank, inverse in inverses.items():
        hits = 0
        for row, (s, t) in enumerate(pairs):
            expected = edited_output(lm, known.prompts[s], 1, (inverse @ (o[t] - o[s])).float())
            if row < 40:
                torch.testing.assert_close(batched[rank][row], expected, atol=1e-4, rtol=1e-4)
            hits += is_prefix_match(lm.token_strings([lm.decode(expected).argmax()])[0], objects[t])
        assert module.last_metrics[f"val/causality@r{rank}"] == pytest.approx(hits / len(pairs))
        assert module.last_metrics[f"val/layer_1/causality@r{rank}"] == pytest.approx(hits / len(pairs))
