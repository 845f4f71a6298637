"""Relation r's LRE applied to relation r′'s subject states: does an LRE read the subject's
representation, or the prompt it was estimated on? (Christ et al., NeurIPS 2025: LREs act as coarse
property extractors.)

Everything comes from a finished sweep's bundles: r's W and b at the (layer, β) the sweep chose on r's
dev split, and r′'s test subject states, which a bundle keeps at every layer. No Jacobian and no forward
pass: decoding the readouts through the LM's final norm and unembedding is the whole cost. Per ordered
pair (r, r′) and trial, over the test samples of r′ that the sweep evaluated (its known ones):

- ``type_share``: the share of readouts whose top-1 token is in r's object vocabulary
  (:func:`object_vocabulary`): does r's LRE answer with r's kind of object, whatever the subject?
- ``type_share_beyond_b``: the share whose top-1 token is in r's object vocabulary and is not the token of
  decode(b), r's readout of no subject: r's kind of object that the subject's state chose, not the bias.
- ``shared_subject_recall@1``: on r′'s subjects that are also subjects of r's relation (any sample of
  its data set), the share whose top-1 token starts r's true object of that subject
  (:func:`~lre_pl.evaluation.metrics.prefix_hits`; a subject with several objects in r: any of them);
  NaN with ``n`` 0 where r and r′ share no subject.

The control (``kind`` ``cross_relation:bias_only``, one row per r and trial, ``metric`` ``type_share``,
``n`` 1): whether decode(β W 0 + b) = decode(b), r's readout with no subject at all, is already one of r's
object tokens. Where it is, a high type share needs nothing from the subject's state.

The diagonal (r′ = r) is the reference: r on its own subjects, where the second metric is the
sweep's faithfulness@1 of r's LRE over all its evaluated samples.

Rows (:func:`~lre_pl.protocol.rows.make_row`): ``relation``, ``category``, ``layer`` and ``beta`` are r's
(whose LRE reads), ``split`` names r′ (whose evaluated test samples the value is over), ``kind`` is
``cross_relation``, ``n`` the number of readouts the value is a share of.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from lre_pl.dataset.prompts import fill_subject
from lre_pl.dataset.relations import RelationSample
from lre_pl.evaluation.context import Decoder
from lre_pl.evaluation.metrics import prefix_hits
from lre_pl.lightning.datamodule import object_token_id
from lre_pl.lre.bundle import Bundle
from lre_pl.lre.operator import LinearRelationOperator
from lre_pl.protocol.rows import make_row

Layer = int | str

#: The rows' ``kind``, and their two metrics.
KIND = "cross_relation"
#: The control's rows: r's readout of no subject at all (s = 0), one per reader and trial.
BIAS_KIND = "cross_relation:bias_only"
TYPE_SHARE = "type_share"
TYPE_BEYOND_B = "type_share_beyond_b"
SHARED_RECALL = "shared_subject_recall@1"
METRICS = (TYPE_SHARE, TYPE_BEYOND_B, SHARED_RECALL)


def object_vocabulary(
    tokenizer, test_prompt_template: str, samples: Iterable[RelationSample]
) -> frozenset[int]:
    """The first token ids of a relation's objects: each object's first token as the tokenizer encodes
    ``" " + object`` right after the relation's test prompt filled with the sample's subject
    (:func:`~lre_pl.lightning.datamodule.object_token_id`, the target a fit trains β on), so that a
    tokenizer that merges across the space, or encodes a word differently after the prompt, counts the
    token the LM would emit."""
    return frozenset(
        object_token_id(tokenizer, fill_subject(test_prompt_template, sample.subject).text, sample.object)
        for sample in samples
    )


@dataclass(frozen=True)
class Reader:
    """Relation r as the reader: its LRE at the sweep's dev-chosen (layer, β), the first tokens of its
    objects and its objects by subject (its whole data set)."""

    relation: str
    category: str
    trial: int
    operator: LinearRelationOperator
    vocabulary: frozenset[int]
    """First token ids of r's objects (:func:`object_vocabulary`)."""
    objects: Mapping[str, frozenset[str]]
    """subject -> r's objects of that subject, over every sample of r's data set."""

    @classmethod
    def of(
        cls, bundle: Bundle, layer: Layer, beta: float, tokenizer, samples: Sequence[RelationSample]
    ) -> Reader:
        """r's reader from its bundle (the operator copied out of the bundle's stack of every layer's W)
        and its data set ``samples``."""
        operator = bundle.operator(layer, beta)
        operator = dataclasses.replace(operator, weight=operator.weight.clone(), bias=operator.bias.clone())
        objects: dict[str, set[str]] = {}
        for sample in samples:
            objects.setdefault(sample.subject, set()).add(sample.object)
        return cls(
            bundle.relation,
            bundle.category,
            bundle.seed,
            operator,
            object_vocabulary(tokenizer, bundle.test_prompt_template, samples),
            {subject: frozenset(found) for subject, found in objects.items()},
        )


@dataclass(frozen=True)
class Subjects:
    """Relation r′'s evaluated test subjects and their states at the layers some reader reads."""

    relation: str
    category: str
    trial: int
    subjects: list[str]
    layers: list[Layer]
    states: torch.Tensor  # [k, len(layers), d] s of each evaluated subject at each of ``layers``

    @classmethod
    def of(cls, bundle: Bundle, evaluated: torch.Tensor, layers: Sequence[Layer]) -> Subjects:
        """The subjects of ``bundle`` at positions ``evaluated`` [k] (the sweep's known samples), their
        states kept at ``layers`` only (a bundle keeps every layer of every test sample)."""
        states = torch.stack([bundle.test_states(layer)[evaluated] for layer in layers], dim=1)
        subjects = [bundle.test_subjects[i] for i in evaluated.tolist()]
        return cls(bundle.relation, bundle.category, bundle.seed, subjects, list(layers), states.clone())

    def at(self, layer: Layer) -> torch.Tensor:
        """[k, d] the evaluated subjects' states at ``layer``."""
        return self.states[:, self.layers.index(layer)]


def shared_positions(reader: Reader, other: Subjects) -> list[int]:
    """Positions of r′'s evaluated subjects that are subjects of r's data set (the exact string)."""
    return [i for i, subject in enumerate(other.subjects) if subject in reader.objects]


def share(hits: torch.Tensor) -> float:
    """The mean of ``hits`` [n] bool; NaN for none."""
    return hits.float().mean().item() if len(hits) else float("nan")


def cross_rows(reader: Reader, others: Sequence[Subjects], decoder: Decoder, model: str) -> list[dict]:
    """The rows of r = ``reader`` on every r′ of ``others`` (its own subjects among them for the
    diagonal): every metric per r′, from one batched decode of every readout."""
    operator, layer = reader.operator, reader.operator.layer
    readouts = [operator(other.at(layer)) for other in others]  # per r′ [k, d] β W s + b
    top = decoder.top_tokens(torch.cat(readouts)).ids[:, 0]  # [sum k] top-1 token ids
    bias_token = decoded_bias(operator, decoder)
    words = [word for [word] in decoder.token_strings(top[:, None])]
    rows, start = [], 0
    for other, readout in zip(others, readouts):
        ids, tokens = top[start : start + len(readout)], words[start : start + len(readout)]
        start += len(readout)
        in_type = torch.tensor([token in reader.vocabulary for token in ids.tolist()], dtype=torch.bool)
        shared = shared_positions(reader, other)
        recalled = torch.tensor(
            [prefix_hits([[tokens[i]]] * len(objects), objects).any().item()
             for i in shared for objects in [sorted(reader.objects[other.subjects[i]])]],
            dtype=torch.bool,
        )  # fmt: skip
        beyond_b = in_type & (ids != bias_token)
        for metric, hits in ((TYPE_SHARE, in_type), (TYPE_BEYOND_B, beyond_b), (SHARED_RECALL, recalled)):
            rows.append(
                make_row(
                    model=model, relation=reader.relation, category=reader.category, trial=reader.trial,
                    kind=KIND, selection="dev", estimator="lre", layer=str(layer), beta=operator.beta,
                    split=other.relation, metric=metric, value=share(hits), n=len(hits),
                )
            )  # fmt: skip
    return rows


def decoded_bias(operator: LinearRelationOperator, decoder: Decoder) -> int:
    """The top-1 token of r's readout of no subject: decode(β W 0 + b) = decode(b)."""
    zero = torch.zeros(1, operator.weight.shape[-1])  # [1, d] no subject
    return decoder.top_tokens(operator(zero)).ids[0, 0].item()


def bias_only_row(reader: Reader, decoder: Decoder, model: str) -> dict:
    """The control's row of r: 1.0 where the top-1 token of r's readout of s = 0 (decode(b)) is in r's
    object vocabulary, else 0.0."""
    operator = reader.operator
    top = decoded_bias(operator, decoder)
    return make_row(
        model=model, relation=reader.relation, category=reader.category, trial=reader.trial, kind=BIAS_KIND,
        selection="dev", estimator="lre", layer=str(operator.layer), beta=operator.beta, metric=TYPE_SHARE,
        value=float(top in reader.vocabulary), n=1,
    )  # fmt: skip
