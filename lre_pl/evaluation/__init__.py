"""Evaluation of estimates: faithfulness metrics, causality edits, and the faithfulness grid over a bundle.

Before 0.2 this was one module, ``lre_pl.evaluation``; its public names are still served here.
"""

from lre_pl.evaluation.context import BundleContext, Decoder
from lre_pl.evaluation.grid import BundleEvaluation, EvaluationGrid
from lre_pl.protocol.rows import ROW_FIELDS
from lre_pl.protocol.splits import SPLITS, split_known

__all__ = [
    "ROW_FIELDS",
    "SPLITS",
    "BundleContext",
    "BundleEvaluation",
    "Decoder",
    "EvaluationGrid",
    "split_known",
]
