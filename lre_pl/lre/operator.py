"""The linear relational embedding LRE(s) = beta * W s + b, its file format and its use on a subject.

The maths lives here as small shared pieces: :func:`relation_readout` is the one place that forms
beta * W s + b, and :class:`WeightSpectrum` gives the low-rank and pseudo-inverse views of W
(one SVD, reused for every rank of a sweep).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import lre_pl
from lre_pl.dataset.prompts import SUBJECT_SLOT, EncodedPrompt, encode_prompt, fill_subject
from lre_pl.dataset.relations import Relation
from lre_pl.errors import InputError
from lre_pl.files import field_problem, load_weights_only, write_torch_atomically
from lre_pl.lm.hooks import capture
from lre_pl.lm.models import LanguageModel, load_language_model
from lre_pl.lre.estimators import Estimator

#: Fields an operator file must hold.
REQUIRED_FIELDS = ("weight", "bias", "beta", "layer", "relation", "model")

#: The tensors of an operator file: their kind of numbers and shape.
OPERATOR_SHAPES = {"weight": (float, "d", "d"), "bias": (float, "d")}


#: Where β acts in :func:`relation_readout`.
BETA_ACTS_ON = ("projection", "bias", "both")


def relation_readout(
    projection: torch.Tensor, bias: torch.Tensor, beta: float | torch.Tensor, acts_on: str = "projection"
) -> torch.Tensor:
    """The LRE's output [..., d] from the projection W s [..., d] and b: the one place it is formed.

    ``acts_on``: ``projection`` is the paper's β W s + b; ``bias`` shrinks the translation instead,
    W s + b / β (NaN at β = 0); ``both`` scales the whole readout, β (W s + b). Through a
    scale-invariant final norm the first two decode alike (up to the norm's ε).
    """
    if acts_on == "projection":
        return beta * projection + bias
    if acts_on == "bias":
        return projection + bias / beta if beta else torch.full_like(projection, float("nan"))
    if acts_on == "both":
        return beta * (projection + bias)
    raise ValueError(f"acts_on={acts_on!r}: use one of {BETA_ACTS_ON}")


@dataclass(frozen=True)
class WeightSpectrum:
    """The SVD W = U diag(sigma) V^T of an (unscaled) W, and its rank-r views.

    ``rank`` counts singular values from the largest; singular values at or below
    ``tolerance * sigma_max`` count as zero, so a pseudo-inverse never divides by them.
    """

    u: torch.Tensor  # [d, k]
    sigma: torch.Tensor  # [k], descending
    vh: torch.Tensor  # [k, d]
    tolerance: float = 1e-6

    @classmethod
    def of(cls, weight: torch.Tensor, tolerance: float = 1e-6) -> WeightSpectrum:
        u, sigma, vh = torch.linalg.svd(weight.double(), full_matrices=False)
        return cls(u, sigma, vh, tolerance)

    @property
    def full_rank(self) -> int:
        """Number of singular values above the tolerance."""
        if not len(self.sigma):
            return 0
        return int((self.sigma > self.tolerance * self.sigma[0]).sum())

    def _rank(self, rank: int) -> int:
        if not 0 <= rank <= len(self.sigma):
            raise InputError(f"rank={rank} out of range: use 0..{len(self.sigma)} (the dimension of W)")
        return min(rank, self.full_rank)

    def low_rank(self, rank: int) -> torch.Tensor:
        """W_r = U_r diag(sigma_r) V_r^T [d, d], float32: the best rank-r approximation of W."""
        r = self._rank(rank)
        return ((self.u[:, :r] * self.sigma[:r]) @ self.vh[:r]).float()

    def pinv(self, rank: int) -> torch.Tensor:
        """W_r^+ = V_r diag(1 / sigma_r) U_r^T [d, d], float32: the paper's low-rank pseudo-inverse."""
        r = self._rank(rank)
        return ((self.vh[:r].T / self.sigma[:r]) @ self.u[:, :r].T).float()


@dataclass
class LinearRelationOperator:
    """An estimated LRE and everything needed to re-run it."""

    weight: torch.Tensor  # [d, d] W = mean of the per-sample Jacobians
    bias: torch.Tensor  # [d] b = mean of o_i - J_i s_i
    beta: float
    """Scale on W s."""
    layer: int | str
    """Where s is read: ``"emb"`` or the output of block ``layer``."""
    relation: str
    model: str
    """The model spec string it was estimated on."""
    n_train: int
    seed: int
    train_prompts: list[str] = field(default_factory=list)
    """Exactly the strings that were run for the training samples."""
    train_subject_token_index: list[int] = field(default_factory=list)
    """Subject token positions in ``train_prompts`` as the model's tokenizer encodes them by default."""
    test_prompt_template: str = SUBJECT_SLOT
    """The few-shot prompt of test samples; the subject goes, literally, in place of its LAST ``{}``."""
    estimator: str = "JacobianMean()"
    """How W and b were made (``lre_pl.lre.estimators``): the LRE, or a baseline."""
    version: str = lre_pl.__version__

    @classmethod
    def estimated(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor,
        beta: float,
        layer: int | str,
        *,
        relation: Relation,
        model: str,
        n_train: int,
        seed: int,
        train_prompts: Sequence[EncodedPrompt],
        test_prompt_template: str,
        estimator: Estimator,
    ) -> LinearRelationOperator:
        """The operator of one estimated layer: W [d, d] and b [d] as CPU copies, the training prompts
        exactly as they were run, and the estimator by its repr (what a fit's ``operator.pt`` holds)."""
        return cls(
            weight=weight.detach().cpu(),
            bias=bias.detach().cpu(),
            beta=beta,
            layer=layer,
            relation=relation.name,
            model=model,
            n_train=n_train,
            seed=seed,
            train_prompts=[prompt.text for prompt in train_prompts],
            train_subject_token_index=[prompt.subject_index for prompt in train_prompts],
            test_prompt_template=test_prompt_template,
            estimator=repr(estimator),
        )

    def __call__(self, subject_state: torch.Tensor) -> torch.Tensor:
        """LRE(s) for s [..., d] -> [..., d]."""
        projection = subject_state @ self.weight.to(subject_state).T  # [..., d] W s
        return relation_readout(projection, self.bias.to(subject_state), self.beta)

    @functools.cached_property
    def spectrum(self) -> WeightSpectrum:
        """The SVD of the unscaled W (beta plays no part), computed once."""
        return WeightSpectrum.of(self.weight)

    def low_rank(self, rank: int) -> LinearRelationOperator:
        """This operator with W replaced by its best rank-``rank`` approximation."""
        return dataclasses.replace(self, weight=self.spectrum.low_rank(rank))

    def save(self, path: str | Path) -> Path:
        """Write atomically (a crash or a full disk never leaves a truncated file under the final name)."""
        payload = asdict(self)
        # clone(): a view of one layer of a [layer, d, d] stack would save the whole stack's storage.
        payload["weight"] = self.weight.detach().float().cpu().clone()
        payload["bias"] = self.bias.detach().float().cpu().clone()
        write_torch_atomically(path, payload)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> LinearRelationOperator:
        """Read an operator file, checked whole first and loaded weights-only (:func:`~lre_pl.files.load_weights_only`),
        then every field's type and shape; a one-line InputError saying what is wrong with it."""
        path = Path(path)
        if not path.exists():
            raise InputError(
                f"operator file {str(path)!r} does not exist: give the operator.pt of an earlier run "
                "(lightning_logs/version_N/operator.pt)"
            )
        payload, reason = load_weights_only(path, refused=": not an lre_pl file")
        if reason is not None:
            raise InputError(
                f"{str(path)!r} is not a readable lre_pl operator file ({reason}): re-create it with lre-pl fit"
            )
        missing = [key for key in REQUIRED_FIELDS if not isinstance(payload, dict) or key not in payload]
        if missing:
            raise InputError(
                f"{str(path)!r} is not an lre_pl operator file (no {', '.join(missing)}): re-create it with lre-pl fit"
            )
        fields = {key: payload[key] for key in cls.__dataclass_fields__ if key in payload}
        problem = field_problem(fields, cls, OPERATOR_SHAPES)
        if problem is None and not (fields["layer"] == "emb" or isinstance(fields["layer"], int)):
            problem = f"layer is {fields['layer']!r}, not 'emb' or a block index"
        if problem is None and not fields["beta"] > 0:
            problem = f"beta is {fields['beta']!r}, not a positive number"
        if problem is None and not (fields["weight"].isfinite().all() and fields["bias"].isfinite().all()):
            problem = "weight or bias holds NaN or infinity"
        if problem is not None:
            raise InputError(
                f"{str(path)!r} is not a valid lre_pl operator file ({problem}): re-create it with lre-pl fit"
            )
        return cls(**fields)

    def top_objects(
        self, subject_states: torch.Tensor, lm: LanguageModel, k: int = 5
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [N, k] and probabilities [N, k] of the top k of decode(LRE(s)) for s [N, d]: what
        :meth:`predict` and the attribute lens show (one readout, one decode)."""
        with torch.no_grad():
            logits = lm.decode(self(subject_states.to(lm.device, lm.dtype)))  # [N, vocab]
            top = logits.float().softmax(-1).topk(k)
        return top.indices.cpu(), top.values.cpu()

    def predict(self, subject: str, lm: LanguageModel | None = None, k: int = 5) -> list[tuple[str, float]]:
        """Top-k (token, probability) of decode(LRE(s)) for ``subject`` on the test prompt."""
        lm = lm or load_language_model(self.model)
        prompt = encode_prompt(lm.tokenizer, fill_subject(self.test_prompt_template, subject))
        module = {self.layer: lm.layer_module(self.layer)}
        with torch.no_grad(), capture(module, lambda layer, hidden: hidden[0, prompt.subject_index]) as state:
            lm.base_model(input_ids=torch.tensor([prompt.input_ids], device=lm.device))
        ids, probabilities = self.top_objects(state[self.layer][None], lm, k)
        return list(zip(lm.token_strings(ids[0]), probabilities[0].tolist()))
