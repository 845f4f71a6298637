"""The attribute lens on distracted prompts (Hernandez et al., §5), on a finished sweep's bundles.

For each known test sample (s, o) of a relation, a prompt pushes the LM toward a wrong object o′ (the
object of another sample): a false statement of the relation about s, repeated (*repetition*), or an
instruction to repeat it (*instruction*), and then the query about s. On each prompt:

- the LM's recall@1 of o and of o′: its own next token;
- the attribute lens's recall@1 of o (and o′) at the subject's last token of the query, at the layer and
  β the sweep chose on dev: decode(β W s + b);
- the logit lens's at the same position and layer: decode(s).

The undistracted query (the template alone) is the reference. Only forwards of the new prompts are run;
W and b come from the bundles. Rows follow the protocol's schema (``kind`` ``attribute_lens:<prompt>``,
``estimator`` ``lm`` / ``lre`` / ``logit_lens``, ``metric`` ``recall@1 object`` / ``recall@1 distractor``).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from lre_pl.dataset.prompts import PromptText, encode_prompt, fill_subject
from lre_pl.dataset.relations import Relation
from lre_pl.errors import InputError
from lre_pl.evaluation.context import Decoder
from lre_pl.evaluation.metrics import prefix_hits
from lre_pl.lightning.datamodule import prompt_prefix
from lre_pl.lm.activations import collect_states
from lre_pl.lm.models import LanguageModel
from lre_pl.lre.bundle import Bundle
from lre_pl.protocol.markdown import markdown_table
from lre_pl.protocol.rows import make_row

Layer = int | str

#: Markers of a distraction template: the false statement (the relation's template about the subject,
#: then the wrong object) and the query (the template about the subject), replaced literally.
FALSE, QUERY = "{false}", "{query}"

#: The reference prompt: the query alone.
UNDISTRACTED = "undistracted"

#: The estimators of the rows: the LM's own next token, the attribute lens, the logit lens.
READERS = ("lm", "lre", "logit_lens")

#: What each reader's top-1 is matched against.
TARGETS = ("object", "distractor")


def check_template(name: str, template: str) -> None:
    """A distraction template ends with one ``{query}`` (the subject the lens reads is the query's)."""
    if template.count(QUERY) != 1 or not template.rstrip().endswith(QUERY):
        raise InputError(
            f"distraction template {name!r} ({template!r}) must end with {QUERY} and hold it once, "
            f"e.g. '{FALSE}. {FALSE}. {QUERY}'"
        )


def distracted_prompt(
    template: str, relation_template: str, subject: str, distractor: str, prefix: str = ""
) -> PromptText:
    """``template`` with ``{false}`` -> the relation's statement about ``subject`` with ``distractor`` as
    its object, and ``{query}`` -> the relation's query about ``subject``; the subject's span is the
    query's (its last occurrence). Subjects and objects are data: nothing is format()ted."""
    false = fill_subject(relation_template, subject).text + " " + distractor
    head = prefix + template.rstrip()[: -len(QUERY)].replace(FALSE, false)
    return fill_subject(relation_template, subject, head)


def choose_distractor(relation: Relation, subject: str, obj: str, seed: int) -> str:
    """A wrong object for ``subject``: another sample's object whose first character differs from the true
    object's (so that no one-character token starts both), chosen by a seeded draw per subject."""
    first = obj.strip().lower()[:1]
    candidates = sorted(
        {s.object for s in relation.samples if s.object.strip().lower()[:1] not in ("", first)}
    )
    if not candidates:
        raise InputError(
            f"relation {relation.name!r} has no object that could distract from {obj!r}: every object starts "
            "with the same letter; leave it out of relations"
        )
    return random.Random(f"{seed}:{relation.name}:{subject}").choice(candidates)


@dataclass(frozen=True)
class DistractedReadouts:
    """The three readers' top-1 tokens on one kind of prompt, for each evaluated sample."""

    kind: str
    lm: list[str]
    lre: list[str]
    logit_lens: list[str]


@dataclass
class DistractedLens:
    """The experiment on one bundle at its dev-chosen (layer, β)."""

    bundle: Bundle
    relation: Relation
    """The bundle's relation (its templates and objects), as its sweep estimated it."""
    layer: Layer
    beta: float
    indices: torch.Tensor  # [k] the evaluated (known, capped) test samples of the bundle
    templates: Mapping[str, str]
    """{prompt kind: distraction template}."""
    seed: int = 0
    batch_size: int = 16
    readouts: list[DistractedReadouts] = field(default_factory=list)

    @property
    def subjects(self) -> list[str]:
        return [self.bundle.test_subjects[i] for i in self.indices.tolist()]

    @property
    def objects(self) -> list[str]:
        return [self.bundle.test_objects[i] for i in self.indices.tolist()]

    @functools.cached_property
    def distractors(self) -> list[str]:
        """Each evaluated sample's wrong object o′ (:func:`choose_distractor`)."""
        return [
            choose_distractor(self.relation, s, o, self.seed) for s, o in zip(self.subjects, self.objects)
        ]

    def run(self, lm: LanguageModel) -> list[dict]:
        """Every prompt kind's forwards and readouts; the rows."""
        template, prefix = self.relation.prompt_templates[0], prompt_prefix(lm)
        operator = self.bundle.operator(self.layer, self.beta)
        decoder = Decoder(lm, top_k=1)
        kinds = {UNDISTRACTED: QUERY, **self.templates}
        self.readouts = []
        for kind, distraction in kinds.items():
            prompts = [
                encode_prompt(lm.tokenizer, distracted_prompt(distraction, template, s, d, prefix))
                for s, d in zip(self.subjects, self.distractors)
            ]
            states = collect_states(lm, prompts, self.batch_size)
            s = states.subject_states[:, lm.state_index(self.layer)]  # [k, d] the query's subject token
            lens_ids, _ = operator.top_objects(s, lm, 1)  # [k, 1]
            self.readouts.append(
                DistractedReadouts(
                    kind,
                    lm.token_strings(states.top_token_ids),
                    [row[0] for row in decoder.token_strings(lens_ids)],
                    [row[0] for row in decoder.token_strings(decoder.top_tokens(s).ids)],
                )
            )
        return self.rows()

    def rows(self) -> list[dict]:
        b, rows = self.bundle, []
        for readout in self.readouts:
            for reader in READERS:
                tokens = [[token] for token in getattr(readout, reader)]
                for target, objects in zip(TARGETS, (self.objects, self.distractors)):
                    hits = prefix_hits(tokens, objects)[:, 0].float()
                    rows.append(
                        make_row(
                            model=b.model, relation=b.relation, category=b.category, trial=b.seed,
                            kind=f"attribute_lens:{readout.kind}", selection="dev", estimator=reader,
                            layer=str(self.layer), beta=self.beta, split="all", metric=f"recall@1 {target}",
                            value=hits.mean().item(), n=len(hits),
                        )
                    )  # fmt: skip
        return rows

    def examples(self, count: int = 5) -> str:
        """A markdown table of the first ``count`` samples: subject, o, o′ and each reader's top-1 on
        every prompt kind (what rows cannot hold: token strings)."""
        headings = ["prompt", "subject", "object", "distractor", "LM", "attribute lens", "logit lens"]
        cells = [
            [readout.kind, self.subjects[i], self.objects[i], self.distractors[i],
             *(repr(getattr(readout, reader)[i]) for reader in READERS)]
            for readout in self.readouts
            for i in range(min(count, len(self.subjects)))
        ]  # fmt: skip
        return markdown_table(headings, cells)
