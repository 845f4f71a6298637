"""Ways of getting (W, b) from one layer's training samples: the LRE and the paper's baselines, as equals.

Each estimator is a small class whose one call maps the gathered per-sample statistics
of one layer to ``(weight [d, d], bias [d])``; decoding ``beta * W s + b`` is the operator's job
(:func:`lre_pl.lre.operator.relation_readout`). Select one from YAML::

    model:
      estimator:
        class_path: lre_pl.lre.estimators.LinearRegression
        init_args: {ridge: 0.001}

The LRE on the embedding layer is :class:`JacobianMean` at layer ``emb``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lre_pl.errors import InputError


@dataclass(frozen=True)
class TrainingStatistics:
    """One layer's view of every training sample (all ranks gathered, float32)."""

    subject_states: torch.Tensor  # [n, d] s_i
    output_states: torch.Tensor  # [n, d] o_i: last block output at the last token, before the final norm
    jacobian_mean: torch.Tensor | None = None  # [d, d] mean_i J_i (None: no Jacobian was computed)
    bias_mean: torch.Tensor | None = None  # [d] mean_i (o_i - J_i s_i)


class Estimator:
    """Base class: ``estimator(statistics) -> (W, b)``.

    Plain classes (not dataclasses), so that jsonargparse takes any subclass as a ``class_path``;
    the repr names the class and its arguments, as operator files record it.
    """

    #: Whether the fit must run the Jacobian engine (otherwise one forward per prompt is enough).
    needs_jacobians = False
    #: Whether a sweep scans beta on this estimator's W s (the LRE's); the others are read at beta = 1.
    takes_beta = False
    #: The short name of result tables and of ``lre-pl sweep``'s ``estimators`` list.
    name = ""

    def __call__(self, statistics: TrainingStatistics) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        arguments = ", ".join(f"{name}={value!r}" for name, value in vars(self).items())
        return f"{type(self).__name__}({arguments})"

    @property
    def config(self) -> dict:
        """This estimator as jsonargparse writes it (``{class_path, init_args}``): what a checkpoint's
        hyper-parameters hold, a dict that a weights-only load accepts; :func:`estimator_of` reads it."""
        return {
            "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
            "init_args": dict(vars(self)),
        }

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self), tuple(vars(self).items())))


class JacobianMean(Estimator):
    """The LRE of the paper: W = mean_i J_i, b = mean_i (o_i - J_i s_i)."""

    needs_jacobians = True
    takes_beta = True
    name = "lre"

    def __call__(self, statistics: TrainingStatistics) -> tuple[torch.Tensor, torch.Tensor]:
        if statistics.jacobian_mean is None or statistics.bias_mean is None:
            raise ValueError("JacobianMean needs the mean Jacobian and bias: the fit ran no Jacobian")
        return statistics.jacobian_mean, statistics.bias_mean


class Translation(Estimator):
    """o ~ s + mean_i (o_i - s_i): W = I, b = the mean offset."""

    name = "translation"

    def __call__(self, statistics: TrainingStatistics) -> tuple[torch.Tensor, torch.Tensor]:
        s, o = statistics.subject_states, statistics.output_states
        return torch.eye(s.shape[1], dtype=s.dtype, device=s.device), (o - s).mean(0)


class Identity(Estimator):
    """The logit lens: decode s itself (W = I, b = 0)."""

    name = "identity"

    def __call__(self, statistics: TrainingStatistics) -> tuple[torch.Tensor, torch.Tensor]:
        s = statistics.subject_states
        return torch.eye(s.shape[1], dtype=s.dtype, device=s.device), torch.zeros_like(s[0])


class LinearRegression(Estimator):
    """Ridge regression of o on s: argmin_{W, b} sum_i |W s_i + b - o_i|^2 + lambda |W|_F^2.

    With n training samples (5-8) and d in the hundreds the plain least-squares problem is
    underdetermined: every W that maps the n centred s_i onto their o_i fits exactly. The ridge term
    picks the smallest such W and keeps the solve well conditioned. ``lambda = ridge * mean_i |s_i -
    s_mean|^2``, so one ``ridge`` means the same at every layer and in every model (residual norms
    range from ~1 to ~50,000). Solved in the n x n dual form:
    W = O_c^T (S_c S_c^T + lambda I_n)^-1 S_c, b = o_mean - W s_mean; ``ridge=0`` gives the
    minimum-norm least-squares W.
    """

    name = "linear_regression"

    def __init__(self, ridge: float = 1e-3):
        """``ridge``: lambda relative to the mean squared norm of the centred subject states."""
        if ridge < 0:
            raise InputError(f"ridge={ridge} must be non-negative")
        self.ridge = ridge

    def __call__(self, statistics: TrainingStatistics) -> tuple[torch.Tensor, torch.Tensor]:
        s, o = statistics.subject_states.double(), statistics.output_states.double()  # [n, d]
        s_mean, o_mean = s.mean(0), o.mean(0)
        s_c, o_c = s - s_mean, o - o_mean
        gram = s_c @ s_c.T  # [n, n], singular: centring leaves rank <= n - 1
        penalty = self.ridge * gram.trace() / len(s)
        # ridge = 0 is the minimum-norm least-squares fit (the pseudo-inverse of the singular Gram
        # matrix; all zeros when the states do not vary).
        inverse = (
            torch.linalg.pinv(gram)
            if penalty == 0
            else torch.linalg.inv(gram + penalty * torch.eye(len(s), dtype=s.dtype))
        )
        weight = o_c.T @ inverse @ s_c
        bias = o_mean - weight @ s_mean
        dtype = statistics.subject_states.dtype
        return weight.to(dtype), bias.to(dtype)


#: The registry of ``lre-pl sweep``: short name -> estimator class.
ESTIMATORS: dict[str, type[Estimator]] = {
    cls.name: cls for cls in (JacobianMean, Translation, LinearRegression, Identity)
}


def estimator_named(name: str) -> Estimator:
    """The registered estimator ``name`` with its default arguments, or a one-line error."""
    if name not in ESTIMATORS:
        raise InputError(f"unknown estimator {name!r}: use one of {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name]()


#: ``class_path`` -> estimator class, for lre_pl's estimators under their path of today and of 0.1
#: (``lre_pl.estimators``): the only classes a checkpoint's hyper-parameters may name.
CLASS_PATHS: dict[str, type[Estimator]] = {
    f"{prefix}.{cls.__qualname__}": cls
    for cls in ESTIMATORS.values()
    for prefix in (cls.__module__, "lre_pl.estimators")
}


def estimator_of(config: dict | Estimator | None) -> Estimator | None:
    """The estimator of a checkpoint's ``{class_path, init_args}`` (``None`` and instances as given),
    resolved among :data:`CLASS_PATHS` only: nothing is imported; any other class is one line."""
    if config is None or isinstance(config, Estimator):
        return config
    cls = CLASS_PATHS.get(config.get("class_path")) if isinstance(config, dict) else None
    if cls is None:
        raise InputError(
            f"estimator {config!r} is not one of lre_pl's estimators ({', '.join(CLASS_PATHS)}): "
            "give the checkpoint of an lre_pl fit"
        )
    try:
        return cls(**(config.get("init_args") or {}))
    except TypeError as error:
        raise InputError(
            f"estimator {config!r} cannot be built ({error}): give the checkpoint of an lre_pl fit"
        ) from None
