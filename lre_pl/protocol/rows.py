"""The protocol's tidy rows: their schema, one builder, and their files (JSONL with a count, CSV).

Every experiment (the sweep, the β study, later ones) writes rows of exactly :data:`ROW_FIELDS`, made
by :func:`make_row`. A rows file ends with a line that counts its rows (``# rows: N``), written last:
a file cut anywhere, even at a line boundary, does not verify (:func:`rows_complete`), so a stage
whose rows file does not verify is not done.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from lre_pl.errors import InputError
from lre_pl.files import write_text_atomically

#: Every row of every experiment has exactly these fields (``None`` where one does not apply).
ROW_FIELDS = (
    "model", "relation", "category", "trial", "kind", "selection", "estimator", "layer", "beta", "rank",
    "split", "metric", "value", "n",
)  # fmt: skip

#: Count rows (``kind="count"``, value 1) that say why a bundle has no value of some metrics: their
#: metric -> (the metrics left without a value, ``None`` for every one; the words every report prints).
#: A report never averages a missing value and never leaves one unexplained: a bundle that lacks a
#: value without one of these rows is "not run" (the config lists it, the folder lacks it).
MISSING_REASONS = {
    "too_few_known": (None, "too few known test samples"),
    "no_edit_target": (("efficacy",), "no target: every known sample has the same object"),
    "no_edit_pair": (
        ("efficacy", "efficacy_relation_targets"),
        "no target: no two known samples differ in both subject and object",
    ),
    "no_edit_target_in_relation": (
        ("efficacy_relation_targets",),
        "no target: every test sample of the relation has the same object",
    ),
}

_FOOTER = re.compile(r"# rows: (\d+)")


def make_row(**fields) -> dict:
    """A row: every field of :data:`ROW_FIELDS` in order, ``None`` where not given; an unknown field is
    a programming error (a misspelt field would silently become a new column)."""
    unknown = set(fields) - set(ROW_FIELDS)
    if unknown:
        raise TypeError(f"unknown row fields {sorted(unknown)}: rows have {ROW_FIELDS}")
    return {name: fields.get(name) for name in ROW_FIELDS}


def write_rows(path: str | Path, rows: Sequence[dict]) -> None:
    """One JSON row a line, then ``# rows: N``; atomic (complete under its final name, or absent)."""
    lines = [json.dumps(row) + "\n" for row in rows]
    write_text_atomically(path, "".join(lines) + f"# rows: {len(lines)}\n")


def _parse(path: Path) -> list[dict] | None:
    """The rows of ``path``, or ``None`` when it does not verify: unreadable, no final newline, no count
    line or a wrong count, a line that is not JSON, a row without the schema's fields."""
    try:
        text = path.read_bytes().decode()
        lines = text.splitlines()
        footer = _FOOTER.fullmatch(lines[-1]) if lines and text.endswith("\n") else None
        if footer is None or int(footer.group(1)) != len(lines) - 1:
            return None
        rows = [json.loads(line) for line in lines[:-1]]
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
        return None
    return rows if all(isinstance(r, dict) and set(r) == set(ROW_FIELDS) for r in rows) else None


def rows_complete(path: str | Path) -> bool:
    """Whether ``path`` exists and holds every row its count line says (see :func:`write_rows`)."""
    path = Path(path)
    return path.is_file() and _parse(path) is not None


def read_rows(paths: Iterable[str | Path]) -> list[dict]:
    """Rows of every existing rows file, in order; a file that does not verify is a one-line error."""
    rows = []
    for path in map(Path, paths):
        if not path.exists():
            continue
        parsed = _parse(path)
        if parsed is None:
            raise InputError(
                f"{path} is cut short or damaged (its last line is not '# rows: N' for its N rows): rerun "
                "the lre-pl sweep or beta-study that wrote it, which writes it again"
            )
        rows += parsed
    return rows


def read_rows_csv(path: str | Path) -> list[dict]:
    """The rows of a ``results.csv`` (or ``.csv.gz``) as the rows files hold them (numbers typed, empty
    cells ``None``): a committed result is re-read, and its reports remade, without its sweep folder."""
    path = Path(path)
    data = path.read_bytes()
    text = (gzip.decompress(data) if path.suffix == ".gz" else data).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and set(rows[0]) != set(ROW_FIELDS):
        raise InputError(f"{path} has columns {sorted(rows[0])}, not the rows' {list(ROW_FIELDS)}")
    convert = {"trial": int, "n": int, "rank": int, "value": float, "beta": float}
    return [
        {key: None if value == "" else convert.get(key, str)(value) for key, value in row.items()}
        for row in rows
    ]


def write_rows_csv(path: str | Path, rows: Sequence[dict]) -> None:
    """Tidy rows as one CSV file (a header of :data:`ROW_FIELDS`), written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(path, buffer.getvalue())
