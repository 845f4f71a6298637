"""The attribute lens (Hernandez et al., §5): a relation's LREs read at every token and layer of any text.

At layer l and position p, the lens shows the top objects of decode(β W_l h_l,p + b_l), with h the
hidden state there: what the LM "knows" of the relation's attribute of whatever the position holds,
even where its own next token is distracted. The readout and its decode are the operator's own
(:meth:`~lre_pl.lre.operator.LinearRelationOperator.top_objects`, what ``lre-pl predict`` shows), so
the lens at a subject's last token of the operator's test prompt is exactly its prediction. The logit
lens (decode(h) with no LRE) of the same positions and layers is computed beside it for comparison.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from lre_pl.errors import InputError
from lre_pl.lm.hooks import capture
from lre_pl.lm.models import LanguageModel
from lre_pl.lre.operator import LinearRelationOperator

Layer = int | str

#: Which positions a lens shows: every token, or only the given subject's tokens.
POSITIONS = ("all", "subject")


@dataclass(frozen=True)
class LensReadout:
    """The top-k tokens of one lens at every shown (layer, position)."""

    token_ids: torch.Tensor  # [layer, pos, k] best first
    probabilities: torch.Tensor  # [layer, pos, k] their softmax probabilities
    strings: list[list[list[str]]]  # [layer][pos][k] the tokens decoded one by one


@dataclass(frozen=True)
class LensView:
    """The attribute lens and the logit lens of one text, at the chosen layers and positions."""

    text: str
    relation: str
    model: str
    tokens: list[str]
    """The shown positions' tokens, decoded one by one."""
    positions: list[int]
    """The shown positions in the text's tokenization (special tokens such as BOS included)."""
    layers: list[Layer]
    attribute: LensReadout
    """decode(β W h + b) of the relation's operator at each layer."""
    logit: LensReadout
    """decode(h): the logit lens."""

    def cell(self, lens: str, layer: Layer, position: int) -> tuple[str, float]:
        """The top-1 token and its probability of ``lens`` (``attribute`` or ``logit``) at a layer and a
        position of the text's tokenization."""
        readout = getattr(self, lens)
        i, j = self.layers.index(layer), self.positions.index(position)
        return readout.strings[i][j][0], float(readout.probabilities[i, j, 0])

    def table(self) -> str:
        """A plain-text table for the terminal: one row per layer, one column per shown token, each cell
        the attribute lens's top-1 and its probability (and the logit lens's below it)."""
        header = ["layer", *(repr(token) for token in self.tokens)]
        rows = []
        for i, layer in enumerate(self.layers):
            for name, readout in (("lre", self.attribute), ("logit", self.logit)):
                cells = [
                    f"{readout.strings[i][j][0]!r} {readout.probabilities[i, j, 0]:.2f}"
                    for j in range(len(self.positions))
                ]
                rows.append([f"{layer} {name}", *cells])
        widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
        title = f"attribute lens: {self.relation!r} on {self.model}; {self.text!r}"
        return "\n".join([title, *lines])

    def figure(self):
        """The attribute lens and the logit lens as two heatmaps, tokens (x) by layers (y), side by side
        (stacked for more than 12 tokens). Each cell holds its top-1 token, coloured by its probability."""
        from matplotlib import pyplot as plt

        columns, rows = len(self.positions), len(self.layers)
        stacked = columns > 12
        width, height = max(4.0, 0.75 * columns + 1.5), max(2.5, 0.32 * rows + 1.6)
        figure, axes = plt.subplots(
            2 if stacked else 1,
            1 if stacked else 2,
            figsize=(width + 1, 2 * height) if stacked else (2 * width, height),
            squeeze=False,
            layout="constrained",
        )
        panels = (("attribute lens", self.attribute), ("logit lens", self.logit))
        for axis, (title, readout) in zip(axes.flat, panels):
            top = readout.probabilities[..., 0].numpy()  # [layer, pos]
            image = axis.imshow(top, aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0, origin="lower")
            for i in range(rows):
                for j in range(columns):
                    colour = "white" if top[i, j] > 0.6 else "black"
                    text = short(readout.strings[i][j][0].strip() or readout.strings[i][j][0])
                    axis.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
            axis.set_xticks(
                range(columns), [short(token, 10) for token in self.tokens], rotation=60, fontsize=7
            )
            axis.set_yticks(range(rows), [str(layer) for layer in self.layers], fontsize=7)
            axis.set_xlabel("token")
            axis.set_ylabel("layer")
            axis.set_title(f"{title}: {self.relation}" if title == "attribute lens" else title, fontsize=9)
        figure.colorbar(image, ax=axes.ravel().tolist(), label="top-1 probability", shrink=0.6)
        return figure


def short(token: str, width: int = 7) -> str:
    """A token as a cell shows it: spaces as ``·``, other invisible characters escaped (``\\n``), at most
    ``width`` characters."""
    shown = "".join(c if c.isprintable() and c != " " else "·" if c == " " else repr(c)[1:-1] for c in token)
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def check_operators(operators: Mapping[Layer, LinearRelationOperator], lm: LanguageModel) -> None:
    """One relation's operators, on ``lm``'s width and layers, or a one-line error."""
    if not operators:
        raise InputError("no operators: give a run folder with operator.pt or operators/layer_<layer>.pt")
    relations = sorted({operator.relation for operator in operators.values()})
    if len(relations) > 1:
        raise InputError(
            f"the operators hold several relations ({', '.join(relations)}): give one relation's"
        )
    for layer, operator in operators.items():
        width = operator.weight.shape[-1]
        if width != lm.hidden_size or not lm.has_layer(layer):
            raise InputError(
                f"the operator of layer {layer} ({operator.relation!r}, made on {operator.model}) is "
                f"{width}-dimensional, but {lm.spec} has d={lm.hidden_size} and blocks 0..{lm.num_blocks - 1}: "
                "give operators estimated on this model"
            )


def subject_positions(lm: LanguageModel, text: str, subject: str) -> list[int]:
    """The token positions covering the LAST occurrence of ``subject`` in ``text``."""
    start = text.rfind(subject) if subject else -1
    if start < 0:
        raise InputError(
            f"subject {subject!r} is not in the prompt {text!r}: give a subject the prompt contains, or "
            "positions='all'"
        )
    end = start + len(subject)
    offsets = lm.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    return [index for index, (begin, stop) in enumerate(offsets) if begin < end and stop > start]


def encode_text(lm: LanguageModel, text: str) -> list[int]:
    """The token ids of ``text`` (special tokens included), or a one-line error for an empty text or one
    longer than the model's context."""
    if not text.strip():
        raise InputError("empty prompt: give a text for the lens to read")
    input_ids = lm.tokenizer(text)["input_ids"]
    context = getattr(lm.model.config, "max_position_embeddings", None)
    if context is not None and len(input_ids) > context:
        raise InputError(
            f"the prompt is {len(input_ids)} tokens long, longer than {lm.spec}'s context of {context}: "
            "give a shorter prompt"
        )
    return input_ids


@torch.no_grad()
def attribute_lens(
    operators: Mapping[Layer, LinearRelationOperator],
    text: str,
    lm: LanguageModel,
    k: int = 3,
    positions: str = "all",
    subject: str | None = None,
    layers: Sequence[Layer] | None = None,
) -> LensView:
    """The attribute lens of ``text``: at each layer that has an operator (or ``layers``, a subset of
    them) and each position (``all``, or ``subject``: the tokens of the last occurrence of ``subject``),
    the top-``k`` objects of the operator's readout of the hidden state, and the logit lens beside it."""
    check_operators(operators, lm)
    if positions not in POSITIONS:
        raise InputError(f"positions={positions!r}: use one of {POSITIONS}")
    if k < 1:
        raise InputError(f"top_k={k} must be at least 1")
    chosen = list(operators) if layers is None else [lm.check_layer(layer) for layer in layers]
    missing = [layer for layer in chosen if layer not in operators]
    if missing:
        raise InputError(
            f"layer {missing[0]} has no operator: choose among the operators' layers {list(operators)}"
        )
    chosen = sorted(chosen, key=lm.state_index)
    input_ids = encode_text(lm, text)
    shown = list(range(len(input_ids))) if positions == "all" else subject_positions(lm, text, subject or "")
    modules = {layer: lm.layer_module(layer) for layer in chosen}
    with capture(modules, lambda _, hidden: hidden[0, shown]) as states:  # [pos, d] per layer
        lm.base_model(input_ids=torch.tensor([input_ids], device=lm.device))
    hidden = torch.stack([states[layer] for layer in chosen])  # [layer, pos, d]
    attribute_ids, attribute_p = zip(
        *(operators[layer].top_objects(states[layer], lm, k) for layer in chosen)
    )
    logits = lm.decode(hidden).float()  # [layer, pos, vocab]
    logit_top = logits.softmax(-1).topk(k)

    def readout(ids: torch.Tensor, probabilities: torch.Tensor) -> LensReadout:
        strings = [[lm.token_strings(cell) for cell in row] for row in ids.tolist()]
        return LensReadout(ids, probabilities, strings)

    operator = next(iter(operators.values()))
    return LensView(
        text=text,
        relation=operator.relation,
        model=operator.model,
        tokens=lm.token_strings([input_ids[p] for p in shown]),
        positions=shown,
        layers=chosen,
        attribute=readout(torch.stack(attribute_ids), torch.stack(attribute_p)),
        logit=readout(logit_top.indices.cpu(), logit_top.values.cpu()),
    )
