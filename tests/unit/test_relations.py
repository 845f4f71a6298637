"""Unit tests for lre_pl.dataset.relations: the shipped dataset, the loader's validation, and reference hparams."""

from __future__ import annotations

import collections
import json
from importlib.resources import files
from pathlib import Path

import pytest

from lre_pl.dataset.relations import (
    Relation,
    RelationDataError,
    RelationSample,
    list_relations,
    load_relation,
    reference_hparams,
    relation_names,
)

RELATIONS_DIR = Path(str(files("lre_pl") / "resources" / "relations"))
HPARAMS_DIR = Path(str(files("lre_pl") / "resources" / "reference_hparams"))


def _raw_relation_files() -> list[Path]:
    return sorted(RELATIONS_DIR.glob("*/*.json"))


def _write(tmp_path: Path, data: object, name: str = "rel.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _valid(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "my relation",
        "prompt_templates": ["{} is related to"],
        "prompt_templates_zs": ["What is {} related to? It is"],
        "properties": {
            "relation_type": "factual",
            "domain_name": "thing",
            "range_name": "other thing",
            "symmetric": True,
        },
        "samples": [{"subject": "a", "object": "b"}, {"subject": "c", "object": "d"}],
    }
    data.update(overrides)
    return data


def _assert_error(path_or_name: str | Path, match: str) -> str:
    with pytest.raises(RelationDataError, match=match) as info:
        load_relation(path_or_name)
    message = str(info.value)
    assert "\n" not in message
    assert len(message.splitlines()) == 1
    return message


# --------------------------------------------------------------------------- shipped data


def test_shipped_files_and_licenses_present() -> None:
    assert len(_raw_relation_files()) == 47
    assert (RELATIONS_DIR / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    assert (HPARAMS_DIR / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    assert sorted(p.name for p in HPARAMS_DIR.iterdir() if p.is_dir()) == ["gpt2-xl", "gptj", "llama"]
    assert len(list((HPARAMS_DIR / "gptj").glob("*.json"))) == 47
    assert len(list((HPARAMS_DIR / "gpt2-xl").glob("*.json"))) == 46
    assert len(list((HPARAMS_DIR / "llama").glob("*.json"))) == 45
    notice = (RELATIONS_DIR.parent / "NOTICE.md").read_text(encoding="utf-8")
    assert "github.com/evandez/relations" in notice
    assert "Copyright (c) 2022 Evan Hernandez" in notice


def test_relation_names_47_sorted() -> None:
    names = relation_names()
    assert len(names) == 47
    assert names == sorted(names)
    assert len(set(names)) == 47
    assert names[0] == "adjective antonym"
    assert names[-1] == "work location"
    assert "country capital city" in names
    raw_names = sorted(json.loads(p.read_text(encoding="utf-8"))["name"] for p in _raw_relation_files())
    assert names == raw_names


def test_sample_counts_raw_and_deduplicated() -> None:
    raw_total = sum(len(json.loads(p.read_text(encoding="utf-8"))["samples"]) for p in _raw_relation_files())
    assert raw_total == 11089
    rows = list_relations()
    dedup_total = sum(n for _, _, n in rows)
    assert dedup_total <= raw_total
    assert dedup_total == 11049
    assert dedup_total == sum(len(load_relation(name).samples) for name in relation_names())


def test_category_counts() -> None:
    rows = list_relations()
    assert len(rows) == 47
    counts = collections.Counter(category for _, category, _ in rows)
    assert counts == {"factual": 26, "linguistic": 6, "bias": 7, "commonsense": 8}
    assert rows == sorted(rows, key=lambda row: (row[1], row[0]))
    for category, expected in counts.items():
        subset = list_relations(category)
        assert len(subset) == expected
        assert all(row[1] == category for row in subset)
    assert list_relations("BIAS") == list_relations("bias")
    # Each shipped file sits in the folder of its category.
    for name in relation_names():
        relation = load_relation(name)
        assert Path(relation.source).parent.name == relation.category


def test_list_relations_unknown_category() -> None:
    with pytest.raises(
        RelationDataError, match=r"unknown relation category 'history'; use one of bias"
    ) as info:
        list_relations("history")
    assert "\n" not in str(info.value)


def test_country_capital_city() -> None:
    relation = load_relation("country capital city")
    assert isinstance(relation, Relation)
    assert relation.name == "country capital city"
    assert relation.category == "factual"
    assert relation.domain_name == "country"
    assert relation.range_name == "city"
    assert relation.symmetric is False
    assert relation.prompt_templates == ("The capital city of {} is", "The capital of {} is")
    assert relation.prompt_templates_zs == (
        "The capital of {} is the city of",
        "What is the capital of {}? It is the city of",
    )
    assert len(relation.samples) == 24
    assert relation.samples[0] == RelationSample(subject="United States", object="Washington D.C.")
    assert RelationSample(subject="Brazil", object="Bras\u00edlia") in relation.samples
    assert "Brasília" in [s.object for s in relation.samples]
    assert not any("\\u" in s.object or "\\u" in s.subject for s in relation.samples)
    assert Path(relation.source) == RELATIONS_DIR / "factual" / "country_capital_city.json"


def test_name_normalisation_variants() -> None:
    expected = load_relation("country capital city")
    for variant in (
        "Country Capital City",
        "COUNTRY_CAPITAL_CITY",
        "country_capital_city",
        "country-capital-city",
        "  country  capital_city ",
        "Country-Capital_City",
    ):
        assert load_relation(variant) == expected
    # File stems that differ from the JSON name resolve to the same relation.
    assert load_relation("adj_antonym") == load_relation("adjective antonym")
    assert load_relation("adj_antonym").name == "adjective antonym"
    assert load_relation("degree_gender").name == "univ degree gender"


def test_shipped_relations_are_clean() -> None:
    for name in relation_names():
        relation = load_relation(name)
        assert relation.samples
        pairs = [(s.subject, s.object) for s in relation.samples]
        assert len(pairs) == len(set(pairs))
        assert all(s.subject == s.subject.strip() and s.object == s.object.strip() for s in relation.samples)
        assert all(t.count("{}") == 1 for t in relation.prompt_templates + relation.prompt_templates_zs)
    # "Jimmy Carter " (trailing space in the raw file) is stripped.
    subjects = [s.subject for s in load_relation("president election year").samples]
    assert "Jimmy Carter" in subjects
    assert "Jimmy Carter " not in subjects


def test_dedup_counts_of_shipped_files() -> None:
    counts = {name: n for name, _, n in list_relations()}
    raw = {
        json.loads(p.read_text(encoding="utf-8"))["name"]: len(
            json.loads(p.read_text(encoding="utf-8"))["samples"]
        )
        for p in _raw_relation_files()
    }
    assert raw["product by company"] - counts["product by company"] == 20
    assert raw["adjective comparative"] - counts["adjective comparative"] == 11
    assert raw["country capital city"] == counts["country capital city"] == 24


# --------------------------------------------------------------------------- user files


def test_user_file_loads(tmp_path: Path) -> None:
    path = _write(tmp_path, _valid())
    relation = load_relation(str(path))
    assert relation == Relation(
        name="my relation",
        category="factual",
        prompt_templates=("{} is related to",),
        prompt_templates_zs=("What is {} related to? It is",),
        domain_name="thing",
        range_name="other thing",
        symmetric=True,
        samples=(RelationSample("a", "b"), RelationSample("c", "d")),
        source=str(path),
    )
    assert load_relation(path) == relation


def test_user_file_without_properties(tmp_path: Path) -> None:
    data = _valid()
    del data["properties"]
    del data["prompt_templates_zs"]
    relation = load_relation(str(_write(tmp_path, data)))
    assert relation.category == "unknown"
    assert relation.domain_name == ""
    assert relation.range_name == ""
    assert relation.symmetric is False
    assert relation.prompt_templates_zs == ()


def test_user_file_duplicates_dropped(tmp_path: Path) -> None:
    samples = [
        {"subject": "France", "object": "Paris"},
        {"subject": "Spain", "object": "Madrid"},
        {"subject": "France", "object": "Paris"},
        {"subject": " France ", "object": "Paris  "},
        {"subject": "France", "object": "Lyon"},
        {"subject": "Spain", "object": "Madrid"},
    ]
    relation = load_relation(str(_write(tmp_path, _valid(samples=samples))))
    assert relation.samples == (
        RelationSample("France", "Paris"),
        RelationSample("Spain", "Madrid"),
        RelationSample("France", "Lyon"),
    )


def test_user_file_double_escaped_unicode_repaired(tmp_path: Path) -> None:
    # Written by hand so the file holds a literal backslash-u sequence inside the JSON string.
    text = (
        '{"name": "caf\\\\u00e9 relation", "prompt_templates": ["Where is {} in S\\\\u00e3o Paulo?"],'
        ' "samples": [{"subject": "Bras\\\\u00edlia", "object": "Cura\\\\u00e7ao"},'
        ' {"subject": "smile \\\\ud83d\\\\ude00", "object": "\\\\U0001F600 \\\\x41"},'
        ' {"subject": "back\\\\slash", "object": "C:\\\\new"}]}'
    )
    path = tmp_path / "escaped.json"
    path.write_text(text, encoding="utf-8")
    assert json.loads(text)["samples"][0]["subject"] == "Bras\\u00edlia"
    relation = load_relation(str(path))
    assert relation.name == "café relation"
    assert relation.prompt_templates == ("Where is {} in São Paulo?",)
    assert relation.samples == (
        RelationSample("Brasília", "Curaçao"),
        RelationSample("smile \U0001f600", "\U0001f600 A"),
        RelationSample("back\\slash", "C:\\new"),
    )


def test_existing_path_without_json_suffix(tmp_path: Path) -> None:
    path = _write(tmp_path, _valid(), name="relation.txt")
    assert load_relation(str(path)).name == "my relation"


# --------------------------------------------------------------------------- errors


def test_error_unknown_relation_suggests() -> None:
    message = _assert_error("country capitol", r"unknown relation 'country capitol'")
    assert "did you mean 'country capital city'" in message
    assert "`lre-pl relations`" in message


def test_error_unknown_relation_without_match() -> None:
    message = _assert_error("zzzzqqq", r"unknown relation 'zzzzqqq'.*run `lre-pl relations` to list them all")
    assert "did you mean" not in message


def test_error_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "name": "x",\n  "samples": [\n}', encoding="utf-8")
    message = _assert_error(str(path), r"malformed JSON at line 4 column 1")
    assert message.startswith(str(path))


def test_error_top_level_not_object(tmp_path: Path) -> None:
    path = _write(tmp_path, [1, 2, 3])
    _assert_error(str(path), r"top level must be a JSON object, got list")


@pytest.mark.parametrize("field", ["name", "prompt_templates", "samples"])
def test_error_missing_field(tmp_path: Path, field: str) -> None:
    data = _valid()
    del data[field]
    path = _write(tmp_path, data)
    message = _assert_error(str(path), rf"field '{field}' is missing")
    assert message.startswith(f"{path}: ")


def test_error_bad_template(tmp_path: Path) -> None:
    path = _write(tmp_path, _valid(prompt_templates=["{} is", "no placeholder here"]))
    message = _assert_error(
        str(path), r"field 'prompt_templates\[1\]' = 'no placeholder here' contains 0 '\{\}' placeholders"
    )
    assert message.startswith(str(path))
    path = _write(tmp_path, _valid(prompt_templates_zs=["{} and {}"]), name="two.json")
    _assert_error(str(path), r"field 'prompt_templates_zs\[0\]' = '\{\} and \{\}' contains 2 '\{\}'")


def test_error_sample_missing_object(tmp_path: Path) -> None:
    samples = [{"subject": "a", "object": "b"}, {"subject": "c"}]
    path = _write(tmp_path, _valid(samples=samples))
    message = _assert_error(str(path), r"field 'samples\[1\]\.object' is missing")
    assert message.startswith(str(path))


def test_error_sample_not_string(tmp_path: Path) -> None:
    path = _write(tmp_path, _valid(samples=[{"subject": 3, "object": "b"}]))
    _assert_error(str(path), r"field 'samples\[0\]\.subject' must be a string, got int")


def test_error_empty_string(tmp_path: Path) -> None:
    path = _write(tmp_path, _valid(samples=[{"subject": "a", "object": "   "}]))
    _assert_error(str(path), r"field 'samples\[0\]\.object' is an empty string")


def test_error_empty_samples(tmp_path: Path) -> None:
    path = _write(tmp_path, _valid(samples=[]))
    message = _assert_error(str(path), r"field 'samples' is empty")
    assert message.startswith(str(path))


def test_error_relation_type_not_string(tmp_path: Path) -> None:
    path = _write(tmp_path, _valid(properties={"relation_type": 5}))
    _assert_error(str(path), r"field 'properties\.relation_type' must be a string, got int")


def test_error_nonexistent_path(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "nope.json"
    message = _assert_error(str(path), r"relation file not found")
    assert message.startswith(str(path))


# --------------------------------------------------------------------------- reference hparams


def test_reference_hparams_gptj_country_capital_city() -> None:
    raw = json.loads((HPARAMS_DIR / "gptj" / "country_capital_city.json").read_text(encoding="utf-8"))
    assert raw["h_layer"] == 10
    assert raw["beta"] == 2.25
    hparams = reference_hparams("gptj", "country capital city")
    assert hparams == raw
    assert hparams["h_layer"] == 10
    assert hparams["beta"] == 2.25
    assert hparams["rank"] == 68
    assert hparams["model_name"] == "gptj"
    assert hparams["relation_name"] == "country capital city"
    assert reference_hparams("GPTJ", "Country_Capital_City") == raw
    # A fresh dict each time: mutating it does not leak into later calls.
    hparams["h_layer"] = 99
    assert reference_hparams("gptj", "country capital city")["h_layer"] == 10


def test_reference_hparams_matches_on_relation_name() -> None:
    # The hparams file is univ_degree_gender.json, the relation file degree_gender.json.
    assert reference_hparams("gptj", "univ degree gender")["relation_name"] == "univ degree gender"
    assert reference_hparams("llama", "degree_gender")["relation_name"] == "univ degree gender"
    assert reference_hparams("llama", "country capital city")["h_layer"] == 8
    available = {
        model: sum(1 for name in relation_names() if _has_hparams(model, name))
        for model in ("gptj", "gpt2-xl", "llama")
    }
    assert available == {"gptj": 47, "gpt2-xl": 46, "llama": 45}


def _has_hparams(model: str, name: str) -> bool:
    try:
        reference_hparams(model, name)
    except RelationDataError:
        return False
    return True


def test_reference_hparams_unknown_model() -> None:
    with pytest.raises(RelationDataError, match=r"model 'gpt3'; use one of gptj, gpt2-xl, llama") as info:
        reference_hparams("gpt3", "country capital city")
    assert "\n" not in str(info.value)


def test_reference_hparams_missing_for_model() -> None:
    with pytest.raises(
        RelationDataError,
        match=r"no reference hparams for relation 'president birth year' with model 'llama'",
    ) as info:
        reference_hparams("llama", "president birth year")
    assert "45 of 47" in str(info.value)
    assert "\n" not in str(info.value)
