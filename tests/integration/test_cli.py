"""The lre-pl command as a user runs it (subprocesses, exit codes, files left behind)."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[2]


def lre_pl(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "lre_pl.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_relations_lists_the_47_relations():
    result = lre_pl("relations")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["relation", "category", "samples"] and len(lines) == 48
    assert any(
        line.split()[:3] == ["country", "capital", "city"] and line.split()[-2:] == ["factual", "24"]
        for line in lines
    )
    factual = lre_pl("relations", "--category", "factual").stdout.strip().splitlines()
    assert len(factual) == 27


@pytest.mark.parametrize(
    "config",
    ["quickstart.yaml", "paper/gptj.yaml", "paper/gpt2-xl.yaml", "paper/llama-13b.yaml", "ddp_cpu.yaml"],
)
def test_configs_parse(config):
    result = lre_pl("fit", "--config", f"configs/{config}", "--print_config")
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert "model" not in printed["data"]  # linked from model.model, never given twice
    assert printed["trainer"]["max_epochs"] == 1 and printed["trainer"]["num_sanity_val_steps"] == 0
    if config.startswith("paper/"):
        expected = {
            "paper/gptj.yaml": (2.25, "gptj"),
            "paper/gpt2-xl.yaml": (2.25, "gpt2-xl"),
            "paper/llama-13b.yaml": (8.0, "llama"),
        }
        assert (printed["model"]["beta"], printed["model"]["reference_hparams"]) == expected[config]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--data.relation", "country capitol"], "unknown relation 'country capitol'"),
        (["--data.relation", "missing.json"], "missing.json"),
        (["--model.layers", "99"], "layer 99 is out of range"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_operator(tiny_model_dir, tmp_path, override, message):
    result = lre_pl(
        "fit", "--model.model", tiny_model_dir, "--data.filter_known", "false", "--trainer.logger.init_args.save_dir",
        str(tmp_path), *override, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lre-pl: error: ") and message in last
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("operator.pt"))


def test_malformed_relation_file(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "samples": [}')
    result = lre_pl("fit", "--model.model", tiny_model_dir, "--data.relation", str(bad), cwd=tmp_path)
    assert result.returncode != 0 and "malformed JSON at line 1" in result.stderr.strip().splitlines()[-1]
    assert not list(tmp_path.rglob("operator.pt"))
