"""Linear Relational Embeddings (Hernandez et al., ICLR 2024) as a PyTorch Lightning experiment module.

>>> import pytorch_lightning as pl
>>> from lre_pl import LinearRelationModule, RelationDataModule
>>> pl.Trainer(max_epochs=1).fit(LinearRelationModule(layers=8), datamodule=RelationDataModule())
"""

__version__ = "0.1.0"

#: Public name -> module that defines it. Imported on first use, so ``import lre_pl`` stays light
#: (no torch, no Lightning) for the CLI's --help and the data tools.
_EXPORTS = {
    "estimate": "lre_pl.api",
    "LinearRelationOperator": "lre_pl.operator",
    "LinearRelationModule": "lre_pl.module",
    "RelationDataModule": "lre_pl.data",
    "Bundle": "lre_pl.bundle",
    "Sweep": "lre_pl.sweep",
    "SweepConfig": "lre_pl.sweep",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lre_pl' has no attribute {name!r}")
