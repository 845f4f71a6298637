"""The lre-pl command as a user runs it (subprocesses, exit codes, files left behind)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
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
def test_configs_parse(config, capsys):
    from lre_pl.cli import main

    with pytest.raises(SystemExit) as exited:  # in this process: one import of Lightning for every config
        main(["fit", "--config", str(ROOT / "configs" / config), "--print_config"])
    assert exited.value.code in (0, None), capsys.readouterr().err
    printed = yaml.safe_load(capsys.readouterr().out)
    assert "model" not in printed["data"]  # linked from model.model, never given twice
    assert printed["trainer"]["max_epochs"] == 1 and printed["trainer"]["num_sanity_val_steps"] == 0
    if config.startswith("paper/"):
        expected = {
            "paper/gptj.yaml": (2.25, "gptj"),
            "paper/gpt2-xl.yaml": (2.25, "gpt2-xl"),
            "paper/llama-13b.yaml": (8.0, "llama"),
        }
        assert (printed["model"]["beta"], printed["model"]["reference_hparams"]) == expected[config]


NOISE = [
    "GPU available", "TPU available", "Tip:", "Seed set", "Trainable params", "configure_optimizers",
    "LeafSpec", "weights_only", "0.00it/s", "Epoch 0", "log_every_n_steps", "UserWarning", "_instantiator",
]  # fmt: skip


def test_fit_prints_progress_and_summary_only(tiny_model_dir, tiny_args, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = lre_pl(
        "fit", "--model.model", tiny_model_dir, "--data.filter_known", "false", "--model.layers", "[1, emb, 2]",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    # Not preceded by a digit: a model-load bar's '12000.00it/s' is not Lightning's '0.00it/s'.
    assert [noise for noise in NOISE if re.search(rf"(?<!\d){re.escape(noise)}", output)] == []
    assert "Jacobians: 100%" in result.stderr and "5/5" in result.stderr and "sample" in result.stderr
    summary = result.stdout[result.stdout.index("lre_pl: ") :].splitlines()
    assert summary[0].startswith("lre_pl: 'country capital city' on ") and summary[0].endswith(
        "layer 1, beta 1"
    )
    table = summary[summary.index("  by layer") + 1 :][:4]
    assert table[0].split() == ["layer", "@1", "@3", "beta"] and [row.split()[0] for row in table[1:]] == [
        "1",
        "emb",
        "2",
    ]
    run_dir = tmp_path / "lightning_logs" / "version_0"
    assert (run_dir / "faithfulness_by_layer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert "val/faithfulness_by_layer" in events.Tags()["images"]
    assert len(events.Scalars("val/faithfulness@1")) == 1  # once, not again through log_hyperparams
    hparams = events.PluginTagToContent("hparams")
    assert hparams and not any(b"_instantiator" in content for content in hparams.values())
    assert any(b"val/faithfulness@1" in content for content in hparams.values())

    verbose = lre_pl("fit", *tiny_args, "-v", cwd=tmp_path)
    assert verbose.returncode == 0 and "GPU available" in verbose.stdout + verbose.stderr


@pytest.fixture(scope="module")
def tiny_fit(tiny_args, tmp_path_factory):
    """One ``lre-pl fit`` on the tiny model, shared: (its operator file, its completed process)."""
    folder = tmp_path_factory.mktemp("fit")
    fit = lre_pl("fit", *tiny_args, cwd=folder)
    assert fit.returncode == 0, fit.stderr
    return folder / "lightning_logs" / "version_0" / "operator.pt", fit


def test_validate_an_operator_file_reproduces_the_fit(tiny_args, tiny_fit, tmp_path):
    operator, fit = tiny_fit
    validate = lre_pl("validate", *tiny_args, "--model.operator_path", str(operator), cwd=tmp_path)
    assert validate.returncode == 0, validate.stderr

    def faithfulness(output):
        return next(line for line in output.splitlines() if line.strip().startswith("faithfulness"))

    assert faithfulness(validate.stdout) == faithfulness(fit.stdout)
    assert "operator " not in validate.stdout  # validation writes no operator


def test_an_estimator_is_chosen_from_the_command_line(tiny_args, tmp_path):
    result = lre_pl(
        "fit", *tiny_args, "--model.estimator", "lre_pl.lre.estimators.LinearRegression", "--model.estimator.ridge", "0.01",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "lightning_logs" / "version_0"
    operator = torch.load(run_dir / "operator.pt", weights_only=True)
    assert operator["estimator"] == "LinearRegression(ridge=0.01)"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["estimator"] == {
        "class_path": "lre_pl.lre.estimators.LinearRegression",
        "init_args": {"ridge": 0.01},
    }


def test_the_class_paths_and_checkpoints_of_0_1_keep_working(tiny_model_dir, tmp_path):
    """0.1 had flat modules (``lre_pl.estimators``): a YAML naming them, and a checkpoint made by 0.1
    (``tests/fixtures``: LinearRegression, ridge 0.01, block 1 of the tiny Llama), still work."""
    config = tmp_path / "old.yaml"
    config.write_text(
        "model:\n  estimator:\n    class_path: lre_pl.estimators.LinearRegression\n    init_args: {ridge: 0.01}\n"
    )
    args = ["--model.model", tiny_model_dir, "--data.filter_known", "false", "--model.layers", "1"]
    fit = lre_pl("fit", "--config", str(config), *args, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    operator = torch.load(tmp_path / "lightning_logs" / "version_0" / "operator.pt", weights_only=True)
    assert operator["estimator"] == "LinearRegression(ridge=0.01)"
    old = ROOT / "tests" / "fixtures" / "lre_v0.1.0_linear_regression.ckpt"
    (tmp_path / "tiny").symlink_to(
        tiny_model_dir
    )  # the checkpoint's model.model, which validate must be given
    args[1] = "tiny"  # a checkpoint never overrides the command line: they must agree
    validate = lre_pl("validate", "--config", str(config), *args, "--ckpt_path", str(old), cwd=tmp_path)
    assert validate.returncode == 0, validate.stderr
    from lre_pl.lightning.module import LinearRelationModule
    from lre_pl.lre.estimators import LinearRegression

    module = LinearRelationModule.load_from_checkpoint(old, model=tiny_model_dir)
    assert isinstance(module.estimator, LinearRegression) and module.estimator.ridge == 0.01
    saved = torch.load(old, weights_only=False)["lre"]
    torch.testing.assert_close(module.weights, saved["weights"])
    torch.testing.assert_close(module.weights[0], operator["weight"])  # the same fit, made by 0.2


def test_a_fit_reports_causality_at_the_given_ranks(tiny_args, tmp_path):
    result = lre_pl(
        "fit", *tiny_args, "--model.ranks", "[4, 32]", "--model.causality_targets", "all_pairs",
        "--model.comparison_edits", "true", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("causality"))
    assert line.split()[1:4:2] == ["r4", "r32"] and line.endswith("(342 all pairs edits)")
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("comparison edits"))
    assert line.split()[2::2] == ["target_subject_state", "target_subject_embedding", "target_output"]
    bad = lre_pl("fit", *tiny_args, "--model.ranks", "[64]", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        "lre-pl: error: ranks=[64] out of range for " + tiny_args[1] + ": W is 32 x 32, use 0..32"
    )
    assert [path.name for path in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]


def test_help_lists_every_command_without_loading_torch():
    program = (
        "import sys; from lre_pl.cli import main; main(sys.argv[1:]); "
        "print('loaded:', [m for m in ('torch', 'pytorch_lightning', 'transformers') if m in sys.modules])"
    )
    outputs = []
    for args in ([], ["--help"], ["-h"], ["-v"], ["relations"]):
        result = subprocess.run(
            [sys.executable, "-c", program, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert result.stdout.splitlines()[-1] == "loaded: []"
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1] == outputs[2] == outputs[3]
    lines = outputs[0].splitlines()
    assert lines[0] == "usage: lre-pl <command> [options]"
    commands = lines[lines.index("commands:") + 1 : lines.index("options:") - 1]
    assert [line.split()[0] for line in commands] == [
        "fit", "validate", "predict", "lens", "relations", "sweep", "beta-study", "distracted-lens",
        "cross-relation",
    ]  # fmt: skip
    assert all(len(line.split()) > 4 for line in commands)  # each with its one line
    assert "A command's options: lre-pl <command> --help (e.g. lre-pl fit --help)." in lines


def undescribed_options(help_text: str, prefix: str = "--") -> list[str]:
    """The options starting with ``prefix`` whose help entry is only ``(type: ..., default: ...)``."""
    undescribed = []
    for entry in re.split(r"\n(?=  -)", help_text):
        if entry.startswith("  " + prefix):
            invocation, *description = re.split(r" {2,}|\n", entry.strip(), maxsplit=1)
            if not "".join(description).split("(type:")[0].strip():
                undescribed.append(invocation)
    return undescribed


@pytest.mark.parametrize(
    "command",
    [
        "fit",
        "validate",
        "predict",
        "lens",
        "relations",
        "sweep",
        "beta-study",
        "distracted-lens",
        "cross-relation",
    ],
)
def test_every_command_describes_every_option(command, capsys):
    from lre_pl.cli import main

    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    help_text = capsys.readouterr().out
    assert exit.value.code == 0 and help_text.startswith("usage: lre-pl ")
    assert undescribed_options(help_text, "--model." if command in ("fit", "validate") else "--") == []
    assert undescribed_options(help_text, "--data.") == []
    expected = {
        "fit": "--model.beta BETA     scale on W s",
        "validate": "--model.operator_path OPERATOR_PATH\n",
        "predict": "--subjects_file SUBJECTS_FILE\n                        a text file of subjects, one per line",
        "relations": "--category {",
        "sweep": "--top_k TOP_K         faithfulness@1 and @top_k. (type: int, default: 3)",
        "beta-study": "--fit_epochs FIT_EPOCHS\n                        Epochs of each learned-β fit",
        "cross-relation": "--sweep_dir SWEEP_DIR\n                        A finished ``lre-pl sweep`` folder",
        "lens": "--positions POSITIONS",
        "distracted-lens": "--templates TEMPLATES",
    }
    assert expected[command] in help_text


def test_predict_applies_a_saved_operator(tiny_fit, tiny_model_dir, tmp_path):
    from lre_pl.lm.models import load_language_model
    from lre_pl.lre.operator import LinearRelationOperator

    operator_path = tiny_fit[0]
    subjects_file = tmp_path / "subjects.txt"
    subjects_file.write_text("Japan\n\nSão Paulo\n")
    by_argument = lre_pl("predict", "--operator", str(operator_path), "France", "Japan", cwd=tmp_path)
    mixed = lre_pl(
        "predict", "--operator", str(operator_path), "France", "--subjects", '["Peru"]',
        "--subjects_file", str(subjects_file), "--top_k", "5", cwd=tmp_path,
    )  # fmt: skip
    assert by_argument.returncode == 0 and mixed.returncode == 0, by_argument.stderr + mixed.stderr

    operator = LinearRelationOperator.load(operator_path)
    lm = load_language_model(tiny_model_dir)
    heading = f"lre_pl predict: 'country capital city', layer 1, beta 1, JacobianMean() on {tiny_model_dir}"

    def cells(subject, k):
        return [subject, *(f"{token!r} {p:.3f}" for token, p in operator.predict(subject, lm, k=k))]

    lines = by_argument.stdout.splitlines()
    assert lines[0] == heading
    assert [line.split("  ")[0].strip() for line in lines[1:]] == ["subject", "France", "Japan"]
    assert [re.split(r" {2,}", line) for line in lines[1:]] == [
        ["subject", "top 1", "top 2", "top 3"], cells("France", 3), cells("Japan", 3),
    ]  # fmt: skip
    lines = mixed.stdout.splitlines()
    assert lines[0] == heading
    assert [re.split(r" {2,}", line) for line in lines[1:]] == [
        ["subject", "top 1", "top 2", "top 3", "top 4", "top 5"],
        *(cells(subject, 5) for subject in ["France", "Peru", "Japan", "São Paulo"]),
    ]
    assert list(tmp_path.iterdir()) == [subjects_file]  # predict writes no run folder
