"""Question 16's pieces without a model: the n-example prompts, where a miss lands, the pooled numbers
and the verdict."""

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
    share, chance, count = pull
    return {
        "variants": {variant: {"median_beta": beta} for variant, beta in betas.items()},
        "misses": {"few_shot": {"beta_1": {"in_context": share, "chance": chance, "misses": count}}},
    }


def test_the_verdict_counts_the_three_parts_with_their_margins():
    question = InContext()
    betas = {"few_shot": 2.5, "b_from_dev": 1.75, "zero_shot": 1.0, "shots_1": 1.5, "shots_8": 2.5}
    word, why = question.judge(numbers((0.6, 0.2, 30), betas))
    assert word == "confirmed"
    assert why == (
        "all three parts hold: β = 1 misses on in-context objects 60% (chance 20%, 30 misses); median β few-shot "
        "2.50, b from dev 1.75, zero-shot 1.00; n = 1, 8: β 1.50 → 2.50"
    )
    assert question.judge(numbers((0.35, 0.2, 30), betas)).word == "inconclusive"  # under twice the chance
    assert question.judge(numbers((0.6, 0.2, 9), betas)).why.startswith("too few numbers for: pull")
    flat = {"few_shot": 2.5, "b_from_dev": 2.5, "zero_shot": 2.25, "shots_1": 2.5, "shots_8": 2.5}
    assert question.judge(numbers((0.2, 0.2, 30), flat)).word == "refuted"
    # b from dev as far from 1 as few-shot: that part fails, the others hold.
    assert question.predictions(numbers((0.6, 0.2, 30), {**betas, "b_from_dev": 2.5})) == {
        "pull": True, "closer": False, "falls": True,
    }  # fmt: skip
