"""Names never become paths: every relation (and model) name maps to one safe file name, and no path of
an output folder leaves it through a symbolic link."""

import re

import pytest

from lre_pl.dataset.relations import relation_names
from lre_pl.errors import InputError
from lre_pl.protocol.folder import StudyFolder, SweepFolder, file_name, model_file_name

HOSTILE = [
    "capital/city", "capital\\city", "capital:city", "capital_city", "capital  city", " capital city",
    "..", ".", "../../../../tmp/x/PWNED", ".hidden", "a\0b", "a\nb", "a\tb", "é", "", "x" * 300, "x" * 301,
    "country capital city/", "CON", "a b__0123456789abcdef", "-rf", "-",
]  # fmt: skip
SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def test_shipped_names_keep_their_file_names_and_every_name_gets_its_own_safe_one():
    shipped = relation_names()
    assert [file_name(name) for name in shipped] == [name.replace(" ", "_") for name in shipped]
    names = [*shipped, *HOSTILE]
    mapped = [file_name(name) for name in names]
    assert len(set(mapped)) == len(names)  # injective, also on names apart only by an unsafe character
    assert mapped == [file_name(name) for name in names]  # deterministic
    for name, mapped_name in zip(names, mapped):
        assert SAFE.fullmatch(mapped_name) and len(mapped_name) <= 100, (name, mapped_name)
    assert file_name("capital/city").startswith("capital_city__") and len(file_name("x" * 300)) == 78
    assert model_file_name("HuggingFaceTB/SmolLM2-135M") == "SmolLM2-135M"
    assert model_file_name("smollm2-135m") == "smollm2-135m" and model_file_name("x/..") != ".."


@pytest.mark.parametrize("name", ["../../../../tmp/x/PWNED", "capital/city", "..", "a\\b"])
def test_a_relation_name_stays_inside_every_folder(tmp_path, name):
    sweep, study, trial = (
        SweepFolder(tmp_path),
        StudyFolder(tmp_path / "beta_study"),
        f"{file_name(name)}__trial_0",
    )
    paths = [sweep.bundle(name, 0), sweep.rows(name, 0), sweep.claim(name, 0), study.rows("where_beta", name, 0),
             study.table("per_sample_w", name, 0)]  # fmt: skip
    for path in paths:
        assert path.resolve().is_relative_to(tmp_path) and ".." not in path.parts and "\\" not in str(path), (
            path
        )
    assert paths == [
        tmp_path / "bundles" / file_name(name) / "trial_0.pt",
        tmp_path / "rows" / f"{trial}.jsonl",
        tmp_path / "claims" / trial,
        tmp_path / "beta_study" / "rows" / "where_beta" / f"{trial}.jsonl",
        tmp_path / "beta_study" / "tables" / "per_sample_w" / f"{trial}.md",
    ]
    assert sweep.relation_copy(name) == tmp_path / "relations" / f"{file_name(name)}.json"


def test_a_symbolic_link_inside_a_folder_is_refused_in_one_line(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "rows").symlink_to(elsewhere)
    (tmp_path / "sweep" / "beta_study").symlink_to(elsewhere)
    sweep = SweepFolder(tmp_path / "sweep")
    with pytest.raises(InputError) as linked:
        sweep.rows("country capital city", 0)
    assert str(linked.value) == (
        f"{tmp_path}/sweep/rows is a symbolic link (to {elsewhere}): lre-pl writes only inside {tmp_path}/sweep "
        "itself; remove the link, or replace it by a real folder or file, or give another folder"
    )
    with pytest.raises(InputError, match="beta_study is a symbolic link"):
        _ = sweep.beta_study
    assert sweep.bundle("country capital city", 0).name == "trial_0.pt"  # the rest of the folder is fine
