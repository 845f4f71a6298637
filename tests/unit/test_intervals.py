"""The bootstrap interval on synthetic rows whose answer is known."""

import math
import random
import statistics

import pytest

from lre_pl.protocol.intervals import Interval, bootstrap_mean, paired_difference


def synthetic(mean, relation_sd, trial_sd, relations=40, trials=3, seed=1):
    """{(relation, trial): value}: a relation effect shared by its trials, plus trial noise."""
    generator = random.Random(seed)
    values = {}
    for r in range(relations):
        effect = generator.gauss(mean, relation_sd)
        for t in range(trials):
            values[f"r{r}", t] = effect + generator.gauss(0, trial_sd)
    return values


def test_a_constant_difference_has_a_zero_width_interval_that_excludes_zero():
    interval = bootstrap_mean({(f"r{r}", t): 0.1 for r in range(5) for t in range(3)})
    assert interval == Interval(pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.1), 5, 15)
    assert interval.detectable
    assert interval.difference_words().endswith(": a real difference")


def test_the_width_matches_the_two_stage_standard_error():
    """Mean over R relations × T trials, relation sd 0.1, trial sd 0.2: its standard error is
    sqrt(0.1²/R + 0.2²/(R T)); the 95 % interval is about ±1.96 of it around the mean."""
    values = synthetic(0.2, 0.1, 0.2)
    interval = bootstrap_mean(values)
    se = math.sqrt(0.1**2 / 40 + 0.2**2 / 120)
    assert interval.estimate == pytest.approx(statistics.mean(values.values()))
    assert (interval.high - interval.low) / 2 == pytest.approx(1.96 * se, rel=0.25)
    assert interval.low < 0.2 < interval.high
    assert (interval.relations, interval.bundles) == (40, 120)


def test_the_relations_are_resampled_not_only_the_bundles():
    """All the spread is between relations (trials identical): resampling bundles as if independent
    would shrink the interval by sqrt(T); resampling relations keeps it at the relations' SE."""
    values = synthetic(0.0, 0.3, 0.0, relations=30, trials=4)
    interval = bootstrap_mean(values)
    relation_means = [values[f"r{r}", 0] for r in range(30)]
    se = statistics.stdev(relation_means) / math.sqrt(30)
    assert (interval.high - interval.low) / 2 == pytest.approx(1.96 * se, rel=0.2)


def test_about_95_percent_of_intervals_cover_the_true_mean():
    covered = sum(
        bootstrap_mean(synthetic(0.5, 0.1, 0.1, relations=25, seed=seed), resamples=400).low
        < 0.5
        < bootstrap_mean(synthetic(0.5, 0.1, 0.1, relations=25, seed=seed), resamples=400).high
        for seed in range(80)
    )
    assert 0.85 <= covered / 80 <= 1.0


def test_a_difference_around_zero_is_no_detectable_difference():
    interval = paired_difference(synthetic(0.5, 0.1, 0.1, seed=3), synthetic(0.5, 0.1, 0.1, seed=4))
    assert interval.low < 0 < interval.high
    assert not interval.detectable
    assert interval.difference_words().endswith(": no detectable difference")


def test_a_paired_difference_uses_the_bundles_with_both_values_and_a_fixed_seed():
    first = {("a", 0): 1.0, ("a", 1): 3.0, ("b", 0): 2.0, ("c", 0): 5.0, ("d", 0): math.nan}
    second = {("a", 0): 0.0, ("a", 1): 1.0, ("b", 0): 1.0, ("d", 0): 0.0}
    interval = paired_difference(first, second)
    assert (interval.estimate, interval.relations, interval.bundles) == (pytest.approx(4 / 3), 2, 3)
    assert interval.cell() == "+1.333 [2 relations: too few for an interval]"
    values = synthetic(0.5, 0.1, 0.1)
    assert bootstrap_mean(values) == bootstrap_mean(values)  # the same seed, the same interval
    assert bootstrap_mean(values) != bootstrap_mean(values, seed=1)


def test_fewer_than_five_relations_or_none_give_no_interval():
    assert (
        bootstrap_mean({("a", 0): 0.2, ("a", 1): 0.4}).cell()
        == "+0.300 [1 relation: too few for an interval]"
    )
    four = bootstrap_mean({(r, 0): 1.0 for r in "abcd"})
    assert four.cell() == "+1.000 [4 relations: too few for an interval]" and not four.detectable
    assert (
        four.difference_words()
        == "+1.000 [4 relations: too few for an interval] (4 relations, 4 bundles): no detectable difference"
    )
    assert bootstrap_mean({(r, 0): 1.0 for r in "abcde"}).detectable
    assert bootstrap_mean({}).cell() == "–"
    assert not bootstrap_mean({}).detectable
