"""When does a decoded token name an object: the one criterion of the knowns filter, faithfulness and
causality."""

from __future__ import annotations


def is_prefix_match(token: str, target: str) -> bool:
    """The paper's criterion: the stripped, lower-cased token is a non-empty prefix of the object."""
    token = token.strip().lower()
    return bool(token) and target.strip().lower().startswith(token)
