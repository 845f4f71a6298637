import signal

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
