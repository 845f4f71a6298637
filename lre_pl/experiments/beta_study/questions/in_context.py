"""16. The in-context examples: do the prompt's examples pull the β = 1 readout toward their objects?

Each variant is an LRE at the study's layer (the row's ``estimator``), scanned over the sweep's β grid
(β chosen on dev, reported on test), with the LM's own accuracy on the evaluated samples under the
same prompts:

- ``few_shot``: the bundle's own LRE, made on the paper's prompts (training prompt i has the other
  n_train − 1 training samples as examples; the evaluated samples' prompt has all n_train).
- ``b_from_dev``: the bundle's W with b = mean over the dev samples of (o − W s), a bias from samples
  disjoint from those that gave W (the dev samples still choose β; test reports).
- ``zero_shot``: W and b from the training samples' prompts of the relation's first zero-shot
  template (``prompt_templates_zs``, no examples), s and o of the evaluated samples from theirs.
- ``shots_<n>`` (n in the study's ``shots``): every prompt has exactly n examples, of the relation's
  first few-shot template (the bundle's). The examples come from :func:`example_pool`: the training
  samples first, then the relation's other samples in a seeded order, never a sample whose subject is
  an evaluated sample's. The evaluated samples' prompt has the pool's first n; training sample i's
  prompt the first n of the pool without sample i. So n = n_train never reproduces the bundle (its
  training prompts have n_train − 1 examples): every ``shots_<n>`` is computed, none reuses the
  bundle. A bundle whose pool is too small for n examples gets no ``shots_<n>`` rows.

Where a readout misses the object at top-1 (at β = 1 and at the dev-chosen β), its top-1 token is
sorted: it starts one of the prompt's in-context objects, another of the relation's objects, or
neither (rows ``miss_on_in_context``, ``miss_on_other_object``; their ``n`` counts the misses). The
chance share (``miss_chance``) is, per missed sample, the share of in-context objects among the
relation's distinct objects other than its own: what a miss landing on a uniformly drawn wrong object
would give.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from lre_pl.dataset.matching import is_prefix_match
from lre_pl.dataset.prompts import SUBJECT_SLOT, PromptText, encode_prompt, fill_subject, make_prompt
from lre_pl.dataset.relations import Relation, RelationSample
from lre_pl.evaluation.metrics import prefix_hits
from lre_pl.experiments.beta_study.context import StudyContext
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
from lre_pl.experiments.beta_study.questions.differences import Part, difference, weigh
from lre_pl.lightning.datamodule import prompt_prefix
from lre_pl.lm.activations import collect_states
from lre_pl.lm.jacobian import compute_jacobians
from lre_pl.lm.models import LanguageModel
from lre_pl.lre.operator import relation_readout
from lre_pl.protocol.markdown import markdown_table, nanmean
from lre_pl.protocol.selection import SelectionRule
from lre_pl.protocol.splits import SPLITS

FEW_SHOT, B_FROM_DEV, ZERO_SHOT = "few_shot", "b_from_dev", "zero_shot"
#: Where a miss is read: at β = 1 and at the β chosen on dev (the rows' ``selection``).
AT_BETA_1, AT_CHOSEN = "beta_1", "dev"
#: The kinds of a miss's top-1 token, as row metrics (``miss_chance``: the object-uniform chance).
MISS_METRICS = ("miss_on_in_context", "miss_on_other_object", "miss_chance")

#: Prompts per forward of the evaluated samples (no gradients, so wide).
STATES_BATCH = 32


def shots_variant(n: int) -> str:
    return f"shots_{n}"


def example_pool(
    samples: Sequence[RelationSample],
    train: Sequence[RelationSample],
    evaluated: Sequence[RelationSample],
    seed: int,
) -> list[RelationSample]:
    """The samples the n-example prompts draw from, in the order they are drawn: the training samples,
    then the relation's other samples in a seeded shuffle; never one whose subject is an evaluated
    sample's (a prompt would then hold that sample's subject, or the sample itself)."""
    evaluated_subjects = {sample.subject for sample in evaluated}
    rest = [sample for sample in samples if sample not in train]
    random.Random(seed).shuffle(rest)
    return [sample for sample in [*train, *rest] if sample.subject not in evaluated_subjects]


@dataclass(frozen=True)
class ShotPrompts:
    """The prompts of one variant: one per training sample, and the evaluated samples' template."""

    train: list[PromptText]
    """Training sample i's prompt: its n examples (never itself), then its subject."""
    test_template: str
    """The evaluated samples' prompt, its last ``{}`` where the subject goes."""
    examples: list[RelationSample]
    """The evaluated samples' prompt's examples (its in-context objects)."""


def shot_prompts(
    template: str, pool: Sequence[RelationSample], train: Sequence[RelationSample], n: int, prefix: str = ""
) -> ShotPrompts | None:
    """The prompts with exactly ``n`` examples drawn from ``pool`` in order (see :func:`example_pool`);
    ``None`` when the pool has too few samples for some prompt."""
    train_examples = [[other for other in pool if other != sample][:n] for sample in train]
    examples = list(pool[:n])
    if len(examples) < n or any(len(chosen) < n for chosen in train_examples):
        return None
    return ShotPrompts(
        [make_prompt(template, sample.subject, chosen, prefix) for sample, chosen in zip(train, train_examples)],
        make_prompt(template, SUBJECT_SLOT, examples, prefix).text,
        examples,
    )  # fmt: skip


@dataclass(frozen=True)
class MissKinds:
    """Per evaluated sample, whether its top-1 token misses the object, and where a miss lands."""

    miss: torch.Tensor  # [k] bool: the top-1 token does not start the sample's object
    on_in_context: torch.Tensor  # [k] bool: a miss whose token starts one of the in-context objects
    on_other_object: torch.Tensor  # [k] bool: a miss on another of the relation's objects, none in context
    chance: torch.Tensor  # [k] the share of in-context objects among the relation's others (NaN: none)


def miss_kinds(
    top_tokens: Sequence[str],
    objects: Sequence[str],
    in_context: Sequence[str],
    relation_objects: Sequence[str],
) -> MissKinds:
    """Where each sample's top-1 token lands (prefix matching, as faithfulness counts a hit):
    ``top_tokens`` [k] and ``objects`` [k] per evaluated sample; ``in_context`` the objects of its
    prompt's examples; ``relation_objects`` every object of the relation."""
    distinct, in_context = set(relation_objects), set(in_context)
    miss, on_in_context, on_other, chance = [], [], [], []
    for token, own in zip(top_tokens, objects):
        missed = not is_prefix_match(token, own)
        in_prompt = missed and any(is_prefix_match(token, obj) for obj in in_context)
        miss.append(missed)
        on_in_context.append(in_prompt)
        on_other.append(missed and not in_prompt and any(is_prefix_match(token, obj) for obj in distinct))
        others = distinct - {own}
        chance.append(len(in_context - {own}) / len(others) if others else NAN)
    return MissKinds(*map(torch.tensor, (miss, on_in_context, on_other)), torch.tensor(chance))


@dataclass(frozen=True)
class Variant:
    """One variant's LRE read on the evaluated samples, and what the LM answers under its prompts."""

    projection: torch.Tensor  # [k, d] W s of the evaluated samples
    bias: torch.Tensor  # [d]
    lm_hits: torch.Tensor  # [k] bool: the LM's own top-1 token on the sample's prompt starts its object
    in_context: tuple[str, ...]
    """The objects of the evaluated samples' prompt's examples."""
    seconds: float | None = None
    """Wall seconds of its Jacobians and forward (``None``: read from the bundle)."""


def prompted_variant(
    lm: LanguageModel, prompts: ShotPrompts, evaluated: Sequence[RelationSample], layer
) -> Variant:
    """The LRE of the training samples' ``prompts`` at ``layer`` (one Jacobian pass: W = mean J_i,
    b = mean (o_i − J_i s_i)), read on the evaluated samples' own prompts (one forward)."""
    start = time.perf_counter()
    result = compute_jacobians(lm, [encode_prompt(lm.tokenizer, p) for p in prompts.train], [layer])
    weight = result.jacobians[layer].float().mean(0).cpu()  # [d, d]
    bias = result.biases(layer).float().mean(0).cpu()  # [d]
    test = [encode_prompt(lm.tokenizer, fill_subject(prompts.test_template, s.subject)) for s in evaluated]
    states = collect_states(lm, test, STATES_BATCH)
    subject_states = states.subject_states[:, lm.layer_names().index(layer)].float().cpu()  # [k, d]
    answers = [[token] for token in lm.token_strings(states.top_token_ids)]
    lm_hits = prefix_hits(answers, [sample.object for sample in evaluated])[:, 0]
    in_context = tuple(sample.object for sample in prompts.examples)
    return Variant(subject_states @ weight.T, bias, lm_hits, in_context, time.perf_counter() - start)


def shot_count(variant: str) -> int | None:
    """n of a ``shots_<n>`` variant, else ``None``."""
    return int(variant.removeprefix("shots_")) if variant.startswith("shots_") else None


def curve_points(rows: list[dict]) -> dict[str, dict[str, float]]:
    """{variant: {beta_1, chosen, lm_accuracy}}: test faithfulness@1 at β = 1 and at the dev-chosen β
    (the ``chosen_beta`` rows say which) and the LM's test accuracy, each a mean over bundles."""
    chosen_beta, faithfulness, lm_accuracy = {}, {}, defaultdict(list)
    for row in rows:
        key = (row["relation"], row["trial"], row["estimator"])
        if row["metric"] == "chosen_beta":
            chosen_beta[key] = row["value"]
        elif row["split"] == "test" and row["metric"] == "faithfulness@1":
            faithfulness[key, row["beta"]] = row["value"]
        elif row["split"] == "test" and row["metric"] == "lm_accuracy":
            lm_accuracy[row["estimator"]].append(row["value"])
    points = defaultdict(lambda: defaultdict(list))
    for key, beta in chosen_beta.items():
        points[key[2]]["beta_1"].append(faithfulness.get((key, 1.0), NAN))
        points[key[2]]["chosen"].append(faithfulness[key, beta])
    return {
        variant: {"beta_1": nanmean(values["beta_1"]), "chosen": nanmean(values["chosen"]),
                  "lm_accuracy": nanmean(lm_accuracy[variant])}
        for variant, values in points.items()
    }  # fmt: skip


def plot_in_context(model: str, rows: list[dict]):
    """Test faithfulness@1 at β = 1 and at the dev-chosen β, and the LM's accuracy, against the number of
    in-context examples; the paper's prompts and the zero-shot template as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = curve_points(rows)
    shots = sorted((n, variant) for variant in points if (n := shot_count(variant)) is not None)
    figure, axis = plt.subplots(figsize=(6, 4))
    styles = {"beta_1": ("faithfulness@1, β = 1", "C0"), "chosen": ("faithfulness@1, β chosen on dev", "C1"),
              "lm_accuracy": ("LM accuracy", "C2")}  # fmt: skip
    for measure, (label, color) in styles.items():
        axis.plot(
            [n for n, _ in shots], [points[v][measure] for _, v in shots], "o-", color=color, label=label
        )
        for variant, line in ((FEW_SHOT, "--"), (ZERO_SHOT, ":")):
            if variant in points:
                axis.axhline(points[variant][measure], color=color, linestyle=line, linewidth=0.8)
    axis.set_xlabel("in-context examples n (every prompt)")
    axis.set_ylabel("test share")
    axis.set_ylim(0, 1.05)
    axis.set_title(f"{model}: dashed: the paper's prompts; dotted: zero-shot template", fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


@register
class InContext(ScanQuestion):
    """The LRE with its in-context examples changed (few-shot, a bias from dev, zero-shot, n examples),
    and where its β = 1 misses land. Each prompted variant costs one Jacobian pass of the training
    prompts at the study's layer and one forward of the evaluated samples' prompts."""

    name = "in_context"
    number = 16
    title = "The in-context examples"
    costly = True
    hypothesis = (
        "β compensates for the in-context examples: the prompt's examples pull the β = 1 readout toward "
        "their objects (and the bias b carries them)"
    )
    prediction = (
        "β = 1 misses land on in-context objects above chance; b from dev samples and zero-shot prompts need β "
        "closer to 1; β falls with fewer examples (each per bundle, its 95 % interval above 0)"
    )

    def variants(self, context: StudyContext, relation: Relation) -> Iterator[tuple[str, Variant]]:
        """(name, variant) of every variant the bundle allows, computed one at a time."""
        b, lm = context.bundle, context.decoder.lm
        train = [item.sample for item in context.train_prompts]
        in_context = tuple(sample.object for sample in train)  # the paper's test prompt: every one
        lm_hits = prefix_hits([[b.test_lm_predictions[i]] for i in context.known.tolist()], context.objects)
        projection, bias = context.projection_and_bias()
        yield FEW_SHOT, Variant(projection, bias, lm_hits[:, 0], in_context)
        dev = context.splits["dev"]
        weight = b.weights[b.layer_index(context.layer)]
        s, o = b.test_states(context.layer)[context.known], b.test_output_states[context.known]
        yield B_FROM_DEV, Variant(projection, (o[dev] - s[dev] @ weight.T).mean(0), lm_hits[:, 0], in_context)

        prefix = prompt_prefix(lm)
        evaluated = [RelationSample(b.test_subjects[i], b.test_objects[i]) for i in context.known.tolist()]
        if relation.prompt_templates_zs:
            zero_shot = shot_prompts(relation.prompt_templates_zs[0], [], train, 0, prefix)
            yield ZERO_SHOT, prompted_variant(lm, zero_shot, evaluated, context.layer)
        pool = example_pool(relation.samples, train, evaluated, b.seed)
        for n in context.settings.shots:
            prompts = shot_prompts(relation.prompt_templates[0], pool, train, n, prefix)
            if prompts is not None:
                yield shots_variant(n), prompted_variant(lm, prompts, evaluated, context.layer)

    def rows(self, context: StudyContext) -> list[dict]:
        relation = context.relation
        objects = sorted({sample.object for sample in relation.samples})
        return [
            row for name, variant in self.variants(context, relation)
            for row in self.variant_rows(context, name, variant, objects)
        ]  # fmt: skip

    def variant_rows(
        self, context: StudyContext, name: str, variant: Variant, relation_objects: Sequence[str]
    ) -> list[dict]:
        """Its β scan, the LM's accuracy, its dev-chosen β, where its misses land and its seconds."""
        b, fields = context.bundle, dict(kind=self.name, estimator=name, layer=str(context.layer))
        rows = context.scan(lambda beta: relation_readout(variant.projection, variant.bias, beta), **fields)
        chosen = selected_beta(rows, self.name, context.rule).get((b.relation, b.seed, name))
        rows += context.split_rows(variant.lm_hits[:, None], ["lm_accuracy"], **fields)
        points = {AT_BETA_1: 1.0}
        if chosen is not None:
            beta = chosen["chosen_beta"]
            points[AT_CHOSEN] = beta
            n_dev = len(context.splits["dev"])
            rows.append(context.row(selection=AT_CHOSEN, beta=beta, split="dev", metric="chosen_beta",
                                    value=beta, n=n_dev, **fields))  # fmt: skip
        if variant.in_context:
            readouts = [relation_readout(variant.projection, variant.bias, beta) for beta in points.values()]
            top = context.decoder.top_tokens(torch.cat(readouts)).ids[:, :1]  # [points * k, 1]
            tokens = [row[0] for row in context.decoder.token_strings(top)]
            for at, (selection, beta) in enumerate(points.items()):
                kinds = miss_kinds(tokens[at * len(context) : (at + 1) * len(context)], context.objects,
                                   variant.in_context, relation_objects)  # fmt: skip
                rows += self.miss_rows(context, kinds, selection=selection, beta=beta, **fields)
        if variant.seconds is not None:
            rows.append(context.row(split="all", metric="seconds", value=variant.seconds, n=1, **fields))
        return rows

    @staticmethod
    def miss_rows(context: StudyContext, kinds: MissKinds, **fields) -> list[dict]:
        """Per split, the shares of its misses on in-context objects, on other objects, and by chance
        (``n``: the misses; NaN where none)."""
        rows = []
        for split in SPLITS:
            missed = context.splits[split][kinds.miss[context.splits[split]]]  # positions of the misses
            for metric, values in zip(
                MISS_METRICS, (kinds.on_in_context, kinds.on_other_object, kinds.chance)
            ):
                value = values[missed].float().nanmean().item() if len(missed) else NAN
                rows.append(context.row(split=split, metric=metric, value=value, n=len(missed), **fields))
        return rows

    def summarize(self, rows: list[dict], rule: SelectionRule) -> Numbers:
        """The scan's numbers per variant with its LM accuracy (test, mean over bundles); the test misses
        pooled over bundles per variant and point (shares weighted by each bundle's misses); the median
        seconds per bundle of each computed variant; and per bundle (``per_bundle``, for the verdict's
        intervals) each variant's dev-chosen β and few-shot's test misses at β = 1 on in-context objects
        and by chance."""
        numbers = super().summarize(rows, rule)
        per_bundle = {
            "chosen_beta": defaultdict(dict),
            "miss_on_in_context": {},
            "miss_chance": {},
        }  # fmt: skip
        for (relation, trial, variant), values in selected_beta(rows, self.name, rule).items():
            per_bundle["chosen_beta"][variant][relation, trial] = values["chosen_beta"]
        for row in rows:
            at_beta_1 = (row["estimator"], row["selection"], row["split"]) == (FEW_SHOT, AT_BETA_1, "test")
            if at_beta_1 and row["n"] and row["metric"] in ("miss_on_in_context", "miss_chance"):
                per_bundle[row["metric"]][row["relation"], row["trial"]] = row["value"]
        per_bundle["chosen_beta"] = dict(per_bundle["chosen_beta"])
        numbers["per_bundle"] = per_bundle
        accuracy, seconds = defaultdict(list), defaultdict(list)
        pooled = defaultdict(lambda: defaultdict(float))  # (variant, point) -> metric -> Σ value · n
        for row in rows:
            variant = row["estimator"]
            if row["metric"] == "lm_accuracy" and row["split"] == "test":
                accuracy[variant].append(row["value"])
            elif row["metric"] == "seconds":
                seconds[variant].append(row["value"])
            elif row["metric"] in MISS_METRICS and row["split"] == "test" and row["n"]:
                sums = pooled[variant, row["selection"]]
                sums[row["metric"]] += row["value"] * row["n"]
                if row["metric"] == MISS_METRICS[0]:  # every miss metric has the same n: count it once
                    sums["misses"] += row["n"]
        for variant, values in numbers["variants"].items():
            values["lm_accuracy"] = nanmean(accuracy[variant])
        misses = defaultdict(dict)
        for (variant, point), sums in pooled.items():
            count = sums["misses"]
            misses[variant][point] = {
                "in_context": sums["miss_on_in_context"] / count,
                "other_object": sums["miss_on_other_object"] / count,
                "chance": sums["miss_chance"] / count,
                "misses": int(count),
            }
        numbers["misses"] = dict(misses)
        numbers["seconds"] = {variant: statistics.median(values) for variant, values in seconds.items()}
        return numbers

    # ------------------------------------------------------------------------------- the verdict
    @staticmethod
    def shots(numbers: Numbers) -> list[tuple[int, dict]]:
        """[(n, its variant's numbers)] of the ``shots_<n>`` variants, by n."""
        return sorted(
            (n, values) for variant, values in numbers["variants"].items() if (n := shot_count(variant)) is not None
        )  # fmt: skip

    @staticmethod
    def parts(numbers: Numbers) -> list[Part]:
        """The prediction's parts, each a difference per bundle predicted above 0: pull (few-shot's β = 1
        test misses on in-context objects − by chance), closer (|few-shot's dev-chosen β − 1| − b from
        dev's, and − zero-shot's, where they have rows), falls (the dev-chosen β with the most examples −
        with the fewest)."""
        per_bundle = numbers["per_bundle"]
        betas = per_bundle["chosen_beta"]
        parts = [difference(per_bundle["miss_on_in_context"], per_bundle["miss_chance"],
                            "pull: share of β = 1 misses on in-context objects − chance")]  # fmt: skip
        distance = {v: {key: abs(beta - 1) for key, beta in by_key.items()} for v, by_key in betas.items()}
        for variant in (B_FROM_DEV, ZERO_SHOT):
            if variant in distance:
                parts.append(difference(distance.get(FEW_SHOT, {}), distance[variant],
                                        f"closer: |β − 1|, few-shot − {variant}", "+.2f"))  # fmt: skip
        shots = InContext.shots(numbers)
        ends = (shots[-1][0], shots[0][0]) if len(shots) > 1 else ()  # no change to read with one n
        most, fewest = (betas.get(shots_variant(n), {}) for n in ends) if ends else ({}, {})
        parts.append(difference(most, fewest, "falls: dev-chosen β, most − fewest examples", "+.2f"))
        return parts

    def measured(self, numbers: Numbers) -> str:
        variants = numbers["variants"]
        misses = numbers["misses"].get(FEW_SHOT, {}).get(AT_BETA_1, {})
        median = {v: variants.get(v, {}).get("median_beta", NAN) for v in (FEW_SHOT, B_FROM_DEV, ZERO_SHOT)}
        shots = self.shots(numbers)
        curve = " → ".join(f"{values['median_beta']:.2f}" for _, values in shots)
        return (
            f"β = 1 misses on in-context objects {misses.get('in_context', NAN):.0%} (chance "
            f"{misses.get('chance', NAN):.0%}, {misses.get('misses', 0)} misses); median β few-shot "
            f"{median[FEW_SHOT]:.2f}, b from dev {median[B_FROM_DEV]:.2f}, zero-shot {median[ZERO_SHOT]:.2f}; "
            f"n = {', '.join(str(n) for n, _ in shots)}: β {curve or '–'}"
        )

    def judge(self, numbers: Numbers) -> Verdict:
        """Confirmed when every part (:meth:`parts`) has a 95 % interval above 0, refuted when one has it
        below 0, else inconclusive."""
        return weigh(self.parts(numbers))

    # ------------------------------------------------------------------------------- the section
    def render(self, numbers: Numbers, findings: Findings) -> str:
        variants = numbers["variants"]
        headings = ["variant", "LM accuracy (test)", "test misses at β = 1", "on in-context objects",
                    "on other objects", "chance", "at the dev-chosen β: misses, on in-context", "seconds / bundle"]  # fmt: skip
        table = []
        for variant, values in variants.items():
            at_1 = numbers["misses"].get(variant, {}).get(AT_BETA_1)
            at_chosen = numbers["misses"].get(variant, {}).get(AT_CHOSEN)
            table.append([
                variant, f"{values['lm_accuracy']:.3f}",
                *([str(at_1["misses"]), f"{at_1['in_context']:.0%}", f"{at_1['other_object']:.0%}",
                   f"{at_1['chance']:.0%}"] if at_1 else ["–"] * 4),
                f"{at_chosen['misses']}, {at_chosen['in_context']:.0%}" if at_chosen else "–",
                f"{numbers['seconds'][variant]:.1f}" if variant in numbers["seconds"] else "–",
            ])  # fmt: skip
        absent = [v for v in (B_FROM_DEV, ZERO_SHOT) if v not in variants]
        note = (
            "\n`few_shot`: the bundle's LRE (the paper's prompts); `b_from_dev`: its W, b = mean of o − W s over the "
            "dev samples; `zero_shot`: W, b, s and o from the relation's first zero-shot template; `shots_<n>`: every "
            "prompt with n examples (training samples first, then others, never an evaluated subject; a bundle with "
            "too few such samples for n has no row). The evaluated samples are those the LM answers on the paper's "
            "prompt, so `few_shot`'s LM accuracy is 1 by selection where the sweep kept known samples only. Chance: "
            "the share of in-context objects among the relation's other objects. "
            f"Figure: `{figure_name(findings.model, self.name)}`."
            + (f" No rows for {', '.join(absent)}." if absent else "")
            + "\n"
        )  # fmt: skip
        word, why = self.judge(numbers)
        return section(
            self.table(variants) + "\n\n" + markdown_table(headings, table), note + verdict(f"{word}: {why}.")
        )

    def figures(self, rows: list[dict], model: str) -> dict:
        return {figure_name(model, self.name): plot_in_context(model, rows)} if rows else {}
