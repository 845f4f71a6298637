"""What a β-study question is: a small class that computes its rows, summarizes them and renders its
section, and the pieces several questions share (the faithfulness table of a β scan, headline cells).

A question is one module of this package with one class that subclasses :class:`PerBundleQuestion`
(rows from one bundle's :class:`~lre_pl.experiments.beta_study.context.StudyContext`) or
:class:`AcrossBundlesQuestion` (rows from the whole :class:`~lre_pl.experiments.beta_study.context.SweepStudy`),
decorated with :func:`register`; its config is ``configs/beta/<name>.yaml``. The registry, the CLI's
``questions`` choices, the config check and the report's order follow from that.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from lre_pl.experiments.beta_study.context import StudyContext, SweepStudy
from lre_pl.protocol.folder import model_file_name
from lre_pl.protocol.intervals import Interval, paired_difference
from lre_pl.protocol.markdown import markdown_table, nanmean
from lre_pl.protocol.selection import SelectionRule

#: The fixed β the paper found for GPT-J and GPT-2-XL, compared with the learned one.
PAPER_BETA = 2.25

NAN = float("nan")

Numbers = dict[str, Any]
"""A question's summary of one model's rows (nested dicts of numbers), what its section and the
headline table read."""

BundleValues = dict[tuple[str, int], float]
"""{(relation, trial): value}: one number per bundle, what a verdict's interval resamples
(:func:`~lre_pl.protocol.intervals.paired_difference`); kept in a question's numbers beside its means."""


@dataclass(frozen=True)
class Answer:
    """A per-bundle question's answer on one bundle: its rows and, where rows cannot hold it (token
    strings), a markdown table."""

    rows: list[dict]
    table: str | None = None


@dataclass(frozen=True)
class Findings:
    """One model's study as a section reads it beyond its own numbers."""

    model: str
    """The model as its rows name it."""
    rule: SelectionRule
    """The sweep's selection rule (its ties)."""
    numbers: Mapping[str, Numbers] = field(default_factory=dict)
    """Every answered question's numbers, by name: a verdict may compare with another question's."""
    tables: Mapping[str, list[str]] = field(default_factory=dict)
    """Per question, its markdown tables (one per bundle)."""


#: The verdicts a hypothesis can get on one model.
VERDICTS = ("confirmed", "refuted", "inconclusive")


class Verdict(NamedTuple):
    """A hypothesis's verdict on one model's numbers."""

    word: str
    """One of :data:`VERDICTS`."""
    why: str
    """Why, in one sentence that quotes the numbers it rests on."""


class HeadlineLine(NamedTuple):
    """A line of the report's answers table: ``cell`` reads one model's numbers (by question name)."""

    order: int
    """Its place in the table: lines are sorted by it (the committed reports fix today's order)."""
    label: str
    cell: Callable[[Mapping[str, Any]], str]


class Question:
    """One question of the study: its rows, their summary, its section."""

    name: ClassVar[str]
    """Its rows' ``kind``, its rows folder and its config's name."""
    number: ClassVar[int]
    """Its place in the report (and in the registry)."""
    title: ClassVar[str]
    """Its section's heading, after its number."""
    across_bundles: ClassVar[bool] = False
    headline: ClassVar[tuple[HeadlineLine, ...]] = ()
    """Its lines of the report's answers table."""
    hypothesis: ClassVar[str | None] = None
    """For a question that tests an explanation of why β > 1: that explanation, in one line (the first
    column of the hypotheses table that opens ``docs/explaining_beta.md``); ``None`` for the others."""
    prediction: ClassVar[str] = ""
    """What the hypothesis predicts, if it holds, in terms of what the question measures."""
    costly: ClassVar[bool] = False
    """Whether it computes new Jacobians or Jacobian–vector products (minutes per bundle on a CPU, not
    seconds): a study may ask it on a chosen subset of relations only (``costly_relations``)."""

    def summarize(self, rows: list[dict], rule: SelectionRule) -> Numbers:
        """The numbers of one model's rows of this question (``rule``: the sweep's, for ties)."""
        raise NotImplementedError

    def render(self, numbers: Numbers, findings: Findings) -> str:
        """Its section of one model: a table and its verdict, in markdown."""
        raise NotImplementedError

    def figures(self, rows: list[dict], model: str) -> dict[str, Any]:
        """{file name: matplotlib figure} beside the report; none unless a question draws one."""
        return {}

    def measured(self, numbers: Numbers) -> str:
        """A hypothesis question's measurement on one model, in a few words with its numbers (the
        hypotheses table's cell for that model)."""
        raise NotImplementedError

    def judge(self, numbers: Numbers) -> Verdict:
        """A hypothesis question's verdict on one model's numbers: ``inconclusive`` where they are too
        few or point both ways, and why."""
        raise NotImplementedError


class PerBundleQuestion(Question):
    """A question answered on each bundle alone."""

    def rows(self, context: StudyContext) -> list[dict]:
        raise NotImplementedError

    def answer(self, context: StudyContext) -> Answer:
        return Answer(self.rows(context))


class AcrossBundlesQuestion(Question):
    """A question answered from all of a sweep's bundles at once (one rows file)."""

    across_bundles = True

    def rows(self, study: SweepStudy) -> list[dict]:
        raise NotImplementedError

    def covers(self, rows: list[dict], study: SweepStudy) -> bool:
        """Whether rows written before still cover the sweep's evaluated bundles (else they are redone)."""
        raise NotImplementedError


_registered: list[type[Question]] = []


def register(question: type[Question]) -> type[Question]:
    """Class decorator: ``question`` joins the registry (see :mod:`lre_pl.experiments.beta_study.questions`)."""
    _registered.append(question)
    return question


def registered() -> list[type[Question]]:
    """Every registered question class, in the order of their ``number``."""
    return sorted(_registered, key=lambda question: question.number)


def figure_name(model: str, stem: str) -> str:
    """``<stem>_<model>.png``: a question's figure file name for a model spec (a name, hub id or local
    folder: :func:`~lre_pl.protocol.folder.model_file_name`)."""
    return f"{stem}_{model_file_name(model)}.png"


def bundles_of(rows: list[dict], estimator: str) -> set[tuple[str, int]]:
    """The (relation, trial) keys of the rows of ``estimator``."""
    return {(row["relation"], row["trial"]) for row in rows if row["estimator"] == estimator}


def number(numbers: Mapping[str, Any], *path: str, fmt: str = ".3f") -> str:
    """A headline cell: the number at ``path`` in one model's numbers, ``–`` where there is none."""
    value = numbers
    for key in path:
        value = value.get(key, {}) if isinstance(value, dict) else {}
    return "–" if isinstance(value, dict) or math.isnan(value) else format(value, fmt)


def bundle_means(rows: list[dict], **match: Any) -> BundleValues:
    """{(relation, trial): the mean of the values of its rows whose fields equal ``match``} (NaN values
    left out; a bundle with none is NaN), e.g. ``bundle_means(rows, estimator="lre", split="all")``."""
    values = defaultdict(list)
    for row in rows:
        if all(row[name] == wanted for name, wanted in match.items()):
            values[row["relation"], row["trial"]].append(row["value"])
    return {key: nanmean(found) for key, found in values.items()}


def interval_cell(numbers: Mapping[str, Any], *path: str, fmt: str = "+.3f") -> str:
    """A headline cell: the :class:`~lre_pl.protocol.intervals.Interval` at ``path`` in one model's
    numbers with its interval (``+0.008 [-0.012, +0.027]``), ``–`` where there is none."""
    value = numbers
    for key in path:
        value = value.get(key, {}) if isinstance(value, dict) else {}
    return value.cell(fmt) if isinstance(value, Interval) else "–"


def difference_words(first: BundleValues, second: BundleValues) -> str:
    """``first − second`` over the bundles with both, its interval and what it means, in words
    (:meth:`~lre_pl.protocol.intervals.Interval.difference_words`)."""
    return paired_difference(first, second).difference_words()


def paper_lre(numbers: Mapping[str, Numbers]) -> dict[str, float]:
    """The paper's LRE in the bias-variant scan (β = 1, chosen β, median β), or ``{}``: the reference
    that other questions' verdicts compare with."""
    return numbers.get("bias_variants", {}).get("variants", {}).get("paper", {})


# ----------------------------------------------------------------------- β scans of faithfulness
def selected_beta(rows: list[dict], question: str, rule: SelectionRule) -> dict[tuple, dict]:
    """{(relation, trial, variant): {beta_1, chosen_beta, chosen}}: test faithfulness@1 at β = 1 and at
    the β chosen on the dev split by the sweep's own rule (its ties too)."""
    by_key = defaultdict(lambda: defaultdict(dict))  # key -> split -> beta -> value
    for row in rows:
        if row["kind"] == question and row["metric"] == "faithfulness@1":
            key = (row["relation"], row["trial"], row["estimator"])
            by_key[key][row["split"]][row["beta"]] = row["value"]
    result = {}
    for key, splits in by_key.items():
        dev = {beta: value for beta, value in splits["dev"].items() if not math.isnan(value)}
        if not dev:
            continue
        chosen = rule.beta(dev)
        result[key] = {"beta_1": splits["test"].get(1.0, NAN), "chosen_beta": chosen,
                       "chosen": splits["test"][chosen]}  # fmt: skip
    return result


class ScanQuestion(PerBundleQuestion):
    """A question whose rows are faithfulness scans over the sweep's β grid, one per variant: its
    numbers are, per variant, test faithfulness at β = 1 and at the β chosen on dev (their means, and
    per bundle in ``beta_1_by_bundle`` and ``chosen_by_bundle`` for the verdicts' intervals)."""

    def summarize(self, rows: list[dict], rule: SelectionRule) -> Numbers:
        per_variant = defaultdict(dict)  # variant -> (relation, trial) -> its values
        for (relation, trial, variant), values in selected_beta(rows, self.name, rule).items():
            per_variant[variant][relation, trial] = values
        variants = {}
        for variant, by_bundle in per_variant.items():
            values = list(by_bundle.values())
            betas = [v["chosen_beta"] for v in values]
            variants[variant] = {
                "beta_1": nanmean(v["beta_1"] for v in values),
                "chosen": nanmean(v["chosen"] for v in values),
                "beta_1_by_bundle": {key: v["beta_1"] for key, v in by_bundle.items()},
                "chosen_by_bundle": {key: v["chosen"] for key, v in by_bundle.items()},
                "median_beta": statistics.median(betas),
                "min_beta": min(betas),
                "max_beta": max(betas),
                "n": len(values),
            }
        return {"variants": variants}

    @staticmethod
    def table(variants: Mapping[str, dict]) -> str:
        headings = ["variant", "relations × trials", "faithfulness@1, β = 1 (test)",
                    "faithfulness@1, β chosen on dev (test)", "chosen β: median [range]"]  # fmt: skip
        return markdown_table(headings, [
            [variant, str(v["n"]), f"{v['beta_1']:.3f}", f"{v['chosen']:.3f}",
             f"{v['median_beta']:.2f} [{v['min_beta']:.2f}–{v['max_beta']:.2f}]"]
            for variant, v in variants.items()
        ])  # fmt: skip


def section(table: str, text: str) -> str:
    """A section: its markdown table, a line break, then ``text`` (a note or a :func:`verdict`, each
    opening with a newline of its own)."""
    return f"{table}\n{text}"


def verdict(text: str) -> str:
    """A verdict paragraph, set off by a blank line."""
    return f"\n**Verdict.** {text}\n"
