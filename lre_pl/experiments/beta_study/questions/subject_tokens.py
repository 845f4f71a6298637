"""15. The subject spread over several tokens: does β make up for the earlier subject tokens?

The LRE reads the subject's last token alone. Where a subject spans several tokens, part of what the
LM knows of it may sit in the earlier ones, which W s never sees; a larger β might stand in for it.
This question splits faithfulness at β = 1 and the per-sample smallest β by the subject's token count
(1, 2, 3+) and fits an LRE on the last :data:`TOKENS` subject tokens, o ≈ Σ_t W_t s_t + b.

W_t is the mean over training samples of J_t = d o / d s_t, s_t the state at the study's layer at the
t-th subject token counted from the end (t = 0: the usual last token). The Jacobian engine perturbs
the state at a prompt's ``subject_index`` (the first column after its cached prefix), with every
other position's state at that layer as it is (a state at layer l reaches other positions only
through later layers); a prompt whose ``subject_index`` is moved ``t`` tokens back therefore gives
J_t with no change to the engine (:func:`at_token`; tested against autograd over the full prompt).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence

import torch

from lre_pl.dataset.prompts import EncodedPrompt, encode_prompt, fill_subject
from lre_pl.errors import InputError
from lre_pl.experiments.beta_study.context import Layer, StudyContext
from lre_pl.experiments.beta_study.questions.base import (
    NAN,
    Findings,
    Numbers,
    ScanQuestion,
    Verdict,
    figure_name,
    register,
    section,
    selected_beta,
    verdict,
)
from lre_pl.experiments.beta_study.questions.differences import difference, weigh
from lre_pl.experiments.beta_study.questions.per_sample_beta import smallest_beta
from lre_pl.lm.activations import collect_states
from lre_pl.lm.jacobian import compute_jacobians
from lre_pl.lm.models import LanguageModel
from lre_pl.lre.operator import relation_readout
from lre_pl.protocol.markdown import markdown_table
from lre_pl.protocol.selection import SelectionRule
from lre_pl.protocol.splits import KnownSamples

#: The subject tokens the multi-token LRE reads, counted from the last: t = 0, 1, 2.
TOKENS = 3
#: The groups of subject token counts that rows are split by.
GROUPS = ("1", "2", "3+")
#: The two estimators side by side: the bundle's last-token LRE and the LRE on every subject token.
ESTIMATORS = ("lre", "multi_token")


def token_group(count: int) -> str:
    """The group (one of :data:`GROUPS`) of a subject of ``count`` tokens."""
    return GROUPS[min(count, len(GROUPS)) - 1]


def grouped(estimator: str, group: str) -> str:
    """The row estimator of ``estimator`` on the samples of one token group, e.g. ``lre:tokens=2``."""
    return f"{estimator}:tokens={group}"


def at_token(prompt: EncodedPrompt, t: int) -> EncodedPrompt:
    """``prompt`` with its subject token moved ``t`` tokens back from the subject's last: the Jacobian
    engine perturbs, and :func:`collect_states` reads, the state at its ``subject_index``."""
    return dataclasses.replace(prompt, subject_index=prompt.subject_index - t)


def one_token_subjects(relation: str, count: int) -> InputError:
    """The error of a relation whose ``count`` training subjects are each one token."""
    return InputError(
        f"relation {relation!r}: all {count} training subjects are one token, and the multi-token LRE "
        "(question subject_tokens) needs subjects of two or more tokens: study a relation with longer subjects"
    )


@dataclasses.dataclass(frozen=True)
class MultiTokenLRE:
    """o ≈ Σ_t W_t s_t + b over a subject's last :data:`TOKENS` tokens (those it has)."""

    weights: torch.Tensor  # [T, d, d] W_t; zero where no training subject has a t-th token
    bias: torch.Tensor  # [d] b = mean_i (o_i − Σ_t W_t s_{t,i})
    samples: tuple[int, ...]
    """Per t, the training samples W_t is the mean over (those whose subject has a t-th token)."""

    def projection(self, states: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """[n, d] Σ_t W_t s_t of ``states`` [n, T, d], over the tokens ``present`` [n, T] (bool)."""
        return torch.einsum("tij,ntj,nt->ni", self.weights, states, present.to(states.dtype))


def token_presence(counts: Sequence[int], tokens: int = TOKENS) -> torch.Tensor:
    """[n, T] bool: the subject of each sample (``counts`` [n] tokens) has its t-th token from the end."""
    return torch.arange(tokens)[None] < torch.tensor(counts)[:, None]


def fit_multi_token_lre(
    lm: LanguageModel,
    relation: str,
    prompts: Sequence[EncodedPrompt],
    layer: Layer,
    last_weight: torch.Tensor,
    last_states: torch.Tensor,
    outputs: torch.Tensor,
    tokens: int = TOKENS,
) -> MultiTokenLRE:
    """The multi-token LRE of the training ``prompts`` at ``layer``: W_0 is ``last_weight`` [d, d], the
    LRE's W (the mean J at the last token over every training sample, with ``last_states`` [n, d] s_0
    and ``outputs`` [n, d] o of the same prompts); each W_t, t ≥ 1, is the mean J_t over the samples
    whose subject has a t-th token, from one engine pass over the prompts moved back to those tokens.
    A t that no subject reaches gets W_t = 0 (that token is read by no readout); a relation whose
    subjects are all one token has no W_t beyond W_0 and is refused (:func:`one_token_subjects`).
    """
    present = token_presence([prompt.subject_tokens for prompt in prompts], tokens)  # [n, T]
    moved = present[:, 1:].nonzero().tolist()  # (sample, t - 1) of every earlier subject token
    if not moved:
        raise one_token_subjects(relation, len(prompts))
    result = compute_jacobians(lm, [at_token(prompts[i], t + 1) for i, t in moved], [layer])
    jacobians = result.jacobians[layer].detach().float().cpu()  # [moved, d, d] J_t of each sample
    check_outputs(result.output_states.float().cpu(), outputs[[i for i, _ in moved]], relation)
    d = last_weight.shape[0]
    states = torch.zeros(len(prompts), tokens, d)  # [n, T, d] s_{t,i}, zero where absent
    states[:, 0] = last_states
    weights = torch.zeros(tokens, d, d)  # [T, d, d]
    weights[0] = last_weight
    for row, (i, t) in enumerate(moved):
        states[i, t + 1] = result.subject_states[layer][row].float().cpu()
        weights[t + 1] += jacobians[row]
    samples = present.sum(0)  # [T]
    weights[1:] /= samples[1:].clamp(min=1)[:, None, None]
    lre = MultiTokenLRE(weights, torch.zeros(d), tuple(samples.tolist()))
    bias = (outputs - lre.projection(states, present)).mean(0)  # [d]
    return dataclasses.replace(lre, bias=bias)


def check_outputs(recomputed: torch.Tensor, stored: torch.Tensor, relation: str) -> None:
    """The LM's o [n, d] of prompts run again must be the bundle's (else the prompts are not its prompts)."""
    if (recomputed - stored).abs().max().item() > 1e-4 * stored.abs().max().item():
        raise RuntimeError(f"o of {relation!r}'s prompts run again differ from its bundle's")


def earlier_states(
    lm: LanguageModel,
    relation: str,
    prompts: Sequence[EncodedPrompt],
    layer: Layer,
    outputs: torch.Tensor,
    tokens: int = TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(states [n, T − 1, d] s_t at ``layer`` for t = 1 .. T − 1, zero where absent; their presence
    [n, T − 1] bool) from one batched forward of every prompt moved back to each earlier subject token
    it has (checked against the prompts' ``outputs`` [n, d] o)."""
    present = token_presence([prompt.subject_tokens for prompt in prompts], tokens)[:, 1:]
    moved = present.nonzero().tolist()  # (sample, t - 1)
    states = torch.zeros(len(prompts), tokens - 1, lm.hidden_size)
    if moved:
        ran = collect_states(lm, [at_token(prompts[i], t + 1) for i, t in moved])
        check_outputs(ran.output_states.float().cpu(), outputs[[i for i, _ in moved]], relation)
        read = ran.subject_states[:, lm.state_index(layer)].float().cpu()  # [moved, d]
        for row, (i, t) in enumerate(moved):
            states[i, t] = read[row]
    return states, present


def restricted(context: StudyContext, positions: torch.Tensor) -> StudyContext:
    """``context`` over some of its evaluated samples (``positions`` [p] into them, ascending), each in
    the split it was in."""
    new = {position: i for i, position in enumerate(positions.tolist())}
    splits = {
        split: torch.tensor([new[p] for p in kept.tolist() if p in new], dtype=torch.long)
        for split, kept in context.splits.items()
    }
    return dataclasses.replace(context, samples=KnownSamples(context.known[positions], splits))


def plot_smallest_beta(model: str, rows: list[dict]):
    """Box plots of the per-sample smallest β by subject token count, per estimator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = defaultdict(list)
    for row in rows:
        if row["metric"] == "smallest_beta" and not math.isnan(row["value"]):
            values[row["estimator"]].append(row["value"])
    figure, axes = plt.subplots(1, len(ESTIMATORS), figsize=(4 * len(ESTIMATORS), 3), sharey=True)
    for axis, estimator in zip(axes, ESTIMATORS):
        data = [values[grouped(estimator, group)] for group in GROUPS]
        axis.boxplot([d or [NAN] for d in data])
        axis.set_xticks(range(1, len(GROUPS) + 1), [f"{g} ({len(d)})" for g, d in zip(GROUPS, data)])
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_title(estimator)
        axis.set_xlabel("subject tokens (samples with a β ≤ 10)")
    axes[0].set_ylabel("smallest β giving the LM's answer")
    figure.suptitle(f"{model}: the smallest β by subject token count (line: β = 1)")
    figure.tight_layout()
    return figure


@register
class SubjectTokens(ScanQuestion):
    """Faithfulness over the β grid and the per-sample smallest β of the last-token LRE (``lre``) and
    the multi-token LRE (``multi_token``), on every evaluated sample and per token group
    (``lre:tokens=2``, ...), with the sample counts of each group (metric ``samples``).

    A relation whose training subjects are all one token has no multi-token LRE: the study goes on
    (one such relation must not stop a study of many), warns its one line, writes the last-token
    LRE's rows alone, and the section names the relation with that line.
    """

    name = "subject_tokens"
    number = 15
    costly = True
    title = "The subject spread over several tokens"
    hypothesis = "β compensates for the subject information spread over earlier subject tokens, which the last-token LRE ignores"
    prediction = (
        "multi-token subjects need a larger β than one-token subjects, and the multi-token LRE needs a β closer to 1 "
        "(each per bundle, its 95 % interval above 0)"
    )

    def rows(self, context: StudyContext) -> list[dict]:
        from lre_pl.experiments.sweep.runner import warn

        b, lm, layer = context.bundle, context.decoder.lm, context.layer
        i = b.layer_index(layer)
        train = [item.prompt for item in context.train_prompts]
        test = [
            encode_prompt(lm.tokenizer, fill_subject(b.test_prompt_template, b.test_subjects[k]))
            for k in context.known.tolist()
        ]
        counts = {"train": [p.subject_tokens for p in train], "all": [p.subject_tokens for p in test]}
        rows = [
            context.row(kind=self.name, estimator=f"tokens={group}", layer=str(layer), split=split,
                        metric="samples", value=float(n), n=n)
            for split, values in counts.items()
            for group in GROUPS
            for n in [sum(token_group(c) == group for c in values)]
        ]  # fmt: skip
        projections = {"lre": context.projection_and_bias()}
        try:
            lre = fit_multi_token_lre(
                lm,
                b.relation,
                train,
                layer,
                b.weights[i],
                b.train_subject_states[:, i],
                b.train_output_states,
            )
        except InputError as error:  # only this relation's multi-token LRE is left out
            warn(f"{error}; its rows hold the last-token LRE alone")
        else:
            states, present = earlier_states(lm, b.relation, test, layer, b.test_output_states[context.known])
            last = b.test_states(layer)[context.known][:, None]  # [k, 1, d]
            all_states = torch.cat([last, states], dim=1)  # [k, T, d]
            all_present = torch.cat([torch.ones(len(test), 1, dtype=torch.bool), present], dim=1)
            projections["multi_token"] = (lre.projection(all_states, all_present), lre.bias)
        own = context.decoder.top_tokens(b.test_output_states[context.known]).ids[:, 0]  # [k] the LM's answer
        groups = [token_group(c) for c in counts["all"]]
        for estimator, (projection, bias) in projections.items():
            parts = [(estimator, torch.arange(len(test)))]
            parts += [
                (grouped(estimator, group), positions)
                for group in GROUPS
                if len(positions := torch.tensor([k for k, g in enumerate(groups) if g == group], dtype=torch.long))
            ]  # fmt: skip
            for name, positions in parts:
                rows += restricted(context, positions).scan(
                    lambda beta, p=projection[positions], offset=bias: relation_readout(p, offset, beta),
                    kind=self.name, estimator=name, layer=str(layer),
                )  # fmt: skip
            found = smallest_beta(
                lambda hidden: context.decoder.top_tokens(hidden).ids[:, 0],
                projection, bias.expand_as(projection), own,
            )  # fmt: skip
            rows += [
                context.row(kind=self.name, estimator=grouped(estimator, group), layer=str(layer), split="all",
                            metric="smallest_beta", value=value, n=1)
                for group, value in zip(groups, found.tolist())
            ]  # fmt: skip
        return rows

    def summarize(self, rows: list[dict], rule: SelectionRule) -> Numbers:
        """The β scans' numbers per estimator (:class:`ScanQuestion`), and: per estimator and token
        group (``2+``: 2 and 3+ pooled) the smallest β's median and count; per estimator the median
        over relations of |chosen β − 1| (relations with both estimators); the relations with one-token
        training subjects; the evaluated samples per group; and per bundle (``per_bundle``, for the
        verdict's intervals) the LRE's median smallest β of groups 1 and 2+ and each estimator's |chosen
        β − 1|."""
        numbers = super().summarize(rows, rule)
        betas, bundle_betas = defaultdict(list), defaultdict(lambda: defaultdict(list))
        for row in rows:
            if row["metric"] == "smallest_beta":
                estimator, group = row["estimator"].split(":tokens=")
                for key in (group, "2+") if group != "1" else (group,):
                    betas[estimator, key].append(row["value"])
                    if estimator == "lre" and not math.isnan(row["value"]):
                        bundle_betas[key][row["relation"], row["trial"]].append(row["value"])
        numbers["smallest_beta"] = {
            estimator: {
                group: {"median": statistics.median(found) if found else NAN, "found": len(found), "n": len(values)}
                for group in (*GROUPS, "2+")
                for values in [betas[estimator, group]]
                for found in [[v for v in values if not math.isnan(v)]]
            }
            for estimator in ESTIMATORS
            if any(key[0] == estimator for key in betas)
        }  # fmt: skip
        chosen = selected_beta(rows, self.name, rule)
        both = [
            (relation, trial)
            for relation, trial, estimator in chosen
            if estimator == "multi_token" and (relation, trial, "lre") in chosen
        ]
        numbers["distance_to_1"] = {
            estimator: statistics.median(abs(chosen[relation, trial, estimator]["chosen_beta"] - 1)
                                         for relation, trial in both)
            if both else NAN
            for estimator in ESTIMATORS
        }  # fmt: skip
        numbers["distance_to_1"]["n"] = len(both)
        numbers["per_bundle"] = {
            "smallest_beta": {
                group: {key: statistics.median(values) for key, values in bundle_betas[group].items()}
                for group in ("1", "2+")
            },
            "distance_to_1": {
                estimator: {key: abs(chosen[(*key, estimator)]["chosen_beta"] - 1) for key in both}
                for estimator in ESTIMATORS
            },
        }
        samples = defaultdict(dict)
        for row in rows:
            if row["metric"] == "samples":
                samples[row["relation"], row["trial"]][row["split"], row["estimator"]] = row["n"]
        numbers["one_token_relations"] = {  # relation -> its training samples
            relation: sum(n["train", f"tokens={group}"] for group in GROUPS)
            for (relation, _), n in sorted(samples.items())
            if not any(n["train", f"tokens={group}"] for group in GROUPS[1:])
        }  # fmt: skip
        numbers["samples"] = {
            group: sum(n["all", f"tokens={group}"] for n in samples.values()) for group in GROUPS
        }
        return numbers

    def measured(self, numbers: Numbers) -> str:
        lre = numbers["smallest_beta"].get("lre", {})
        distance, variants = numbers["distance_to_1"], numbers["variants"]
        return (
            f"smallest β (median) {lre.get('1', {}).get('median', NAN):.2f} for 1-token vs "
            f"{lre.get('2+', {}).get('median', NAN):.2f} for 2+-token subjects; |chosen β − 1| "
            f"{distance['lre']:.2f} (LRE) vs {distance['multi_token']:.2f} (multi-token) over {distance['n']} "
            f"relations; faithfulness at β = 1 {variants.get('lre', {}).get('beta_1', NAN):.3f} vs "
            f"{variants.get('multi_token', {}).get('beta_1', NAN):.3f}"
        )

    def judge(self, numbers: Numbers) -> Verdict:
        """Confirmed when, per bundle, the LRE's median smallest β of 2+-token subjects − of one-token
        subjects and the LRE's |chosen β − 1| − the multi-token LRE's are both above 0 (95 % intervals over
        bundles); refuted when either is below 0; else inconclusive (as with one relation: no interval)."""
        lre = numbers["smallest_beta"].get("lre", {})
        one, more = lre.get("1", {}), lre.get("2+", {})
        distance, per_bundle = numbers["distance_to_1"], numbers["per_bundle"]
        lead = (
            f"median smallest β {more.get('median', NAN):.2f} ({more.get('found', 0)} multi-token samples) vs "
            f"{one.get('median', NAN):.2f} ({one.get('found', 0)} one-token samples); median |chosen β − 1| "
            f"{distance['multi_token']:.2f} (multi-token LRE) vs {distance['lre']:.2f} (LRE) over {distance['n']} "
            "relations with both"
        )
        smallest, distances = per_bundle["smallest_beta"], per_bundle["distance_to_1"]
        return weigh([
            difference(smallest["2+"], smallest["1"], "smallest β, 2+-token − one-token subjects", "+.2f"),
            difference(distances["lre"], distances["multi_token"], "|chosen β − 1|, LRE − multi-token LRE", "+.2f"),
        ], lead)  # fmt: skip

    def render(self, numbers: Numbers, findings: Findings) -> str:
        smallest = markdown_table(
            ["estimator", *(f"{group} token{'s' * (group != '1')}: median [found/n]" for group in (*GROUPS, "2+"))],
            [
                [estimator, *(f"{g['median']:.2f} [{g['found']}/{g['n']}]" if g["found"] else f"– [0/{g['n']}]"
                              for g in groups.values())]
                for estimator, groups in numbers["smallest_beta"].items()
            ],
        )  # fmt: skip
        text = (
            "\nEvaluated samples by subject tokens: "
            + ", ".join(f"{group}: {n}" for group, n in numbers["samples"].items())
            + f". `lre:tokens=2` etc.: the estimator on the samples of one token group. The smallest β per "
            f"sample (β ≤ 10):\n\n{smallest}\nPer sample, pooled: `{figure_name(findings.model, self.name)}`.\n"
        )
        skipped = numbers["one_token_relations"]
        if skipped:
            text += "\n" + "".join(f"- {one_token_subjects(*item)}\n" for item in skipped.items())
        word, why = self.judge(numbers)
        return section(self.table(numbers["variants"]), text + verdict(f"{word}: {why}."))

    def figures(self, rows: list[dict], model: str) -> dict:
        return {figure_name(model, self.name): plot_smallest_beta(model, rows)} if rows else {}
