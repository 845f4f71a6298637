"""The LightningModule: LRE estimation as ``fit``, faithfulness as validation."""

from __future__ import annotations

import math
import time
import warnings

import pytorch_lightning as pl
import torch
from torch import nn

from lre_pl.dataset.relations import HPARAMS_MODELS, reference_hparams
from lre_pl.errors import InputError
from lre_pl.evaluation.causality import all_pairs, comparison_edits, efficacy, pinv_edits, random_targets
from lre_pl.evaluation.context import Decoder
from lre_pl.evaluation.metrics import PrefixRecallAtK
from lre_pl.lightning.callbacks import FailedRunCleanup
from lre_pl.lightning.checkpoints import (
    NOTHING_TO_RESUME,
    CheckpointGuard,
    SavedEstimate,
    check_state_agrees,
    saved_hparams,
    trusted_checkpoint,
)
from lre_pl.lightning.distributed import gather_objects, rank_and_world
from lre_pl.lightning.outputs import RunOutputs
from lre_pl.lm.activations import collect_states
from lre_pl.lm.jacobian import compute_jacobians
from lre_pl.lm.models import LanguageModel, check_dtype, check_model_spec, load_language_model, parse_layer
from lre_pl.lre.accumulation import JacobianSums, SampleCollector, TrainingSamples
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

    Nothing of the LM is trained; ``fit`` is one pass of Jacobians. This class holds the run's state
    and its Lightning hooks; the pieces they call live where they are defined (sums of J_i and b_i:
    :mod:`lre_pl.lre.accumulation`; decoding and faithfulness: :class:`~lre_pl.evaluation.grid.Decoder`,
    as a sweep decodes; edits: :mod:`lre_pl.evaluation.causality`), and everything the run writes or
    prints is :class:`~lre_pl.lightning.outputs.RunOutputs`'s. Hooks, in the order they run:

    - ``__init__``: checks everything that needs no model (model spec, dtype, layer syntax, top_k,
      the operator file and that it is of this model), so bad input fails before any loading.
    - ``configure_callbacks``: :class:`~lre_pl.lightning.callbacks.FailedRunCleanup` (SIGTERM stops the run at
      once; a failed run removes the run folder it created) and
      :class:`~lre_pl.lightning.outputs.RunOutputs` (the run's files and summary), with any Trainer.
    - ``setup``: checks the data module against this module (model, dtype, the operator's relation);
      takes the layer from the paper's hyper-parameters if asked.
    - ``configure_model``: load the frozen LM (a plain attribute, never a submodule, so its weights
      stay out of ``state_dict``, checkpoints and DDP); normalise and de-duplicate the layers;
      allocate W, b, one beta and one recall metric per layer; load ``operator_path``.
    - ``on_fit_start``: empty sums; with ``bundle_path``, whether too few known test samples skip the
      estimate.
    - ``training_step``: Jacobians of a batch of training prompts at every requested layer (one
      forward only for an estimator that needs none); adds J_i and b_i to this rank's
      :class:`~lre_pl.lre.accumulation.JacobianSums` and keeps s_i, o_i. Returns no loss: no
      optimizer step happens.
    - ``on_validation_epoch_start`` / ``on_train_epoch_end``: whichever comes first after the
      training pass calls :meth:`finalize_estimate`: reduces the sums across ranks (mean J_i, mean b_i),
      gathers s_i and o_i, lets the estimator make W and b of every layer (Lightning validates
      *before* ``on_train_epoch_end``), then learns one beta per layer if asked.
      Lightning's sanity validation (before any estimate) is skipped; later epochs are not run.
    - ``validation_step``: decode(beta W s + b) for the known test samples; recall@k metrics; returns
      the first layer's top tokens for ``RunOutputs``' per-sample table.
    - ``on_validation_epoch_end``: computes and logs the metrics (faithfulness, causality, beta) and
      keeps them in ``last_metrics``.
    - ``on_save_checkpoint`` / ``on_load_checkpoint``: W and b of every layer (plain tensors, not
      buffers), under the checkpoint's ``lre`` key; the estimator as its ``{class_path, init_args}``, so
      every checkpoint loads weights-only. Loading refuses a checkpoint of other layers or another beta.
      Every checkpoint is read by :func:`~lre_pl.lightning.checkpoints.read_checkpoint` (local, whole,
      weights only): the Trainer's through :class:`~lre_pl.lightning.checkpoints.CheckpointGuard`,
      :meth:`load_from_checkpoint`'s directly.

    At the end of ``fit`` (``RunOutputs.on_fit_end``): :meth:`operator` of every layer and a checkpoint,
    or, with ``bundle_path``, only the estimation bundle (:meth:`bundle`) that ``lre-pl sweep`` evaluates.

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
        return [FailedRunCleanup(self.trainer), RunOutputs(), CheckpointGuard()]

    def setup(self, stage: str) -> None:
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
        self.decoder = Decoder(self.lm, self.hparams.top_k)
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
        self.jacobian_sums = JacobianSums(len(self.layers), self.lm.hidden_size, self._root_device())
        self._samples = SampleCollector()
        #: Every training sample's s_i, o_i, ... once :meth:`finalize_estimate` gathered them (``None``
        #: before, and for a bundle's fit that skips its estimate).
        self.training_samples: TrainingSamples | None = None
        self._pending = False
        self.seconds_estimating = 0.0  # this rank's wall seconds in training_step (Jacobians)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lre"] = vars(
            SavedEstimate(self.layers, self.weights.cpu(), self.biases.cpu(), self.estimated)
        )
        checkpoint["hyper_parameters"] = saved_hparams(checkpoint["hyper_parameters"])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self._trainer is not None and self.trainer.state.fn == "fit":
            raise InputError(NOTHING_TO_RESUME)
        self.configure_model()
        check_state_agrees(checkpoint, self.layers, self.hparams.beta, self.hparams.learn_beta)
        saved = checkpoint["lre"]
        self.weights.copy_(saved["weights"])
        self.biases.copy_(saved["biases"])
        self.estimated = saved["estimated"]

    @classmethod
    def load_from_checkpoint(
        cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, **kwargs
    ):
        """Lightning's, on the checkpoint as :func:`~lre_pl.lightning.checkpoints.trusted_checkpoint` reads
        it: local, checked whole, weights only, its estimator resolved without importing anything."""
        kwargs.pop("weights_only", None)  # always weights only
        checkpoint, overrides = trusted_checkpoint(checkpoint_path)
        return super().load_from_checkpoint(
            checkpoint, map_location, hparams_file, strict, weights_only=True, **{**overrides, **kwargs}
        )

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
            self.jacobian_sums.add([result.jacobians[layer] for layer in self.layers], biases.unbind(1))
            states = torch.stack([result.subject_states[layer] for layer in self.layers], dim=1)
            outputs = result.output_states
            if self.hparams.bundle_path:
                kept = {"biases": biases, "jacobian_states": outputs[:, None] - biases}
                if self.hparams.keep_jacobians:
                    kept["jacobians"] = torch.stack([result.jacobians[layer] for layer in self.layers], dim=1)
        else:  # the baselines need s and o only: one forward, no Jacobian
            collected = collect_states(self.lm, prompts, batch_size=len(prompts))
            states = collected.subject_states[:, [self.lm.state_index(layer) for layer in self.layers]]
            outputs = collected.output_states
        train = self.trainer.datamodule.prompts.train
        self._samples.add(
            torch.tensor([train.index(item) for item in batch]),  # the order of a one-process run
            subject_states=states,
            output_states=outputs,
            object_tokens=torch.tensor([item.target_token_id for item in batch]),
            **kept,
        )
        seconds = time.perf_counter() - started
        self.seconds_estimating += seconds
        self.log("train/seconds_per_sample", seconds / len(batch), batch_size=len(batch))

    def finalize_estimate(self) -> None:
        """W and b of every layer from all ranks' samples, once per fit (a collective: every rank calls
        it; the hooks that need the estimate do, and later calls return at once)."""
        if not self._pending:
            return
        self._pending = False
        if self._skip_estimate:
            return
        jacobian_means = bias_means = [None] * len(self.layers)  # a baseline ran no Jacobian
        if self.estimator.needs_jacobians:  # d x d sums: reduced, never gathered
            self.jacobian_sums.reduce(lambda tensor: self.trainer.strategy.reduce(tensor, reduce_op="sum"))
            jacobian_means, bias_means = self.jacobian_sums.mean()
        self.training_samples = train = self._samples.gather(gather_objects)
        states = train.subject_states.to(self.weights)  # [n_train, layer, d]
        outputs = train.output_states.to(self.weights)  # [n_train, d]
        for i in range(len(self.layers)):
            statistics = TrainingStatistics(states[:, i], outputs, jacobian_means[i], bias_means[i])
            self.weights[i], self.biases[i] = self.estimator(statistics)
        self.estimated = True
        if self.hparams.learn_beta:
            self._learn_betas(states, train.object_tokens.to(self.device))

    def _learn_betas(self, states: torch.Tensor, targets: torch.Tensor) -> None:
        """One beta per layer, each fitted on that layer's W s_i + b (never one layer's beta for all):
        ``states`` [n_train, layer, d] s_i, ``targets`` [n_train] the first tokens of their objects."""
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
        self.finalize_estimate()
        if not self.estimated:
            raise InputError("no LRE to validate: run fit first, or give model.operator_path")

    def on_train_epoch_end(self) -> None:
        self.finalize_estimate()
        self.trainer.should_stop = True  # one pass estimates W and b; more epochs would only repeat it

    # ------------------------------------------------------------------------------- validation
    @property
    def top_k(self) -> tuple[int, ...]:
        """The k of the reported recall@k: 1 and ``top_k``."""
        return self.recall[0].top_k

    def validation_step(self, batch: dict | None, batch_idx: int) -> dict | None:
        """Recall@k of every layer; returns the first layer's ``tokens`` (the top k of each sample, best
        first), their ``probabilities`` [batch, k], W s ``projections`` [batch, d] and ``bias`` b [d]."""
        if batch is None or self.trainer.sanity_checking:  # padding of a shorter shard / no estimate yet
            return None
        betas, first = self.betas, None
        for i, layer in enumerate(self.layers):
            states = batch["subject_states"][:, self.lm.state_index(layer)].to(self.weights)  # [batch, d]
            projections = states @ self.weights[i].T  # [batch, d] W s
            hidden = relation_readout(projections, self.biases[i], betas[i])  # [batch, d]
            top = self.decoder.top_tokens(hidden, probabilities=i == 0)
            self.recall[i].update(self.decoder.prefix_hits(top.ids, batch["object"]))
            if i == 0:
                first = {
                    "tokens": self.decoder.token_strings(top.ids),
                    "probabilities": top.probabilities,
                    "projections": projections,
                    "bias": self.biases[i],
                }
        return first

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

    # ---------------------------------------------------------------------------------- results
    def _experiment(self):
        return getattr(self.logger, "experiment", None) if self.trainer.is_global_zero else None

    def operator(self, layer: Layer | None = None) -> LinearRelationOperator:
        """The estimated LRE of ``layer`` (default: the first requested layer)."""
        i = 0 if layer is None else self.layers.index(self.lm.check_layer(layer))
        data = self.trainer.datamodule
        return LinearRelationOperator.estimated(
            self.weights[i], self.biases[i], self.betas[i], self.layers[i],
            relation=data.prompts.relation, model=self.hparams.model, n_train=data.hparams.n_train,
            seed=data.hparams.seed, train_prompts=[item.prompt for item in data.prompts.train],
            test_prompt_template=data.prompts.test_prompt_template, estimator=self.estimator,
        )  # fmt: skip

    def bundle(self) -> Bundle:
        """The estimation bundle of this fit (every test sample the data module kept, with its flag)."""
        if not self.estimator.needs_jacobians:
            raise InputError("a bundle holds the LRE's Jacobian statistics: use the JacobianMean estimator")
        data = self.trainer.datamodule
        return Bundle.of_fit(
            model=self.hparams.model, relation=data.prompts.relation, seed=data.hparams.seed,
            n_train=data.hparams.n_train, layers=self.layers, state_layers=self.lm.layer_names(),
            weights=self.weights, biases=self.biases, train=self.training_samples,
            test_samples=data.known.samples, test_states=data.known.states,
            test_lm_predictions=data.known.lm_predictions,
            test_prompt_template=data.prompts.test_prompt_template,
            seconds={"knowns": data.seconds["knowns"], "jacobians": self.seconds_estimating},
        )  # fmt: skip
