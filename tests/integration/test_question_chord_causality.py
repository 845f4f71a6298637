"""Question 12 (causality with the chord Jacobian) on the tiny sweep: every efficacy row against edits
made by hand (W_chord from plain autograd Jacobians at the chord points, a truncated SVD, whole-prompt
forwards with the edit written in), and its verdict on hand-written rows."""

import pytest
import torch
from reference import edited_output, full_forward_map, relative_error
from test_beta_study import LAYER, grid, study, swept  # noqa: F401  (the tiny sweep's fixtures)

from lre_pl.dataset.matching import is_prefix_match
from lre_pl.evaluation.causality import edit_hits, random_targets
from lre_pl.experiments.beta_study.questions import REGISTRY
from lre_pl.lre.chord import gauss_legendre
from lre_pl.protocol.rows import make_row
from lre_pl.protocol.selection import SelectionRule


def autograd_w_chord(lm, prompts, states, nodes: int) -> torch.Tensor:
    """W_chord [d, d]: the weighted mean over ordered pairs and Gauss–Legendre nodes of J in prompt i."""
    alphas, weights = gauss_legendre(nodes)
    n, d = len(states), states.shape[-1]
    formed = torch.zeros(d, d)
    for i in range(n):
        function, _ = full_forward_map(lm, prompts[i], LAYER)
        for j in (j for j in range(n) if j != i):
            for alpha, weight in zip(alphas.tolist(), weights.tolist()):
                point = states[i] + alpha * (states[j] - states[i])
                formed += (
                    weight
                    * torch.autograd.functional.jacobian(function, point, vectorize=True)
                    / (n * (n - 1))
                )
    return formed


def truncated_pinv(weight: torch.Tensor, rank: int) -> torch.Tensor:
    """The paper's rank-r pseudo-inverse, in float64, with singular values under 1e-6 of the largest
    left out (the numerical rank caps r, as the tool's does: the tiny W is near singular)."""
    u, sigma, vh = torch.linalg.svd(weight.double())
    rank = min(rank, int((sigma > 1e-6 * sigma[0]).sum()))
    return (vh[:rank].T @ torch.diag(1 / sigma[:rank]) @ u[:, :rank].T).float()


def test_each_efficacy_row_is_the_share_of_hand_made_edits_that_name_the_target(study, monkeypatch):  # noqa: F811
    from lre_pl.experiments.beta_study.questions import chord_causality

    made = {}  # the edits the question makes: {(editor, rank): (sources, targets) -> Δs}

    def recording(lm, edits, pairs, edit_fns, *args):
        [fns] = edit_fns.values()
        made.update(fns)
        return edit_hits(lm, edits, pairs, edit_fns, *args)

    monkeypatch.setattr(chord_causality, "edit_hits", recording)
    rows = REGISTRY["chord_causality"]().rows(study)
    b, i, lm = study.bundle, study.bundle.layer_index(LAYER), study.decoder.lm
    prompts = [item.prompt for item in study.train_prompts]
    formed = autograd_w_chord(lm, prompts, b.train_subject_states[:, i], study.settings.quadrature_nodes)
    weights = {"lre": b.weights[i], "chord": formed}
    known = study.known.tolist()
    subjects, objects = [b.test_subjects[k] for k in known], study.objects
    pairs = random_targets(subjects, objects, b.seed)
    test_prompts = {  # the evaluated samples' own prompts, as the sweep encodes them
        k: p for k, p in zip(range(len(known)), _test_prompts(lm, b, known))
    }
    outputs = b.test_output_states[study.known]
    checked = 0
    sources, targets = (torch.tensor(column) for column in zip(*pairs))
    for (editor, rank), edit in made.items():  # each Δs = W⁺_r (o' − o), W the LRE's or the autograd W_chord
        if rank >= lm.hidden_size:  # the tiny W is near singular: its full inverse magnifies float32
            continue  # differences between two ways of forming W_chord (1e-6 in W, 1e-2 in Δs)
        expected = (outputs[targets] - outputs[sources]) @ truncated_pinv(weights[editor], rank).T
        assert relative_error(edit(sources, targets), expected) < 1e-4, (editor, rank)
    assert len(made) == 2 * len(study.rule.ranks) and min(study.rule.ranks) < lm.hidden_size
    for row in (row for row in rows if row["metric"] == "efficacy"):
        inverse = truncated_pinv(weights[row["estimator"]], row["rank"])
        positions = set(study.splits[row["split"]].tolist())
        hits = []
        for source, target in (pair for pair in pairs if pair[0] in positions):
            delta = inverse @ (outputs[target] - outputs[source])
            edited = edited_output(lm, test_prompts[source], LAYER, delta)
            token = lm.token_strings([lm.decode(edited).argmax().item()])[0]
            hits.append(is_prefix_match(token, objects[target]))
        assert row["n"] == len(hits)
        assert row["value"] == pytest.approx(sum(hits) / len(hits)), row
        checked += 1
    assert checked == 2 * len(study.rule.ranks) * len(study.splits)  # editors x ranks x splits
    [seconds] = [row for row in rows if row["metric"] == "forming_seconds"]
    assert seconds["value"] > 0
    # The two W differ (else the comparison says nothing) and the chord's is the autograd one.
    assert relative_error(formed, b.weights[i]) > 1e-3


def _test_prompts(lm, bundle, known):
    from lre_pl.dataset.prompts import encode_prompt, fill_subject

    return [
        encode_prompt(lm.tokenizer, fill_subject(bundle.test_prompt_template, bundle.test_subjects[k]))
        for k in known
    ]


def efficacy_rows(relation: str, editor: str, dev: dict, test: dict) -> list[dict]:
    return [
        make_row(model="m", relation=relation, category="c", trial=0, kind="chord_causality", estimator=editor,
                 layer="3", rank=rank, split=split, metric="efficacy", value=value, n=4)
        for split, values in (("dev", dev), ("test", test)) for rank, value in values.items()
    ]  # fmt: skip


def test_the_summary_reads_each_editor_at_its_dev_chosen_rank_and_the_verdict_has_margins():
    question, rule = REGISTRY["chord_causality"](), SelectionRule([1.0], 1.0, [8, 32])
    # Two kinds of relation, r1, r3, r5 (W_chord +0.5 above the LRE) and r2, r4 (+0.25): five relations, as
    # an interval needs at least five.
    first = [
        ("lre", {8: 0.5, 32: 0.5}, {8: 0.25, 32: 1.0}),  # a tie on dev: rank 8
        ("chord", {8: 0.0, 32: 1.0}, {8: 0.0, 32: 0.75}),
    ]
    second = [("lre", {8: 1.0, 32: 0.0}, {8: 0.5, 32: 0.0}), ("chord", {8: 1.0, 32: 0.0}, {8: 0.75, 32: 0.0})]
    rows = [
        row
        for i, kind in enumerate((first, second, first, second, first), 1)
        for editor, dev, test in kind
        for row in efficacy_rows(f"r{i}", editor, dev, test)
    ]
    numbers = question.summarize(rows, rule)
    assert numbers["editors"]["lre"] == {
        "chosen": pytest.approx((3 * 0.25 + 2 * 0.5) / 5),
        "ranks": [8],
        "n": 5,
        "per_rank": pytest.approx({8: (3 * 0.25 + 2 * 0.5) / 5, 32: 3 * 1.0 / 5}),
    }
    assert numbers["editors"]["chord"]["chosen"] == 0.75 and numbers["editors"]["chord"]["ranks"] == [8, 32]
    assert question.judge(numbers).word == "confirmed"
    assert question.measured(numbers) == "efficacy 0.75 (W_chord) vs 0.35 (LRE), 5 bundles"
    worse = question.summarize(
        [r | {"estimator": {"lre": "chord", "chord": "lre"}[r["estimator"]]} for r in rows], rule
    )
    assert question.judge(worse).word == "refuted"
    one, four = (question.judge(question.summarize(rows[: 8 * n], rule)) for n in (1, 4))
    assert one.word == "inconclusive" and "[1 relation: too few for an interval]" in one.why
    assert four.word == "inconclusive" and "[4 relations: too few for an interval]" in four.why
    assert "no causality ranks" in question.render(question.summarize([], rule), None)
