"""Linear Relational Embeddings (Hernandez et al., ICLR 2024) as a PyTorch Lightning experiment module."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: ``import lre_pl`` stays light (no torch/lightning) for the CLI's --help and the data tools.
    if name in {"estimate"}:
        from lre_pl.api import estimate

        return estimate
    if name in {"LinearRelationOperator"}:
        from lre_pl.operator import LinearRelationOperator

        return LinearRelationOperator
    raise AttributeError(name)
