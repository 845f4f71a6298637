"""12. Secant versus tangent, as an edit: the paper's causality edit with the chord Jacobian's W."""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict

import torch

from lre_pl.evaluation.causality import edit_hits, edit_set, pinv_edits, random_targets
from lre_pl.experiments.beta_study.context import StudyContext
from lre_pl.experiments.beta_study.questions.base import (
    NAN,
    Findings,
    Numbers,
    PerBundleQuestion,
    Verdict,
    register,
    section,
    verdict,
)
from lre_pl.experiments.beta_study.questions.differences import difference, weigh
from lre_pl.lre.chord import ChordJacobian
from lre_pl.protocol.markdown import markdown_table, nanmean
from lre_pl.protocol.selection import SelectionRule

#: The edits compared: the LRE's mean W and the chord Jacobian's W_chord (formed: the edit needs its SVD).
EDITORS = ("lre", "chord")


@register
class ChordCausality(PerBundleQuestion):
    """The paper's edit Δs = W⁺_r (o' − o) (the unscaled W's rank-r pseudo-inverse, at the sweep's
    ranks, between the sweep's seeded source/target pairs of evaluated samples) with the LRE's W and
    with the chord Jacobian's W_chord (formed from forward-mode products at every chord point, the
    same operator as question 11's). A W whose scale is the secant's may also invert better."""

    name = "chord_causality"
    number = 12
    title = "Secant versus tangent, as an edit: causality with the chord Jacobian"
    costly = True
    hypothesis = (
        "the edit uses the unscaled W: the chord Jacobian, whose scale is the secant's, also edits "
        "the subject better than the LRE's W"
    )
    prediction = "efficacy of W_chord's edit above the LRE's, each at its rank chosen on dev"

    def rows(self, context: StudyContext) -> list[dict]:
        b, lm, ranks = context.bundle, context.decoder.lm, list(context.rule.ranks)
        if not ranks:  # a sweep run without causality ranks: nothing to compare at
            return []
        i = b.layer_index(context.layer)
        started = time.perf_counter()
        chord = ChordJacobian(context.settings.quadrature_nodes)(
            lm, [item.prompt for item in context.train_prompts], context.layer,
            b.train_subject_states[:, i], b.train_output_states,
        )  # fmt: skip
        weights = {"lre": b.weights[i], "chord": chord.form()}  # [d, d] each
        forming = time.perf_counter() - started
        edits = edit_set(lm, b, context.known)
        pairs = random_targets(edits.subjects, edits.objects, b.seed)
        if not pairs:
            return []
        fns = {
            (editor, rank): fn
            for editor, weight in weights.items()
            for rank, fn in pinv_edits(edits, weight.to(lm.device), ranks).items()
        }
        hits = edit_hits(lm, edits, pairs, {context.layer: fns})[context.layer]  # {(editor, rank): [pair]}
        sources = torch.tensor([source for source, _ in pairs])
        rows = [context.row(kind=self.name, estimator="chord", layer=str(context.layer), split="all",
                            metric="forming_seconds", value=forming, n=1)]  # fmt: skip
        for (editor, rank), pair_hits in hits.items():
            for split, positions in context.splits.items():
                mask = torch.isin(sources, positions)  # the pairs whose source is in the split
                value = pair_hits[mask].float().mean().item() if mask.any() else NAN
                rows.append(context.row(
                    kind=self.name, estimator=editor, layer=str(context.layer), rank=rank, split=split,
                    metric="efficacy", value=value, n=int(mask.sum()),
                ))  # fmt: skip
        return rows

    def summarize(self, rows: list[dict], rule: SelectionRule) -> Numbers:
        """Per editor: test efficacy at the rank chosen on dev (by the sweep's rule), averaged over
        bundles, the ranks chosen, and the test efficacy per rank; per editor and bundle that efficacy
        (``per_bundle``, for the verdict's interval); the median seconds of forming W_chord."""
        by_bundle = defaultdict(
            lambda: defaultdict(dict)
        )  # (relation, trial, editor) -> split -> rank -> value
        seconds = []
        for row in rows:
            if row["metric"] == "forming_seconds":
                seconds.append(row["value"])
            elif row["metric"] == "efficacy":
                key = (row["relation"], row["trial"], row["estimator"])
                by_bundle[key][row["split"]][row["rank"]] = row["value"]
        editors, per_bundle = {}, {}
        for editor in EDITORS:
            chosen, per_rank = [], defaultdict(list)
            per_bundle[editor] = {}  # {(relation, trial): test efficacy at the dev-chosen rank}
            for (relation, trial, name), splits in by_bundle.items():
                if name != editor:
                    continue
                dev = {rank: value for rank, value in splits["dev"].items() if not math.isnan(value)}
                if dev:
                    rank = rule.rank(dev)
                    chosen.append((rank, splits["test"].get(rank, NAN)))
                    per_bundle[editor][relation, trial] = chosen[-1][1]
                for rank, value in splits["test"].items():
                    per_rank[rank].append(value)
            if chosen:
                editors[editor] = {
                    "chosen": nanmean(value for _, value in chosen),
                    "ranks": sorted({rank for rank, _ in chosen}),
                    "n": len(chosen),
                    "per_rank": {rank: nanmean(values) for rank, values in sorted(per_rank.items())},
                }
        return {
            "editors": editors,
            "per_bundle": per_bundle,
            "forming_seconds": statistics.median(seconds) if seconds else NAN,
        }

    def render(self, numbers: Numbers, findings: Findings) -> str:
        editors = numbers["editors"]
        if not editors:
            return section("", verdict("No edits: the sweep has no causality ranks (`ranks: []`)."))
        ranks = sorted({rank for v in editors.values() for rank in v["per_rank"]})
        table = markdown_table(
            ["W of the edit", "bundles", "efficacy at the dev-chosen rank (test)", "ranks chosen",
             *(f"rank {rank} (test)" for rank in ranks)],
            [[editor, str(v["n"]), f"{v['chosen']:.3f}", ", ".join(map(str, v["ranks"])),
              *(f"{v['per_rank'].get(rank, NAN):.3f}" for rank in ranks)] for editor, v in editors.items()],
        )  # fmt: skip
        note = f"\nForming W_chord took {numbers['forming_seconds']:.0f} s per bundle (median).\n"
        judged = self.judge(numbers)
        return section(table, note + verdict(f"{judged.word}: {judged.why}"))

    def measured(self, numbers: Numbers) -> str:
        editors = numbers["editors"]
        lre, chord = (editors.get(name, {}).get("chosen", NAN) for name in EDITORS)
        return f"efficacy {chord:.2f} (W_chord) vs {lre:.2f} (LRE), {editors.get('chord', {}).get('n', 0)} bundles"

    def judge(self, numbers: Numbers) -> Verdict:
        """Confirmed when W_chord's efficacy − the LRE's (each at its dev-chosen rank, per bundle) is above
        0 (95 % interval), refuted when below, else inconclusive."""
        editors, per_bundle = numbers["editors"], numbers["per_bundle"]
        lre, chord = (editors.get(name, {}).get("chosen", NAN) for name in EDITORS)
        lead = f"W_chord's edit succeeds {chord:.2f}, the LRE's {lre:.2f}"
        return weigh(
            [difference(per_bundle["chord"], per_bundle["lre"], "W_chord's efficacy − the LRE's")], lead
        )
