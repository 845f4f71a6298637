"""The distracted prompts of the attribute lens's experiment: their text, the subject the lens reads,
the wrong object's draw, and the templates' checks."""

import dataclasses

import pytest

from lre_pl.dataset.relations import RelationSample, load_relation
from lre_pl.errors import InputError
from lre_pl.experiments.attribute_lens.distracted import check_template, choose_distractor, distracted_prompt
from lre_pl.experiments.attribute_lens.report import lens_figure, summary_table
from lre_pl.protocol.rows import make_row


def test_a_distracted_prompt_states_the_false_object_and_ends_with_the_query():
    prompt = distracted_prompt("{false}. {false}. {query}", "The capital of {} is", "France", "Rome", "<s>")
    assert (
        prompt.text
        == "<s>The capital of France is Rome. The capital of France is Rome. The capital of France is"
    )
    assert prompt.text[prompt.subject_start : prompt.subject_end] == "France"
    assert prompt.subject_start == prompt.text.rindex("France")  # the query's subject, not the statements'


def test_subjects_and_objects_are_data_not_format_strings():
    prompt = distracted_prompt("Say {false}. {query}", "Where is {}?", "a {query} b", "x {false}")
    assert prompt.text == "Say Where is a {query} b? x {false}. Where is a {query} b?"
    assert prompt.text[prompt.subject_start : prompt.subject_end] == "a {query} b"
    assert prompt.subject_start == len("Say Where is a {query} b? x {false}. Where is ")


def test_the_wrong_object_is_another_samples_with_another_first_letter_and_seeded():
    relation = load_relation("country capital city")
    objects = {sample.object for sample in relation.samples}
    for sample in relation.samples[:20]:
        distractor = choose_distractor(relation, sample.subject, sample.object, seed=0)
        assert distractor in objects
        assert distractor[0].lower() != sample.object[0].lower()
        assert distractor == choose_distractor(relation, sample.subject, sample.object, seed=0)
    draws = {choose_distractor(relation, "France", "Paris", seed) for seed in range(10)}
    assert len(draws) > 1  # the seed matters


def test_a_relation_with_no_distracting_object_is_one_line():
    relation = load_relation("country capital city")
    same = dataclasses.replace(relation, samples=(RelationSample("A", "Paris"), RelationSample("B", "Pisa")))
    with pytest.raises(InputError, match="no object that could distract from 'Paris'"):
        choose_distractor(same, "A", "Paris", 0)


@pytest.mark.parametrize("template", ["{false}.", "{query} {false}", "{query} {query}"])
def test_a_template_must_end_with_one_query(template):
    with pytest.raises(InputError, match="must end with \\{query\\} and hold it once"):
        check_template("mine", template)


def rows_of(values):
    """Hand-made rows: {(relation, kind, reader, target): value}."""
    return [
        make_row(model="m", relation=relation, category="factual", trial=0, kind=f"attribute_lens:{kind}",
                 selection="dev", estimator=reader, layer=3, beta=1.5, split="all",
                 metric=f"recall@1 {target}", value=value, n=10)
        for (relation, kind, reader, target), value in values.items()
    ]  # fmt: skip


def test_the_summary_averages_relations_alike_and_the_figure_has_a_bar_per_relation_and_reader():
    values = {}
    for relation, lm, lens in (("a", 1.0, 0.5), ("b", 0.0, 0.25)):
        for kind in ("undistracted", "repetition"):
            for reader in ("lm", "lre", "logit_lens"):
                for target in ("object", "distractor"):
                    values[relation, kind, reader, target] = {"lm": lm, "lre": lens, "logit_lens": 0.0}[
                        reader
                    ] * (1 if target == "object" else 0.5)
    rows = rows_of(values)
    table = summary_table(rows).splitlines()
    assert table[0].startswith("| prompt | relations | samples | LM: o | LM: o′ | attribute lens: o")
    assert table[2] == "| undistracted | 2 | 20 | 0.50 | 0.25 | 0.38 | 0.19 | 0.00 |"
    assert table[3].startswith("| repetition | 2 | 20 |")
    figure = lens_figure(rows, "m")
    assert len(figure.axes) == 2  # one panel per prompt kind
    bars = figure.axes[0].patches
    assert len(bars) == 2 * 4  # relations x (LM o, LM o′, lens o, logit lens o)
    assert [bar.get_height() for bar in bars[:2]] == [1.0, 0.0]  # LM: o of a, then of b
    assert [t.get_text() for t in figure.axes[-1].get_xticklabels()] == ["a", "b"]


def test_relations_read_at_emb_are_also_left_out_of_a_second_summary():
    from lre_pl.experiments.attribute_lens.report import model_section

    values = {
        (relation, kind, reader, target): value
        for relation, value in (("a", 1.0), ("b", 0.0))
        for kind in ("undistracted", "repetition")
        for reader in ("lm", "lre", "logit_lens")
        for target in ("object", "distractor")
    }
    rows = rows_of(values)
    for row in rows:
        row["layer"] = "emb" if row["relation"] == "a" else "3"
    text = "\n".join(model_section(rows, "m", [], 0))
    heading = "### By prompt kind, the relations read at a block (not at emb)"
    assert heading in text
    block_table = text.split(heading)[1].split("###")[0]
    assert "| undistracted | 1 | 10 | 0.00 | 0.00 | 0.00 | 0.00 | 0.00 |" in block_table  # b alone
    assert "| undistracted | 2 | 20 | 0.50 |" in text.split(heading)[0]
    rows = [row for row in rows if row["relation"] == "b"]
    assert heading not in "\n".join(model_section(rows, "m", [], 0))  # nothing read at emb: no second table
