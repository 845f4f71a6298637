"""Linear Relational Embeddings (Hernandez et al., ICLR 2024) as a PyTorch Lightning experiment module.

>>> import pytorch_lightning as pl
>>> from lre_pl import LinearRelationModule, RelationDataModule
>>> pl.Trainer(max_epochs=1).fit(LinearRelationModule(layers=8), datamodule=RelationDataModule())

The package is layered; each layer imports only the ones before it (``tests/unit/test_layers.py``):
``dataset`` → ``protocol`` → ``lm`` → ``lre`` → ``evaluation`` → ``lightning`` → ``experiments`` →
``api`` / ``cli``. ``errors``, ``files`` and ``class_paths`` serve every layer.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.2.0"

#: Public name -> module that defines it. Imported on first use, so ``import lre_pl`` stays light
#: (no torch, no Lightning) for the CLI's --help and the data tools.
_EXPORTS = {
    "estimate": "lre_pl.api",
    "attribute_lens": "lre_pl.api",
    "LinearRelationOperator": "lre_pl.lre.operator",
    "LinearRelationModule": "lre_pl.lightning.module",
    "RelationDataModule": "lre_pl.lightning.datamodule",
    "Bundle": "lre_pl.lre.bundle",
    "Sweep": "lre_pl.experiments.sweep.runner",
    "SweepConfig": "lre_pl.experiments.sweep.runner",
}

__all__ = sorted(_EXPORTS)

#: The flat modules of lre_pl 0.1 -> where they live now. Users' YAML (``class_path:
#: lre_pl.estimators.Translation``), scripts and old ``lre.ckpt`` files name the old paths; each
#: resolves to the very module object of its new home (``lre_pl.evaluation`` is a package that serves
#: the old module's names itself).
MOVED_MODULES = {
    "lre_pl.relations": "lre_pl.dataset.relations",
    "lre_pl.prompts": "lre_pl.dataset.prompts",
    "lre_pl.models": "lre_pl.lm.models",
    "lre_pl.hooks": "lre_pl.lm.hooks",
    "lre_pl.suffix": "lre_pl.lm.suffix",
    "lre_pl.activations": "lre_pl.lm.activations",
    "lre_pl.jacobian": "lre_pl.lm.jacobian",
    "lre_pl.estimators": "lre_pl.lre.estimators",
    "lre_pl.operator": "lre_pl.lre.operator",
    "lre_pl.beta": "lre_pl.lre.beta",
    "lre_pl.bundle": "lre_pl.lre.bundle",
    "lre_pl.metrics": "lre_pl.evaluation.metrics",
    "lre_pl.editing": "lre_pl.evaluation.causality",
    "lre_pl.data": "lre_pl.lightning.datamodule",
    "lre_pl.module": "lre_pl.lightning.module",
    "lre_pl.callbacks": "lre_pl.lightning.callbacks",
    "lre_pl.distributed": "lre_pl.lightning.distributed",
    "lre_pl.reports": "lre_pl.lightning.outputs",
    "lre_pl.sweep": "lre_pl.experiments.sweep.runner",
    "lre_pl.sweep_report": "lre_pl.experiments.sweep.report",
    "lre_pl.beta_study": "lre_pl.experiments.beta_study.study",
    "lre_pl.beta_study_report": "lre_pl.experiments.beta_study.report",
    "lre_pl.global_beta": "lre_pl.experiments.beta_study.global_beta",
}


class _MovedModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as the module at its new home (the same object, so classes pickled
    or named under the old path are the classes of today)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED_MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(MOVED_MODULES[spec.name])

    def exec_module(self, module) -> None:
        pass  # the new module ran when create_module imported it


if not any(isinstance(finder, _MovedModule) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModule())


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lre_pl' has no attribute {name!r}")
