"""Nothing a researcher is handed runs code or silently changes a result (issue 26, items 1-3, 6, 7, 9).

A malicious file here is a ``torch.save`` zip (or a plain pickle) whose unpickling would create a marker
file: every test checks that the marker is absent, the exit code and the one line. Remote checkpoints
are served by a local HTTP server on 127.0.0.1 (a thread, stopped by the fixture).
"""

import functools
import http.server
import os
import pickle
import shutil
import signal
import threading
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from lre_pl.errors import InputError
from lre_pl.lightning.datamodule import RelationDataModule
from lre_pl.lightning.module import LinearRelationModule
from lre_pl.lre.bundle import Bundle
from lre_pl.lre.estimators import LinearRegression

FIT_CHECKPOINT = "the checkpoints/lre.ckpt of an lre-pl fit (lightning_logs/version_N/checkpoints/lre.ckpt)"


class RunsCode:
    """Unpickling it creates ``marker``: what a malicious file would do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"lre": RunsCode(marker), "state_dict": {}, "hyper_parameters": {}}, path)
    return path


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "unpickling a handed file ran code"


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """torch's hub cache, where Lightning's loader would keep a downloaded checkpoint: must stay empty."""
    home = tmp_path / "torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    yield home
    assert list(home.rglob("*")) == [], "a download stayed in torch's hub cache"


@pytest.fixture
def served(tmp_path, marker):
    """``(url, requests)``: a malicious checkpoint served over http on 127.0.0.1; ``requests`` counts the
    requests it answered."""
    folder = tmp_path / "served"
    folder.mkdir()
    malicious_checkpoint(folder / "x.ckpt", marker)
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(args)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=folder))
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/x.ckpt", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_model_dir):
    """A finished ``lre-pl fit`` of blocks [1, 2] of the tiny model: its run folder."""
    from lre_pl.cli import main

    folder = tmp_path_factory.mktemp("fitted")
    old, handler = Path.cwd(), signal.getsignal(signal.SIGTERM)
    os.chdir(folder)
    try:
        main(
            [
                "fit",
                "--model.model",
                tiny_model_dir,
                "--data.filter_known",
                "false",
                "--model.layers",
                "[1, 2]",
            ]
        )
    finally:
        os.chdir(old)
        signal.signal(signal.SIGTERM, handler)
    return folder / "lightning_logs" / "version_0"


def validate_args(tiny_model_dir, layers="[1, 2]"):
    return [
        "validate",
        "--model.model",
        tiny_model_dir,
        "--data.filter_known",
        "false",
        "--model.layers",
        layers,
    ]


def last_line(stderr: str) -> str:
    assert "Traceback" not in stderr and "weights_only=False" not in stderr, stderr[-3000:]
    return stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------------------ remote checkpoints
def remote_refusal(url: str) -> str:
    return (
        f"lre-pl: error: ckpt_path {url!r} is a remote address: lre_pl reads checkpoints from local files only "
        "(loading one from a URL can run code); download it yourself, then give its local path"
    )


@pytest.mark.parametrize("how", ["validate --ckpt_path", "ckpt_path: in YAML", "fit --ckpt_path"])
def test_a_checkpoint_url_runs_nothing_and_is_refused(
    run_cli, tmp_path, tiny_model_dir, served, torch_home, how
):
    url, requests = served
    args = validate_args(tiny_model_dir)
    if how == "ckpt_path: in YAML":
        config = tmp_path / "remote.yaml"
        config.write_text(f"ckpt_path: {url}\n")
        args += ["--config", str(config)]
    elif how == "fit --ckpt_path":
        args = ["fit", *args[1:], "--ckpt_path", url]
    else:
        args += ["--ckpt_path", url]
    code, stderr = run_cli(*args)
    assert (code, last_line(stderr)) == (2, remote_refusal(url))
    assert requests == [], "the checkpoint was downloaded"
    assert not (tmp_path / "lightning_logs").exists()


def test_the_api_refuses_a_checkpoint_url(tmp_path, tiny_model_dir, served, torch_home, monkeypatch):
    """A plain Trainer's validate and load_from_checkpoint, without the CLI."""
    url, requests = served
    monkeypatch.chdir(tmp_path)
    message = remote_refusal(url).removeprefix("lre-pl: error: ")
    module = LinearRelationModule(model=tiny_model_dir, layers=[1, 2])
    data = RelationDataModule(model=tiny_model_dir, filter_known=False)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(InputError) as refused:
        trainer.validate(module, datamodule=data, ckpt_path=url, weights_only=False)
    assert str(refused.value) == message
    with pytest.raises(InputError) as refused:
        LinearRelationModule.load_from_checkpoint(url)
    assert str(refused.value) == message
    assert requests == []


def test_a_file_url_is_its_local_path(run_cli, fitted, tiny_model_dir):
    code, stderr = run_cli(
        *validate_args(tiny_model_dir), "--ckpt_path", (fitted / "checkpoints" / "lre.ckpt").as_uri()
    )
    assert code == 0, stderr


# ------------------------------------------------------------------------- local malicious files
def test_a_malicious_local_checkpoint_runs_nothing(run_cli, tmp_path, tiny_model_dir, marker):
    """Item 9's pickle case printed torch's advice to load with weights_only=False; the API took that."""
    path = malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    code, stderr = run_cli(*validate_args(tiny_model_dir), "--ckpt_path", str(path))
    assert (code, last_line(stderr)) == (
        2,
        f"lre-pl: error: ckpt_path {str(path)!r} is not a readable lre_pl checkpoint (UnpicklingError: not a "
        f"weights-only lre_pl file): give {FIT_CHECKPOINT}",
    )
    with pytest.raises(InputError, match="UnpicklingError: not a weights-only lre_pl file"):
        LinearRelationModule.load_from_checkpoint(path, weights_only=False)
    module = LinearRelationModule(model=tiny_model_dir, layers=[1, 2])
    data = RelationDataModule(model=tiny_model_dir, filter_known=False)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(InputError, match="UnpicklingError: not a weights-only lre_pl file"):
        trainer.validate(
            module, datamodule=data, ckpt_path=path, weights_only=False
        )  # weights only all the same


def test_a_malicious_operator_and_bundle_run_nothing(run_cli, tmp_path, marker):
    operator = tmp_path / "operator.pt"
    torch.save({"weight": RunsCode(marker)}, operator)
    code, stderr = run_cli("predict", "--operator", str(operator), "France")
    assert (code, last_line(stderr)) == (
        2,
        f"lre-pl: error: {str(operator)!r} is not a readable lre_pl operator file (UnpicklingError: not an "
        "lre_pl file): re-create it with lre-pl fit",
    )
    bundle = tmp_path / "bundle.pt"
    bundle.write_bytes(pickle.dumps({"weights": RunsCode(marker)}))  # a plain pickle, no zip
    with pytest.raises(InputError) as refused:
        Bundle.load(bundle)
    assert str(refused.value) == (
        f"{str(bundle)!r} is not a readable lre_pl bundle (cut short or damaged: File is not a zip file): delete "
        "it and rerun the sweep, which estimates it again"
    )


# -------------------------------------------------------------------- files that are not checkpoints
def test_a_checkpoint_that_is_no_lre_checkpoint_is_one_line(run_cli, tmp_path, fitted, tiny_model_dir):
    pickled = tmp_path / "pickle.ckpt"
    pickled.write_bytes(pickle.dumps({"state_dict": {}}))
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes((fitted / "checkpoints" / "lre.ckpt").read_bytes()[:5000])
    cases = {
        str(pickled): "is not a readable lre_pl checkpoint (cut short or damaged: File is not a zip file)",
        str(cut): "is not a readable lre_pl checkpoint (cut short or damaged: File is not a zip file)",
        str(tmp_path): "is not a readable lre_pl checkpoint (Is a directory)",
        str(
            fitted / "operator.pt"
        ): "is not a readable lre_pl checkpoint (no lre entry: not written by lre_pl)",
    }
    for path, reason in cases.items():
        code, stderr = run_cli(*validate_args(tiny_model_dir), "--ckpt_path", path)
        assert (code, last_line(stderr)) == (
            2,
            f"lre-pl: error: ckpt_path {path!r} {reason}: give {FIT_CHECKPOINT}",
        )
    missing = str(tmp_path / "none.ckpt")
    code, stderr = run_cli(*validate_args(tiny_model_dir), "--ckpt_path", missing)
    assert (code, last_line(stderr)) == (
        2,
        f"lre-pl: error: ckpt_path {missing!r} does not exist: give {FIT_CHECKPOINT}",
    )


def flip_middle(source: Path, target: Path) -> Path:
    """``source`` with 64 bytes in its middle inverted: what a bad disk or a cut copy does."""
    data = bytearray(source.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(255 - byte for byte in data[middle : middle + 64])
    target.write_bytes(bytes(data))
    return target


def test_a_damaged_checkpoint_is_one_line(run_cli, tmp_path, fitted, tiny_model_dir):
    """Item 7: validate ran on damaged numbers (faithfulness 0.643 -> 0.071), exit 0."""
    damaged = flip_middle(fitted / "checkpoints" / "lre.ckpt", tmp_path / "damaged.ckpt")
    code, stderr = run_cli(*validate_args(tiny_model_dir), "--ckpt_path", str(damaged))
    assert (
        code == 2
        and last_line(stderr).startswith(
            f"lre-pl: error: ckpt_path {str(damaged)!r} is not a readable lre_pl checkpoint (its "
        )
        and last_line(stderr).endswith(f" fails its CRC check): give {FIT_CHECKPOINT}")
    )
    with pytest.raises(InputError, match="fails its CRC check"):
        LinearRelationModule.load_from_checkpoint(damaged)


def test_a_damaged_operator_is_one_line(run_cli, tmp_path, fitted):
    """Item 6: predict and lens ran on 17 changed weights, exit 0."""
    damaged = flip_middle(fitted / "operator.pt", tmp_path / "damaged.pt")
    code, stderr = run_cli("predict", "--operator", str(damaged), "France")
    line = last_line(stderr)
    assert code == 2 and line.startswith(
        f"lre-pl: error: {str(damaged)!r} is not a readable lre_pl operator file (its "
    )
    assert line.endswith(" fails its CRC check): re-create it with lre-pl fit")


def test_an_operator_with_fields_of_the_wrong_type_is_one_line(run_cli, tmp_path, fitted):
    """Item 8 (first half): a string layer, a 3-D weight, a bias of the wrong width gave tracebacks."""
    saved = torch.load(fitted / "operator.pt", weights_only=True)
    cases = {
        "layer": ("eight", "layer is 'eight', not 'emb' or a block index"),
        "weight": (
            torch.zeros(2, 32, 32),
            "weight is a torch.float32 tensor [2, 32, 32], not a float tensor [d, d]",
        ),
        "bias": (torch.zeros(16), "bias is a torch.float32 tensor [16], not a float tensor [d]"),
        "beta": ("1.0", "beta is str '1.0', not float"),
        "relation": (7, "relation is int 7, not str"),
    }
    for name, (value, problem) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save({**saved, name: value}, path)
        code, stderr = run_cli("predict", "--operator", str(path), "France")
        assert (code, last_line(stderr)) == (
            2,
            f"lre-pl: error: {str(path)!r} is not a valid lre_pl operator file ({problem}): re-create it with lre-pl fit",
        )


# ---------------------------------------------------------------- the checkpoint never overrides
def test_a_checkpoint_never_overrides_the_command_line(run_cli, fitted, tiny_model_dir):
    """Item 2: --model.layers '[1]' with a checkpoint of [1, 2] validated [1, 2], exit 0."""
    checkpoint = fitted / "checkpoints" / "lre.ckpt"
    config = fitted / "config.yaml"
    code, stderr = run_cli(*validate_args(tiny_model_dir, "[1]"), "--ckpt_path", str(checkpoint))
    assert (code, last_line(stderr)) == (
        2,
        f"lre-pl: error: --ckpt_path {checkpoint} was estimated with model.layers=[1, 2], not [1]: give "
        f"--model.layers '[1, 2]' (or --config {config}), or another checkpoint",
    )
    code, stderr = run_cli(
        *validate_args(tiny_model_dir), "--model.beta", "2.5", "--ckpt_path", str(checkpoint)
    )
    assert (code, last_line(stderr)) == (
        2,
        f"lre-pl: error: --ckpt_path {checkpoint} was estimated with model.beta=1.0, not 2.5: give "
        f"--model.beta 1.0 (or --config {config}), or another checkpoint",
    )


def test_a_fit_with_a_checkpoint_is_refused_before_the_model_loads(
    run_cli, tmp_path, fitted, tiny_model_dir, monkeypatch
):
    """A fit is one pass: there is nothing to resume. The CLI says so before any model loads (a plain
    Trainer's fit, through the module, once it is there)."""
    from lre_pl.lightning.checkpoints import NOTHING_TO_RESUME

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("lre_pl.lightning.module.load_language_model", loaded)
    checkpoint = fitted / "checkpoints" / "lre.ckpt"
    code, stderr = run_cli("fit", *validate_args(tiny_model_dir)[1:], "--ckpt_path", str(checkpoint))
    assert (code, last_line(stderr)) == (2, f"lre-pl: error: {NOTHING_TO_RESUME}")
    assert not (tmp_path / "lightning_logs").exists()


def test_a_checkpoint_state_never_replaces_beta_in_the_api(tmp_path, fitted, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = LinearRelationModule(model=tiny_model_dir, layers=[1, 2], beta=2.5)
    data = RelationDataModule(model=tiny_model_dir, filter_known=False)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(InputError) as refused:
        trainer.validate(module, datamodule=data, ckpt_path=fitted / "checkpoints" / "lre.ckpt")
    assert str(refused.value) == "the checkpoint holds beta [1.0, 1.0], not model.beta=2.5: set model.beta=1"


# --------------------------------------------------------------------------------- class_path
@pytest.fixture
def evil_module(tmp_path, monkeypatch):
    """A module on the import path whose import creates a marker file; yields (class_path, marker)."""
    folder = tmp_path / "site"
    folder.mkdir()
    marker = tmp_path / "IMPORTED"
    (folder / "evilmod.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
        "from lre_pl.lre.estimators import Estimator\nclass Evil(Estimator):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    yield "evilmod.Evil", marker
    assert not marker.exists(), "a class_path outside the allow-list was imported"


CLASS_PATH_REFUSAL = (
    "lre-pl: error: class_path 'evilmod.Evil' is not allowed: a config may name only lre_pl's own classes "
    "(lre_pl.), torch's optimizers (torch.optim.) and Lightning's loggers, callbacks, strategies, plugins, "
    "profilers and accelerators (pytorch_lightning.loggers., ...); name one of those (options: lre-pl {} --help)"
)


def test_a_class_path_outside_the_allow_list_is_never_imported(
    run_cli, tmp_path, tiny_model_dir, evil_module
):
    class_path, _ = evil_module
    config = tmp_path / "evil.yaml"
    config.write_text(f"model:\n  estimator:\n    class_path: {class_path}\n")
    fit = ["fit", "--model.model", tiny_model_dir, "--data.filter_known", "false", "--model.layers", "1"]
    for args in ([*fit, "--config", str(config)], [*fit, "--model.estimator", class_path]):
        code, stderr = run_cli(*args)
        assert (code, last_line(stderr)) == (2, CLASS_PATH_REFUSAL.format("fit"))


def test_the_allowed_short_names_keep_working(run_cli, tmp_path, tiny_model_dir):
    code, stderr = run_cli(
        "fit", "--model.model", tiny_model_dir, "--data.filter_known", "false", "--model.layers", "1",
        "--model.estimator", "LinearRegression", "--trainer.logger", "TensorBoardLogger",
        "--trainer.logger.save_dir", str(tmp_path / "logs"),
    )  # fmt: skip
    assert code == 0, stderr


def test_a_class_path_in_a_checkpoint_is_never_imported(
    run_cli, tmp_path, fitted, tiny_model_dir, evil_module
):
    class_path, _ = evil_module
    checkpoint = torch.load(fitted / "checkpoints" / "lre.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["estimator"] = {"class_path": class_path}
    path = tmp_path / "evil_hparams.ckpt"
    torch.save(checkpoint, path)
    code, stderr = run_cli(*validate_args(tiny_model_dir), "--ckpt_path", str(path))
    assert (code, last_line(stderr)) == (
        2,
        f"lre-pl: error: --ckpt_path {path} was estimated with model.estimator={{'class_path': 'evilmod.Evil'}}, "
        'not None: give --model.estimator \'{"class_path": "evilmod.Evil"}\' (or --config <run>/config.yaml), '
        "or another checkpoint",
    )
    with pytest.raises(
        InputError, match=r"^estimator \{'class_path': 'evilmod.Evil'\} is not one of lre_pl's"
    ):
        LinearRelationModule.load_from_checkpoint(path)


def test_a_python_tag_in_a_yaml_config_runs_nothing(run_cli, tmp_path, tiny_model_dir, marker):
    config = tmp_path / "tag.yaml"
    config.write_text(f'model:\n  model: !!python/object/apply:os.system ["touch {marker}"]\n')
    code, stderr = run_cli("fit", "--config", str(config))
    assert code == 2 and "could not determine a constructor for the tag" in last_line(stderr)


# ---------------------------------------------------------------- the project's own checkpoints
def test_a_checkpoint_of_the_python_api_loads_weights_only(tmp_path, tiny_model_dir, monkeypatch):
    """save_hyperparameters() keeps the Estimator instance: the checkpoint holds its class_path instead."""
    monkeypatch.chdir(tmp_path)
    module = LinearRelationModule(model=tiny_model_dir, layers=1, estimator=LinearRegression(ridge=0.01))
    data = RelationDataModule(model=tiny_model_dir, filter_known=False)
    pl.Trainer(
        max_epochs=1, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path
    ).fit(module, datamodule=data)
    (path,) = tmp_path.glob("lightning_logs/version_0/checkpoints/lre.ckpt")
    saved = torch.load(path, weights_only=True)
    assert saved["hyper_parameters"]["estimator"] == {
        "class_path": "lre_pl.lre.estimators.LinearRegression",
        "init_args": {"ridge": 0.01},
    }
    loaded = LinearRelationModule.load_from_checkpoint(path)
    assert loaded.estimator == LinearRegression(ridge=0.01)
    torch.testing.assert_close(loaded.weights, module.weights.cpu())
    shutil.rmtree(tmp_path / "lightning_logs")
