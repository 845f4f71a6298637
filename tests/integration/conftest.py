import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_models import tiny_llama


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama saved like a hub checkpoint: the model spec of a local directory."""
    path = tmp_path_factory.mktemp("tiny-llama")
    lm = tiny_llama(hidden=32, blocks=3)
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_args(tiny_model_dir):
    """CLI arguments of a fit on the tiny model: every test sample validated, block 1."""
    return ["--model.model", tiny_model_dir, "--data.filter_known", "false", "--model.layers", "1"]


@pytest.fixture
def run_cli(tmp_path, monkeypatch, capsys):
    """Run ``lre-pl ARGS`` in this process, in tmp_path; return (exit code, stderr)."""
    from lre_pl.cli import main

    monkeypatch.chdir(tmp_path)
    handler = signal.getsignal(signal.SIGTERM)

    def run(*args):
        try:
            main(list(args))
            code = 0
        except SystemExit as exit:
            code = exit.code
        finally:
            signal.signal(signal.SIGTERM, handler)
        return code, capsys.readouterr().err

    return run


def start_held_in(tmp_path: Path, arguments: list[str], function: str) -> subprocess.Popen:
    """``lre-pl ARGUMENTS`` in a process (cwd ``tmp_path``) held inside ``function`` (``module:name`` or
    ``module:Class.name``, replaced by a stand-in that sleeps), once it is there: a run to interrupt or
    to compete with."""
    started = tmp_path / "held-started"
    module, name = function.split(":")
    program = f"""
import importlib, sys, time
from pathlib import Path

def held(*args, **kwargs):
    Path({str(started)!r}).touch()
    time.sleep(120)

owner = importlib.import_module({module!r})
*path, last = {name!r}.split(".")
for part in path:
    owner = getattr(owner, part)
setattr(owner, last, held)
from lre_pl.cli import main
main(sys.argv[1:])
"""
    process = subprocess.Popen(
        [sys.executable, "-c", program, *arguments], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not started.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.2)
    return process


def start_held_in_its_first_jacobian(tmp_path: Path, arguments: list[str]) -> subprocess.Popen:
    """``lre-pl ARGUMENTS`` held inside its first Jacobian (:func:`start_held_in`)."""
    return start_held_in(tmp_path, arguments, "lre_pl.lightning.module:compute_jacobians")
