"""The multi-token LRE's W_t, b and earlier-token states against plain autograd over the full prompt (no
cache, no batching, no engine), on a tiny Llama whose tokenizer splits subjects into several tokens."""

import dataclasses

import pytest
import torch
from token_reference import autograd_jacobian, delta_map

from lre_pl.dataset.relations import load_relation
from lre_pl.errors import InputError
from lre_pl.experiments.beta_study.questions.subject_tokens import (
    TOKENS,
    at_token,
    earlier_states,
    fit_multi_token_lre,
    token_group,
    token_presence,
)
from lre_pl.lightning.datamodule import RelationPrompts
from lre_pl.lm.jacobian import compute_jacobians

LAYER = 1


@pytest.fixture(scope="module")
def prompts(llama):
    return RelationPrompts.build(load_relation("adjective antonym"), llama, 5, 0)


def test_the_tiny_tokenizer_gives_subjects_of_every_token_group(prompts):
    counts = [item.prompt.subject_tokens for item in prompts.train]
    assert {token_group(c) for c in counts} == {"2", "3+"} and min(counts) >= 2
    assert {token_group(p.subject_tokens) for p in prompts.test_prompts} == {"1", "2", "3+"}


def test_the_engine_at_an_earlier_subject_token_is_the_partial_jacobian(llama, prompts):
    prompt = next(item.prompt for item in prompts.train if item.prompt.subject_tokens >= 3)
    for t in range(3):
        result = compute_jacobians(llama, [at_token(prompt, t)], [LAYER])
        expected, state, o = autograd_jacobian(llama, prompt, LAYER, prompt.subject_index - t)
        torch.testing.assert_close(result.jacobians[LAYER][0], expected, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(result.subject_states[LAYER][0], state, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(result.output_states[0], o, atol=1e-5, rtol=1e-4)
    # the three tokens' Jacobians differ: a test that mixed them up would fail
    first, last = (autograd_jacobian(llama, prompt, LAYER, prompt.subject_index - t)[0] for t in (2, 0))
    assert (first - last).norm() > 0.1 * last.norm()


def test_multi_token_weights_and_bias_against_per_token_autograd(llama, prompts):
    train = [item.prompt for item in prompts.train[2:]]  # 3, 7 and 2 tokens: W_2 is the mean of two
    per_sample = [
        [
            autograd_jacobian(llama, p, LAYER, p.subject_index - t)
            for t in range(min(p.subject_tokens, TOKENS))
        ]
        for p in train
    ]
    last_weight = torch.stack([sample[0][0] for sample in per_sample]).mean(0)
    last_states = torch.stack([sample[0][1] for sample in per_sample])
    outputs = torch.stack([sample[0][2] for sample in per_sample])
    lre = fit_multi_token_lre(llama, "adjective antonym", train, LAYER, last_weight, last_states, outputs)
    for t in range(TOKENS):
        having = [sample[t] for sample in per_sample if len(sample) > t]
        assert lre.samples[t] == len(having) == (3, 3, 2)[t]
        torch.testing.assert_close(
            lre.weights[t], torch.stack([j for j, _, _ in having]).mean(0), atol=1e-4, rtol=1e-3
        )
    readout = torch.stack(
        [sum(lre.weights[t] @ sample[t][1] for t in range(len(sample))) for sample in per_sample]
    )
    torch.testing.assert_close(lre.bias, (outputs - readout).mean(0), atol=1e-4, rtol=1e-3)


def test_a_token_no_training_subject_reaches_gets_a_zero_weight(llama, prompts):
    prompt, d = prompts.train[0].prompt, llama.hidden_size
    with torch.no_grad():
        o = delta_map(llama, prompt, LAYER, prompt.subject_index)[0](torch.zeros(d))[None]
    lre = fit_multi_token_lre(llama, "r", [prompt], LAYER, torch.eye(d), torch.zeros(1, d), o, tokens=12)
    count = prompt.subject_tokens
    assert lre.samples == tuple([1] * count + [0] * (12 - count))
    assert lre.weights[count:].abs().max() == 0 and lre.weights[count - 1].abs().max() > 0


def test_earlier_states_against_a_full_forward(llama, prompts):
    test = prompts.test_prompts[:6]
    o = torch.stack(
        [delta_map(llama, p, LAYER, p.subject_index)[0](torch.zeros(llama.hidden_size)) for p in test]
    )
    states, present = earlier_states(llama, "r", test, LAYER, o.detach())
    assert present.equal(token_presence([p.subject_tokens for p in test])[:, 1:])
    for k, prompt in enumerate(test):
        for t in range(1, TOKENS):
            expected = (
                delta_map(llama, prompt, LAYER, prompt.subject_index - t)[1]
                if present[k, t - 1]
                else 0 * o[k]
            )
            torch.testing.assert_close(states[k, t - 1], expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(RuntimeError, match="o of 'r''s prompts run again differ from its bundle's"):
        earlier_states(llama, "r", test, LAYER, o.detach() + 1)


def test_a_relation_of_one_token_subjects_is_one_line(llama, prompts):
    one_token = [
        dataclasses.replace(i.prompt, subject_first_index=i.prompt.subject_index) for i in prompts.train
    ]
    d = llama.hidden_size
    with pytest.raises(InputError) as raised:
        fit_multi_token_lre(
            llama, "adjective antonym", one_token, LAYER, torch.eye(d), torch.zeros(5, d), torch.zeros(5, d)
        )
    assert str(raised.value) == (
        "relation 'adjective antonym': all 5 training subjects are one token, and the multi-token LRE "
        "(question subject_tokens) needs subjects of two or more tokens: study a relation with longer subjects"
    )


def study_rows(multi_token_beta: float, two_token_betas: tuple[float, ...] = (2.0,) * 5) -> list[dict]:
    """Hand-written rows of one relation per entry of ``two_token_betas`` (r1, r2, …): the LRE's dev
    faithfulness peaks at β = 3, the multi-token LRE's at ``multi_token_beta``; one-token subjects need
    β = 1, two-token ones ``two_token_betas`` (per relation; 5 samples each)."""
    from lre_pl.protocol.rows import make_row

    def row(relation, **fields):
        return make_row(model="m", relation=relation, category="c", trial=0, kind="subject_tokens", **fields)

    relations = [f"r{i}" for i in range(1, len(two_token_betas) + 1)]
    rows = []
    for relation in relations:
        for estimator, peak in (("lre", 3.0), ("multi_token", multi_token_beta)):
            rows += [
                row(relation, estimator=estimator, beta=beta, split=split, metric="faithfulness@1",
                    value=float(beta == peak) if split == "dev" else 0.5, n=4)
                for beta in (0.5, 1.0, 2.0, 3.0) for split in ("dev", "test")
            ]  # fmt: skip
        rows += [
            row(relation, estimator=f"tokens={group}", split=split, metric="samples", value=float(n), n=n)
            for split in ("train", "all")
            for group, n in (("1", 2), ("2", 3), ("3+", 0))
        ]  # fmt: skip
    for relation, two_token in zip(relations, two_token_betas):
        rows += [
            row(relation, estimator="lre:tokens=1", split="all", metric="smallest_beta", value=1.0, n=1)
        ] * 5
        rows += [
            row(relation, estimator="lre:tokens=2", split="all", metric="smallest_beta", value=two_token, n=1)
        ] * 5
    return rows


@pytest.mark.parametrize(
    ("multi_token_beta", "two_token_betas", "word", "smallest", "closer"),
    [
        # 2-token subjects need β 2 against 1 (+1.00), the multi-token LRE's β 1 is 2 closer to 1 than the LRE's 3
        (1.0, (2.0,) * 5, "confirmed", "+1.00 [+1.00, +1.00]", "+2.00 [+2.00, +2.00]"),
        (2.0, (0.5,) * 5, "refuted", "-0.50 [-0.50, -0.50]", "+1.00 [+1.00, +1.00]"),
        # the relations disagree on the smallest β (+1.00, −0.50, +1.00, −0.50, −0.50): its interval holds 0.
        # A resample of 5 with k of the +1.00s has mean −0.50 + 0.30 k; P(k = 0) = 0.6⁵ ≈ 0.08 > 2.5 %, and
        # P(k ≥ 4) ≈ 0.09 > 2.5 % > P(k = 5) ≈ 0.01: the interval is [−0.50, +0.70].
        (1.0, (2.0, 0.5, 2.0, 0.5, 0.5), "inconclusive", "+0.10 [-0.50, +0.70]", "+2.00 [+2.00, +2.00]"),
    ],
)  # fmt: skip
def test_the_verdict_reads_the_intervals_of_its_two_differences(
    multi_token_beta, two_token_betas, word, smallest, closer
):
    from lre_pl.experiments.beta_study.questions import REGISTRY
    from lre_pl.experiments.beta_study.questions.base import Findings
    from lre_pl.protocol.selection import SelectionRule

    question, rule = REGISTRY["subject_tokens"](), SelectionRule([0.5, 1.0, 2.0, 3.0], 1.0)
    numbers = question.summarize(study_rows(multi_token_beta, two_token_betas), rule)
    found = question.judge(numbers)
    assert found.word == word
    basis = "(5 relations, 5 bundles, 95 % bootstrap interval)"
    assert f"smallest β, 2+-token − one-token subjects {smallest} {basis}" in found.why
    assert f"|chosen β − 1|, LRE − multi-token LRE {closer} {basis}" in found.why
    assert ("no detectable difference" in found.why) == (word == "inconclusive")
    assert numbers["one_token_relations"] == {} and numbers["samples"] == {"1": 10, "2": 15, "3+": 0}
    assert numbers["smallest_beta"]["lre"]["1"] == {"median": 1.0, "found": 25, "n": 25}
    assert f"**Verdict.** {found.word}: {found.why}." in question.render(numbers, Findings("m", rule))
    one_token = [  # r2's training subjects all one token
        r | {"value": 0.0, "n": 0}
        if (r["relation"], r["split"], r["estimator"]) == ("r2", "train", "tokens=2")
        else r
        for r in study_rows(1.0)
    ]
    numbers = question.summarize(one_token, rule)
    assert numbers["one_token_relations"] == {"r2": 2}
    assert "- relation 'r2': all 2 training subjects are one token" in question.render(
        numbers, Findings("m", rule)
    )
