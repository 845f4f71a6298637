"""The ``class_path`` values a config may name (YAML, flags, nested configs): a ``class_path`` is
imported as it is parsed, so any installed module would run its import-time code before the type
check. jsonargparse checks every ``class_path`` it is given against its import-path policy before
importing it; :func:`allow_only_known_class_paths` sets that policy to :data:`ALLOWED_CLASS_PATHS` only
(short names such as ``LinearRegression`` resolve to these paths first, so they keep working)."""

from __future__ import annotations

import re

#: Import-path prefixes a config's ``class_path`` may start with: lre_pl's own classes, and the torch
#: and Lightning classes a user may name (loggers, callbacks, strategies, plugins, profilers,
#: accelerators, optimizers and learning-rate schedulers).
ALLOWED_CLASS_PATHS = (
    "lre_pl",
    *(
        f"{package}.{kind}"
        for package in ("pytorch_lightning", "lightning.pytorch")
        for kind in ("loggers", "callbacks", "strategies", "plugins", "profilers", "accelerators")
    ),
    *(f"lightning_fabric.{kind}" for kind in ("loggers", "strategies", "plugins", "accelerators")),
    "torch.optim",
)

#: jsonargparse's refusal of a denied import path, inside its parse error.
DENIED = re.compile(r"Importing '([\w.]+)' is not allowed")


def allow_only_known_class_paths() -> None:
    """Make jsonargparse refuse, before importing it, every ``class_path`` outside
    :data:`ALLOWED_CLASS_PATHS` (a process-wide setting: the CLI's parsers all share it)."""
    from jsonargparse import set_parsing_settings

    set_parsing_settings(import_path_denylist=["*"], import_path_allowlist=list(ALLOWED_CLASS_PATHS))


def refused_class_path(message: str) -> str | None:
    """The one line for a parse error that is jsonargparse's refusal of a ``class_path``, or ``None``."""
    denied = DENIED.search(message)
    if denied is None:
        return None
    return (
        f"class_path {denied[1]!r} is not allowed: a config may name only lre_pl's own classes (lre_pl.), "
        "torch's optimizers (torch.optim.) and Lightning's loggers, callbacks, strategies, plugins, profilers "
        "and accelerators (pytorch_lightning.loggers., ...); name one of those"
    )
