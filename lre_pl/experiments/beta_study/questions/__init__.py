"""The β study's questions: one module and one class each, in one registry.

A question's class (:mod:`~lre_pl.experiments.beta_study.questions.base`) computes its rows from a
bundle's context (or from all of a sweep's bundles), summarizes one model's rows into numbers, and
renders its section and verdict; its config is ``configs/beta/<name>.yaml``. Every module of this
package is imported here, so a new question is a new module with a :func:`register`-ed class: the
CLI's ``questions``, the config check, the rows folders and the report's order all follow
:data:`REGISTRY`.
"""

import importlib
import pkgutil

from lre_pl.experiments.beta_study.questions.base import Question, register, registered

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

#: name -> question class, in the report's order (each class's ``number``).
REGISTRY: dict[str, type[Question]] = {question.name: question for question in registered()}
#: Every question's name, in the report's order.
QUESTIONS = tuple(REGISTRY)
#: The questions answered on each bundle alone (the others: across all of a sweep's bundles).
PER_BUNDLE = tuple(name for name, question in REGISTRY.items() if not question.across_bundles)
#: The β study's questions (``docs/beta_study.md``: what does not remove β, and whether β is one constant).
STUDY = tuple(name for name, question in REGISTRY.items() if not question.hypothesis)
#: The questions that each test one explanation of why β > 1 (``docs/explaining_beta.md``).
EXPLANATIONS = tuple(name for name, question in REGISTRY.items() if question.hypothesis)

__all__ = ["EXPLANATIONS", "PER_BUNDLE", "QUESTIONS", "REGISTRY", "STUDY", "Question", "register"]
