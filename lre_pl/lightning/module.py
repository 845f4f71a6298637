"""The LightningModule: LRE estimation as ``fit``, faithfulness as validation."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from lre_pl.dataset.relations import HPARAMS_MODELS, reference_hparams
from lre_pl.errors import InputError
from lre_pl.evaluation.causality import (
    COMPARISON_EDITS,
    all_pairs,
    comparison_edits,
    efficacy,
    pinv_edits,
    random_targets,
)
from lre_pl.evaluation.metrics import PrefixRecallAtK
from lre_pl.lightning.callbacks import FailedRunCleanup
from lre_pl.lightning.distributed import gather_objects, rank_and_world
from lre_pl.lightning.outputs import (
    layer_table,
    log_weight_spectra,
    plot_faithfulness_by_layer,
    write_figure,
    write_hparams,
    write_prediction_table,
)
from lre_pl.lm.activations import collect_states
from lre_pl.lm.jacobian import compute_jacobians
from lre_pl.lm.models import LanguageModel, check_dtype, check_model_spec, load_language_model, parse_layer
from lre_pl.lre.beta import learn_beta
from lre_pl.lre.bundle import Bundle
from lre_pl.lre.estimators import Estimator, JacobianMean, TrainingStatistics
from lre_pl.lre.operator import LinearRelationOperator, relation_readout

Layer = int | str

#: How causality edits pick their targets (see ``LinearRelationModule``'s ``causality_targets``).
CAUSALITY_TARGETS = ("random", "all_pairs")

# Noise that this module's design causes on purpose: estimation has no optimizer, and Lightning's
# own pytree helper trips a torch deprecation. Neither says anything to a user.
warnings.filterwarnings("ignore", message=r".*configure_optimizers` returned `None`")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


class LinearRelationModule(pl.LightningModule):
    """Estimates W and b of an LRE over the training samples and measures its faithfulness.

    Nothing of the LM is trained; ``fit`` is one pass of Jacobians. Hooks, in the order they run:

    - ``__init__``: checks everything that needs no model (model spec, dtype, layer syntax, top_k,
      the operator file and that it is of this model), so bad input fails before any loading.
    - ``configure_callbacks``: :class:`~lre_pl.lightning.callbacks.FailedRunCleanup` (SIGTERM stops the run at
      once; a failed run removes the run folder it created).
    - ``setup``: checks the data module against this module (model, dtype, the operator's relation);
      takes the layer from the paper's hyper-parameters if asked.
    - ``configure_model``: load the frozen LM (a plain attribute, never a submodule, so its weights
      stay out of ``state_dict``, checkpoints and DDP); normalise and de-duplicate the layers;
      allocate W, b, one beta and one recall metric per layer; load ``operator_path``.
    - ``training_step``: Jacobians of a batch of training prompts at every requested layer (one
      forward only for an estimator that needs none); adds sum J_i and sum b_i to rank-local sums and
      keeps s_i, o_i. Returns no loss: no optimizer step happens.
    - ``on_validation_epoch_start`` / ``on_train_epoch_end``: whichever comes first after the
      training pass reduces the sums across ranks (mean J_i, mean b_i), gathers s_i and o_i, lets the
      estimator make W and b of every layer (Lightning validates *before* ``on_train_epoch_end``),
      then learns one beta per layer if asked.
      Lightning's sanity validation (before any estimate) is skipped; later epochs are not run.
    - ``validation_step``: decode(beta W s + b) for the known test samples; recall@k metrics.
    - ``on_validation_epoch_end``: logs metrics, the per-sample table, singular values of W, hparams,
      and for several layers the faithfulness-vs-layer plot.
    - ``on_fit_end``: writes ``operator.pt`` (and one file per layer), a checkpoint, a summary; or,
      with ``bundle_path``, only the estimation bundle (:meth:`bundle`) that ``lre-pl sweep`` evaluates.

    Args:
        model: model spec: ``smollm2-135m``, ``gemma3-270m``, a ``.gguf`` path, a hub name or directory.
        dtype: torch dtype name for the model weights.
        layers: layer of s (``"emb"`` or a block index), a list, or ``"all"`` (``emb`` and every
            block): all are estimated in one pass and validated; the first one is the operator of
            ``operator.pt``.
        beta: scale on W s (the paper: 2.25 for GPT-J and GPT-2-XL, 8.0 for LLaMA-13B).
        learn_beta: after estimating, fit one beta per layer by cross-entropy on the training
            samples' objects.
        beta_steps: Adam steps of the beta fit.
        beta_lr: Adam learning rate of log(beta).
        top_k: recall@1 and recall@top_k are reported.
        chunk_size: vector-Jacobian products per backward pass; ``None`` sizes it automatically.
        operator_path: an ``operator.pt`` to validate instead of estimating one.
        reference_hparams: ``gptj``, ``gpt2-xl`` or ``llama``: take the layer from the paper's best
            hyper-parameters of that model for the data module's relation (replaces ``layers``).
        estimator: how (W, b) come from the training samples (``lre_pl.lre.estimators``): ``None`` is
            the paper's LRE (:class:`~lre_pl.lre.estimators.JacobianMean`); the baselines
            ``Translation``, ``LinearRegression`` and ``Identity`` need no Jacobian.
        ranks: also measure causality (the paper's edit Δs = W⁺_r (o' − o), W⁺_r the rank-r
            pseudo-inverse of the unscaled W) at these ranks: ``val/causality@r<rank>``.
        causality_targets: ``random`` (the paper: per known test sample one seeded random target
            with a different subject and object) or ``all_pairs`` (every such pair; deterministic).
        comparison_edits: also the paper's comparison edits (same targets), which replace s by the
            target's s', by the target subject's token embedding or by o': ``val/edit/<kind>``.
        bundle_path: write the estimation bundle (:class:`~lre_pl.lre.bundle.Bundle`: W and b of every
            layer, per-sample s_i, o_i, b_i, J_i s_i, every test sample's states) there at the end of
            ``fit``, instead of the operator files: what ``lre-pl sweep`` evaluates.
        keep_jacobians: also keep every per-sample J_i in the bundle (d^2 floats per sample and layer).
        bundle_min_known: with ``bundle_path``, a relation with fewer known test samples gets a bundle
            without Jacobians (its test states and known flags only): a sweep lists it, never
            evaluates it, and spends no Jacobian on it.
    """

    def __init__(
        self,
        model: str = "smollm2-135m",
        dtype: str = "float32",
        layers: Layer | list[Layer] = 8,
        beta: float = 1.0,
        learn_beta: bool = False,
        beta_steps: int = 100,
        beta_lr: float = 0.05,
        top_k: int = 3,
        chunk_size: int | None = None,
        operator_path: str | None = None,
        reference_hparams: str | None = None,
        estimator: Estimator | None = None,
        ranks: list[int] | None = None,
        causality_targets: str = "random",
        comparison_edits: bool = False,
        bundle_path: str | None = None,
        keep_jacobians: bool = False,
        bundle_min_known: int = 1,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_model_spec(model)
        check_dtype(dtype)
        for name, value, minimum in (("beta", beta, 0), ("beta_lr", beta_lr, 0)):
            if not value > minimum:
                raise InputError(f"{name}={value} must be positive")
        for name, value in (("top_k", top_k), ("beta_steps", beta_steps), ("chunk_size", chunk_size or 1)):
            if value < 1:
                raise InputError(f"{name}={value} must be at least 1")
        requested = list(layers) if isinstance(layers, (list, tuple)) else [layers]
        if not requested:
            raise InputError("layers is empty: give a layer such as 8, or a list such as [emb, 8, 18]")
        # "all" stays a marker until configure_model knows the number of blocks.
        self.layers: list[Layer] = ["all"] if requested == ["all"] else [parse_layer(x) for x in requested]
        if reference_hparams is not None and reference_hparams not in HPARAMS_MODELS:
            raise InputError(
                f"reference_hparams={reference_hparams!r} is not one of {', '.join(HPARAMS_MODELS)}"
            )
        self.loaded_operator = LinearRelationOperator.load(operator_path) if operator_path else None
        if self.loaded_operator is not None:
            self._check_operator(self.loaded_operator)
        self.estimator: Estimator = estimator or JacobianMean()
        self.ranks: list[int] = list(ranks or [])
        if any(not isinstance(rank, int) or rank < 0 for rank in self.ranks):
            raise InputError(f"ranks={ranks} must be non-negative integers, e.g. [16, 64, 256]")
        if causality_targets not in CAUSALITY_TARGETS:
            raise InputError(
                f"causality_targets={causality_targets!r} is not one of {', '.join(CAUSALITY_TARGETS)}"
            )
        self.automatic_optimization = False
        self.lm: LanguageModel | None = None
        self.last_metrics: dict[str, float] = {}
        self._started = time.perf_counter()  # the summary's wall time: model load, knowns filter, fit

    def _check_operator(self, operator: LinearRelationOperator) -> None:
        """The operator file must be of this model and layer (a negative layer waits for the model)."""
        path = self.hparams.operator_path
        if operator.model != self.hparams.model:
            raise InputError(
                f"{path} was estimated on model {operator.model!r}, not model.model={self.hparams.model!r}: "
                f"set model.model={operator.model!r}"
            )
        (layer, *others) = self.layers
        if others or (
            layer != operator.layer and not (isinstance(layer, int) and layer < 0 and self.lm is None)
        ):
            raise InputError(
                f"{path} holds the LRE of layer {operator.layer!r}, not model.layers={self.layers}: "
                f"set model.layers={operator.layer!r}"
            )

    # ----------------------------------------------------------------------------------- set-up
    def configure_callbacks(self):
        return [FailedRunCleanup(self.trainer)]

    def setup(self, stage: str) -> None:
        # trainer.log_dir is a broadcast under DDP: read it here, where every rank runs.
        self._run_dir_path = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            self.check_datamodule(datamodule)
        if self.hparams.reference_hparams:
            relation = datamodule.relation.name
            self.layers = [reference_hparams(self.hparams.reference_hparams, relation)["h_layer"]]

    def check_datamodule(self, datamodule) -> None:
        """One-line errors for a data module that does not fit this module."""
        data = datamodule.hparams
        for name in ("model", "dtype"):
            if data[name] != self.hparams[name]:
                raise InputError(
                    f"data.{name}={data[name]!r} differs from model.{name}={self.hparams[name]!r}: give both the same"
                )
        operator = self.loaded_operator
        if operator is not None and datamodule.relation.name != operator.relation:
            raise InputError(
                f"{self.hparams.operator_path} is an LRE of {operator.relation!r}, not of data.relation="
                f"{data.relation!r}: set data.relation={operator.relation!r}"
            )

    def configure_model(self) -> None:
        if self.lm is not None:
            return
        self.lm = load_language_model(self.hparams.model, self.hparams.dtype, str(self._root_device()))
        if self.layers == ["all"]:
            self.layers = self.lm.layer_names()
        # -1 and 29 are one layer of a 30-block model: estimate and report it once.
        self.layers = list(dict.fromkeys(self.lm.check_layer(layer) for layer in self.layers))
        d, n = self.lm.hidden_size, len(self.layers)
        if any(rank > d for rank in self.ranks):
            raise InputError(
                f"ranks={self.ranks} out of range for {self.hparams.model}: W is {d} x {d}, use 0..{d}"
            )
        # One beta per layer: trainable in the learnable-beta variant; its presence lets DDP wrap us.
        self.log_beta = nn.Parameter(torch.full((n,), math.log(self.hparams.beta)))
        self.recall = nn.ModuleList(PrefixRecallAtK(sorted({1, self.hparams.top_k})) for _ in self.layers)
        # W and b are plain tensors, not buffers: DDP would broadcast buffers on every step (a
        # collective that hangs when shards have different numbers of batches). Checkpoints get
        # them through on_save_checkpoint.
        self.weights = torch.zeros(n, d, d, device=self._root_device())  # [layer, d, d]
        self.biases = torch.zeros(n, d, device=self._root_device())  # [layer, d]
        self.estimated = False
        self._reset_sums()
        if self.loaded_operator is not None:
            operator = self.loaded_operator
            self._check_operator(operator)
            self.weights[0] = operator.weight
            self.biases[0] = operator.bias
            self.log_beta.data.fill_(math.log(operator.beta))
            self.estimated = True

    def _root_device(self) -> torch.device:
        return self.trainer.strategy.root_device if self._trainer is not None else self.device

    def _reset_sums(self) -> None:
        d, n = self.lm.hidden_size, len(self.layers)
        self._jacobian_sum = torch.zeros(n, d, d, device=self._root_device())  # [layer, d, d]
        self._bias_sum = torch.zeros(n, d, device=self._root_device())  # [layer, d]
        self._count = 0
        # Per batch: "s" [batch, layer, d], "o" [batch, d], "target" (object's first token) [batch],
        # and for a bundle "b" (b_i) and "Js" (J_i s_i) [batch, layer, d], "J" [batch, layer, d, d].
        self._train_samples: list[dict[str, torch.Tensor]] = []
        self._pending = False
        self.seconds_estimating = 0.0  # this rank's wall seconds in training_step (Jacobians)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lre"] = {"layers": self.layers, "weights": self.weights.cpu(), "biases": self.biases.cpu(),
                             "estimated": self.estimated}  # fmt: skip

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.configure_model()
        saved = checkpoint["lre"]
        if saved["layers"] != self.layers:
            raise InputError(f"the checkpoint holds layers {saved['layers']}, not model.layers={self.layers}")
        self.weights.copy_(saved["weights"])
        self.biases.copy_(saved["biases"])
        self.estimated = saved["estimated"]

    def _decode(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits of float32 states, whatever the LM's dtype (W and b are kept in float32)."""
        return self.lm.decode(hidden.to(self.lm.dtype)).float()

    @property
    def betas(self) -> list[float]:
        """beta of every layer, in ``self.layers`` order."""
        return self.log_beta.detach().exp().tolist()

    def configure_optimizers(self):
        return None  # beta, when learned, is fitted in closed loop by lre_pl.lre.beta.learn_beta

    # ------------------------------------------------------------------------------- estimation
    def on_fit_start(self) -> None:
        self._reset_sums()
        self.estimated = False
        known_count = sum(self.trainer.datamodule.known.is_known)
        self._skip_estimate = bool(self.hparams.bundle_path) and known_count < self.hparams.bundle_min_known
        # Set on every rank, even one whose shard is all padding: finalizing is a collective.
        self._pending = True

    def training_step(self, batch, batch_idx: int) -> None:
        if not batch or self._skip_estimate:  # only padding (this rank's shard is shorter), or no estimate
            return
        started = time.perf_counter()
        prompts = [item.prompt for item in batch]
        kept: dict[str, torch.Tensor] = {}
        if self.estimator.needs_jacobians:
            result = compute_jacobians(self.lm, prompts, self.layers, self.hparams.chunk_size)
            biases = torch.stack([result.biases(layer) for layer in self.layers], dim=1)  # [batch, layer, d]
            for i, layer in enumerate(self.layers):
                self._jacobian_sum[i] += result.jacobians[layer].sum(0)
                self._bias_sum[i] += biases[:, i].sum(0)
            states = torch.stack([result.subject_states[layer] for layer in self.layers], dim=1)
            outputs = result.output_states
            if self.hparams.bundle_path:
                kept = {"b": biases, "Js": outputs[:, None] - biases}
                if self.hparams.keep_jacobians:
                    kept["J"] = torch.stack([result.jacobians[layer] for layer in self.layers], dim=1)
        else:  # the baselines need s and o only: one forward, no Jacobian
            collected = collect_states(self.lm, prompts, batch_size=len(prompts))
            states = collected.subject_states[:, [self.lm.state_index(layer) for layer in self.layers]]
            outputs = collected.output_states
        self._count += len(batch)
        train = self.trainer.datamodule.prompts.train
        kept.update(
            s=states,
            o=outputs,
            target=torch.tensor([item.target_token_id for item in batch]),
            index=torch.tensor([train.index(item) for item in batch]),  # the order of a one-process run
        )
        self._train_samples.append({key: value.detach().float().cpu() if value.is_floating_point()
                                    else value.cpu() for key, value in kept.items()})  # fmt: skip
        seconds = time.perf_counter() - started
        self.seconds_estimating += seconds
        self.log("train/seconds_per_sample", seconds / len(batch), batch_size=len(batch))

    def _finalize_estimate(self) -> None:
        """W and b of every layer from all ranks' samples, once per fit (a collective: every rank calls it)."""
        if not self._pending:
            return
        self._pending = False
        strategy = self.trainer.strategy
        if self._skip_estimate:
            self._train_tensors = {}
            return
        count = strategy.reduce(torch.tensor(float(self._count), device=self.device), reduce_op="sum")
        if count.item() == 0:
            raise RuntimeError("no training sample reached the estimate: check the training dataloader")
        jacobian_means = bias_means = [None] * len(self.layers)  # a baseline ran no Jacobian
        if self.estimator.needs_jacobians:  # d x d sums: reduced, never gathered
            jacobian_means = strategy.reduce(self._jacobian_sum, reduce_op="sum") / count
            bias_means = strategy.reduce(self._bias_sum, reduce_op="sum") / count
        batches = [batch for shard in gather_objects(self._train_samples) for batch in shard]
        order = torch.cat([batch["index"] for batch in batches]).argsort()  # ranks' shards interleave
        self._train_tensors = {key: torch.cat([batch[key] for batch in batches])[order] for key in batches[0]}
        states, outputs, targets = (self._train_tensors[key] for key in ("s", "o", "target"))
        self._gathered_train = (states.to(self.weights), outputs.to(self.weights), targets.to(self.device))
        for i in range(len(self.layers)):
            statistics = TrainingStatistics(
                self._gathered_train[0][:, i], self._gathered_train[1], jacobian_means[i], bias_means[i]
            )
            weight, bias = self.estimator(statistics)
            self.weights[i] = weight
            self.biases[i] = bias
        self.estimated = True
        if self.hparams.learn_beta:
            self._learn_betas()

    def _learn_betas(self) -> None:
        """One beta per layer, each fitted on that layer's W s_i + b (never one layer's beta for all)."""
        states, _, targets = self._gathered_train  # [n_train, layer, d], _, [n_train]
        experiment = self._experiment()
        for i, layer in enumerate(self.layers):
            # Called from on_validation_epoch_start too, where Lightning runs under inference mode.
            with torch.inference_mode(False), torch.enable_grad():
                trajectory = learn_beta(
                    states[:, i] @ self.weights[i].T,
                    self.biases[i],
                    targets,
                    self._decode,
                    initial_beta=self.hparams.beta,
                    steps=self.hparams.beta_steps,
                    lr=self.hparams.beta_lr,
                )
            self.log_beta.data[i] = math.log(trajectory.betas[-1])
            tag = "beta" if len(self.layers) == 1 else f"beta/layer_{layer}"
            if experiment is not None:
                for step, (beta, loss) in enumerate(zip(trajectory.betas, trajectory.losses)):
                    experiment.add_scalar(f"{tag}/value", beta, step)
                    experiment.add_scalar(f"{tag}/train_cross_entropy", loss, step)
            self.last_metrics[f"beta_loss_initial/layer_{layer}"] = trajectory.losses[0]
            self.last_metrics[f"beta_loss_final/layer_{layer}"] = trajectory.losses[-1]

    def on_validation_epoch_start(self) -> None:
        if self.trainer.sanity_checking:
            return  # a default Trainer validates before fitting: there is nothing to validate yet
        self._finalize_estimate()
        if not self.estimated:
            raise InputError("no LRE to validate: run fit first, or give model.operator_path")
        self._table: list[dict] = []

    def on_train_epoch_end(self) -> None:
        self._finalize_estimate()
        self.trainer.should_stop = True  # one pass estimates W and b; more epochs would only repeat it

    # ------------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict | None, batch_idx: int) -> None:
        if batch is None or self.trainer.sanity_checking:  # padding of a shorter shard / no estimate yet
            return
        lm, k = self.lm, max(self.recall[0].top_k)
        betas = self.betas
        for i, layer in enumerate(self.layers):
            states = batch["subject_states"][:, lm.state_index(layer)].to(self.weights)  # [batch, d]
            projections = states @ self.weights[i].T  # [batch, d] W s
            logits = self._decode(relation_readout(projections, self.biases[i], betas[i]))  # [batch, vocab]
            top = logits.softmax(-1).topk(k)
            ranked = [lm.token_strings(row) for row in top.indices]
            self.recall[i].update(ranked, batch["object"])
            if i == 0:
                for row, subject in enumerate(batch["subject"]):
                    self._table.append(
                        {
                            "subject": subject,
                            "object": batch["object"][row],
                            "lm_top1": batch["lm_prediction"][row],
                            "lre_top3": ", ".join(
                                f"{t!r} {p:.2f}"
                                for t, p in zip(ranked[row][:3], top.values[row, :3].tolist())
                            ),
                            "norm_Ws": f"{projections[row].norm().item():.1f}",
                            "norm_b": f"{self.biases[i].norm().item():.1f}",
                        }
                    )

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        metrics: dict[str, float] = {}
        for i, layer in enumerate(self.layers):
            for k, value in self.recall[i].compute().items():
                metrics[f"val/layer_{layer}/faithfulness@{k}"] = value.item()
                if i == 0:
                    metrics[f"val/faithfulness@{k}"] = value.item()
            metrics[f"val/layer_{layer}/beta"] = self.betas[i]
            self.recall[i].reset()
        known = self.trainer.datamodule.known
        metrics.update(
            {"val/lm_accuracy": known.lm_accuracy, "val/known_test_samples": float(len(known.samples))}
        )
        if self.ranks or self.hparams.comparison_edits:
            metrics.update(self._causality())
        metrics["val/beta"] = self.betas[0]
        for name, value in metrics.items():
            self.log(name, value, rank_zero_only=True)
        self.last_metrics.update(metrics)
        table = [row for shard in gather_objects(self._table) for row in shard]
        if self.trainer.is_global_zero:
            experiment, step = self._experiment(), self.global_step
            write_prediction_table(table, self._run_dir(), experiment, step)
            log_weight_spectra(experiment, self.layers, self.weights, step)
            if len(self.layers) > 1:
                data = self.trainer.datamodule
                title = (
                    f"{data.prompts.relation.name} on {self.hparams.model} "
                    f"(n_train {data.hparams.n_train}, seed {data.hparams.seed})"
                )
                figure = plot_faithfulness_by_layer(self.layers, metrics, self.recall[0].top_k, title)
                write_figure(figure, self._run_dir() / "faithfulness_by_layer.png", experiment, step)
            if experiment is not None and hasattr(experiment, "_get_file_writer"):
                write_hparams(
                    experiment,
                    self._hparams_for_logger(),
                    {k: v for k, v in metrics.items() if "/layer_" not in k},
                )

    def _causality(self) -> dict[str, float]:
        """Efficacy of the rank-r pseudo-inverse edit at every layer; source samples sharded over ranks."""
        datamodule = self.trainer.datamodule
        edits = datamodule.known.edit_set()
        if self.hparams.causality_targets == "all_pairs":
            pairs = all_pairs(edits.subjects, edits.objects)
        else:
            pairs = random_targets(edits.subjects, edits.objects, datamodule.hparams.seed)
        rank, world = rank_and_world()
        edit_fns = {}
        for i, layer in enumerate(self.layers):
            pinv = pinv_edits(edits, self.weights[i], self.ranks)
            edit_fns[layer] = {f"causality@r{r}": edit for r, edit in pinv.items()}
            if self.hparams.comparison_edits:
                others = comparison_edits(self.lm, edits, layer)
                edit_fns[layer].update({f"edit/{kind}": edit for kind, edit in others.items()})
        batch_size = datamodule.hparams.batch_size
        counts = efficacy(self.lm, edits, pairs[rank::world], edit_fns, batch_size)
        metrics = {}
        for i, layer in enumerate(self.layers):
            for name, (hits, total) in counts[layer].items():
                summed = self.trainer.strategy.reduce(
                    torch.tensor([float(hits), float(total)], device=self.device), reduce_op="sum"
                )
                value = (summed[0] / summed[1]).item() if summed[1] > 0 else float("nan")
                metrics[f"val/layer_{layer}/{name}"] = value
                if i == 0:
                    metrics[f"val/{name}"] = value
        metrics["val/causality_edits"] = float(len(pairs))
        return metrics

    # -------------------------------------------------------------------------------- outputs
    def _experiment(self):
        return getattr(self.logger, "experiment", None) if self.trainer.is_global_zero else None

    def _run_dir(self) -> Path:
        return self._run_dir_path

    def _hparams_for_logger(self) -> dict:
        data = self.trainer.datamodule.hparams
        return {
            **self.hparams,
            "layers": str(self.layers),
            "relation": data.relation,
            "n_train": data.n_train,
            "seed": data.seed,
        }

    def operator(self, layer: Layer | None = None) -> LinearRelationOperator:
        """The estimated LRE of ``layer`` (default: the first requested layer)."""
        i = 0 if layer is None else self.layers.index(self.lm.check_layer(layer))
        datamodule = self.trainer.datamodule
        prompts = datamodule.prompts
        return LinearRelationOperator(
            weight=self.weights[i].detach().cpu(),
            bias=self.biases[i].detach().cpu(),
            beta=self.betas[i],
            layer=self.layers[i],
            relation=prompts.relation.name,
            model=self.hparams.model,
            n_train=datamodule.hparams.n_train,
            seed=datamodule.hparams.seed,
            train_prompts=[item.prompt.text for item in prompts.train],
            train_subject_token_index=[item.prompt.subject_index for item in prompts.train],
            test_prompt_template=prompts.test_prompt_template,
            estimator=repr(self.estimator),
        )

    def on_fit_end(self) -> None:
        self._finalize_estimate()
        if self.hparams.bundle_path:
            if self.trainer.is_global_zero:
                self.bundle().save(self.hparams.bundle_path)
            return
        run_dir = self._run_dir()
        self.trainer.save_checkpoint(run_dir / "checkpoints" / "lre.ckpt", weights_only=False)
        if not self.trainer.is_global_zero:
            return
        if len(self.layers) > 1:
            for layer in self.layers:
                self.operator(layer).save(run_dir / "operators" / f"layer_{layer}.pt")
        self.operator().save(run_dir / "operator.pt")  # last: its presence means the run completed
        self._print_summary(run_dir)

    def bundle(self) -> Bundle:
        """The estimation bundle of this fit (every test sample the data module kept, with its flag)."""
        if not self.estimator.needs_jacobians:
            raise InputError("a bundle holds the LRE's Jacobian statistics: use the JacobianMean estimator")
        datamodule = self.trainer.datamodule
        relation, known, train = datamodule.prompts.relation, datamodule.known, self._train_tensors
        if not train:  # too few known samples: no estimate, empty training tensors
            n, d = len(self.layers), self.lm.hidden_size
            empty = torch.zeros(0, n, d)
            train = {
                "s": empty,
                "o": torch.zeros(0, d),
                "b": empty,
                "Js": empty,
                "target": torch.zeros(0).long(),
            }
        return Bundle(
            model=self.hparams.model,
            relation=relation.name,
            category=relation.category,
            seed=datamodule.hparams.seed,
            n_train=datamodule.hparams.n_train,
            layers=list(self.layers),
            state_layers=self.lm.layer_names(),
            weights=self.weights.float(),
            biases=self.biases.float(),
            train_subject_states=train["s"],
            train_output_states=train["o"],
            train_biases=train["b"],
            train_jacobian_states=train["Js"],
            train_object_tokens=train["target"],
            test_subjects=[s.subject for s in known.samples],
            test_objects=[s.object for s in known.samples],
            test_subject_states=known.states.subject_states.float(),
            test_output_states=known.states.output_states.float(),
            test_lm_predictions=list(known.lm_predictions),
            test_prompt_template=datamodule.prompts.test_prompt_template,
            train_jacobians=train.get("J"),
            seconds={"knowns": datamodule.seconds["knowns"], "jacobians": self.seconds_estimating},
        )

    def on_validation_end(self) -> None:
        if self.trainer.state.fn == "validate" and self.trainer.is_global_zero:
            self._print_summary(None)

    def _print_summary(self, run_dir: Path | None) -> None:
        """The run's result on stdout (global rank 0): what a user reads when the run ends."""
        m = self.last_metrics
        datamodule = self.trainer.datamodule
        known, relation = datamodule.known, datamodule.prompts.relation
        top_k = self.recall[0].top_k
        samples = f"{len(relation.samples)}"
        if relation.duplicates_dropped:
            samples += f" ({relation.duplicates_dropped} duplicates dropped)"
        lines = [
            f"lre_pl: {relation.name!r} on {self.hparams.model}, layer {self.layers[0]}, beta {self.betas[0]:.3g}",
            f"  samples             {samples}, n_train {datamodule.hparams.n_train}",
            f"  known test samples  {len(known.samples)} of {known.n_test} (LM accuracy {known.lm_accuracy:.3f})",
            "  faithfulness        " + "  ".join(f"@{k} {m[f'val/faithfulness@{k}']:.3f}" for k in top_k),
        ]
        if self.ranks:
            lines.append(
                "  causality           "
                + "  ".join(f"r{r} {m[f'val/causality@r{r}']:.3f}" for r in self.ranks)
                + f"  ({int(m['val/causality_edits'])} {self.hparams.causality_targets.replace('_', ' ')} edits)"
            )
        if self.hparams.comparison_edits:
            lines.append(
                "  comparison edits    "
                + "  ".join(f"{kind} {m[f'val/edit/{kind}']:.3f}" for kind in COMPARISON_EDITS)
            )
        if len(self.layers) > 1:
            best = max(self.layers, key=lambda layer: m[f"val/layer_{layer}/faithfulness@1"])
            lines.append(
                f"  best layer          {best} (faithfulness@1 {m[f'val/layer_{best}/faithfulness@1']:.3f})"
            )
            lines += ["  by layer"] + [f"    {row}" for row in layer_table(self.layers, m, top_k, self.betas)]
        lines.append(f"  wall time           {time.perf_counter() - self._started:.1f} s")
        run_dir = run_dir or self._run_dir()
        lines.append(f"  logs                {run_dir}  (tensorboard --logdir {run_dir.parent})")
        if self.trainer.state.fn == "fit":
            lines.append(f"  operator            {run_dir / 'operator.pt'}")
            if len(self.layers) > 1:
                lines.append(f"  by-layer plot       {run_dir / 'faithfulness_by_layer.png'}")
        print("\n".join(lines), flush=True)
