"""The protocol's tidy rows: their schema, and reading and writing them (JSONL, CSV)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from lre_pl.files import write_text_atomically

#: Every row of every experiment has exactly these fields (``None`` where one does not apply).
ROW_FIELDS = (
    "model", "relation", "category", "trial", "kind", "selection", "estimator", "layer", "beta", "rank",
    "split", "metric", "value", "n",
)  # fmt: skip


def read_rows(paths: list[Path]) -> list[dict]:
    """Rows of every existing row file (with the fields of :data:`ROW_FIELDS`)."""
    rows = []
    for path in paths:
        if path.exists():
            rows += [json.loads(line) for line in path.read_text().splitlines() if line]
    assert all(set(row) == set(ROW_FIELDS) for row in rows)
    return rows


def write_rows_csv(path: Path, rows: list[dict]) -> None:
    """Tidy rows (:data:`~lre_pl.evaluation.grid.ROW_FIELDS`) as one CSV file, written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(path, buffer.getvalue())
