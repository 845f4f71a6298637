"""The embedded real models: SmolLM2-135M (Llama family) and Gemma 3 270M. Slow; CI runs them."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lre_pl.dataset.prompts import encode_prompt, fill_subject, make_prompt
from lre_pl.dataset.relations import load_relation
from lre_pl.lm.hooks import capture, patched
from lre_pl.lm.jacobian import compute_jacobians
from lre_pl.lm.models import load_language_model
from lre_pl.lre.operator import LinearRelationOperator

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]


def projected_reference(lm, prompt, layer, directions):
    """U J by plain autograd through a full forward of the whole prompt (no cache, no batching)."""
    ids = torch.tensor([prompt.input_ids])
    leaf = {}

    def make_leaf(_, hidden):
        leaf["s"] = hidden[0, prompt.subject_index].detach().clone().requires_grad_(True)
        hidden = hidden.clone()
        hidden[0, prompt.subject_index] = leaf["s"]
        return hidden

    module = {layer: lm.layer_module(layer)}
    with (
        torch.enable_grad(),
        patched(module, make_leaf),
        capture({"o": lm.blocks[-1]}, lambda _, h: h[0, -1]) as out,
    ):
        lm.base_model(input_ids=ids, use_cache=False)
    rows = [torch.autograd.grad(out["o"], leaf["s"], u, retain_graph=True)[0] for u in directions]
    return torch.stack(rows)


def test_the_converted_gguf_is_the_gguf():
    """The cached conversion (what every load reads) holds the weights and tokenizer of a direct GGUF load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lre_pl.lm.models import resolve_model_spec

    lm = load_language_model("smollm2-135m")
    source, gguf_file = resolve_model_spec("smollm2-135m")
    direct = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    assert "converted" in lm.model.config._name_or_path
    expected, actual = direct.state_dict(), lm.model.state_dict()
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name
    text = "The capital city of France is Paris.\nThe capital city of Peru is"
    assert lm.tokenizer(text).input_ids == tokenizer(text).input_ids


def test_an_unwritable_cache_falls_back_to_the_gguf_file(tmp_path, monkeypatch):
    from lre_pl.lm.models import converted_gguf, resolve_model_spec

    source, gguf_file = resolve_model_spec("smollm2-135m")
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("LRE_PL_CACHE", str(blocker))
    with pytest.warns(UserWarning, match="cannot keep the conversion of SmolLM2.*loading the GGUF file"):
        assert converted_gguf(Path(source) / gguf_file) is None
    assert blocker.read_text() == ""


@pytest.mark.parametrize("spec", ["smollm2-135m", "gemma3-270m"])
def test_engine_matches_full_forward_on_real_models(spec):
    lm = load_language_model(spec)
    relation = load_relation("country capital city")
    template, samples = relation.prompt_templates[0], relation.samples
    prompts = [
        encode_prompt(lm.tokenizer, make_prompt(template, s.subject, samples[5:9])) for s in samples[:2]
    ]
    at_start = "France" if spec == "smollm2-135m" else None  # SmolLM2 adds no BOS: the subject can be token 0
    if at_start:
        prompts.append(encode_prompt(lm.tokenizer, fill_subject("{} has the capital", at_start)))
        assert prompts[-1].subject_index == 0
    layers = ["emb", 3, lm.num_blocks // 2]
    result = compute_jacobians(lm, prompts, layers)
    directions = torch.randn(6, lm.hidden_size, generator=torch.Generator().manual_seed(0))
    for row, prompt in enumerate(prompts):
        for layer in layers:
            expected = projected_reference(lm, prompt, layer, directions)
            actual = directions @ result.jacobians[layer][row]
            error = ((actual - expected).norm() / expected.norm()).item()
            assert error < 1e-4, (spec, row, layer, error)


def run_fit(tmp_path, *overrides):
    result = subprocess.run(
        [sys.executable, "-m", "lre_pl.cli", "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), *overrides],
        cwd=tmp_path, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    summary = output[output.index("lre_pl: ") :]
    faithfulness = float(re.search(r"faithfulness\s+@1 ([0-9.]+)", summary).group(1))
    known, total = map(int, re.search(r"known test samples\s+(\d+) of (\d+)", summary).groups())
    operator = LinearRelationOperator.load(next(tmp_path.rglob("operator.pt")))
    return faithfulness, known, total, operator


def test_quickstart_end_to_end(tmp_path):
    faithfulness, known, total, operator = run_fit(tmp_path)
    assert (known, total) == (14, 19)  # SmolLM2's own answers on the 5-shot prompts, seed 0
    assert faithfulness >= 0.78  # measured 0.857 (12 of 14) at layer 18
    assert operator.layer == 18 and operator.weight.shape == (576, 576) and operator.beta == 1.0
    assert operator.relation == "country capital city" and operator.model == "smollm2-135m"
    assert (tmp_path / "lightning_logs" / "version_0" / "predictions.tsv").exists()
    top = operator.predict("France", k=3)
    assert top[0][0].strip() == "Paris"


def test_gemma3_fit(tmp_path):
    faithfulness, known, total, operator = run_fit(
        tmp_path, "--model.model", "gemma3-270m", "--model.layers", "8"
    )
    assert operator.weight.shape == (640, 640) and (known, total) == (15, 19)
    assert faithfulness >= 0.86  # measured 0.933 (14 of 15) at block 8


def test_the_plain_trainer_example_script(tmp_path):
    """examples/fit_with_a_plain_trainer.py: pl.Trainer(max_epochs=1) with every other default."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "fit_with_a_plain_trainer.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "check the training dataloader" not in result.stderr
    assert "lre_pl: 'country capital city' on smollm2-135m, layer 8, beta 1" in result.stdout
    operator = LinearRelationOperator.load(next(tmp_path.glob("lightning_logs/version_0/operator.pt")))
    assert operator.layer == 8 and operator.n_train == 5 and operator.weight.abs().max() > 0
    faithfulness = float(re.search(r"faithfulness\s+@1 ([0-9.]+)", result.stdout).group(1))
    assert faithfulness >= 0.5  # measured 0.643 (9 of 14) at block 8


def test_sweep_on_smollm2(tmp_path):
    """The protocol on the real default model, one relation, a small grid: LRE beats the logit lens."""
    from lre_pl.experiments.sweep.runner import Sweep, SweepConfig
    from lre_pl.lre.bundle import Bundle
    from lre_pl.protocol.rows import read_rows

    config = SweepConfig(
        relations=["country capital city"], layers=["emb", 8, 18], betas=[1.0, 2.0], ranks=[64, 576],
        output_dir=str(tmp_path), trainer={"accelerator": "cpu", "enable_progress_bar": False},
    )  # fmt: skip
    Sweep(config).run()
    rows = read_rows([tmp_path / "rows" / "country_capital_city__trial_0.jsonl"])
    selected = {
        (r["estimator"], r["selection"], r["metric"]): r
        for r in rows
        if r["kind"] == "selected" and r["metric"] in ("faithfulness@1", "efficacy")
    }
    known = next(r for r in rows if r["metric"] == "known_test_samples")
    assert known["value"] == 14 and known["n"] == 19  # as the quickstart's fit reports
    lre, logit_lens = selected["lre", "dev", "faithfulness@1"], selected["identity", "dev", "faithfulness@1"]
    assert lre["value"] >= 0.5 > logit_lens["value"], (lre, logit_lens)
    assert 0 <= selected["lre", "dev", "efficacy"]["value"] <= 1
    assert selected["edit:target_subject_state", "paper", "efficacy"]["value"] > 0.5
    bundle = Bundle.load(tmp_path / "bundles" / "country_capital_city" / "trial_0.pt")
    assert bundle.layers == ["emb", 8, 18] and bundle.test_subject_states.shape == (19, 31, 576)
    assert "| factual | 1 | " in (tmp_path / "summary.md").read_text()
