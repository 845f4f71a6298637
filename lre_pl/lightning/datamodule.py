"""Splits, prompts and the LightningDataModule of one relation.

Training samples (for the Jacobian fit) come as encoded prompts; validation
serves the *known* test samples (those the LM itself answers on their few-shot
prompt) with their hidden states at every layer, computed once in ``setup``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lre_pl.dataset.matching import is_prefix_match
from lre_pl.dataset.prompts import SUBJECT_SLOT, EncodedPrompt, encode_prompt, fill_subject, make_prompt
from lre_pl.dataset.relations import Relation, RelationSample, load_relation
from lre_pl.errors import InputError
from lre_pl.evaluation.causality import EditSet
from lre_pl.lightning.distributed import (
    PaddedDataset,
    UnrepeatedDistributedSampler,
    gather_objects,
    rank_and_world,
)
from lre_pl.lm.activations import PromptStates, collect_states
from lre_pl.lm.models import LanguageModel, check_dtype, check_model_spec, load_language_model


def check_trial(relation: Relation, n_train: int, template_index: int = 0) -> None:
    """Raise a one-line error unless ``n_train`` leaves a test sample and the template exists."""
    templates = relation.prompt_templates
    if not 0 <= template_index < len(templates):
        raise InputError(
            f"template_index={template_index} out of range: {relation.name!r} has {len(templates)} "
            f"templates (0..{len(templates) - 1})"
        )
    count = len(relation.samples)
    dropped = (
        f" ({relation.duplicates_dropped} duplicate samples dropped)" if relation.duplicates_dropped else ""
    )
    if count < 2:
        raise InputError(
            f"relation {relation.name!r} ({relation.source}) has {count} distinct sample{'s' * (count != 1)}{dropped}: "
            "an LRE needs at least 2 (one to train on, one to test); add samples"
        )
    if not 1 <= n_train < count:
        raise InputError(
            f"n_train={n_train} must be between 1 and {count - 1}: relation {relation.name!r} has {count} samples{dropped}"
        )


def split_samples(
    samples: Sequence[RelationSample], n_train: int, seed: int
) -> tuple[list[RelationSample], list[RelationSample]]:
    """Seeded shuffle, then training samples round-robin across distinct objects; the rest is test.

    ``1 <= n_train < len(samples)`` (see :func:`check_trial`).
    """
    shuffled = list(samples)
    random.Random(seed).shuffle(shuffled)
    by_object: dict[str, list[RelationSample]] = {}
    for sample in shuffled:
        by_object.setdefault(sample.object, []).append(sample)
    train: list[RelationSample] = []
    while len(train) < n_train:
        for group in by_object.values():
            if group and len(train) < n_train:
                train.append(group.pop(0))
    chosen = set(map(id, train))
    return train, [sample for sample in shuffled if id(sample) not in chosen]


def object_token_id(tokenizer, prompt: str, obj: str) -> int:
    """The first token of ``" " + obj`` as the tokenizer encodes it right after ``prompt``."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    full_ids = tokenizer(f"{prompt} {obj}")["input_ids"]
    if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
        return full_ids[len(prompt_ids)]
    return tokenizer(f" {obj}", add_special_tokens=False)["input_ids"][0]


def prompt_prefix(lm: LanguageModel) -> str:
    """What every prompt of ``lm`` starts with: the paper prefixes GPT-style prompts with the
    end-of-text token and no space (its ``maybe_prefix_eos``); other models get nothing."""
    return lm.tokenizer.eos_token if lm.adapter.prepend_eos else ""


@dataclass(frozen=True)
class TrainingItem:
    sample: RelationSample
    prompt: EncodedPrompt
    target_token_id: int
    """First token of the object: the target of the learnable-beta loss."""


@dataclass(frozen=True)
class RelationPrompts:
    """Everything one trial (relation, model, n_train, seed) runs, before any Jacobian."""

    relation: Relation
    train: list[TrainingItem]
    test_samples: list[RelationSample]
    test_prompts: list[EncodedPrompt]
    test_prompt_template: str

    @classmethod
    def build(
        cls, relation: Relation, lm: LanguageModel, n_train: int, seed: int, template_index: int = 0
    ) -> RelationPrompts:
        check_trial(relation, n_train, template_index)
        template = relation.prompt_templates[template_index]
        prefix = prompt_prefix(lm)
        train_samples, test_samples = split_samples(relation.samples, n_train, seed)
        train = []
        for sample in train_samples:
            examples = [other for other in train_samples if other is not sample]
            text = make_prompt(template, sample.subject, examples, prefix)
            prompt = encode_prompt(lm.tokenizer, text)
            train.append(
                TrainingItem(sample, prompt, object_token_id(lm.tokenizer, text.text, sample.object))
            )
        test_template = make_prompt(template, SUBJECT_SLOT, train_samples, prefix).text
        test_prompts = [
            encode_prompt(lm.tokenizer, fill_subject(test_template, s.subject)) for s in test_samples
        ]
        return cls(relation, train, test_samples, test_prompts, test_template)


@dataclass(frozen=True)
class KnownTestSet:
    """The test samples the LM answers, with their states; ``lm_accuracy`` is over all test samples."""

    samples: list[RelationSample]
    states: PromptStates
    lm_predictions: list[str]
    lm_accuracy: float
    n_test: int
    prompts: list[EncodedPrompt]
    """Each known sample's test prompt (what causality edits re-run)."""
    is_known: list[bool]
    """Whether the LM answers each kept sample (all True unless ``keep_all``)."""

    def edit_set(self) -> EditSet:
        return EditSet(
            self.prompts,
            [s.subject for s in self.samples],
            [s.object for s in self.samples],
            self.states.subject_states,
            self.states.output_states,
        )


def filter_known(
    lm: LanguageModel,
    prompts: RelationPrompts,
    batch_size: int,
    min_known: int,
    progress: bool = False,
    keep_all: bool = False,
) -> KnownTestSet:
    """Run every test prompt once (sharded over ranks) and keep those the LM answers correctly.

    ``keep_all`` keeps every test sample (``lm_accuracy`` still counts the known ones).
    """
    rank, world = rank_and_world()
    mine = list(range(rank, len(prompts.test_prompts), world))
    states = collect_states(
        lm,
        [prompts.test_prompts[i] for i in mine],
        batch_size,
        "knowns filter" if progress and rank == 0 else None,
    )
    shards = gather_objects(
        (mine, states.subject_states.cpu(), states.output_states.cpu(), states.top_token_ids.cpu())
    )
    order = [index for shard in shards for index in shard[0]]
    inverse = torch.tensor(order).argsort()
    all_states = PromptStates(*(torch.cat([shard[k] for shard in shards])[inverse] for k in (1, 2, 3)))
    predictions = lm.token_strings(all_states.top_token_ids)
    answered = [is_prefix_match(predictions[i], s.object) for i, s in enumerate(prompts.test_samples)]
    known = [i for i, flag in enumerate(answered) if flag]
    accuracy = len(known) / len(prompts.test_samples)
    if keep_all:
        known = list(range(len(prompts.test_samples)))
    elif len(known) < min_known:
        raise InputError(
            f"only {len(known)} of {len(prompts.test_samples)} test samples of {prompts.relation.name!r} are known "
            f"to {lm.spec} (min_known={min_known}): pick another relation or model, or lower min_known"
        )
    index = torch.tensor(known)
    return KnownTestSet(
        samples=[prompts.test_samples[i] for i in known],
        states=PromptStates(
            *(
                t[index]
                for t in (all_states.subject_states, all_states.output_states, all_states.top_token_ids)
            )
        ),
        lm_predictions=[predictions[i] for i in known],
        lm_accuracy=accuracy,
        n_test=len(prompts.test_samples),
        prompts=[prompts.test_prompts[i] for i in known],
        is_known=[answered[i] for i in known],
    )


def _as_list(batch: list) -> list:
    return [item for item in batch if item is not None]  # None: a padding slot of a shorter shard


def _collate_known(batch: list[dict | None]) -> dict | None:
    batch = _as_list(batch)
    if not batch:
        return None
    return {
        "subject_states": torch.stack([item["subject_states"] for item in batch]),  # [batch, layer, d]
        "subject": [item["subject"] for item in batch],
        "object": [item["object"] for item in batch],
        "lm_prediction": [item["lm_prediction"] for item in batch],
    }


class RelationDataModule(pl.LightningDataModule):
    """Training samples to ``fit`` (the Jacobian estimate), known test samples to validation.

    Args:
        relation: a shipped relation name (``lre-pl relations`` lists them) or a JSON file path.
        model: the model spec; must equal the LightningModule's (the CLI links them).
        dtype: torch dtype name of the model weights.
        n_train: training samples (few-shot examples of every prompt).
        seed: seed of the train/test split.
        template_index: which of the relation's prompt templates to use.
        batch_size: prompts per batch of the Jacobian passes and of validation.
        states_batch_size: prompts per forward of the knowns filter (no gradients, so it can be wider:
            on a 2-core CPU 32 runs ~20 % faster per prompt than 8, 64 no faster than 32).
        min_known: fewest known test samples to go on with (at least 1); fewer is an error.
        filter_known: validate on known test samples only (the paper); ``False`` validates on all.
    """

    def __init__(
        self,
        relation: str = "country capital city",
        model: str = "smollm2-135m",
        dtype: str = "float32",
        n_train: int = 5,
        seed: int = 0,
        template_index: int = 0,
        batch_size: int = 8,
        states_batch_size: int = 32,
        min_known: int = 3,
        filter_known: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        # Everything that needs no model is checked here, before any model is loaded.
        check_model_spec(model)
        check_dtype(dtype)
        self.relation = load_relation(relation)
        check_trial(self.relation, n_train, template_index)
        for name, value in (
            ("min_known", min_known),
            ("batch_size", batch_size),
            ("states_batch_size", states_batch_size),
        ):
            if value < 1:
                raise InputError(f"{name}={value} must be at least 1")
        self.prompts: RelationPrompts | None = None
        self.known: KnownTestSet | None = None

    def _device(self) -> str:
        return str(self.trainer.strategy.root_device) if self.trainer is not None else "cpu"

    def language_model(self) -> LanguageModel:
        return load_language_model(self.hparams.model, self.hparams.dtype, self._device())

    def setup(self, stage: str) -> None:
        if self.known is not None:
            return
        started = time.perf_counter()
        lm = self.language_model()
        loaded = time.perf_counter()
        self.prompts = RelationPrompts.build(
            self.relation, lm, self.hparams.n_train, self.hparams.seed, self.hparams.template_index
        )
        self.known = filter_known(
            lm,
            self.prompts,
            self.hparams.states_batch_size,
            self.hparams.min_known,
            progress=True,
            keep_all=not self.hparams.filter_known,
        )
        #: Wall seconds of this rank's set-up: model load (0 when this process had it), knowns filter.
        self.seconds = {"model_load": loaded - started, "knowns": time.perf_counter() - loaded}

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        if isinstance(batch, list):  # training prompts: the Jacobian engine places its own tensors
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _loader(self, items: list, collate_fn) -> DataLoader:
        rank, world = rank_and_world()
        sampler = UnrepeatedDistributedSampler(items, world, rank) if world > 1 else None
        return DataLoader(
            PaddedDataset(items), self.hparams.batch_size, sampler=sampler, collate_fn=collate_fn
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.prompts.train, _as_list)

    def val_dataloader(self) -> DataLoader:
        known = self.known
        items = [
            {
                "subject_states": known.states.subject_states[i],
                "subject": s.subject,
                "object": s.object,
                "lm_prediction": known.lm_predictions[i],
            }
            for i, s in enumerate(known.samples)
        ]
        return self._loader(items, _collate_known)
