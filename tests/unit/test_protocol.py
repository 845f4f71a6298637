"""The protocol's shared terms on hand-written rows: no model needed."""

import math

import pytest
import torch

from lre_pl.errors import InputError
from lre_pl.protocol.folder import StudyFolder, SweepFolder, read_json
from lre_pl.protocol.markdown import markdown_table, mean_std_cell, nanmean
from lre_pl.protocol.rows import ROW_FIELDS, make_row, read_rows, rows_complete, write_rows, write_rows_csv
from lre_pl.protocol.selection import SELECTIONS, SelectionRule, first_best
from lre_pl.protocol.splits import KnownSamples, split_known

ROWS = [
    make_row(relation="r", trial=0, kind="grid", estimator="lre", layer="3", beta=1.0, split="dev", metric="m", value=0.5, n=4),
    make_row(relation="r", trial=0, kind="count", split="all", metric="known_test_samples", value=8.0, n=10),
]  # fmt: skip


def test_a_row_has_every_field_in_order_and_refuses_unknown_ones():
    assert list(ROWS[0]) == list(ROW_FIELDS) and ROWS[0]["model"] is None and ROWS[0]["beta"] == 1.0
    with pytest.raises(TypeError, match=r"unknown row fields \['betta'\]"):
        make_row(betta=1.0)


def test_rows_files_round_trip_and_a_cut_file_never_verifies(tmp_path):
    path = tmp_path / "rows" / "r__trial_0.jsonl"
    write_rows(path, ROWS)
    assert path.read_text().splitlines()[-1] == "# rows: 2" and rows_complete(path)
    assert read_rows([path, tmp_path / "absent.jsonl"]) == ROWS
    text = path.read_text()
    cuts = {
        "at a line boundary": "".join(text.splitlines(keepends=True)[:1]),
        "inside a row": text[:40],
        "inside the count": text[:-3],
        "empty": "",
        "a wrong count": text.replace("# rows: 2", "# rows: 3"),
    }
    for what, cut in cuts.items():
        path.write_text(cut)
        assert not rows_complete(path), what
        with pytest.raises(
            InputError, match="is cut short or damaged .*rerun the lre-pl sweep or beta-study that wrote it"
        ):
            read_rows([path])
    write_rows(path, [])  # a question with no rows is complete too
    assert rows_complete(path) and read_rows([path]) == []
    assert not rows_complete(tmp_path / "absent.jsonl")


def test_rows_as_csv(tmp_path):
    write_rows_csv(tmp_path / "results.csv", ROWS)
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0] == ",".join(ROW_FIELDS) and lines[1] == ",r,,0,grid,,lre,3,1.0,,dev,m,0.5,4"


def test_first_best_takes_the_first_of_ties_and_never_a_nan():
    assert first_best({"a": 0.5, "b": 0.9, "c": 0.9}, "abc") == "b"
    assert first_best({"a": 0.5, "b": 0.9, "c": 0.9}, "cba") == "c"
    assert first_best({"a": math.nan, "b": 0.1}, "ab") == "b"
    assert first_best({"a": math.nan, "b": math.nan}, "ba") == "b"  # nothing scored: the first
    assert first_best({"a": 1.0}, "ba") == "a"  # b has no score
    assert first_best({}, []) is None


def test_the_selection_rule_breaks_ties_as_the_sweep_does():
    rule = SelectionRule(betas=[2.0, 0.5, 1.0], layer_search_beta=2.25, ranks=[32, 8])
    assert rule.beta_order == [2.25, 2.0, 0.5, 1.0]  # the layer-search β, then the grid's own order
    assert rule.scan_betas == [2.0, 0.5, 1.0, 2.25]
    assert rule.beta(dict.fromkeys([0.5, 1.0, 2.0, 2.25], 0.0)) == 2.25
    assert rule.beta({0.5: 0.3, 1.0: 0.3, 2.0: 0.1}) == 0.5  # grid order, not sorted order
    assert rule.beta({0.5: 0.3, 1.0: 0.4}) == 1.0
    assert rule.layer({"emb": 0.2, 3: 0.2, 5: 0.1}, ["emb", 3, 5]) == "emb"
    assert rule.rank({8: 0.5, 32: 0.5}) == 32
    assert (
        rule.shared_beta(
            [{2.0: 0.2, 0.5: 0.6, 1.0: 0.1, 2.25: 0.2}, {2.0: 0.6, 0.5: 0.2, 1.0: 0.1, 2.25: 0.6}]
        )
        == 2.25
    )
    same = SelectionRule.of_sweep({"betas": [2.0, 0.5, 1.0], "layer_search_beta": 2.25, "ranks": [32, 8]})
    assert same.beta_order == rule.beta_order and list(same.ranks) == [32, 8]
    assert SELECTIONS == {"dev": ("dev", "test"), "paper": ("all", "all")}


def test_known_samples_are_split_and_capped_inside_their_splits():
    evaluated = torch.tensor([True, False] * 10)  # 10 of 20 samples
    samples = KnownSamples.of(evaluated, dev_fraction=0.5, seed=3)
    assert samples.indices.tolist() == list(range(0, 20, 2))
    expected = split_known(10, 0.5, 3)
    assert all(samples.splits[s].equal(expected[s]) for s in ("dev", "test", "all"))
    capped = KnownSamples.of(evaluated, 0.5, seed=3, max_known=4)  # the sweep's cap: a subset, then split
    assert len(capped) == 4 and set(capped.indices.tolist()) <= set(samples.indices.tolist())
    kept = samples.capped(6, seed=3)  # the study's cap: inside the sweep's own splits
    assert len(kept) == 6 and len(kept.splits["dev"]) == 3 and len(kept.splits["test"]) == 3
    for split in ("dev", "test"):
        original = set(samples.indices[samples.splits[split]].tolist())
        assert set(kept.indices[kept.splits[split]].tolist()) <= original
    assert samples.capped(100, seed=3) is samples


def test_markdown_tables_and_cells():
    assert markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert nanmean([1.0, math.nan, 3.0]) == 2.0 and math.isnan(nanmean([math.nan]))
    assert mean_std_cell([0.5, 0.7]) == "0.60 ± 0.14" and mean_std_cell([0.5]) == "0.50"
    assert mean_std_cell([math.nan]) == "–"


def test_the_folder_layout_names_every_file(tmp_path):
    sweep = SweepFolder(tmp_path)
    assert (
        sweep.bundle("country capital city", 2)
        == tmp_path / "bundles" / "country_capital_city" / "trial_2.pt"
    )
    assert sweep.rows("a b", 0) == tmp_path / "rows" / "a_b__trial_0.jsonl" and sweep.read_commands() == []
    study = StudyFolder(tmp_path / "study")
    assert study.rows("residual", "a b", 1) == tmp_path / "study" / "rows" / "residual" / "a_b__trial_1.jsonl"
    assert study.rows("global_beta") == tmp_path / "study" / "rows" / "global_beta.jsonl"
    assert sweep.read_config() is None  # not swept yet
    with pytest.raises(InputError, match="study_settings.json is missing: rerun"):
        read_json(study.settings, "rerun")
    sweep.config.write_text('{"model": ')
    with pytest.raises(InputError) as damaged:
        sweep.read_config()
    assert str(damaged.value) == (
        f"{sweep.config} is damaged (JSONDecodeError): delete it and rerun the folder's last sweep command "
        "(command.txt), which writes it again"
    )
