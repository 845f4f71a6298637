"""The linear relational embedding LRE(s) = beta * W s + b, its file format and its use on a subject."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import lre_pl
from lre_pl.errors import InputError
from lre_pl.hooks import capture
from lre_pl.models import LanguageModel, load_language_model
from lre_pl.prompts import SUBJECT_SLOT, encode_prompt, fill_subject

#: Fields an operator file must hold.
REQUIRED_FIELDS = ("weight", "bias", "beta", "layer", "relation", "model")


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
    version: str = lre_pl.__version__

    def __call__(self, subject_state: torch.Tensor) -> torch.Tensor:
        """LRE(s) for s [..., d] -> [..., d]."""
        weight = self.weight.to(subject_state)
        return self.beta * subject_state @ weight.T + self.bias.to(subject_state)

    def save(self, path: str | Path) -> Path:
        """Write atomically (a crash never leaves a truncated file under the final name)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = asdict(self)
        # clone(): a view of one layer of a [layer, d, d] stack would save the whole stack's storage.
        payload["weight"] = self.weight.detach().float().cpu().clone()
        payload["bias"] = self.bias.detach().float().cpu().clone()
        partial = path.with_name(path.name + ".partial")
        torch.save(payload, partial)
        os.replace(partial, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> LinearRelationOperator:
        """Read an operator file, or raise a one-line InputError saying what is wrong with it."""
        path = Path(path)
        if not path.is_file():
            raise InputError(
                f"operator file {str(path)!r} does not exist: give the operator.pt of an earlier run "
                "(lightning_logs/version_N/operator.pt)"
            )
        try:
            payload = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as error:  # torch's own message advises weights_only=False: never do that here
            raise InputError(
                f"{str(path)!r} is not a readable lre_pl operator file ({type(error).__name__}: corrupt, "
                "truncated or another format): re-create it with lre-pl fit"
            ) from None
        missing = [key for key in REQUIRED_FIELDS if not isinstance(payload, dict) or key not in payload]
        if missing:
            raise InputError(
                f"{str(path)!r} is not an lre_pl operator file (no {', '.join(missing)}): re-create it with lre-pl fit"
            )
        return cls(**{key: payload[key] for key in cls.__dataclass_fields__ if key in payload})

    def predict(self, subject: str, lm: LanguageModel | None = None, k: int = 5) -> list[tuple[str, float]]:
        """Top-k (token, probability) of decode(LRE(s)) for ``subject`` on the test prompt."""
        lm = lm or load_language_model(self.model)
        prompt = encode_prompt(lm.tokenizer, fill_subject(self.test_prompt_template, subject))
        module = {self.layer: lm.layer_module(self.layer)}
        with torch.no_grad(), capture(module, lambda layer, hidden: hidden[0, prompt.subject_index]) as state:
            lm.base_model(input_ids=torch.tensor([prompt.input_ids], device=lm.device))
            probabilities = lm.decode(self(state[self.layer])).softmax(-1)  # [vocab]
        top = probabilities.topk(k)
        return list(zip(lm.token_strings(top.indices), top.values.tolist()))
