"""Cross-relation application on three synthetic bundles, against a 3 × 3 matrix computed by hand.

The stub LM's unembedding is the identity over a 9-word vocabulary (token i is dimension i) and the
states are one-hot, so every readout's top-1 token is known: see the comments at ``STATES``.
"""

import math

import numpy as np
import pytest
import torch

from lre_pl.dataset.relations import RelationSample
from lre_pl.evaluation.context import Decoder
from lre_pl.experiments.cross_relation.matrix import (
    SHARED_RECALL,
    TYPE_BEYOND_B,
    TYPE_SHARE,
    Reader,
    Subjects,
    cross_rows,
    object_vocabulary,
)
from lre_pl.experiments.cross_relation.report import (
    CrossMatrices,
    category_boundaries,
    families,
    heatmap,
    report_markdown,
    subject_groups,
    summary_lines,
)
from lre_pl.lre.bundle import Bundle

WORDS = ["Paris", "Rome", "Tokyo", "Madrid", "French", "Italian", "Spanish", "red", "yellow"]
D = len(WORDS)
CAPITAL, LANGUAGE, COLOR = "country capital city", "country language", "fruit inside color"
STATE_LAYERS = ["emb", 0, 1]


def one_hot(*indices: int) -> torch.Tensor:
    return torch.eye(D)[list(indices)]  # [n, d]


#: relation -> (category, test samples (subject, object, the LM's prediction), states at emb, 0, 1)
TESTS = {
    CAPITAL: ("factual", [("France", "Paris", " Paris"), ("Italy", "Rome", " Rome"), ("Japan", "Tokyo", " Lima")],
              [one_hot(2, 2, 2), one_hot(0, 0, 2), one_hot(0, 1, 2)]),  # Japan is not known
    LANGUAGE: ("factual", [("France", "French", " French"), ("Italy", "Italian", " Ital"), ("Spain", "Spanish", " Span")],
               [one_hot(2, 2, 2), one_hot(0, 1, 3), one_hot(0, 4, 3)]),
    COLOR: ("commonsense", [("apple", "red", " red"), ("banana", "yellow", " yellow"), ("cherry", "red", " red")],
            [one_hot(2, 2, 2), one_hot(7, 8, 7), one_hot(7, 8, 0)]),
}  # fmt: skip
#: Each relation's whole data set (a reader's objects by subject, and its object vocabulary); a subject
#: with two objects is recalled by either (Spain: Madrid, not the first).
DATA = {
    CAPITAL: [
        ("France", "Paris"),
        ("Italy", "Rome"),
        ("Japan", "Tokyo"),
        ("Spain", "Barcelona"),
        ("Spain", "Madrid"),
    ],
    LANGUAGE: [("France", "French"), ("Italy", "Italian"), ("Spain", "Spanish")],
    COLOR: [("apple", "red"), ("banana", "yellow"), ("cherry", "red")],
}
#: The readers' (layer, β, W, b): the capital city reads layer 1 as it is; the language reads layer 0,
#: W mapping Paris→French, Rome→Italian, Madrid→Spanish; the colour reads layer 1 at β 0.5 with a bias
#: towards red that outweighs 0.5 s (β 1 would let banana's yellow win).
LANGUAGE_W = torch.eye(D)[:, [4, 5, 2, 6, 4, 5, 6, 7, 8]]  # column j: where e_j goes
READERS = {
    CAPITAL: (1, 1.0, torch.eye(D), 0.1 * torch.eye(D)[0]),  # b alone: Paris (no readout changes)
    LANGUAGE: (0, 1.0, LANGUAGE_W, 0.1 * torch.eye(D)[2]),  # b alone: Tokyo, no language
    COLOR: (1, 0.5, torch.eye(D), 0.7 * torch.eye(D)[7]),
}
# The readouts' top-1 tokens, by hand (reader on the known subjects of each relation):
# capital on capital (France e0, Italy e1 at 1): Paris, Rome | on language (e0, e4, e3): Paris, French,
# Madrid | on colour (e7, e8, e0): red, yellow, Paris
# language on capital (France e0, Italy e0 at 0): French, French | on language (e0, e1, e3): French,
# Italian, Spanish | on colour (e7, e8, e7): red, yellow, red
# colour on every subject: red (0.7 at red beats 0.5 anywhere, and apple's 0.5 + 0.7 is red too)
ORDER = [CAPITAL, LANGUAGE, COLOR]
NAN = float("nan")
EXPECTED = {  # rows: the reader r; columns: r′ whose subjects, in ORDER
    TYPE_SHARE: [[1, 2 / 3, 1 / 3], [1, 1, 0], [1, 1, 1]],
    # decode(b): capital's is Paris, language's Tokyo (no language), colour's red. Capital loses its Paris
    # readouts, language loses none, colour answers only red.
    TYPE_BEYOND_B: [[1 / 2, 1 / 3, 0], [1, 1, 0], [0, 0, 0]],
    SHARED_RECALL: [[1, 2 / 3, NAN], [1 / 2, 1, NAN], [NAN, NAN, 2 / 3]],
}
COUNTS = {
    TYPE_SHARE: [[2, 3, 3]] * 3,
    TYPE_BEYOND_B: [[2, 3, 3]] * 3,
    SHARED_RECALL: [[2, 3, 0], [2, 3, 0], [0, 0, 3]],
}


class WordTokenizer:
    """Splits on spaces; a word of ``WORDS`` is its index there, any other word 100."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [WORDS.index(word) if word in WORDS else 100 for word in text.split()]}


class IdentityLM:
    """A stand-in LM for :class:`Decoder`: logits are the hidden vector itself (no norm)."""

    device, dtype = torch.device("cpu"), torch.float32
    unembedding = torch.nn.Linear(D, D, bias=False)

    def decode(self, hidden: torch.Tensor, apply_norm: bool = True) -> torch.Tensor:
        return hidden

    def token_strings(self, ids) -> list[str]:
        return [" " + WORDS[i] for i in ids]


def bundle(relation: str) -> Bundle:
    category, samples, states = TESTS[relation]
    layer, _, weight, bias = READERS[relation]
    return Bundle(
        model="stub", relation=relation, category=category, seed=0, n_train=1, layers=[layer],
        state_layers=STATE_LAYERS, weights=weight[None], biases=bias[None],
        train_subject_states=torch.zeros(0, 1, D), train_output_states=torch.zeros(0, D),
        train_biases=torch.zeros(0, 1, D), train_jacobian_states=torch.zeros(0, 1, D),
        train_object_tokens=torch.zeros(0, dtype=torch.long),
        test_subjects=[s for s, _, _ in samples], test_objects=[o for _, o, _ in samples],
        test_subject_states=torch.stack(states, dim=1),  # [m, state_layer, d]
        test_output_states=torch.zeros(len(samples), D), test_lm_predictions=[p for _, _, p in samples],
        test_prompt_template="the {} is",
    )  # fmt: skip


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    bundles = {relation: bundle(relation) for relation in ORDER}
    subjects = [Subjects.of(b, b.known.nonzero().flatten(), [0, 1]) for b in bundles.values()]
    rows = []
    for relation, b in bundles.items():
        layer, beta, _, _ = READERS[relation]
        samples = [RelationSample(s, o) for s, o in DATA[relation]]
        reader = Reader.of(b, layer, beta, WordTokenizer(), samples)
        rows += cross_rows(reader, subjects, Decoder(IdentityLM(), top_k=1), "stub")
    return rows


def test_the_object_vocabulary_is_the_first_token_after_the_test_prompt():
    samples = [
        RelationSample("France", "Paris"),
        RelationSample("Spain", "Madrid x"),
        RelationSample("Peru", "Lima"),
    ]
    assert object_vocabulary(WordTokenizer(), "the {} is", samples) == {0, 3, 100}


def test_every_pair_matches_the_matrix_computed_by_hand(rows):
    assert len(rows) == 3 * 3 * 3
    found = {(row["relation"], row["split"], row["metric"]): row for row in rows}
    for metric, expected in EXPECTED.items():
        for i, r in enumerate(ORDER):
            for j, other in enumerate(ORDER):
                row = found[r, other, metric]
                assert row["n"] == COUNTS[metric][i][j], (r, other, metric)
                value = expected[i][j]
                assert math.isnan(row["value"]) if math.isnan(value) else row["value"] == pytest.approx(value), (
                    r, other, metric, row["value"],
                )  # fmt: skip
                assert (row["kind"], row["layer"], row["beta"]) == (
                    "cross_relation", str(READERS[r][0]), READERS[r][1],
                )  # fmt: skip


def test_the_matrices_are_in_category_order_and_the_summary_states_their_means(rows):
    matrices = CrossMatrices.of(rows)
    assert matrices.relations == [COLOR, CAPITAL, LANGUAGE]  # commonsense before factual
    order = [ORDER.index(r) for r in matrices.relations]
    for metric, expected in EXPECTED.items():
        np.testing.assert_allclose(matrices.values[metric], np.array(expected)[order][:, order])
    assert category_boundaries(matrices) == [1]
    assert families(matrices, 0.3) == [[CAPITAL, LANGUAGE]]  # beyond b: 1/3 and 1 both ways; colour: 0
    assert families(matrices, 0.5) == []
    assert subject_groups(matrices) == [[CAPITAL, LANGUAGE]]
    lines = summary_lines(matrices, 0.3)
    # type: diagonal 1; off-diagonal (2/3 + 1/3 + 1 + 0 + 1 + 1) / 6; within factual (2/3 + 1) / 2;
    # across (1/3 + 0 + 1 + 1) / 4; shared: (2/3 + 1/2) / 2 against the diagonal's 1 of the same readers
    assert "on 1.00 of its own subjects" in lines[0] and "on 0.67 of other relations' subjects" in lines[0]
    assert "0.83 within a category, 0.58 across" in lines[0]
    assert (
        lines[1]
        == f"**Families** (type share beyond b at least 0.3 both ways, connected): {{{CAPITAL}, {LANGUAGE}}}."
    )
    assert "On the 2 ordered pairs of relations that share subjects (5 readouts)" in lines[2]
    assert "at 0.58 (mean over pairs), against 1.00 on its own subjects" in lines[2] and "partly" in lines[2]
    report = report_markdown(matrices, 0.5, {(CAPITAL, LANGUAGE): ["France", "Italy", "Spain"]}, [0])
    assert f"| 1 | {CAPITAL} | {LANGUAGE} | 3 | France, Italy, Spain | 0.67 | 1.00 |" in report
    assert f"| 1 | {LANGUAGE} | {CAPITAL} | 2 |  | 0.50 | 1.00 |" in report


@pytest.mark.parametrize("metric", [TYPE_SHARE, TYPE_BEYOND_B, SHARED_RECALL])
def test_a_heatmap_has_a_cell_per_pair_and_the_relations_as_labels(rows, metric):
    matrices = CrossMatrices.of(rows)
    figure = heatmap(matrices, metric)
    axes = figure.axes[0]
    cells = axes.images[0].get_array()
    assert cells.shape == (3, 3)
    np.testing.assert_array_equal(cells.mask, np.isnan(matrices.values[metric]))
    np.testing.assert_allclose(cells.filled(np.nan), matrices.values[metric])
    assert [t.get_text() for t in axes.get_xticklabels()] == [COLOR, CAPITAL, LANGUAGE]
    assert [t.get_text() for t in axes.get_yticklabels()] == [COLOR, CAPITAL, LANGUAGE]
    separators = sorted((tuple(line.get_xdata()), tuple(line.get_ydata())) for line in axes.lines)
    assert separators == [((0, 1), (0.5, 0.5)), ((0.5, 0.5), (0, 1))]  # one line between the 2 categories
    written = [text.get_text() for text in axes.texts]
    assert len(written) == int((~np.isnan(matrices.values[metric])).sum())


def test_the_bias_alone_control_by_hand(rows):
    import dataclasses

    from lre_pl.experiments.cross_relation.matrix import BIAS_KIND, bias_only_row

    decoder = Decoder(IdentityLM(), top_k=1)
    readers = {}
    for relation, bias in ((COLOR, None), (LANGUAGE, torch.eye(D)[0])):  # colour: 0.7 red; language: Paris
        layer, beta, _, _ = READERS[relation]
        b = bundle(relation)
        if bias is not None:
            b = dataclasses.replace(b, biases=bias[None])
        samples = [RelationSample(s, o) for s, o in DATA[relation]]
        readers[relation] = Reader.of(b, layer, beta, WordTokenizer(), samples)
    controls = {relation: bias_only_row(reader, decoder, "stub") for relation, reader in readers.items()}
    assert (
        controls[COLOR]["value"] == 1.0 and controls[LANGUAGE]["value"] == 0.0
    )  # red is a colour; Paris no language
    assert all(row["kind"] == BIAS_KIND and row["n"] == 1 for row in controls.values())
    matrices = CrossMatrices.of([*rows, *controls.values()])
    assert matrices.bias_only == {COLOR: 1.0, LANGUAGE: 0.0}
    line = next(line for line in summary_lines(matrices, 0.5) if line.startswith("**Bias alone.**"))
    # colour's type share off its diagonal: (1 + 1) / 2; language's: (1 + 0) / 2
    assert (
        "for 1 of 2 relations; their LREs' type share on other relations' subjects is 1.00, against 0.50"
        in line
    )
