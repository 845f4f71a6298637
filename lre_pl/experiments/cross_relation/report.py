"""What the cross-relation matrices say, from their rows alone: the two heatmaps, the families, and a
short summary in plain sentences generated from the numbers.

A matrix has one row per reading relation r (whose LRE reads) and one column per relation r′ (whose
subjects' states are read), both in category order (:data:`~lre_pl.dataset.relations.CATEGORIES`, then
by name); a cell is the mean over trials of the pair's value (NaN trials left out).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from lre_pl.dataset.relations import CATEGORIES
from lre_pl.experiments.cross_relation.matrix import (
    BIAS_KIND,
    KIND,
    METRICS,
    SHARED_RECALL,
    TYPE_BEYOND_B,
    TYPE_SHARE,
)
from lre_pl.protocol.markdown import markdown_table, nanmean

#: Each metric's heatmap: (file stem, title, colour bar label).
FIGURES = {
    TYPE_SHARE: ("type_share", "type share: top-1 is one of r's object tokens", "type share"),
    TYPE_BEYOND_B: (
        "type_share_beyond_b",
        "type share beyond b: one of r's object tokens, not decode(b)'s",
        "type share beyond b",
    ),
    SHARED_RECALL: (
        "shared_subject_recall",
        "shared subjects: recall@1 of r's true object",
        "recall@1 (grey: no shared subject)",
    ),
}
#: Cells are written into a heatmap up to this many relations.
ANNOTATE_UP_TO = 16


def category_order(categories: dict[str, str]) -> list[str]:
    """Relations by category (in :data:`CATEGORIES` order; an unknown category last), then by name."""
    rank = {category: i for i, category in enumerate(CATEGORIES)}
    return sorted(categories, key=lambda r: (rank.get(categories[r], len(rank)), categories[r], r))


@dataclass(frozen=True)
class CrossMatrices:
    """Both metrics as [R, R] matrices (rows: r, whose LRE reads; columns: r′, whose subjects)."""

    model: str
    relations: list[str]
    """In category order."""
    categories: dict[str, str]
    values: dict[str, np.ndarray]  # metric -> [R, R] mean over trials (NaN: none)
    counts: dict[str, np.ndarray]  # metric -> [R, R] readouts summed over trials
    bias_only: dict[str, float] = field(default_factory=dict)
    """relation -> the share of its trials in which decode(b) alone (s = 0) is one of its object tokens."""

    @classmethod
    def of(cls, rows: Sequence[dict]) -> CrossMatrices:
        controls: dict[str, list[float]] = {}
        for row in rows:
            if row["kind"] == BIAS_KIND:
                controls.setdefault(row["relation"], []).append(row["value"])
        rows = [row for row in rows if row["kind"] == KIND]
        categories = {row["relation"]: row["category"] for row in rows}
        relations = category_order(categories)
        index = {relation: i for i, relation in enumerate(relations)}
        per_trial: dict[tuple[str, int, int], list[float]] = {}
        counts = {metric: np.zeros((len(relations), len(relations)), dtype=int) for metric in METRICS}
        for row in rows:
            i, j = index[row["relation"]], index[row["split"]]
            per_trial.setdefault((row["metric"], i, j), []).append(row["value"])
            counts[row["metric"]][i, j] += row["n"]
        values = {metric: np.full((len(relations), len(relations)), np.nan) for metric in METRICS}
        for (metric, i, j), found in per_trial.items():
            values[metric][i, j] = nanmean(found)
        bias_only = {relation: nanmean(found) for relation, found in controls.items()}
        return cls(rows[0]["model"], relations, categories, values, counts, bias_only)

    @property
    def same_category(self) -> np.ndarray:  # [R, R] bool
        labels = np.array([self.categories[r] for r in self.relations])
        return labels[:, None] == labels[None, :]

    def diagonal(self, metric: str) -> np.ndarray:  # [R]
        return np.diag(self.values[metric])

    def off_diagonal(self, metric: str, where: np.ndarray | None = None) -> np.ndarray:
        """The off-diagonal values of ``metric`` (only where ``where`` [R, R] bool is True), NaN dropped."""
        mask = ~np.eye(len(self.relations), dtype=bool) & (True if where is None else where)
        found = self.values[metric][mask]
        return found[~np.isnan(found)]


def components(relations: Sequence[str], linked: np.ndarray) -> list[list[str]]:
    """The connected components, of two relations or more, of the graph whose edges are ``linked``
    [R, R] bool; largest first, each in the order of ``relations``."""
    parent = list(range(len(relations)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(linked)):
        parent[root(int(i))] = root(int(j))
    groups: dict[int, list[str]] = {}
    for i, relation in enumerate(relations):
        groups.setdefault(root(i), []).append(relation)
    return sorted((group for group in groups.values() if len(group) > 1), key=lambda g: -len(g))


def families(matrices: CrossMatrices, threshold: float) -> list[list[str]]:
    """Groups of relations linked by a type share beyond b of at least ``threshold`` both ways (r's LRE
    answers on r′'s subjects with r's kind of object, chosen by the subject's state rather than by b alone,
    and r′'s on r's likewise): connected components. The type share itself would link nearly every pair
    where decode(b) already names r's kind of object."""
    share = matrices.values[TYPE_BEYOND_B]
    return components(matrices.relations, np.minimum(share, share.T) >= threshold)  # NaN: False


def subject_groups(matrices: CrossMatrices) -> list[list[str]]:
    """Groups of relations that share evaluated subjects (r′ has a subject that r's data set holds,
    either way): connected components."""
    off = ~np.eye(len(matrices.relations), dtype=bool)
    return components(matrices.relations, (matrices.counts[SHARED_RECALL] > 0) & off)


def heatmap(matrices: CrossMatrices, metric: str):
    """The [R, R] heatmap of ``metric``: rows r (whose LRE reads), columns r′ (whose subjects), both in
    category order with a line between categories and the relations' names as tick labels; NaN grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem, title, label = FIGURES[metric]
    values, relations = matrices.values[metric], matrices.relations
    size = max(4.0, 0.22 * len(relations) + 3)
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    colours = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = axes.imshow(np.ma.masked_invalid(values), cmap=colours, vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label=label, shrink=0.8)
    positions = list(range(len(relations)))
    fontsize = 7 if len(relations) <= 24 else 5
    axes.set_xticks(positions, relations, rotation=90, fontsize=fontsize)
    axes.set_yticks(positions, relations, fontsize=fontsize)
    palette = {category: plt.get_cmap("tab10")(i) for i, category in enumerate(CATEGORIES)}
    for tick, relation in [*zip(axes.get_xticklabels(), relations), *zip(axes.get_yticklabels(), relations)]:
        tick.set_color(palette.get(matrices.categories[relation], "black"))
    for boundary in category_boundaries(matrices):
        axes.axhline(boundary - 0.5, color="white", lw=1.5)
        axes.axvline(boundary - 0.5, color="white", lw=1.5)
    if len(relations) <= ANNOTATE_UP_TO:
        for (i, j), value in np.ndenumerate(values):
            if not math.isnan(value):
                colour = "black" if value > 0.6 else "white"  # readable on viridis's yellow end
                axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color=colour)
    axes.set_xlabel("r′: whose subjects' states are read", fontsize=8)
    axes.set_ylabel("r: whose LRE reads", fontsize=8)
    axes.set_title(f"{title}\n{matrices.model}", fontsize=9)
    figure.tight_layout()
    return figure


def category_boundaries(matrices: CrossMatrices) -> list[int]:
    """Positions in the category order where a new category starts (the first excluded)."""
    labels = [matrices.categories[r] for r in matrices.relations]
    return [i for i in range(1, len(labels)) if labels[i] != labels[i - 1]]


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else float("nan")


def _cell(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2f}"


def summary_lines(matrices: CrossMatrices, threshold: float) -> list[str]:
    """The summary's sentences, each from the numbers of the matrices."""
    n = len(matrices.relations)
    diagonal = matrices.diagonal(TYPE_SHARE)
    own, other = _mean(diagonal[~np.isnan(diagonal)]), _mean(matrices.off_diagonal(TYPE_SHARE))
    within = _mean(matrices.off_diagonal(TYPE_SHARE, matrices.same_category))
    across = _mean(matrices.off_diagonal(TYPE_SHARE, ~matrices.same_category))
    lines = [
        f"**Type.** A relation's LRE answers with a first token of its own objects on {_cell(own)} of its own "
        f"subjects (the diagonal, mean over {n} relations) and on {_cell(other)} of other relations' subjects "
        f"(mean over {n * (n - 1)} ordered pairs): {_cell(within)} within a category, {_cell(across)} across "
        "categories. "
        + (
            "It mostly answers with its own kind of object whatever the subject: the type comes from the "
            "operator (the prompt it was estimated on), not from the subject."
            if not math.isnan(other) and other >= 0.5
            else "Applied to another relation's subjects it mostly leaves its own object vocabulary."
            if not math.isnan(other)
            else ""
        )
    ]
    if matrices.bias_only:
        control = np.array([matrices.bias_only.get(r, np.nan) for r in matrices.relations])  # [R]
        known, named = ~np.isnan(control), np.nan_to_num(control) >= 0.5
        with_b, without_b = (
            _mean(matrices.off_diagonal(TYPE_SHARE, (known & mask)[:, None])) for mask in (named, ~named)
        )
        lines.append(
            f"**Bias alone.** With no subject at all (s = 0), decode(b) is already one of r's object tokens for "
            f"{int((known & named).sum())} of {int(known.sum())} relations; their LREs' type share on other "
            f"relations' subjects is {_cell(with_b)}, against {_cell(without_b)} for the others. Where b alone "
            "names r's kind of object, a high type share needs nothing from the subject's state."
        )
    found = families(matrices, threshold)
    lines.append(
        f"**Families** (type share beyond b at least {threshold:g} both ways, connected): "
        + "; ".join("{" + ", ".join(group) + "}" for group in found)
        + "."
        if found
        else f"**Families**: no two relations reach a type share beyond b of {threshold:g} both ways."
    )
    recall = matrices.values[SHARED_RECALL]
    off = ~np.eye(n, dtype=bool) & (matrices.counts[SHARED_RECALL] > 0)
    if not off.any():
        lines.append(
            "**Shared subjects**: no two of these relations share an evaluated subject, so whether a subject's "
            "state carries properties another relation's LRE can read is not asked here."
        )
        return lines
    readers = np.nonzero(off.any(1))[0]
    shared, reference = (
        _mean(recall[off]),
        _mean(np.diag(recall)[readers][~np.isnan(np.diag(recall)[readers])]),
    )
    ratio = shared / reference if reference else float("nan")
    verdict = (
        "largely carry properties that do not depend on the relation: another relation's LRE reads them almost "
        "as well as from its own prompt"
        if ratio >= 0.75
        else "partly carry relation-independent properties: another relation's LRE reads some of them"
        if ratio >= 0.25
        else "carry little that another relation's LRE reads: an LRE reads what its own prompt put into the state"
    )
    lines.append(
        f"**Shared subjects.** On the {int(off.sum())} ordered pairs of relations that share subjects "
        f"({int(matrices.counts[SHARED_RECALL][off].sum())} readouts), r's LRE recalls r's true object from "
        f"the state of the subject taken from r′'s prompt at {_cell(shared)} (mean over pairs), against "
        f"{_cell(reference)} on its own subjects (the diagonal of the same {len(readers)} relations): "
        f"subject states {verdict}."
        if not math.isnan(ratio)
        else f"**Shared subjects.** {int(off.sum())} ordered pairs share subjects, but the reference on the "
        "diagonal is 0 or undefined: no comparison."
    )
    return lines


def shared_subject_table(matrices: CrossMatrices, examples: Mapping[tuple[str, str], Sequence[str]]) -> str:
    """One line per ordered pair (r, r′ ≠ r) that shares subjects, by subject group: how many readouts,
    a few of the shared subjects (``examples``: (r, r′) -> shared subjects), r's recall@1 on them and on
    its own subjects."""
    index = {relation: i for i, relation in enumerate(matrices.relations)}
    recall, counts = matrices.values[SHARED_RECALL], matrices.counts[SHARED_RECALL]
    lines = []
    for number, group in enumerate(subject_groups(matrices), 1):
        for r in group:
            for other in group:
                i, j = index[r], index[other]
                if i == j or not counts[i, j]:
                    continue
                shown = list(examples.get((r, other), []))
                named = ", ".join(shown[:3]) + (", …" if len(shown) > 3 else "")
                lines.append(
                    [
                        str(number),
                        r,
                        other,
                        str(counts[i, j]),
                        named,
                        _cell(recall[i, j]),
                        _cell(recall[i, i]),
                    ]
                )
    if not lines:
        return "No two of these relations share an evaluated subject.\n"
    return markdown_table(
        ["group", "LRE of r", "subjects of r′", "readouts", "shared subjects", "recall@1", "r on its own"],
        lines,
    )


def report_markdown(
    matrices: CrossMatrices,
    threshold: float,
    examples: Mapping[tuple[str, str], Sequence[str]],
    trials: Sequence[int],
    made_by: Sequence[str] = (),
) -> str:
    """The report: the summary, the figures, the shared-subject groups, the diagonal."""
    n = len(matrices.relations)
    diagonal = [
        [r, matrices.categories[r], _cell(matrices.values[TYPE_SHARE][i, i]),
         _cell(matrices.values[SHARED_RECALL][i, i]), str(matrices.counts[TYPE_SHARE][i, i]),
         _cell(matrices.bias_only.get(r, float("nan")))]
        for i, r in enumerate(matrices.relations)
    ]  # fmt: skip
    parts = [
        f"# Cross-relation application: {matrices.model}\n",
        f"Relation r's LRE (its sweep's dev-chosen layer and β) applied to the subject states of relation r′ "
        f"(r′'s known test samples, as the sweep evaluated them), for every ordered pair of {n} relations, "
        f"trials {', '.join(map(str, trials))} (cells: mean over trials). *Type share*: the share of readouts "
        "whose top-1 token is a first token of one of r's objects. *Shared subjects*: on r′'s subjects that "
        "r's data set also holds, the recall@1 of r's true object. The diagonal (r on its own subjects) is "
        "the reference. No Jacobian and no forward pass: the sweep's bundles hold W, b and the states.\n",
        *(f"Made by {line}.\n" for line in made_by),
        "## Summary\n",
        "\n\n".join(summary_lines(matrices, threshold)) + "\n",
        f"![type share]({FIGURES[TYPE_SHARE][0]}.png)\n",
        f"![type share beyond b]({FIGURES[TYPE_BEYOND_B][0]}.png)\n",
        f"![shared-subject recall]({FIGURES[SHARED_RECALL][0]}.png)\n",
        "## Shared subjects\n",
        "Groups: relations linked by shared subjects (r′ has an evaluated subject that r's data set holds). "
        "*readouts*: r′'s shared subjects, over trials.\n",
        shared_subject_table(matrices, examples),
        "## The diagonal: each relation on its own subjects\n",
        "*b alone*: the share of trials in which decode(b), r's readout with no subject (s = 0), is one of r's "
        "object tokens (the control of the type share).\n",
        markdown_table(["relation", "category", "type share", "recall@1", "readouts", "b alone"], diagonal),
    ]
    return "\n".join(parts)
