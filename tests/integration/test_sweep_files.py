"""A sweep's files against what goes wrong with files (issue 14, "found when tried as a new user
would"): refused settings write nothing, an unusable folder fails before the model loads, damaged
files are redone (and an error's advice, followed, works), one sweep at a time per folder, a full
disk, signals, and a β study of an unfinished sweep."""

import errno
import json
import os
import re
import shutil
import signal
import time
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import start_held_in_its_first_jacobian
from test_sweep import tiny_config

from lre_pl.errors import InputError
from lre_pl.experiments.beta_study.study import BetaStudyConfig, run_beta_study
from lre_pl.experiments.sweep.runner import Sweep
from lre_pl.lre.bundle import Bundle
from lre_pl.protocol.rows import read_rows

RELATION = "country capital city"
#: The settings of every sweep here: one relation, a small grid (the tiny model has 3 blocks).
SMALL = dict(relations=[RELATION], betas=[1.0, 2.0], ranks=[4], comparison_edits=False, estimators=["lre"])


def small_config(model_dir: str, folder: Path, **overrides):
    return tiny_config(model_dir, folder, **{"trials": [0, 1], **SMALL, **overrides})


def cli_arguments(model_dir: str, folder: Path) -> list[str]:
    """``lre-pl sweep`` arguments of :func:`small_config` with trial 0 only."""
    return [
        "sweep", "--model", model_dir, "--relations", json.dumps([RELATION]), "--trials", "[0]",
        "--layers", "[1, 2]", "--betas", "[1.0, 2.0]", "--ranks", "[4]", "--comparison_edits", "false",
        "--estimators", "[lre]", "--known_only", "false", "--batch_size", "4", "--chunk_size", "11",
        "--trainer", json.dumps({"accelerator": "cpu", "enable_progress_bar": False}), "--output_dir", str(folder),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    """A finished sweep (one relation, trials 0 and 1); tests damage copies of it."""
    folder = tmp_path_factory.mktemp("finished")
    Sweep(small_config(tiny_model_dir, folder), command="lre-pl sweep (test)").run()
    return folder


@pytest.fixture
def copy(finished, tmp_path):
    return Path(shutil.copytree(finished, tmp_path / "sweep"))


@pytest.fixture
def counted(monkeypatch):
    """Sweep.estimate and Sweep.evaluate, counted: {name: [(relation, seed), ...]}."""
    calls = {"estimate": [], "evaluate": []}
    for name in calls:
        original = getattr(Sweep, name)

        def counting(self, relation, seed, name=name, original=original):
            calls[name].append((relation, seed))
            return original(self, relation, seed)

        monkeypatch.setattr(Sweep, name, counting)
    return calls


def without_timings(rows: list[dict]) -> list[dict]:
    return [row for row in rows if row["kind"] != "timing"]


def no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the input was checked")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--n_train", "100"],
            "n_train=100 must be between 1 and 23: relation 'country capital city' has 24 samples",
        ),
        (["--trials", "[-1]"], "trials=[-1]: every seed must be between 0 and 4294967295, e.g. [0, 1, 2]"),
        (["--layer_search_beta", "-1"], "layer_search_beta=-1.0 must be non-negative, like every beta"),
    ],
)
def test_a_refused_setting_writes_nothing(run_cli, tiny_model_dir, tmp_path, monkeypatch, arguments, message):  # noqa: F811
    """Refused before anything is written: the corrected command then runs into the same folder."""
    import lre_pl.experiments.sweep.runner

    monkeypatch.setattr(lre_pl.experiments.sweep.runner, "load_language_model", no_model)
    code, stderr = run_cli(*cli_arguments(tiny_model_dir, tmp_path / "o"), *arguments)
    assert (code, stderr.strip().splitlines()[-1]) == (2, f"lre-pl: error: {message}")
    assert "Traceback" not in stderr and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("output_dir", "reason"),
    [
        ("afile", "a file, not a folder"),
        ("afile/x", "{tmp}/afile is a file"),
        ("/proc/x", "No such file or directory"),
    ],
)
def test_an_unusable_output_dir_fails_before_the_model_loads(
    run_cli,
    tiny_model_dir,
    tmp_path,
    monkeypatch,
    output_dir,
    reason,  # noqa: F811
):
    import lre_pl.experiments.sweep.runner

    monkeypatch.setattr(lre_pl.experiments.sweep.runner, "load_language_model", no_model)
    (tmp_path / "afile").write_text("a file")
    folder = output_dir if output_dir.startswith("/") else str(tmp_path / output_dir)
    code, stderr = run_cli(*cli_arguments(tiny_model_dir, folder))
    expected = (
        f"output_dir: cannot write in {folder!r} ({reason.format(tmp=tmp_path)}): give another output_dir"
    )
    assert (code, stderr.strip().splitlines()[-1]) == (2, f"lre-pl: error: {expected}")
    assert "Traceback" not in stderr and sorted(path.name for path in tmp_path.iterdir()) == ["afile"]


def test_a_beta_study_report_into_an_unusable_folder_fails_before_the_study(
    run_cli, copy, tmp_path, monkeypatch
):  # noqa: F811
    import lre_pl.experiments.beta_study.study

    def no_study(*args, **kwargs):
        raise AssertionError("the study ran before its report's folder was checked")

    monkeypatch.setattr(lre_pl.experiments.beta_study.study, "study_sweep", no_study)
    (tmp_path / "afile").write_text("a file")
    code, stderr = run_cli("beta-study", "--sweep_dirs", f"[{copy}]", "--report", "afile/x.md")
    expected = "lre-pl: error: report: cannot write in 'afile' (a file, not a folder): give another report"
    assert (code, stderr.strip().splitlines()[-1]) == (2, expected)
    assert not (copy / "beta_study").exists()


@pytest.mark.parametrize(
    "cut",
    [
        lambda text: text[: len(text) // 2],  # in the middle of a line: was skipped, then a JSONDecodeError
        lambda text: "".join(text.splitlines(keepends=True)[:5]),  # 5 whole lines: was accepted silently
    ],
)
def test_a_damaged_rows_file_is_evaluated_again(finished, copy, tiny_model_dir, counted, capsys, cut):
    rows = copy / "rows" / "country_capital_city__trial_1.jsonl"
    rows.write_text(cut(rows.read_text()))
    Sweep(small_config(tiny_model_dir, copy)).run()
    warning = f"lre-pl: warning: {rows} is cut short or damaged: its trial is evaluated again"
    assert warning in capsys.readouterr().err.splitlines()
    assert counted == {"estimate": [], "evaluate": [(RELATION, 1)]}
    assert without_timings(read_rows([rows])) == without_timings(
        read_rows([finished / rows.relative_to(copy)])
    )
    every_row = read_rows(sorted((copy / "rows").glob("*.jsonl")))
    assert len((copy / "results.csv").read_text().splitlines()) == 1 + len(every_row)


def test_a_truncated_bundle_is_estimated_again_though_its_rows_exist(
    finished, copy, tiny_model_dir, counted, capsys
):
    bundle = copy / "bundles" / "country_capital_city" / "trial_0.pt"
    bundle.write_bytes(bundle.read_bytes()[:-1000])
    Sweep(small_config(tiny_model_dir, copy)).run()
    err = capsys.readouterr().err.splitlines()
    damage = "cut short or damaged: File is not a zip file"
    assert f"lre-pl: warning: {bundle} is damaged ({damage}): its trial is estimated again" in err
    assert counted == {"estimate": [(RELATION, 0)], "evaluate": []}  # its rows were whole: kept
    original = Bundle.load(finished / "bundles" / "country_capital_city" / "trial_0.pt")
    torch.testing.assert_close(Bundle.load(bundle).weights, original.weights)


def flip_a_byte_of_the_largest_member(path: Path) -> str:
    """Damage a bundle where only the CRCs see it (torch.load reads it); returns the member's name."""
    with zipfile.ZipFile(path) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    offset = member.header_offset + 30 + len(member.filename.encode()) + len(member.extra)  # the local header
    data[offset + member.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return member.filename


def test_the_advice_on_a_damaged_bundle_followed_works(copy, tiny_model_dir, counted):
    """The β study finds a damaged bundle whose rows exist: deleting it and rerunning the sweep (its
    advice) estimates it again, and the study then runs."""
    bundle = copy / "bundles" / "country_capital_city" / "trial_0.pt"
    member = flip_a_byte_of_the_largest_member(bundle)
    study = BetaStudyConfig(sweep_dirs=[str(copy)], questions=["residual"])
    with pytest.raises(InputError) as raised:
        run_beta_study(study)
    assert str(raised.value) == (
        f"{str(bundle)!r} is not a readable lre_pl bundle (its {member} fails its CRC check): delete it and rerun "
        "the sweep, which estimates it again"
    )
    bundle.unlink()
    Sweep(small_config(tiny_model_dir, copy)).run()
    assert counted["estimate"] == [(RELATION, 0)]
    [out] = run_beta_study(study)
    assert sorted(path.name for path in (out / "rows" / "residual").iterdir()) == [
        "country_capital_city__trial_0.jsonl",
        "country_capital_city__trial_1.jsonl",
    ]


def test_a_damaged_sweep_config_is_one_line_and_its_advice_works(copy, tiny_model_dir):
    path = copy / "sweep_config.json"
    path.write_text(path.read_text()[:100])
    message = (
        f"{path} is damaged (JSONDecodeError): delete it and rerun the folder's last sweep command "
        "(command.txt), which writes it again"
    )
    with pytest.raises(InputError) as raised:
        Sweep(small_config(tiny_model_dir, copy))
    assert str(raised.value) == message
    with pytest.raises(InputError) as raised:
        run_beta_study(BetaStudyConfig(sweep_dirs=[str(copy)], questions=["residual"]))
    assert str(raised.value) == message
    path.unlink()
    Sweep(small_config(tiny_model_dir, copy)).run()
    assert json.loads(path.read_text())["trials"] == [0, 1]


def test_a_second_sweep_in_a_folder_is_refused_and_a_killed_ones_lock_is_taken_over(tiny_model_dir, tmp_path):
    folder = tmp_path / "sweep"
    first = start_held_in_its_first_jacobian(tmp_path, cli_arguments(tiny_model_dir, folder))
    config = small_config(tiny_model_dir, folder, trials=[0], layers=[1, 2])
    try:
        with pytest.raises(InputError) as raised:
            Sweep(config).run()
        assert str(raised.value) == (
            f"another sweep is running in {folder} (pid {first.pid}); wait for it or give another output_dir"
        )
    finally:
        first.send_signal(signal.SIGKILL)  # no handler runs: the lock file stays, as after a crash
        first.communicate(timeout=60)
    (folder / "rows").mkdir(exist_ok=True)
    (folder / "rows" / "country_capital_city__trial_0.jsonl.12345-dead.partial").write_text('{"half')
    Sweep(config).run()
    assert len(read_rows([folder / "rows" / "country_capital_city__trial_0.jsonl"])) > 0
    assert not list(folder.rglob("*.partial*"))


@pytest.mark.parametrize(("sent", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stopped_sweep_says_that_it_resumes(tiny_model_dir, tmp_path, sent, code):
    folder = tmp_path / "sweep"
    process = start_held_in_its_first_jacobian(tmp_path, cli_arguments(tiny_model_dir, folder))
    sent_at = time.monotonic()
    process.send_signal(sent)
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - sent_at < 10
    assert process.returncode == code, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == (
        f"lre-pl: error: stopped by {sent.name}; the sweep folder is kept (every whole file counts as done), "
        "and rerunning the same command resumes it"
    )
    assert "Traceback" not in stderr
    assert (folder / "sweep_config.json").exists() and not list(folder.rglob("*.partial*"))


def test_a_full_disk_ends_in_one_line_and_counts_nothing_done(run_cli, tiny_model_dir, tmp_path, monkeypatch):  # noqa: F811
    folder = tmp_path / "sweep"
    real_write_bytes = Path.write_bytes

    def full_disk_for_bundles(self, data):
        if ".pt." not in self.name:
            return real_write_bytes(self, data)
        real_write_bytes(self, bytes(data)[:1000])  # some of it made it to the disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full_disk_for_bundles)
    code, stderr = run_cli(*cli_arguments(tiny_model_dir, folder))
    bundles = folder / "bundles" / "country_capital_city"
    pattern = (
        rf"lre-pl: error: cannot write trial_0\.pt in {re.escape(str(bundles))} \(No space left on device\): it "
        r"needs (\d+ bytes|\d+\.\d MB); make room there or choose another folder, then rerun"
    )
    assert code == 2 and re.fullmatch(pattern, stderr.strip().splitlines()[-1]), stderr[-2000:]
    assert "Traceback" not in stderr
    assert (
        not list(folder.rglob("*.partial*"))
        and not list(folder.rglob("*.pt"))
        and not list(folder.rglob("*.jsonl"))
    )
    monkeypatch.setattr(Path, "write_bytes", real_write_bytes)  # space again: the same command finishes
    assert run_cli(*cli_arguments(tiny_model_dir, folder))[0] == 0
    assert (bundles / "trial_0.pt").exists() and len(list((folder / "rows").glob("*.jsonl"))) == 1


def test_a_study_of_an_unfinished_sweep_names_what_is_missing(copy, tiny_model_dir, tmp_path, capsys):
    (copy / "rows" / "country_capital_city__trial_1.jsonl").unlink()
    line = (
        f"the sweep in {copy} is unfinished: 1 of its 2 (relation, trial) pairs have no rows "
        "(country capital city trial 1)"
    )
    with pytest.raises(InputError) as raised:
        run_beta_study(BetaStudyConfig(sweep_dirs=[str(copy)], questions=["residual"]))
    assert (
        str(raised.value)
        == f"{line}: rerun its sweep to finish it, or give allow_unfinished true to study what it has"
    )
    report = tmp_path / "report.md"
    study = BetaStudyConfig(
        sweep_dirs=[str(copy)], questions=["residual"], report=str(report), allow_unfinished=True
    )
    [out] = run_beta_study(study)
    assert (
        f"lre-pl: warning: {line}; studied without them (allow_unfinished)"
        in capsys.readouterr().err.splitlines()
    )
    assert f"**Unfinished sweep**: {line}; studied without them." in report.read_text()
    assert f"**Unfinished sweep**: {line}" in (out / "beta_study.md").read_text()
    Sweep(small_config(tiny_model_dir, copy)).run()  # finished: the report says nothing of it any more
    run_beta_study(study)
    assert "Unfinished" not in report.read_text() and not (out / "sweep_unfinished.txt").exists()
