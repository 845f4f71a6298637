"""Files that are complete under their final name: written beside it, then renamed over it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".partial") -> Iterator[Path]:
    """Yield ``path`` + ``suffix`` to write to; on success it replaces ``path`` (one rename), so a
    crash or Ctrl-C never leaves a truncated file under the final name. Parent folders are made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + suffix)
    yield partial
    os.replace(partial, path)


def write_text_atomically(path: str | Path, text: str) -> None:
    with atomic_path(path) as partial:
        partial.write_text(text)
