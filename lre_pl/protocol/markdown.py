"""Markdown tables and the numbers in their cells, for every report."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence


def markdown_table(headings: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub markdown table (cells are strings already formatted)."""
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def nanmean(values: Iterable[float]) -> float:
    """The mean of the values that are not NaN; NaN when there are none."""
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def mean_std_cell(per_trial: Sequence[float], fmt: str = ".2f") -> str:
    """``0.61 ± 0.05`` over trials (NaN trials left out), ``0.61`` for one, ``–`` for none."""
    values = [v for v in per_trial if not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"
