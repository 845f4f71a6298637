"""Names never become paths: custom relations named ``capital/city`` and ``../…/x/PWNED`` go through
sweep → lens → β study → cross-relation with every file under the sweep folder, and a symbolic link
inside a handed-over folder is refused in one line, before anything is written through it."""

import json
import shutil
import signal
from pathlib import Path

import pytest

from lre_pl.lre.bundle import Bundle
from lre_pl.protocol.folder import StudyFolder, SweepFolder
from lre_pl.protocol.rows import read_rows, rows_complete

RESOURCES = Path(__file__).parents[2] / "lre_pl" / "resources" / "relations"
CAPITAL = "capital/city"


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("lre-pl: error:")]


def relation_file(path: Path, shipped: str, name: str, samples: int | None = None) -> Path:
    """A shipped relation's file under another ``name`` (its first ``samples`` samples only, if given)."""
    data = json.loads((RESOURCES / shipped).read_text())
    data["name"], data["samples"] = name, data["samples"][:samples]
    path.write_text(json.dumps(data))
    return path


def sweep_arguments(model: str, folder: Path, *relations: Path) -> list[str]:
    return [
        "sweep", "--model", model, "--relations", json.dumps([str(path) for path in relations]),
        "--betas", "[0.5, 1.0]", "--ranks", "[4]", "--known_only", "false", "--batch_size", "4",
        "--estimators", "[lre]", "--comparison_edits", "false",
        "--trainer", "{accelerator: cpu, enable_progress_bar: false}", "--output_dir", str(folder),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def handed(tiny_model_dir, tmp_path_factory):
    """(base folder, sweep folder, the ``..`` name, the relation files): a sweep of both custom relations
    in ``base/sweep``, and a copy of the PWNED bundle where a name taken as a path would find it
    (``base/x/PWNED/trial_0.pt``), so that such a study would write ``base/x/PWNED__trial_0.jsonl``."""
    from lre_pl.cli import main

    base = tmp_path_factory.mktemp("names")
    pwned = "../" * 40 + str(base / "x" / "PWNED").lstrip("/")  # from any folder of base: base/x/PWNED
    files = [relation_file(base / "capital.json", "factual/country_capital_city.json", CAPITAL),
             relation_file(base / "pwned.json", "bias/characteristic_gender.json", pwned)]  # fmt: skip
    handler = signal.getsignal(signal.SIGTERM)
    try:
        main(sweep_arguments(tiny_model_dir, base / "sweep", *files))
    finally:
        signal.signal(signal.SIGTERM, handler)
    [bundle] = [
        path for path in (base / "sweep" / "bundles").rglob("*.pt") if Bundle.load(path).relation == pwned
    ]
    (base / "x" / "PWNED").mkdir(parents=True)
    shutil.copy(bundle, base / "x" / "PWNED" / "trial_0.pt")
    return base, base / "sweep", pwned, files


def outside(base: Path, sweep: Path) -> list[Path]:
    """The files of ``base`` that are not under the sweep folder."""
    return sorted(
        path.relative_to(base) for path in base.rglob("*") if path.is_file() and sweep not in path.parents
    )


OUTSIDE = [Path("capital.json"), Path("pwned.json"), Path("x/PWNED/trial_0.pt")]


def test_the_sweep_names_its_files_by_the_relations_names_and_keeps_their_files(handed):
    base, sweep, pwned, files = handed
    folder = SweepFolder(sweep)
    for name, file in zip((CAPITAL, pwned), files):
        assert Bundle.load(folder.bundle(name, 0)).relation == name
        assert rows_complete(folder.rows(name, 0)) and {
            row["relation"] for row in read_rows([folder.rows(name, 0)])
        } == {name}
        assert (
            folder.relation_copy(name).read_bytes() == file.read_bytes()
            and folder.relation(name).name == name
        )
    assert outside(base, sweep) == OUTSIDE


def test_lens_finds_the_bundle_of_a_relation_named_with_a_slash(handed, run_cli, tmp_path):
    _, sweep, _, _ = handed
    code, err = run_cli("lens", "--operators", str(sweep), "--relation", CAPITAL, "--prompt", "Paris is in",
                        "--output_dir", "out")  # fmt: skip
    assert (code, errors(err)) == (0, [])
    assert (tmp_path / "out" / "lens_0.png").stat().st_size > 0


def test_the_beta_study_writes_nothing_outside_the_sweep_folder(handed, run_cli):
    base, sweep, pwned, _ = handed
    code, err = run_cli(
        "beta-study", "--sweep_dirs", f"[{sweep}]", "--questions", "[where_beta, bias_variants]"
    )
    assert outside(base, sweep) == OUTSIDE  # the PWNED__trial_0.jsonl is not in base/x
    assert (code, errors(err)) == (0, [])
    study = StudyFolder(sweep / "beta_study")
    for name in (CAPITAL, pwned):
        for question in ("where_beta", "bias_variants"):
            assert read_rows([study.rows(question, name, 0)]), (question, name)
    assert study.report.stat().st_size > 0


def test_cross_relation_reads_both_custom_relations(handed, run_cli):
    base, sweep, pwned, _ = handed
    code, err = run_cli("cross-relation", "--sweep_dir", str(sweep))
    assert outside(base, sweep) == OUTSIDE
    assert (code, errors(err)) == (0, [])
    rows = read_rows([sweep / "cross_relation" / "rows.jsonl"])
    assert {(row["relation"], row["split"]) for row in rows if row["split"]} == {
        (r, other) for r in (CAPITAL, pwned) for other in (CAPITAL, pwned)
    }


def handed_copy(sweep: Path, tmp_path: Path) -> Path:
    """A copy of the sweep folder alone (no study folders beside it, no lock file)."""
    ignore = shutil.ignore_patterns("beta_study", "cross_relation", "attribute_lens", ".lock")
    return Path(shutil.copytree(sweep, tmp_path / "handed", ignore=ignore))


@pytest.mark.parametrize(
    ("link", "command"),
    [
        ("beta_study", ["beta-study", "--sweep_dirs", "[{sweep}]", "--questions", "[where_beta]"]),
        ("cross_relation", ["cross-relation", "--sweep_dir", "{sweep}"]),
        ("attribute_lens", ["distracted-lens", "--sweep_dirs", "[{sweep}]", "--relations", f"[{CAPITAL}]"]),
    ],
)
def test_a_linked_study_folder_in_a_handed_over_sweep_is_refused(handed, run_cli, tmp_path, link, command):
    copy, elsewhere = handed_copy(handed[1], tmp_path), tmp_path / "elsewhere"
    elsewhere.mkdir()
    (copy / link).symlink_to(elsewhere)
    code, err = run_cli(*(part.format(sweep=copy) for part in command))
    assert (code, errors(err)) == (2, [
        f"lre-pl: error: {copy / link} is a symbolic link (to {elsewhere}): lre-pl writes only inside {copy} "
        "itself; remove the link, or replace it by a real folder or file, or give another folder"
    ])  # fmt: skip
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("link", ["rows", "bundles", ".lock"])
def test_a_sweep_into_a_folder_with_a_link_is_refused_and_writes_nothing_through_it(
    handed, run_cli, tmp_path, tiny_model_dir, link
):
    base, sweep, _, files = handed
    copy, victim = handed_copy(sweep, tmp_path), tmp_path / "victim"
    victim.mkdir() if link != ".lock" else victim.write_text("precious\n")
    if link != ".lock":
        shutil.rmtree(copy / link)
    (copy / link).symlink_to(victim)
    code, err = run_cli(*sweep_arguments(tiny_model_dir, copy, *files))
    assert errors(err) == [
        f"lre-pl: error: {copy / link} is a symbolic link (to {victim}): lre-pl writes only inside {copy} "
        "itself; remove the link, or replace it by a real folder or file, or give another folder"
    ]
    assert code == 2 and (
        victim.read_text() == "precious\n" if link == ".lock" else list(victim.iterdir()) == []
    )


def test_a_relation_name_is_one_relation_in_a_sweep_folder(handed, run_cli, tmp_path, tiny_model_dir):
    base, sweep, _, files = handed
    other = relation_file(tmp_path / "other.json", "factual/country_capital_city.json", CAPITAL, samples=12)
    code, err = run_cli(*sweep_arguments(tiny_model_dir, handed_copy(sweep, tmp_path), other))
    assert code == 2 and errors(err) == [
        f"lre-pl: error: relation {CAPITAL!r} was swept in {tmp_path / 'handed'} from another file "
        f"({SweepFolder(tmp_path / 'handed').relation_copy(CAPITAL)} differs from {other}): give that file "
        "again, rename the relation, or give a new output_dir"
    ]
    code, err = run_cli(*sweep_arguments(tiny_model_dir, tmp_path / "new", files[0], other))
    assert code == 2 and errors(err) == [
        f"lre-pl: error: relations {str(files[0])!r} and {str(other)!r} are both named {CAPITAL!r}: give one of "
        "them, or rename one"
    ]
    assert not (tmp_path / "new").exists()
