"""Question 16's pieces without a model: the n-example prompts, where a miss lands, the pooled numbers
and the verdict."""

import statistics

import pytest
import torch

from lre_pl.dataset.relations import RelationSample
from lre_pl.experiments.beta_study.questions.in_context import (
    InContext,
    example_pool,
    miss_kinds,
    shot_prompts,
)
from lre_pl.protocol.rows import make_row
from lre_pl.protocol.selection import SelectionRule

A, B, C = RelationSample("A", "a"), RelationSample("B", "b"), RelationSample("C", "c")


def samples(count: int) -> list[RelationSample]:
    return [RelationSample(f"s{i}", f"o{i % 4}") for i in range(count)]


def test_the_pool_puts_the_training_samples_first_and_never_an_evaluated_subject():
    relation = [*samples(20), RelationSample("s3", "other")]  # a second object of an evaluated subject
    train, evaluated = [relation[7], relation[2]], [relation[3], relation[11]]
    pool = example_pool(relation, train, evaluated, seed=0)
    assert pool[:2] == train
    assert sorted(pool[2:], key=relation.index) == [
        s for s in relation if s not in train and s.subject not in {"s3", "s11"}
    ]
    assert pool == example_pool(relation, train, evaluated, seed=0)  # deterministic per seed
    assert pool != example_pool(relation, train, evaluated, seed=1)
    evaluated_train = example_pool(relation, train, [relation[7]], seed=0)  # a training subject evaluated
    assert evaluated_train[0] == relation[2] and relation[7] not in evaluated_train


def test_n_example_prompts_exact_text():
    prompts = shot_prompts("The capital of {} is", [A, B, C], [A, B], 2, prefix="<s>")
    assert [p.text for p in prompts.train] == [
        "<s>The capital of B is b\nThe capital of C is c\nThe capital of A is",
        "<s>The capital of A is a\nThe capital of C is c\nThe capital of B is",
    ]
    assert prompts.test_template == "<s>The capital of A is a\nThe capital of B is b\nThe capital of {} is"
    assert prompts.examples == [A, B]
    first = prompts.train[0]
    assert (
        first.text[first.subject_start : first.subject_end] == "A"
        and first.subject_end == len(first.text) - 3
    )
    zero = shot_prompts("{} has", [], [A, B], 0)
    assert [p.text for p in zero.train] == ["A has", "B has"] and zero.test_template == "{} has"


def test_too_few_pool_samples_give_no_prompts():
    assert shot_prompts("{} is", [A, B, C], [A, B], 3) is None  # A's prompt has only B and C
    assert shot_prompts("{} is", [A, B], [C], 3) is None  # the evaluated samples' prompt has 2
    assert shot_prompts("{} is", [A, B, C], [C], 2).train[0].text == "A is a\nB is b\nC is"


def test_misses_are_sorted_by_where_their_top_token_lands():
    kinds = miss_kinds(
        [" Par", " Lon", " Li", "xyz", " L"],  # " L" hits Lisbon and also starts London: a hit, not a miss
        ["Paris", "Rome", "Oslo", "Lima", "Lisbon"],
        in_context=["Rome", "London"],
        relation_objects=["Paris", "Rome", "Oslo", "Lima", "London", "Lisbon"],
    )
    assert kinds.miss.tolist() == [False, True, True, True, False]
    assert kinds.on_in_context.tolist() == [False, True, False, False, False]
    # " Li": Lima, Lisbon (not in context); "xyz": no object.
    assert kinds.on_other_object.tolist() == [False, False, True, False, False]
    # Rome's own object is in context: 1 of its 5 others is; for the rest 2 of 5.
    torch.testing.assert_close(kinds.chance, torch.tensor([0.4, 0.2, 0.4, 0.4, 0.4]))


RULE = SelectionRule([0.5, 1.0, 2.0], 1.0)


def rows_of(relation: str, variant: str, dev: dict, test: dict, misses: tuple, lm: float) -> list[dict]:
    """Hand rows of one bundle: a scan, the LM's accuracy, and test misses at β = 1 (share, chance, n)."""

    def row(**fields):
        return make_row(model="m", relation=relation, category="c", trial=0, kind="in_context",
                        estimator=variant, layer="3", **fields)  # fmt: skip

    rows = [row(split=s, beta=b, metric="faithfulness@1", value=v, n=4) for s, vs in (("dev", dev), ("test", test))
            for b, v in vs.items()]  # fmt: skip
    rows.append(row(split="test", metric="lm_accuracy", value=lm, n=4))
    share, chance, count = misses
    for metric, value in (
        ("miss_on_in_context", share),
        ("miss_on_other_object", 0.0),
        ("miss_chance", chance),
    ):
        rows.append(row(selection="beta_1", beta=1.0, split="test", metric=metric, value=value, n=count))
    return rows


def test_numbers_pool_the_misses_over_bundles():
    rows = rows_of(
        "r1", "few_shot", {0.5: 0.0, 1.0: 0.25, 2.0: 0.75}, {0.5: 0.0, 1.0: 0.5, 2.0: 1.0}, (0.5, 0.2, 4), 1.0
    )
    rows += rows_of(
        "r2", "few_shot", {0.5: 0.0, 1.0: 0.5, 2.0: 0.5}, {0.5: 0.0, 1.0: 0.25, 2.0: 0.5}, (1.0, 0.4, 1), 0.5
    )
    numbers = InContext().summarize(rows, RULE)
    few_shot = numbers["variants"]["few_shot"]
    assert few_shot["beta_1"] == 0.375 and few_shot["chosen"] == 0.625 and few_shot["median_beta"] == 1.5
    assert few_shot["lm_accuracy"] == 0.75
    assert numbers["misses"]["few_shot"]["beta_1"] == pytest.approx(
        {"in_context": (0.5 * 4 + 1.0) / 5, "other_object": 0.0, "chance": (0.2 * 4 + 0.4) / 5, "misses": 5}
    )


def numbers(pull: tuple, betas: dict) -> dict:
    """Numbers of one relation per entry of ``pull[0]``: few-shot's β = 1 misses on in-context objects
    (share, chance) per relation, and each variant's dev-chosen β per relation."""
    keys = [(f"r{i}", 0) for i in range(1, len(pull[0]) + 1)]
    return {
        "variants": {variant: {"median_beta": statistics.median(each)} for variant, each in betas.items()},
        "per_bundle": {
            "miss_on_in_context": dict(zip(keys, pull[0])),
            "miss_chance": dict(zip(keys, pull[1])),
            "chosen_beta": {variant: dict(zip(keys, each)) for variant, each in betas.items()},
        },
    }


def test_the_verdict_reads_the_intervals_of_its_four_differences():
    """Pull, closer (b from dev, zero-shot), falls, each a difference over five relations: all above 0
    confirms, one below 0 refutes, one holding 0 leaves it inconclusive, and four relations are too few.

    Each difference takes one value a on relations r1, r3, r5 and another, b, on r2, r4: a resample of the
    5 relations with k draws of a has mean b + (a − b) k / 5, k ~ Binomial(5, 0.6); P(k = 0) ≈ 0.01 and
    P(k ≤ 1) ≈ 0.09 straddle 2.5 %, P(k = 5) ≈ 0.08 is above it, so the interval's ends are the means at
    k = 1 and k = 5: (4 b + a) / 5 and a."""
    question = InContext()
    pull = ((0.6, 0.5, 0.6, 0.5, 0.6), (0.2,) * 5)  # +0.4 and +0.3 above chance: ends 0.32 and 0.40
    betas = {"few_shot": (2.5, 2.0, 2.5, 2.0, 2.5), "b_from_dev": (1.75, 1.5, 1.75, 1.5, 1.75),
             "zero_shot": (1.0, 1.25, 1.0, 1.25, 1.0), "shots_1": (1.5, 1.25, 1.5, 1.25, 1.5),
             "shots_8": (2.5, 2.0, 2.5, 2.0, 2.5)}  # fmt: skip
    word, why = question.judge(numbers(pull, betas))
    assert word == "confirmed"
    basis = "(5 relations, 5 bundles, 95 % bootstrap interval): a real difference"
    assert why == "; ".join([
        f"pull: share of β = 1 misses on in-context objects − chance +0.360 [+0.320, +0.400] {basis}",
        f"closer: |β − 1|, few-shot − b_from_dev +0.65 [+0.55, +0.75] {basis}",  # a 0.75, b 0.5
        f"closer: |β − 1|, few-shot − zero_shot +1.20 [+0.90, +1.50] {basis}",  # a 1.5, b 0.75
        f"falls: dev-chosen β, most − fewest examples +0.90 [+0.80, +1.00] {basis}",  # a 1.0, b 0.75
    ])  # fmt: skip
    # zero-shot needs more β than few-shot in every relation: that part is reversed
    assert question.judge(numbers(pull, {**betas, "zero_shot": (3.0,) * 5})).word == "refuted"
    # misses on in-context objects above chance in two relations (+0.4), below in three (−0.1): k draws of
    # +0.4, k ~ Binomial(5, 0.4), give −0.1 + 0.1 k; P(k = 0) ≈ 0.08, P(k = 5) ≈ 0.01 < 2.5 % < P(k ≥ 4):
    # the interval [−0.1, +0.3] holds 0, so no detectable pull
    word, why = question.judge(numbers(((0.6, 0.1, 0.6, 0.1, 0.1), (0.2,) * 5), betas))
    assert word == "inconclusive" and "+0.100 [-0.100, +0.300]" in why and "no detectable difference" in why
    # the confirmed numbers on their first four relations: every difference too few for an interval
    first_four = numbers(tuple(each[:4] for each in pull), {v: each[:4] for v, each in betas.items()})
    word, why = question.judge(first_four)
    assert (
        word == "inconclusive"
        and why.count("[4 relations: too few for an interval] (4 relations, 4 bundles)") == 4
    )
    one_shot_count = {v: b for v, b in betas.items() if v != "shots_8"}  # one n: nothing falls or rises
    assert question.judge(numbers(pull, one_shot_count)).why.endswith("– (no bundle has both values)")
