"""Bad input and killed runs: one line ``lre-pl: error: ...``, a non-zero exit code, no run folder.

Most cases run ``lre_pl.cli.main`` in this process (one import of torch and Lightning for all);
SIGTERM needs a real process.
"""

import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import start_held_in_its_first_jacobian

from lre_pl.lre.operator import LinearRelationOperator

HERE = Path(__file__).parent


def assert_failed_cleanly(code, stderr, message, tmp_path):
    assert code not in (0, None), stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("lre-pl: error: ") and message in last, last
    assert "Traceback" not in stderr and "weights_only=False" not in stderr
    assert not (tmp_path / "lightning_logs").exists(), "a failed run left its folders behind"


@pytest.fixture
def operator_file(tmp_path, tiny_model_dir):
    def write(name="op.pt", **changes):
        fields = {
            "weight": torch.zeros(32, 32), "bias": torch.zeros(32), "beta": 1.0, "layer": 1,
            "relation": "country capital city", "model": tiny_model_dir, "n_train": 5, "seed": 0,
        }  # fmt: skip
        return str(LinearRelationOperator(**{**fields, **changes}).save(tmp_path / name))

    return write


def _duplicates_file(tmp_path):
    path = tmp_path / "dups.json"
    samples = ", ".join(['{"subject": "France", "object": "Paris"}'] * 3)
    path.write_text(
        '{"name": "dups", "prompt_templates": ["The capital of {} is"], "samples": [' + samples + "]}"
    )
    return str(path)


BEFORE_LOADING = [  # (arguments, expected message): all fail before any model is loaded
    (["--data.relation", "country capitol"], "unknown relation 'country capitol'"),
    (["--data.relation", "missing.json"], "missing.json: relation file not found"),
    (["--model.layers", "[]"], "layers is empty: give a layer such as 8"),
    (["--model.layers", "ten"], "layer 'ten' is not a layer: use 'emb'"),
    (["--model.layers", "[1, one]"], "layer 'one' is not a layer"),
    (["--model.top_k", "0"], "top_k=0 must be at least 1"),
    (["--model.beta", "0"], "beta=0.0 must be positive"),
    (["--data.min_known", "0"], "min_known=0 must be at least 1"),
    (
        ["--data.n_train", "24"],
        "n_train=24 must be between 1 and 23: relation 'country capital city' has 24 samples",
    ),
    (["--data.template_index", "3"], "template_index=3 out of range"),
    (["--model.dtype", "float64x"], "dtype 'float64x' is not a floating-point torch dtype"),
    (["--model.reference_hparams", "gpt4"], "reference_hparams='gpt4' is not one of gptj, gpt2-xl, llama"),
]


@pytest.mark.parametrize(("override", "message"), BEFORE_LOADING)
def test_bad_input_before_loading(run_cli, tmp_path, tiny_model_dir, override, message, monkeypatch):
    import lre_pl.lightning.datamodule
    import lre_pl.lightning.module
    import lre_pl.lm.models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(lre_pl.lm.models, "load_language_model", no_loading)
    monkeypatch.setattr(lre_pl.lightning.module, "load_language_model", no_loading)
    monkeypatch.setattr(lre_pl.lightning.datamodule, "load_language_model", no_loading)
    code, stderr = run_cli("fit", "--model.model", tiny_model_dir, "--data.filter_known", "false", *override)
    assert_failed_cleanly(code, stderr, message, tmp_path)


def test_bad_input_after_loading_removes_the_run_folder(run_cli, tmp_path, tiny_model_dir):
    # The range of a layer needs the model: the run folder exists by then, and must go.
    code, stderr = run_cli(
        "fit", "--model.model", tiny_model_dir, "--data.filter_known", "false", "--model.layers", "99"
    )
    assert_failed_cleanly(code, stderr, "layer 99 is out of range for", tmp_path)


def test_malformed_relation_file(run_cli, tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "samples": [}')
    code, stderr = run_cli("fit", "--model.model", tiny_model_dir, "--data.relation", str(bad))
    assert_failed_cleanly(code, stderr, "malformed JSON at line 1", tmp_path)


def test_relation_of_duplicates_says_how_many_were_dropped(run_cli, tmp_path, tiny_model_dir):
    code, stderr = run_cli(
        "fit", "--model.model", tiny_model_dir, "--data.relation", _duplicates_file(tmp_path)
    )
    assert_failed_cleanly(code, stderr, "has 1 distinct sample (2 duplicate samples dropped)", tmp_path)


def test_unknown_model_spec_fails_fast(run_cli, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    started = time.perf_counter()
    code, stderr = run_cli("fit", "--model.model", "lre-pl-tests/no-such-model-4f1c")
    assert time.perf_counter() - started < 20
    assert_failed_cleanly(
        code, stderr, "model 'lre-pl-tests/no-such-model-4f1c' is not an embedded model", tmp_path
    )


def test_operator_file_errors(run_cli, tmp_path, tiny_args, operator_file):
    validate = ("validate", *tiny_args)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 not a zip file at all")
    not_operator = tmp_path / "tensor.pt"
    torch.save({"weights": torch.zeros(2)}, not_operator)
    cases = [
        (str(tmp_path / "none.pt"), "does not exist: give the operator.pt of an earlier run"),
        (str(corrupt), "is not a readable lre_pl operator file"),
        (str(not_operator), "is not an lre_pl operator file (no weight, bias, beta, layer, relation, model)"),
        (
            operator_file("other.pt", model="smollm2-135m"),
            "was estimated on model 'smollm2-135m', not model.model=",
        ),
        (
            operator_file("layer2.pt", layer=2),
            "holds the LRE of layer 2, not model.layers=[1]: set model.layers=2",
        ),
        (
            operator_file("antonym.pt", relation="adjective antonym"),
            "is an LRE of 'adjective antonym', not of data.relation",
        ),
    ]
    for path, message in cases:
        code, stderr = run_cli(*validate, "--model.operator_path", path)
        assert_failed_cleanly(code, stderr, message, tmp_path)


def test_sigterm_stops_the_run_at_once_and_leaves_nothing(tmp_path, tiny_args):
    """The run is held inside its first Jacobian (a stand-in that sleeps) and killed there."""
    process = start_held_in_its_first_jacobian(tmp_path, ["fit", *tiny_args])
    assert (tmp_path / "lightning_logs").exists()  # the run folder existed while it ran
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - sent < 10
    assert process.returncode == 143
    assert stderr.strip().splitlines()[-1] == "lre-pl: error: stopped by SIGTERM; the run folder was removed"
    assert not (tmp_path / "lightning_logs").exists() and not list(tmp_path.rglob("operator.pt"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["fit", "--model.top_k", "abc"],
            """Parser key "model.top_k": Expected a <class 'int'>. Got value: abc""",
        ),
        (["fit", "--model.nope", "3"], "unrecognized arguments: --model.nope 3 (options: lre-pl fit --help)"),
        (["fit", "--config", "missing.yaml"], 'Parser key "config": File does not exist'),
        (
            ["fitt"],
            "invalid choice: 'fitt' (choose from 'fit', 'validate', 'predict', 'lens', 'relations', 'sweep', "
            "'beta-study', 'distracted-lens', 'cross-relation') (options: lre-pl --help)",
        ),
        (
            ["test"],
            "there is no lre-pl test: lre-pl validate evaluates an operator on the test samples "
            "(options: lre-pl validate --help)",
        ),
        (
            ["--config", "x.yaml", "fit"],
            "--config before the command: write lre-pl fit --config x.yaml (options: lre-pl --help)",
        ),
        (
            ["predict", "--top_k", "abc"],
            """Parser key "top_k": Expected a <class 'int'>. Got value: abc (options: lre-pl predict --help)""",
        ),
        (["relations", "--category", "nope"], "invalid choice: 'nope' (choose from 'bias', 'commonsense'"),
        (["relations", "--x"], "unrecognized arguments: --x (options: lre-pl relations --help)"),
    ],
)
def test_parser_errors_are_one_line_too(run_cli, tmp_path, args, message):
    code, stderr = run_cli(*args)
    assert_failed_cleanly(code, stderr, message, tmp_path)
    assert "usage:" not in stderr


@pytest.fixture
def no_model_loading(monkeypatch):
    """Make any model load fail the test: the input must be refused before it."""
    import lre_pl.lm.models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(lre_pl.lm.models, "load_language_model", no_loading)


def test_predict_refuses_bad_input_before_loading_the_model(
    run_cli, tmp_path, operator_file, no_model_loading
):
    operator = operator_file()
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("S\xe3o Paulo\n".encode("latin-1"))
    cases = [
        (
            ["France"],
            "no operator file: give --operator lightning_logs/version_N/operator.pt (of lre-pl fit)",
        ),
        (
            ["--operator", str(tmp_path / "none.pt"), "France"],
            "operator file '" + str(tmp_path / "none.pt") + "' does not exist",
        ),
        (
            ["--operator", operator],
            "no subjects: give them as arguments (France Japan), --subjects or --subjects_file",
        ),
        (
            ["--operator", operator, "--subjects_file", str(tmp_path / "none.txt")],
            "subjects_file '" + str(tmp_path / "none.txt") + "' cannot be read (No such file or directory)",
        ),
        (
            ["--operator", operator, "--subjects_file", str(tmp_path)],
            "subjects_file '" + str(tmp_path) + "' cannot be read (Is a directory)",
        ),
        (
            ["--operator", operator, "--subjects_file", str(latin1)],
            "cannot be read (UnicodeDecodeError): give a UTF-8 text file, one subject per line",
        ),
        (
            ["--operator", operator, "--subjects_file", str(empty)],
            "subjects_file '" + str(empty) + "' holds no subjects: write one subject per line",
        ),
        (["--operator", operator, "--subjects", '["France", " "]'], "subject 2 of 2 is empty"),
        (["--operator", operator, "France", "--top_k", "0"], "top_k=0 must be at least 1"),
    ]
    for args, message in cases:
        code, stderr = run_cli("predict", *args)
        assert code == 2
        assert_failed_cleanly(code, stderr, message, tmp_path)


def test_predict_refuses_an_operator_that_does_not_fit_its_model(run_cli, tmp_path, operator_file):
    cases = [
        (
            operator_file("layer9.pt", layer=9),
            "holds a 32-dimensional LRE of layer 9, but {model} has d=32 and blocks 0..2: it is not the model",
        ),
        (
            operator_file("narrow.pt", weight=torch.zeros(16, 16), bias=torch.zeros(16)),
            "holds a 16-dimensional LRE of layer 1, but {model} has d=32 and blocks 0..2",
        ),
        (
            operator_file("noslot.pt", test_prompt_template="The capital of France is"),
            "prompt template 'The capital of France is' has no {{}} slot for the subject",
        ),
    ]
    for path, message in cases:
        code, stderr = run_cli("predict", "--operator", path, "France")
        model = LinearRelationOperator.load(path).model
        assert code == 2
        assert_failed_cleanly(code, stderr, message.format(model=model), tmp_path)
    code, stderr = run_cli("predict", "--operator", operator_file(), "France", "--top_k", "1000000")
    assert_failed_cleanly(code, stderr, "top_k=1000000 exceeds the vocabulary of", tmp_path)


def test_estimate_that_fails_leaves_no_lightning_logs(tmp_path, monkeypatch, tiny_model_dir):
    import lre_pl
    from lre_pl.errors import InputError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="layer 99 is out of range for"):
        lre_pl.estimate("country capital city", model=tiny_model_dir, layers=[99], filter_known=False)
    assert list(tmp_path.iterdir()) == []


def test_estimate_that_fails_keeps_the_earlier_runs(tmp_path, monkeypatch, tiny_model_dir):
    import lre_pl
    from lre_pl.errors import InputError

    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / "lightning_logs" / "version_0" / "operator.pt"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier run")
    with pytest.raises(InputError, match="layer 99 is out of range for"):
        lre_pl.estimate("country capital city", model=tiny_model_dir, layers=[99], filter_known=False)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "lightning_logs",
        "lightning_logs/version_0",
        "lightning_logs/version_0/operator.pt",
    ]
    assert earlier.read_bytes() == b"an earlier run"
