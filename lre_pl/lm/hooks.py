"""Reading and rewriting hidden states in a forward pass, with hooks that are always removed.

Every place that reads or writes a layer's output (the Jacobian engine, the activations, the
operator's ``predict``, the independent test references and the benchmark) goes through these
context managers, so a hook can never outlive its use, whatever raises inside the ``with`` block::

    with capture({8: lm.blocks[8]}, lambda layer, hidden: hidden[:, -1]) as captured:
        lm.base_model(input_ids=ids)
    captured[8]  # [batch, d]

Hooks on one module run in the order they were registered: a ``capture`` entered inside a
``patched`` on the same module sees the rewritten output. ``bypassed`` goes further than a hook: the
modules do not run at all (a forward resumed after a layer whose output is already known), and
``replaced_forwards`` runs another computation in their place (norms with their scale held fixed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar

import torch
from torch import nn

Key = TypeVar("Key")


def hidden_of(output) -> torch.Tensor:
    """The hidden-state tensor of a layer module's output (blocks of some versions return tuples)."""
    return output[0] if isinstance(output, tuple) else output


def with_hidden(output, hidden: torch.Tensor):
    """``output`` with its hidden-state tensor replaced by ``hidden``."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextlib.contextmanager
def forward_hooks(hooks: Iterable[tuple[nn.Module, Callable]]) -> Iterator[None]:
    """Register ``(module, hook)`` forward hooks for the ``with`` block; remove them on any exit."""
    handles = []
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def capture(
    modules: Mapping[Key, nn.Module],
    select: Callable[[Key, torch.Tensor], torch.Tensor] = lambda key, hidden: hidden,
) -> Iterator[dict[Key, torch.Tensor]]:
    """Yield a dict that forwards run in the block fill: ``captured[key] = select(key, hidden)``.

    ``hidden`` is the hidden-state output of ``modules[key]``; ``select`` keeps what is needed (a
    token, a row) so that no full activation is held longer than the forward.
    """
    captured: dict[Key, torch.Tensor] = {}

    def hook_for(key: Key):
        def hook(module, args, output) -> None:
            captured[key] = select(key, hidden_of(output))

        return hook

    with forward_hooks((module, hook_for(key)) for key, module in modules.items()):
        yield captured


@contextlib.contextmanager
def patched(
    modules: Mapping[Key, nn.Module], rewrite: Callable[[Key, torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Forwards run in the block see ``rewrite(key, hidden)`` as the hidden output of ``modules[key]``."""

    def hook_for(key: Key):
        def hook(module, args, output):
            return with_hidden(output, rewrite(key, hidden_of(output)))

        return hook

    with forward_hooks((module, hook_for(key)) for key, module in modules.items()):
        yield


@contextlib.contextmanager
def replaced_forwards(
    modules: Iterable[nn.Module], forward_of: Callable[[nn.Module], Callable]
) -> Iterator[None]:
    """Forwards run in the block call ``forward_of(module)`` in place of each of ``modules``' own forward.

    Forward hooks on them still run. A ``forward`` set on the instance before (accelerate's device
    hooks) is restored on exit, whatever raises inside the block.
    """
    modules = list(modules)
    previous = [module.__dict__.get("forward") for module in modules]
    try:
        for module in modules:
            module.forward = forward_of(module)
        yield
    finally:
        for module, forward in zip(modules, previous):
            if forward is None:
                del module.forward
            else:
                module.forward = forward


def bypassed(modules: Iterable[nn.Module], output: torch.Tensor):
    """Forwards run in the block skip ``modules``: each returns ``output`` without computing anything.

    For modules whose output is one tensor (blocks and embeddings of transformers >= 5; a test runs
    every supported family). See :func:`replaced_forwards`.
    """
    return replaced_forwards(modules, lambda module: lambda *args, **kwargs: output)
