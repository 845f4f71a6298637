"""The protocol's tidy rows: their schema, and reading and writing them (JSONL, CSV).

A rows file (JSONL) ends with the line ``# rows: N`` after its N rows, written last: a file cut short,
at a line boundary or not, lacks it or counts other rows, so it is never taken for a finished one.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from lre_pl.errors import InputError
from lre_pl.files import write_text_atomically

#: Every row of every experiment has exactly these fields (``None`` where one does not apply).
ROW_FIELDS = (
    "model", "relation", "category", "trial", "kind", "selection", "estimator", "layer", "beta", "rank",
    "split", "metric", "value", "n",
)  # fmt: skip


def write_rows(path: Path, rows: list[dict]) -> None:
    """Rows as JSONL with the ``# rows: N`` footer, written atomically."""
    write_text_atomically(path, "".join(json.dumps(row) + "\n" for row in rows) + f"# rows: {len(rows)}\n")


def _parse(path: Path) -> list[dict] | None:
    """The rows of a complete rows file; ``None`` for a file cut short or damaged."""
    try:
        text = path.read_bytes().decode()
        *lines, footer = text.removesuffix("\n").split("\n")
        if not text.endswith("\n") or footer != f"# rows: {len(lines)}":
            return None
        return [json.loads(line) for line in lines]
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
        return None


def rows_complete(path: Path) -> bool:
    """Whether ``path`` is a whole rows file (its footer counts its rows, every row parses)."""
    return _parse(path) is not None


def read_rows(paths: list[Path]) -> list[dict]:
    """Rows of every existing row file (with the fields of :data:`ROW_FIELDS`); a file cut short or
    damaged is a one-line error, never read as fewer rows."""
    rows = []
    for path in paths:
        if path.exists():
            parsed = _parse(path)
            if parsed is None:
                raise InputError(
                    f"{path} is cut short or damaged (its last line is not '# rows: N' for its N rows): rerun "
                    "the lre-pl sweep or beta-study that wrote it, which writes it again"
                )
            rows += parsed
    assert all(set(row) == set(ROW_FIELDS) for row in rows)
    return rows


def write_rows_csv(path: Path, rows: list[dict]) -> None:
    """Tidy rows (:data:`~lre_pl.evaluation.grid.ROW_FIELDS`) as one CSV file, written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(path, buffer.getvalue())
