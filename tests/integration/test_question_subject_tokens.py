"""Question subject_tokens on the tiny sweep: its rows against an independent recomputation (per-token
autograd over full prompts, hits by hand), a one-token relation, the study's run and section."""

import dataclasses
import json
import time

import pytest
import torch
from test_beta_study import LAYER, grid, study, swept  # noqa: F401  (the tiny sweep's fixtures)
from token_reference import autograd_jacobian, delta_map

from lre_pl.dataset.prompts import encode_prompt, fill_subject
from lre_pl.experiments.beta_study.context import StudyContext
from lre_pl.experiments.beta_study.questions import REGISTRY
from lre_pl.experiments.beta_study.questions.base import figure_name
from lre_pl.experiments.beta_study.questions.per_sample_beta import FINE_BETAS
from lre_pl.experiments.beta_study.study import BetaStudyConfig, run_beta_study
from lre_pl.lre.operator import relation_readout


@pytest.fixture(scope="module")
def timed_rows(study):  # noqa: F811
    """(rows, seconds, readouts): the question's rows on the tiny bundle, its wall seconds, and every
    (projection [k, d], bias [d]) its scans read out (a random tiny LM's hits are nearly all 0, so the
    readouts themselves are compared)."""
    from lre_pl.experiments.beta_study.questions import subject_tokens

    readouts = []

    def recorded(projection, bias, beta):
        readouts.append((projection, bias))
        return relation_readout(projection, bias, beta)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subject_tokens, "relation_readout", recorded)
        start = time.perf_counter()
        rows = REGISTRY["subject_tokens"]().rows(study)
        seconds = time.perf_counter() - start
    return rows, seconds, readouts


def by_key(rows, metric="faithfulness@1"):
    return {(r["estimator"], r["beta"], r["split"]): r["value"] for r in rows if r["metric"] == metric}


def test_rows_equal_an_independent_recomputation(study, timed_rows):  # noqa: F811
    rows, seconds, readouts = timed_rows
    print(f"subject_tokens on the tiny bundle: {seconds:.1f} s")
    b, lm, i = study.bundle, study.decoder.lm, study.bundle.layer_index(LAYER)
    train = [item.prompt for item in study.train_prompts]
    test = [
        encode_prompt(lm.tokenizer, fill_subject(b.test_prompt_template, b.test_subjects[k]))
        for k in study.known.tolist()
    ]
    # W_0 is the bundle's W; W_t (t = 1, 2) the mean autograd Jacobian of the samples that have a t-th token.
    per_sample = [
        [autograd_jacobian(lm, p, LAYER, p.subject_index - t) for t in range(min(p.subject_tokens, 3))]
        for p in train
    ]
    weights = [b.weights[i]] + [
        torch.stack([sample[t][0] for sample in per_sample if len(sample) > t]).mean(0) for t in (1, 2)
    ]
    s0 = b.train_subject_states[:, i]
    bias = torch.stack([
        o - weights[0] @ s0[n] - sum(weights[t] @ per_sample[n][t][1] for t in range(1, len(per_sample[n])))
        for n, o in enumerate(b.train_output_states)
    ]).mean(0)  # fmt: skip
    projection = torch.stack([
        sum(weights[t] @ delta_map(lm, p, LAYER, p.subject_index - t)[1] for t in range(min(p.subject_tokens, 3)))
        for p in test
    ])  # fmt: skip
    close = [torch.allclose(p, projection, atol=1e-4, rtol=1e-3) and torch.allclose(o, bias, atol=1e-4, rtol=1e-3)
             for p, o in readouts]  # fmt: skip
    assert sum(close) == 2 * len(study.rule.scan_betas)  # the scans of every sample and of the 3+ group
    expected, actual = {}, by_key(rows)
    for beta in study.rule.scan_betas:
        hits = study.decoder.hits(relation_readout(projection, bias, beta), study.objects)[:, 0].float()
        for split, positions in study.splits.items():
            expected["multi_token", beta, split] = hits[positions].mean().item()
    assert {key: actual[key] for key in expected} == pytest.approx(expected, abs=1e-6)
    # The last-token LRE: the sweep's faithfulness at the same β; every tiny subject here is 3+ tokens.
    lre = {
        beta: v
        for beta, v in zip(study.rule.scan_betas, study.faithfulness_by_beta(study.rule.scan_betas, "test"))
    }
    assert {beta: actual["lre", beta, "test"] for beta in lre} == pytest.approx(lre)
    assert all(actual[f"{e}:tokens=3+", beta, s] == actual[e, beta, s] for e, beta, s in expected)
    assert not any(e.endswith(("tokens=1", "tokens=2")) for e, _, _ in actual)
    counts = {(r["split"], r["estimator"]): r["n"] for r in rows if r["metric"] == "samples"}
    assert counts == {("train", "tokens=1"): 0, ("train", "tokens=2"): 1, ("train", "tokens=3+"): 4,
                      ("all", "tokens=1"): 0, ("all", "tokens=2"): 0, ("all", "tokens=3+"): len(test)}  # fmt: skip
    # The smallest β of each sample: the first of the fine grid whose top-1 token is the LM's own answer.
    own = lm.decode(b.test_output_states[study.known]).argmax(-1)
    hits = torch.stack(
        [lm.decode(relation_readout(projection, bias, beta)).argmax(-1) == own for beta in FINE_BETAS]
    )
    first = [FINE_BETAS[column.nonzero()[0].item()] if column.any() else None for column in hits.T]
    found = [
        r["value"]
        for r in rows
        if r["metric"] == "smallest_beta" and r["estimator"] == "multi_token:tokens=3+"
    ]
    assert [None if v != v else v for v in found] == pytest.approx(first)


def test_a_relation_of_one_token_subjects_keeps_the_lre_and_warns_one_line(study, grid, timed_rows, capsys):  # noqa: F811
    context = StudyContext.of(study.bundle, grid, study.decoder, LAYER)
    context.__dict__["train_prompts"] = [  # every training subject made one token
        dataclasses.replace(
            item, prompt=dataclasses.replace(item.prompt, subject_first_index=item.prompt.subject_index)
        )
        for item in study.train_prompts
    ]
    rows = REGISTRY["subject_tokens"]().rows(context)
    assert capsys.readouterr().err == (
        "lre-pl: warning: relation 'country capital city': all 5 training subjects are one token, and the "
        "multi-token LRE (question subject_tokens) needs subjects of two or more tokens: study a relation with "
        "longer subjects; its rows hold the last-token LRE alone\n"
    )
    train_counts = {"tokens=1": 5, "tokens=2": 0, "tokens=3+": 0}
    expected = [
        r | {"value": float(train_counts[r["estimator"]]), "n": train_counts[r["estimator"]]}
        if r["metric"] == "samples" and r["split"] == "train" else r
        for r in timed_rows[0] if not r["estimator"].startswith("multi_token")
    ]  # fmt: skip
    assert rows == expected and any(r["estimator"] == "lre" for r in rows)


def test_the_study_answers_and_reports_the_question(swept, tmp_path):  # noqa: F811
    report = tmp_path / "report.md"
    [out] = run_beta_study(
        BetaStudyConfig(sweep_dirs=[str(swept)], output_dir=str(tmp_path / "study"), questions=["subject_tokens"],
                        report=str(report))
    )  # fmt: skip
    assert sorted(p.name for p in (out / "rows" / "subject_tokens").iterdir()) == [
        "characteristic_gender__trial_0.jsonl",
        "country_capital_city__trial_0.jsonl",
    ]
    text = report.read_text()
    assert "## 15. The subject spread over several tokens" in text
    assert "| multi_token:tokens=3+ | 2 |" in text and "| lre:tokens=3+ | 2 |" in text  # both relations
    assert (
        "| lre | – [0/0] | – [0/0] | 0.00 [44/44] | 0.00 [44/44] |" in text
    )  # a random LM's answer: b alone
    # No one-token subject in the tiny sweep, so no smallest-β difference, and 2 relations are too few for an
    # interval of the other: inconclusive.
    assert "**Verdict.** inconclusive: median smallest β " in text and "vs nan (0 one-token samples)" in text
    assert "smallest β, 2+-token − one-token subjects – (no bundle has both values)" in text
    assert (
        "LRE − multi-token LRE " in text
        and "[2 relations: too few for an interval] (2 relations, 2 bundles)" in text
    )
    model = json.loads((swept / "sweep_config.json").read_text())["model"]
    assert (report.parent / figure_name(model, "subject_tokens")).stat().st_size > 0
