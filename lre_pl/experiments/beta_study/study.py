"""The β study: why the LRE needs its Jacobian scaled by β > 1, as evaluation variants on bundles.

Every question is answered from the protocol's bundles (:mod:`lre_pl.lre.bundle`), at the layer the
protocol chose for the LRE on each relation's dev split, with the protocol's known samples and
dev/test split (:class:`~lre_pl.evaluation.grid.BundleEvaluation`): no new Jacobian pass. Each question
writes tidy rows (:data:`~lre_pl.evaluation.grid.ROW_FIELDS`; ``estimator`` names the variant):

- ``bias_variants``: faithfulness over the β grid with b = mean_i (o_i − J_i s_i) (``paper``),
  o_mean − W s_mean (``mean_output``), F(s_mean) − W s_mean (``mean_subject``: the LM run on each
  training prompt with s_mean in place of its s, outputs averaged), the objects' corner
  (``corner``) or no b (``none``).
- ``where_beta``: β on W s (``projection``, the paper), 1/β on b (``bias``), or on both (``both``:
  β (W s + b)); and the largest logit difference between the first two, which a scale-invariant
  final norm makes zero up to its ε.
- ``per_sample_beta``: per sample the smallest β on a fine grid at which the readout's top-1 token
  is the LM's own answer: with the sample's own J_i s_i and b_i (training samples) and with the
  mean W and b (known test samples).
- ``unit_s``: the LRE of unit s (W = mean_i ‖s_i‖ J_i, read on s/‖s‖ at test) and of equalised
  ‖o‖ (every o_i, and so J_i and b_i, scaled by min_j ‖o_j‖ / ‖o_i‖ before averaging).
- ``per_sample_w``: per training sample, ‖z‖, ‖W s_i‖ and the top-3 tokens of z = W_i s_i + b (its own
  Jacobian) and of z = W s_i + b (the mean W).
- ``after_norm``: the Jacobian of the final norm's output (D_i J_i, D_i the norm's Jacobian at o_i),
  read at β = 1 and over the grid, decoded by the unembedding alone (no second norm).
- ``residual``: ε = o − (W s + b) on the known test samples: ‖ε‖ against ‖b‖ and ‖W s‖, and the
  share of ‖ε‖² along b (what shrinking b can remove).
- ``fixed_beta``: the layer searched (on dev) with β held at 1 and at the paper's 2.25.
- ``across_trials`` (across bundles): the spread over trials of test faithfulness with the layer and
  β chosen on the first trial held fixed, against each trial's own choice (needs 2+ trials).

``unit_s``, ``per_sample_w`` and ``after_norm`` need each training sample's J_i at the study's layer:
the bundle keeps only J_i s_i (J_i are d² each), so they are computed again for that one layer (five
prompts, one engine pass) and checked against the bundle's J_i s_i.
- ``global_beta`` (across bundles): β learned by :class:`~lre_pl.experiments.beta_study.global_beta.GlobalBetaModule` on
  the dev samples of every relation (one β; one per category; one per relation), on the training
  samples (to show their pull toward 1), and on half of the relations only (held out); each against
  the per-relation best β of the grid, the paper's 2.25 and β = 1, on the test split.

Where the study needs the LM (the corner's unembedding rows, decoding) it takes the loaded model.
"""

from __future__ import annotations

import functools
import json
import random
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lre_pl.dataset.relations import load_relation
from lre_pl.errors import InputError
from lre_pl.evaluation.grid import BundleEvaluation, Decoder, EvaluationGrid
from lre_pl.experiments.beta_study.global_beta import collect_samples, fit_betas, group_of
from lre_pl.files import check_writable_folder, write_text_atomically
from lre_pl.lightning.datamodule import RelationPrompts
from lre_pl.lm.jacobian import compute_jacobians
from lre_pl.lm.models import load_language_model, parse_layer
from lre_pl.lm.suffix import SuffixRun
from lre_pl.lre.bundle import Bundle
from lre_pl.lre.estimators import estimator_named
from lre_pl.lre.operator import relation_readout
from lre_pl.protocol.rows import ROW_FIELDS, read_rows, rows_complete, write_rows

Layer = int | str

#: Questions answered per bundle; ``global_beta`` is answered across all of them.
PER_BUNDLE = (
    "bias_variants", "where_beta", "unit_s", "per_sample_beta", "per_sample_w", "after_norm", "residual",
    "fixed_beta",
)  # fmt: skip
QUESTIONS = (*PER_BUNDLE, "global_beta", "across_trials")

#: The fixed β the paper found for GPT-J and GPT-2-XL, compared with the learned one.
PAPER_BETA = 2.25
BIAS_VARIANTS = ("paper", "mean_output", "corner", "none")
WHERE_BETA = ("projection", "bias", "both")

#: The fine β grid of the per-sample search: 0 to 10 in steps of 0.05.
FINE_BETAS = [round(0.05 * i, 2) for i in range(201)]


def readout(projection: torch.Tensor, bias: torch.Tensor, beta: float, where: str) -> torch.Tensor:
    """The LRE's output [..., d] with β acting on W s (the paper), on b (as 1/β), or on both."""
    if where == "projection":
        return relation_readout(projection, bias, beta)
    if where == "bias":
        return projection + bias / beta if beta else torch.full_like(projection, float("nan"))
    if where == "both":
        return beta * relation_readout(projection, bias, 1.0)
    raise ValueError(f"where={where!r}: use one of {WHERE_BETA}")


def bias_variant(name: str, bundle: Bundle, layer: Layer, unembedding: torch.Tensor) -> torch.Tensor:
    """b [d] of one variant at ``layer`` (``unembedding`` [vocab, d], for the corner).

    ``corner``: the mean of the unit-normalised unembedding rows of the training objects' first
    tokens (the paper's corner, over the training objects only: the test objects are what is
    evaluated), scaled to the norm of the paper's b, so that only b's direction changes and β stays
    comparable with the paper's readout.
    """
    i = bundle.layer_index(layer)
    weight, paper = bundle.weights[i], bundle.biases[i]
    if name == "paper":
        return paper
    if name == "mean_output":
        return bundle.train_output_states.mean(0) - weight @ bundle.train_subject_states[:, i].mean(0)
    if name == "corner":
        rows = unembedding[bundle.train_object_tokens].float()  # [n, d]
        corner = torch.nn.functional.normalize(rows, dim=-1).mean(0)
        return corner * paper.norm() / corner.norm()
    if name == "none":
        return torch.zeros_like(paper)
    raise ValueError(f"bias variant {name!r}: use one of {BIAS_VARIANTS}")


@torch.no_grad()
def mean_subject_bias(lm, prompts: Sequence, bundle: Bundle, layer: Layer) -> torch.Tensor:
    """b = mean_i F_i(s_mean) − W s_mean [d]: F_i is the LM on training prompt i with s_mean written in
    place of its subject state at ``layer``; the outputs are averaged over the prompts (the same
    average as the paper's b over b_i). ``prompts``: the bundle's training prompts, in its order."""
    i = bundle.layer_index(layer)
    mean = bundle.train_subject_states[:, i].mean(0).to(lm.device, lm.dtype)  # [d] s_mean
    run = SuffixRun.prepare(lm, prompts)
    outputs = run.forward(
        lambda _, hidden: torch.cat([mean.expand(len(hidden), 1, -1), hidden[:, 1:]], dim=1), [layer]
    )
    return outputs.float().cpu().mean(0) - bundle.weights[i] @ mean.float().cpu()


def after_norm_operator(
    lm, jacobians: torch.Tensor, subject_states: torch.Tensor, output_states: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [d, d], b [d]) of the LRE of the final norm's output: W = mean_i D_i J_i and
    b = mean_i (norm(o_i) − D_i J_i s_i), D_i the final norm's Jacobian at o_i. Its readout is already
    after the norm: decode it by the unembedding alone (the paper's code applied the norm again).
    ``jacobians`` [n, d, d] J_i, ``subject_states`` [n, d] s_i, ``output_states`` [n, d] o_i.
    """
    o = output_states.to(lm.device)
    with torch.no_grad():
        d_norm = torch.stack([torch.func.jacrev(lm.final_norm)(row) for row in o]).cpu()  # [n, d, d] D_i
        normed = lm.final_norm(o).cpu()  # [n, d]
    products = d_norm @ jacobians  # [n, d, d] D_i J_i
    return products.mean(0), (normed - torch.einsum("nij,nj->ni", products, subject_states)).mean(0)


def smallest_beta(
    answers: Callable[[torch.Tensor], torch.Tensor],
    projection: torch.Tensor,
    bias: torch.Tensor,
    own: torch.Tensor,
    betas: Sequence[float] = FINE_BETAS,
) -> torch.Tensor:
    """[n]: per row the smallest β of ``betas`` at which ``answers(β W s + b)`` (top-1 token ids) is
    ``own`` [n], the LM's own answer; nan where none is. ``projection`` and ``bias`` are [n, d].

    A scan, not a bisection: nothing makes the hit monotone in β.
    """
    found = torch.full((len(projection),), float("nan"))
    for beta in betas:
        open_rows = found.isnan().nonzero().flatten()
        if not len(open_rows):
            break
        hit = answers(relation_readout(projection[open_rows], bias[open_rows], beta)) == own[open_rows]
        found[open_rows[hit]] = beta
    return found


class BetaStudy(BundleEvaluation):
    """The study's questions on one bundle, at the LRE's dev-chosen layer (the protocol's rule)."""

    def __init__(
        self,
        bundle: Bundle,
        grid: EvaluationGrid,
        decoder: Decoder,
        layer: Layer,
        max_known: int | None = None,
    ):
        super().__init__(bundle, grid, decoder)
        self.layer = layer
        self.tables: dict[str, str] = {}  # question -> markdown the rows cannot hold (token strings)
        if max_known is not None and len(self.known) > max_known:
            self._keep_known(max_known)

    def _keep_known(self, count: int) -> None:
        """Keep ``count`` known samples: a seeded subset of the sweep's own dev split and of its test
        split, in proportion, so that no sample the sweep chose the layer and β on is a study test sample."""
        rng = random.Random(self.bundle.seed)
        dev, test = self.splits["dev"].tolist(), self.splits["test"].tolist()
        n_dev = min(len(dev), max(1, round(count * len(dev) / len(self.known))))
        kept = {"dev": sorted(rng.sample(dev, n_dev)), "test": sorted(rng.sample(test, count - n_dev))}
        positions = sorted(kept["dev"] + kept["test"])  # into the sweep's known samples
        new_position = {position: i for i, position in enumerate(positions)}
        self.known = self.known[positions]
        self.objects = [self.bundle.test_objects[i] for i in self.known.tolist()]
        self.splits = {
            split: torch.tensor([new_position[p] for p in kept[split]], dtype=torch.long) for split in kept
        }
        self.splits["all"] = torch.arange(count)

    def study_rows(self, questions: Sequence[str] = PER_BUNDLE) -> list[dict]:
        if len(self.known) < self.grid.min_known:
            return []
        for question in questions:
            if question in PER_BUNDLE:
                getattr(self, f"_{question}")()
        return self._rows

    def test_faithfulness(self, beta: float, layer: Layer | None = None) -> float:
        """faithfulness@1 of the LRE at ``layer`` (default: the study's) and ``beta`` on the test split."""
        return self.faithfulness_by_beta([beta], "test", layer)[0]

    def faithfulness_by_beta(
        self, betas: Sequence[float], split: str, layer: Layer | None = None
    ) -> list[float]:
        """faithfulness@1 of the LRE at ``layer`` (default: the study's) on ``split``, per β (one decode)."""
        layer = self.layer if layer is None else layer
        hits = self._hits_at(
            estimator_named("lre"), [(layer, beta) for beta in betas]
        )  # (layer, β) -> [k, 2]
        return [hits[layer, beta][self.splits[split], 0].float().mean().item() for beta in betas]

    # ------------------------------------------------------------------------------- helpers
    def _projection_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.bundle.layer_index(self.layer)
        states = self.bundle.test_states(self.layer)[self.known]  # [k, d]
        return states @ self.bundle.weights[i].T, self.bundle.biases[i]  # [k, d] W s, [d] b

    def _scan(
        self, variant: str, question: str, readouts: Callable[[float], torch.Tensor], apply_norm: bool = True
    ) -> None:
        """Faithfulness rows of ``readouts(beta)`` [k, d] at every β of the grid (one decode)."""
        betas = list(self.grid.betas)
        hidden = torch.cat([readouts(beta) for beta in betas])  # [beta * k, d]
        hits = self.decoder.hits(hidden, self.objects * len(betas), apply_norm)
        hits = hits.reshape(len(betas), len(self.known), 2)
        for beta, beta_hits in zip(betas, hits):
            self._split_rows(
                beta_hits, self.faithfulness_metrics, kind=question, estimator=variant, layer=str(self.layer),
                beta=beta,
            )  # fmt: skip

    # ----------------------------------------------------------------------------- questions
    def _bias_variants(self) -> None:
        projection, _ = self._projection_and_bias()
        unembedding = self.decoder.lm.unembedding.weight.detach().cpu()
        biases = {name: bias_variant(name, self.bundle, self.layer, unembedding) for name in BIAS_VARIANTS}
        prompts = [item.prompt for item in self.train_prompts]
        biases["mean_subject"] = mean_subject_bias(self.decoder.lm, prompts, self.bundle, self.layer)
        for name, bias in biases.items():
            self._scan(
                name, "bias_variants", lambda beta, bias=bias: relation_readout(projection, bias, beta)
            )

    def _where_beta(self) -> None:
        projection, bias = self._projection_and_bias()
        for where in WHERE_BETA:
            self._scan(where, "where_beta", lambda beta, where=where: readout(projection, bias, beta, where))
        lm = self.decoder.lm
        with torch.no_grad():  # decode(β W s + b) against decode(W s + b / β): equal but for the norm's ε
            gap = max(
                (lm.decode(readout(projection, bias, beta, "projection").to(lm.device))
                 - lm.decode(readout(projection, bias, beta, "bias").to(lm.device))).abs().max().item()
                for beta in self.grid.betas if beta > 0
            )  # fmt: skip
        self._row(kind="where_beta", split="all", metric="max_logit_gap_projection_vs_bias", value=gap,
                  n=len(self.known), layer=str(self.layer))  # fmt: skip

    def _per_sample_beta(self) -> None:
        b, lm, i = self.bundle, self.decoder.lm, self.bundle.layer_index(self.layer)

        def answers(hidden: torch.Tensor) -> torch.Tensor:  # [n, d] -> top-1 token ids [n]
            with torch.no_grad():
                return lm.decode(hidden.to(lm.device)).argmax(-1).cpu()

        # Training samples with their own J_i s_i and b_i (β = 1 gives o_i itself, so at most 1).
        train = smallest_beta(
            answers, b.train_jacobian_states[:, i], b.train_biases[:, i], answers(b.train_output_states)
        )
        projection, bias = self._projection_and_bias()  # known test samples with the mean W and b
        test = smallest_beta(
            answers, projection, bias.expand_as(projection), answers(b.test_output_states[self.known])
        )
        for sample_set, values in (("train_own_J_b", train), ("test_mean_W_b", test)):
            for value in values.tolist():  # one row per sample: the histograms read them
                self._row(kind="per_sample_beta", estimator=sample_set, layer=str(self.layer), split="all",
                          metric="smallest_beta", value=value, n=1)  # fmt: skip

    @functools.cached_property
    def train_prompts(self) -> list:
        """The training items of the bundle's trial (rebuilt: the split is seeded)."""
        b = self.bundle
        return RelationPrompts.build(load_relation(b.relation), self.decoder.lm, b.n_train, b.seed).train

    @functools.cached_property
    def jacobians(self) -> torch.Tensor:
        """J_i [n, d, d] of the training samples at the study's layer (one engine pass, then checked)."""
        b, lm = self.bundle, self.decoder.lm
        result = compute_jacobians(lm, [item.prompt for item in self.train_prompts], [self.layer])
        jacobians = result.jacobians[self.layer].detach().float().cpu()
        i = b.layer_index(self.layer)
        stored = b.train_jacobian_states[:, i]  # J_i s_i of the estimation: the same prompts, the same J_i
        s = b.train_subject_states[:, i]
        recomputed = torch.einsum("nij,nj->ni", jacobians, s)
        # Float32 products carry an error of about eps * ‖J_i‖ ‖s_i‖, whatever the size of J_i s_i.
        scale = (jacobians.flatten(1).norm(dim=-1) * s.norm(dim=-1)).max().item()
        if (recomputed - stored).abs().max().item() > 1e-4 * scale:
            raise RuntimeError(
                f"J_i of {b.relation!r} at layer {self.layer} differ from its bundle's J_i s_i"
            )
        return jacobians

    def _unit_s(self) -> None:
        b, i = self.bundle, self.bundle.layer_index(self.layer)
        s, o, jacobians = b.train_subject_states[:, i], b.train_output_states, self.jacobians
        biases = b.train_biases[:, i]  # [n, d] b_i = o_i − J_i s_i, as estimated (J_i is checked against it)
        test = b.test_states(self.layer)[self.known]  # [k, d]
        unit_weight = (s.norm(dim=-1)[:, None, None] * jacobians).mean(0)  # d o / d u at u = s / ‖s‖
        scale = o.norm(dim=-1).min() / o.norm(dim=-1)  # [n] every o_i down to the smallest norm
        equal_weight = (scale[:, None, None] * jacobians).mean(0)
        equal_bias = (scale[:, None] * biases).mean(0)
        unit_projection = torch.nn.functional.normalize(test, dim=-1) @ unit_weight.T
        equal_projection = test @ equal_weight.T
        self._scan("unit_s", "unit_s", lambda beta: relation_readout(unit_projection, biases.mean(0), beta))
        self._scan("equalised_o", "unit_s", lambda beta: relation_readout(equal_projection, equal_bias, beta))

    def _per_sample_w(self) -> None:
        """Rows of ‖z‖ and ‖W s_i‖ per training sample, and the notes' table with the top-3 tokens."""
        b, lm, i = self.bundle, self.decoder.lm, self.bundle.layer_index(self.layer)
        s, bias = b.train_subject_states[:, i], b.biases[i]
        readouts = {"own_W_i": b.train_jacobian_states[:, i], "mean_W": s @ b.weights[i].T}  # W s_i [n, d]
        lines = [
            "| sample → object | W | ‖W s‖ | ‖z‖ | top-3 tokens of z = W s + b |",
            "|---|---|---|---|---|",
        ]
        for name, projection in readouts.items():
            z = projection + bias  # [n, d]
            with torch.no_grad():
                top = lm.decode(z.to(lm.device)).topk(3).indices.cpu()  # [n, 3]
            hit = (top[:, 0] == b.train_object_tokens).float()
            for metric, values in (("z_norm", z.norm(dim=-1)), ("projection_norm", projection.norm(dim=-1)),
                                   ("top1_is_object", hit)):  # fmt: skip
                for value in values.tolist():  # one row per sample
                    self._row(kind="per_sample_w", estimator=name, layer=str(self.layer), split="all",
                              metric=metric, value=value, n=1)  # fmt: skip
            for item, tokens, p_norm, z_norm in zip(
                self.train_prompts, top.tolist(), projection.norm(dim=-1), z.norm(dim=-1)
            ):
                words = ", ".join(repr(token) for token in lm.token_strings(tokens)).replace("|", "\\|")
                lines.append(
                    f"| {item.sample.subject} → {item.sample.object} | {name} | {p_norm:.1f} | {z_norm:.1f} | {words} |"
                )
        self.tables["per_sample_w"] = (
            f"**{b.relation}** (trial {b.seed}, layer {self.layer})\n\n" + "\n".join(lines) + "\n"
        )

    def _after_norm(self) -> None:
        i = self.bundle.layer_index(self.layer)
        weight, bias = after_norm_operator(
            self.decoder.lm,
            self.jacobians,
            self.bundle.train_subject_states[:, i],
            self.bundle.train_output_states,
        )
        projection = self.bundle.test_states(self.layer)[self.known] @ weight.T
        self._scan(
            "after_norm",
            "after_norm",
            lambda beta: relation_readout(projection, bias, beta),
            apply_norm=False,
        )

    def _fixed_beta(self) -> None:
        """The layer chosen on dev with β held fixed (1, the paper's 2.25), reported on test."""
        lre = estimator_named("lre")
        for beta in (1.0, PAPER_BETA):
            scores = self._hits_at(lre, [(layer, beta) for layer in self.bundle.layers])
            layer, _ = max(scores, key=lambda key: scores[key][self.splits["dev"], 0].float().mean().item())
            self._split_rows(scores[layer, beta], self.faithfulness_metrics, splits=("test",), kind="fixed_beta",
                             estimator=f"beta={beta}", layer=str(layer), beta=beta)  # fmt: skip

    def _residual(self) -> None:
        projection, bias = self._projection_and_bias()
        outputs = self.bundle.test_output_states[self.known]  # [k, d] F(s): the LM's own o
        residual = outputs - (projection + bias)  # [k, d] ε
        along_b = (residual @ bias / bias.norm()) ** 2 / residual.norm(dim=-1) ** 2  # share of ‖ε‖² along b
        values = {
            "residual_norm": residual.norm(dim=-1),
            "bias_norm": bias.norm().expand(len(residual)),
            "projection_norm": projection.norm(dim=-1),
            "residual_over_bias": residual.norm(dim=-1) / bias.norm(),
            "residual_over_projection": residual.norm(dim=-1) / projection.norm(dim=-1),
            "residual_share_along_bias": along_b,
            "residual_cosine_bias": torch.nn.functional.cosine_similarity(residual, bias[None], dim=-1),
        }
        for metric, per_sample in values.items():
            self._split_rows(
                per_sample[:, None], (metric,), kind="residual", estimator="lre", layer=str(self.layer)
            )


@dataclass
class BetaStudyConfig:
    """The β study over finished ``lre-pl sweep`` folders; rerunning the same config resumes it."""

    sweep_dirs: list[str] = field(
        default_factory=lambda: ["lightning_logs/sweep_beta_smollm2-135m", "lightning_logs/sweep_gemma3-270m"]
    )
    """Sweep folders (bundles, rows, sweep_config.json), one per model: each is studied with its own
    model, grid and splits, and the report sets them side by side."""
    questions: list[str] = field(default_factory=lambda: list(QUESTIONS))
    """Which questions to answer (see :data:`QUESTIONS`)."""
    output_dir: str | None = None
    """Where the study's rows and report go: ``None``: ``<sweep_dir>/beta_study`` for each sweep, shared
    by every question's config; a folder: ``<output_dir>/<sweep folder name>``."""
    report: str | None = None
    """Also write the markdown report of all the sweeps here (e.g. ``docs/beta_study.md``), figures beside it."""
    max_known: int | None = 50
    """At most this many known samples per bundle: a seeded subset of the sweep's own dev and test
    splits, in proportion (no study test sample chose the sweep's layer and β); ``None``: the sweep's.
    Each decode of Gemma 3 is a [d] x [d, 262k] product: 50 keeps its study within a CPU's reach."""
    fit_epochs: int = 10
    """Epochs of each learned-β fit (``global_beta``); β moves around its optimum after ~5."""
    allow_unfinished: bool = False
    """Study a sweep whose config still lists (relation, trial) pairs without rows, on what it has
    (the console and the report name what is missing). ``False``: such a sweep is refused, so that a
    report never covers a subset of its sweep unnoticed."""

    def check(self) -> dict[Path, Path]:
        """{sweep folder: its study folder}; one-line errors before any model is loaded."""
        unknown = sorted(set(self.questions) - set(QUESTIONS))
        if unknown or not self.questions:
            raise InputError(f"questions={self.questions}: choose from {list(QUESTIONS)}")
        if self.max_known is not None and self.max_known < 2:
            raise InputError(
                f"max_known={self.max_known} must be at least 2 (one dev and one test sample), or null"
            )
        if self.fit_epochs < 1:
            raise InputError(f"fit_epochs={self.fit_epochs} must be at least 1")
        if not self.sweep_dirs:
            raise InputError("sweep_dirs is empty: give the folders of finished lre-pl sweep runs")
        from lre_pl.experiments.sweep.runner import read_sweep_config, unfinished_pairs

        models, sweeps = {}, {}
        for sweep_dir in self.sweep_dirs:
            if not (Path(sweep_dir) / "sweep_config.json").is_file():
                raise InputError(
                    f"sweep_dir {sweep_dir!r} holds no sweep_config.json: run lre-pl sweep into it first"
                )
            sweeps[sweep_dir] = read_sweep_config(Path(sweep_dir))
            model = sweeps[sweep_dir]["model"]
            if model in models:
                raise InputError(
                    f"sweep_dirs {models[model]!r} and {sweep_dir!r} are both of {model}: study one folder per model"
                )
            models[model] = sweep_dir
        for sweep_dir, sweep in sweeps.items():
            root = Path(sweep_dir)
            missing = unfinished_pairs(root, sweep)
            if missing and not self.allow_unfinished:
                if not any(rows_complete(path) for path in (root / "rows").glob("*.jsonl")):
                    raise nothing_evaluated(root)
                raise InputError(
                    f"{unfinished_line(root, missing, sweep)}: rerun its sweep to finish it, or give "
                    "allow_unfinished true to study what it has"
                )
        roots = [Path(sweep_dir) for sweep_dir in self.sweep_dirs]
        if self.output_dir is None:
            folders = {root: root / "beta_study" for root in roots}
        elif len({root.resolve().name for root in roots}) < len(roots):
            raise InputError(f"sweep_dirs={self.sweep_dirs} share a folder name: give output_dir null")
        else:
            folders = {root: Path(self.output_dir) / root.resolve().name for root in roots}
        for out in folders.values():  # rows made with other settings would mix in silently
            path = out / "study_settings.json"
            before = json.loads(path.read_text()) if path.exists() else self.settings
            changed = [name for name in self.settings if before.get(name) != self.settings[name]]
            if changed:
                raise InputError(
                    f"{out} was studied with {changed[0]}={before.get(changed[0])}, not {self.settings[changed[0]]}: "
                    "rerun with its settings or give another output_dir"
                )
            check_writable_folder(out, "output_dir")
        if self.report:
            check_writable_folder(Path(self.report).parent, "report")
        return folders

    @property
    def settings(self) -> dict:
        """What the rows depend on besides the sweep: kept beside them (``study_settings.json``)."""
        return {"max_known": self.max_known, "fit_epochs": self.fit_epochs}


def unfinished_line(root: Path, missing: Sequence[tuple[str, int]], sweep: dict) -> str:
    """What an unfinished sweep lacks, in one line: the (relation, trial) pairs its config (``sweep``,
    as in its ``sweep_config.json``) lists that have no rows yet."""
    from lre_pl.experiments.sweep.runner import resolve_relations

    total = len(resolve_relations(sweep["relations"])) * len(sweep["trials"])
    named = ", ".join(f"{relation} trial {trial}" for relation, trial in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return f"the sweep in {root} is unfinished: {len(missing)} of its {total} (relation, trial) pairs have no rows ({named}{more})"


def nothing_evaluated(root: Path) -> InputError:
    return InputError(f"{root} has no evaluated relation (rows/*.jsonl): finish the sweep first")


def chosen_points(rows: list[dict]) -> dict[tuple[str, int], tuple[Layer, float]]:
    """{(relation, trial): the LRE's (layer, beta) chosen on the dev split} from a sweep's rows."""
    return {
        (row["relation"], row["trial"]): (parse_layer(row["layer"]), row["beta"])
        for row in rows
        if row["kind"] == "selected" and row["selection"] == "dev" and row["estimator"] == "lre"
        and row["metric"] == "faithfulness@1"
    }  # fmt: skip


def best_shared_betas(
    scores: Sequence[dict[float, float]], groups: Sequence[str], betas: Sequence[float]
) -> dict[str, float]:
    """{group: the β of ``betas`` with the highest mean score over the group's bundles} (first of ties).
    ``scores``: per bundle {β: faithfulness}; ``groups``: per bundle its group."""
    members = defaultdict(list)
    for score, group in zip(scores, groups):
        members[group].append(score)
    return {
        group: max(betas, key=lambda beta: statistics.mean(score[beta] for score in group_scores))
        for group, group_scores in members.items()
    }


def global_beta_rows(
    studies: Sequence[BetaStudy],
    best_betas: Sequence[float],
    model: str,
    log_dir: Path,
    seed: int = 0,
    epochs: int = 10,
) -> list[dict]:
    """Rows of learned betas (``metric="beta"``) and of test faithfulness per relation with each β.

    ``best_betas``: each study's per-relation β chosen on dev by the sweep's grid. Each fit's loss
    and β trajectory go to TensorBoard under ``log_dir``.
    """
    from pytorch_lightning.loggers import TensorBoardLogger

    def logger(variant: str) -> TensorBoardLogger:
        return TensorBoardLogger(str(log_dir), name=variant.replace(":", "_"), default_hp_metric=False)

    tokenizer = studies[0].decoder.lm.tokenizer
    items = [(study.bundle, study.layer, study.known, study.splits) for study in studies]
    # Held out by relation (all its trials on one side): learned on half of them, reported on the rest.
    relations = sorted({study.bundle.relation for study in studies})
    random.Random(seed).shuffle(relations)
    learned_relations = set(relations[: len(relations) // 2])
    learn_on = {i for i, study in enumerate(studies) if study.bundle.relation in learned_relations}
    fits = {}
    for grouping, source in (
        ("global", "dev"),
        ("category", "dev"),
        ("relation", "dev"),
        ("global", "train"),
    ):
        samples = collect_samples(items, tokenizer, source, grouping)
        variant = f"learned:{grouping}:{source}"
        fits[variant] = (grouping, fit_betas(model, samples, epochs, seed=seed, logger=logger(variant)))
    # The best single β of the sweep's grid (and one per category), chosen on dev: no gradient, the
    # grid's own optimum, to check that the learned β is not a poor optimiser's answer. Ties go as in
    # the sweep's own β choice: the layer-search β first, then the grid's order.
    grid = studies[0].grid
    betas = sorted(grid.betas, key=lambda beta: beta != grid.layer_search_beta)
    dev = [dict(zip(betas, study.faithfulness_by_beta(betas, "dev"))) for study in studies]  # {β: value} each
    for grouping in ("global", "category"):
        groups = [group_of(study.bundle, grouping) for study in studies]
        fits[f"grid:{grouping}:dev"] = (grouping, best_shared_betas(dev, groups, betas))
    # The same, chosen on the test samples they are reported on (the paper's way): optimistic for every
    # grouping alike, so one β against one per relation is compared without the dev split's own bias
    # (it chose each layer at the layer-search β, which inflates its faithfulness at that β).
    test = [dict(zip(betas, study.faithfulness_by_beta(betas, "test"))) for study in studies]
    for grouping in ("global", "category", "relation"):
        groups = [group_of(study.bundle, grouping) for study in studies]
        fits[f"oracle:{grouping}:test"] = (grouping, best_shared_betas(test, groups, betas))
    held = collect_samples([items[i] for i in sorted(learn_on)], tokenizer, "dev", "global")
    fits["heldout:global:dev"] = (
        "global",
        fit_betas(model, held, epochs, seed=seed, logger=logger("heldout:global:dev")),
    )
    rows = []
    for variant, (grouping, betas) in fits.items():  # the learned betas, one row per group
        for group, beta in betas.items():
            where = {"relation": {"relation": group}, "category": {"category": group}}.get(grouping, {})
            rows.append(dict.fromkeys(ROW_FIELDS) | dict(
                model=studies[0].bundle.model, kind="global_beta", estimator=variant, split="all", metric="beta",
                value=beta, beta=beta, n=1, **where,
            ))  # fmt: skip
    for index, (study, best) in enumerate(zip(studies, best_betas)):
        compared = {"best_per_relation": best, f"paper_{PAPER_BETA}": PAPER_BETA, "beta_1": 1.0}
        for variant, (grouping, betas) in fits.items():
            if variant.startswith("heldout") and index in learn_on:
                continue
            compared[variant] = betas[group_of(study.bundle, grouping)]
        for variant, beta in compared.items():
            study._row(kind="global_beta", estimator=variant, layer=str(study.layer), beta=beta, split="test",
                       metric="faithfulness@1", value=study.test_faithfulness(beta), n=len(study.splits["test"]))  # fmt: skip
        rows += [row for row in study._rows if row["kind"] == "global_beta"]
    return rows


def across_trials_rows(studies: dict[int, BetaStudy], points: dict[int, tuple[Layer, float]]) -> list[dict]:
    """One relation's trials: test faithfulness with the first trial's (layer, β) held fixed (``fixed``)
    and with each trial's own dev choice (``own``). ``studies`` and ``points`` are keyed by trial."""
    first = min(studies)
    layer, beta = points[first]
    for trial, study in sorted(studies.items()):
        for variant, (at, value) in (("fixed", (layer, beta)), ("own", points[trial])):
            study._row(kind="across_trials", estimator=variant, layer=str(at), beta=value, split="test",
                       metric="faithfulness@1", value=study.test_faithfulness(value, at),
                       n=len(study.splits["test"]))  # fmt: skip
    return [row for study in studies.values() for row in study._rows if row["kind"] == "across_trials"]


def run_beta_study(config: BetaStudyConfig, command: str | None = None) -> list[Path]:
    """Every sweep's study (:func:`study_sweep`), then the report over all of them; returns the study
    folders. ``command`` (the study's command line) is written into the report."""
    from lre_pl.experiments.beta_study.report import write_study_report

    folders = config.check()
    for root, out in folders.items():
        study_sweep(root, out, config)
    made_by = [f"the study: `{command}`" if command else f"the study: questions {config.questions}"]
    write_study_report(list(folders.values()), config.report, made_by)
    return list(folders.values())


def study_sweep(root: Path, out: Path, config: BetaStudyConfig) -> None:
    """Rows of the config's questions for every evaluated bundle of the sweep in ``root``, into ``out/rows``.

    Per bundle, a question's row file is skipped when it exists; the cross-bundle questions are redone
    when the sweep's evaluated bundles are no longer the ones their rows cover. The sweep's commands
    and config are copied beside the rows (``sweep_command.txt``, ``sweep_config.json``) for the report,
    and so is what an unfinished sweep lacks (``sweep_unfinished.txt``, studied with ``allow_unfinished``).
    """
    from lre_pl.experiments.sweep.runner import (
        SweepConfig,
        bundle_file,
        read_sweep_config,
        slug,
        unfinished_pairs,
        warn,
    )

    swept = read_sweep_config(root)
    sweep = SweepConfig(**swept)
    grid = sweep.grid()
    points = chosen_points(read_rows(sorted((root / "rows").glob("*.jsonl"))))
    if not points:
        raise nothing_evaluated(root)
    missing = unfinished_pairs(root, swept)
    unfinished = out / "sweep_unfinished.txt"
    if missing:
        line = unfinished_line(root, missing, swept)
        warn(f"{line}; studied without them (allow_unfinished)")
        write_text_atomically(unfinished, f"**Unfinished sweep**: {line}; studied without them.\n")
    else:
        unfinished.unlink(missing_ok=True)
    commands = root / "command.txt"
    write_text_atomically(
        out / "sweep_command.txt", commands.read_text() if commands.exists() else f"(the sweep in {root})\n"
    )
    write_text_atomically(out / "sweep_config.json", (root / "sweep_config.json").read_text())
    write_text_atomically(out / "study_settings.json", json.dumps(config.settings) + "\n")
    lm = load_language_model(sweep.model, sweep.dtype, "cuda:0" if torch.cuda.is_available() else "cpu")
    decoder = Decoder(lm, grid.top_k)

    def study_of(relation: str, trial: int) -> BetaStudy:
        bundle = Bundle.load(bundle_file(root, relation, trial))
        return BetaStudy(bundle, grid, decoder, points[relation, trial][0], config.max_known)

    # One row file per question and bundle: each resumes on its own when the questions change.
    questions = config.questions
    asked = [question for question in questions if question in PER_BUNDLE]
    bar = tqdm(sorted(points, key=str), desc=f"beta study ({sweep.model})", unit="trial")
    for relation, trial in bar:
        name = f"{slug(relation)}__trial_{trial}"
        to_answer = [q for q in asked if not rows_complete(out / "rows" / q / f"{name}.jsonl")]
        if not to_answer:
            continue
        bar.set_postfix_str(f"{relation}, trial {trial}")
        study = study_of(relation, trial)
        rows = study.study_rows(to_answer)
        for question in to_answer:  # the tables first: a whole row file marks its question done
            if question in study.tables:
                write_text_atomically(out / "tables" / question / f"{name}.md", study.tables[question])
            write_rows(
                out / "rows" / question / f"{name}.jsonl", [row for row in rows if row["kind"] == question]
            )
    bar.close()
    trials = defaultdict(list)
    for relation, trial in sorted(points, key=str):
        trials[relation].append(trial)
    several = {(relation, trial) for relation, seeds in trials.items() if len(seeds) >= 2 for trial in seeds}
    path = out / "rows" / "global_beta.jsonl"
    if "global_beta" in questions and _covered(path, "beta_1") != set(points):
        keys = sorted(points, key=str)
        studies = [study_of(*key) for key in keys]
        usable = [i for i, study in enumerate(studies) if len(study.known) >= grid.min_known]
        best = [points[keys[i]][1] for i in usable]
        rows = global_beta_rows(
            [studies[i] for i in usable], best, sweep.model, out / "tensorboard", epochs=config.fit_epochs
        )
        write_rows(path, rows)
    path = out / "rows" / "across_trials.jsonl"
    if "across_trials" in questions and (not rows_complete(path) or _covered(path, "fixed") != several):
        rows = []
        for relation, seeds in sorted(trials.items()):
            studies = {trial: study_of(relation, trial) for trial in seeds}
            studies = {t: study for t, study in studies.items() if len(study.known) >= grid.min_known}
            if len(studies) >= 2:
                rows += across_trials_rows(studies, {t: points[relation, t] for t in studies})
        write_rows(path, rows)


def _covered(path: Path, estimator: str) -> set[tuple[str, int]]:
    """The (relation, trial) keys of a cross-bundle row file's ``estimator`` rows (empty if no whole file)."""
    if not rows_complete(path):
        return set()
    rows = read_rows([path])
    return {(row["relation"], row["trial"]) for row in rows if row["estimator"] == estimator}
