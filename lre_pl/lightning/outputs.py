"""What a run leaves and shows a person: its operator files, checkpoint or bundle, the per-sample table,
W's spectra, the per-layer table, the plots, the hparams tab and the console summary.

:class:`RunOutputs` is the Lightning callback that writes them (the module adds it through
``configure_callbacks``, so the CLI, :func:`lre_pl.estimate` and a plain ``Trainer`` all get it);
the functions it calls are plain functions of what they show (no Lightning object), written by
global rank 0 only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from lre_pl.evaluation.causality import COMPARISON_EDITS
from lre_pl.files import atomic_path
from lre_pl.lightning.distributed import gather_objects

Layer = int | str


def layer_table(
    layers: Sequence[Layer], metrics: dict[str, float], top_k: Sequence[int], betas: Sequence[float]
) -> list[str]:
    """One line per layer: faithfulness@k for every k, and beta."""
    header = "  ".join([f"{'layer':>5}", *(f"{'@' + str(k):>6}" for k in top_k), f"{'beta':>6}"])
    rows = [header]
    for layer, beta in zip(layers, betas):
        values = [f"{metrics[f'val/layer_{layer}/faithfulness@{k}']:>6.3f}" for k in top_k]
        rows.append("  ".join([f"{layer!s:>5}", *values, f"{beta:>6.3g}"]))
    return rows


def plot_faithfulness_by_layer(
    layers: Sequence[Layer], metrics: dict[str, float], top_k: Sequence[int], title: str = ""
):
    """A matplotlib figure of faithfulness@k against the layer of s (``emb`` first)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(max(5.0, 0.25 * len(layers) + 2), 3.5))
    positions = range(len(layers))
    for k in top_k:
        axes.plot(
            positions,
            [metrics[f"val/layer_{layer}/faithfulness@{k}"] for layer in layers],
            marker="o",
            label=f"@{k}",
        )
    axes.set_xticks(list(positions), [str(layer) for layer in layers], fontsize=7)
    axes.set_xlabel("layer of s")
    axes.set_ylabel("faithfulness")
    axes.set_ylim(-0.02, 1.02)
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return figure


def write_figure(figure, path: Path, experiment=None, step: int = 0) -> Path:
    """``figure`` as a PNG, atomically (never a truncated file under the final name), and as a
    TensorBoard image tagged ``val/<file stem>`` when ``experiment`` is a SummaryWriter; closes it."""
    with atomic_path(path, ".partial.png") as partial:  # savefig reads the format from the suffix
        figure.savefig(partial, dpi=120)
    if experiment is not None and hasattr(experiment, "add_figure"):
        experiment.add_figure(f"val/{path.stem}", figure, step)  # closes the figure
    else:
        from matplotlib import pyplot as plt

        plt.close(figure)
    return path


def write_prediction_table(
    table: list[dict[str, str]], run_dir: Path, experiment=None, step: int = 0
) -> None:
    """``predictions.tsv`` in the run folder and the same rows as TensorBoard markdown text."""
    if not table:
        return
    columns = list(table[0])
    lines = ["\t".join(columns), *("\t".join(row[c] for c in columns) for row in table)]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "predictions.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if experiment is not None and hasattr(experiment, "add_text"):
        markdown = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        markdown += ["| " + " | ".join(row[c].replace("|", "\\|") for c in columns) + " |" for row in table]
        experiment.add_text("predictions", "\n".join(markdown), step)


def log_weight_spectra(experiment, layers: Sequence[Layer], weights, step: int = 0) -> None:
    """A histogram of W's singular values per layer (``weights`` [layer, d, d])."""
    if experiment is None or not hasattr(experiment, "add_histogram"):
        return
    import torch

    for layer, weight in zip(layers, weights):
        experiment.add_histogram(
            f"W/singular_values/layer_{layer}", torch.linalg.svdvals(weight.float()), step
        )


def write_hparams(experiment, params: dict, metrics: dict[str, float]) -> None:
    """TensorBoard's hparams tab, with ``metrics`` as its columns, without logging them again as scalars.

    (``TensorBoardLogger.log_hyperparams(params, metrics)`` also writes every metric as a scalar at
    step 0: the ``val/*`` scalars would appear twice.)
    """
    from torch.utils.tensorboard.summary import hparams

    clean = {
        key: value if isinstance(value, (int, float, str, bool)) else str(value)
        for key, value in params.items()
        if not key.startswith("_")  # LightningCLI's _instantiator and the like
    }
    writer = experiment._get_file_writer()
    for summary in hparams(clean, metrics):
        writer.add_summary(summary)


class RunOutputs(Callback):
    """Everything a run writes or prints, from the module's state (it computes nothing of its own).

    - ``setup``: the run folder (``trainer.log_dir``, a broadcast under DDP: read where every rank runs).
    - ``on_validation_batch_end``: one row of the per-sample table per validated sample, from the first
      layer's top tokens that ``validation_step`` returns.
    - ``on_validation_end`` (after the module's metrics): ``predictions.tsv`` (every rank's rows),
      W's spectra, the faithfulness-vs-layer plot for several layers, the hparams tab; after
      ``validate``, the console summary.
    - ``on_fit_end``: the estimation bundle only (with ``bundle_path``), or a checkpoint,
      ``operators/layer_<layer>.pt`` for several layers, ``operator.pt`` (last: its presence means the
      run completed) and the console summary.
    """

    def __init__(self) -> None:
        self._started = time.perf_counter()  # the summary's wall time: model load, knowns filter, fit
        self._table: list[dict[str, str]] = []
        self._run_dir: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._run_dir = Path(trainer.log_dir or trainer.default_root_dir)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._table = []

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if outputs is None:  # a padding batch, or the sanity check
            return
        for row, subject in enumerate(batch["subject"]):
            ranked = zip(outputs["tokens"][row][:3], outputs["probabilities"][row, :3].tolist())
            self._table.append(
                {
                    "subject": subject,
                    "object": batch["object"][row],
                    "lm_top1": batch["lm_prediction"][row],
                    "lre_top3": ", ".join(f"{token!r} {p:.2f}" for token, p in ranked),
                    "norm_Ws": f"{outputs['projections'][row].norm().item():.1f}",
                    "norm_b": f"{outputs['bias'].norm().item():.1f}",
                }
            )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        table = [row for shard in gather_objects(self._table) for row in shard]  # a collective
        if not trainer.is_global_zero:
            return
        metrics, layers, step = pl_module.last_metrics, pl_module.layers, trainer.global_step
        experiment = getattr(trainer.logger, "experiment", None)
        write_prediction_table(table, self._run_dir, experiment, step)
        log_weight_spectra(experiment, layers, pl_module.weights, step)
        data = trainer.datamodule
        if len(layers) > 1:
            title = (
                f"{data.prompts.relation.name} on {pl_module.hparams.model} "
                f"(n_train {data.hparams.n_train}, seed {data.hparams.seed})"
            )
            figure = plot_faithfulness_by_layer(layers, metrics, pl_module.top_k, title)
            write_figure(figure, self._run_dir / "faithfulness_by_layer.png", experiment, step)
        if experiment is not None and hasattr(experiment, "_get_file_writer"):
            params = {
                **pl_module.hparams,
                "layers": str(layers),
                "relation": data.hparams.relation,
                "n_train": data.hparams.n_train,
                "seed": data.hparams.seed,
            }
            write_hparams(experiment, params, {k: v for k, v in metrics.items() if "/layer_" not in k})
        if trainer.state.fn == "validate":
            print(self._summary(trainer, pl_module), flush=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Done after the training epoch; a fit whose training loop never ran (no on_train_epoch_end)
        # estimates here, on every rank (a collective), or fails saying why.
        pl_module.finalize_estimate()
        if pl_module.hparams.bundle_path:
            if trainer.is_global_zero:
                pl_module.bundle().save(pl_module.hparams.bundle_path)
            return
        run_dir = self._run_dir
        trainer.save_checkpoint(run_dir / "checkpoints" / "lre.ckpt", weights_only=False)  # every rank
        if not trainer.is_global_zero:
            return
        if len(pl_module.layers) > 1:
            for layer in pl_module.layers:
                pl_module.operator(layer).save(run_dir / "operators" / f"layer_{layer}.pt")
        pl_module.operator().save(run_dir / "operator.pt")  # last: its presence means the run completed
        print(self._summary(trainer, pl_module), flush=True)

    def _summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        """The run's result as a user reads it when the run ends (global rank 0 prints it)."""
        m, hparams, layers, betas = (
            pl_module.last_metrics,
            pl_module.hparams,
            pl_module.layers,
            pl_module.betas,
        )
        data = trainer.datamodule
        known, relation = data.known, data.prompts.relation
        top_k = pl_module.top_k
        samples = f"{len(relation.samples)}"
        if relation.duplicates_dropped:
            samples += f" ({relation.duplicates_dropped} duplicates dropped)"
        lines = [
            f"lre_pl: {relation.name!r} on {hparams.model}, layer {layers[0]}, beta {betas[0]:.3g}",
            f"  samples             {samples}, n_train {data.hparams.n_train}",
            f"  known test samples  {len(known.samples)} of {known.n_test} (LM accuracy {known.lm_accuracy:.3f})",
            "  faithfulness        " + "  ".join(f"@{k} {m[f'val/faithfulness@{k}']:.3f}" for k in top_k),
        ]
        if pl_module.ranks:
            lines.append(
                "  causality           "
                + "  ".join(f"r{r} {m[f'val/causality@r{r}']:.3f}" for r in pl_module.ranks)
                + f"  ({int(m['val/causality_edits'])} {hparams.causality_targets.replace('_', ' ')} edits)"
            )
        if hparams.comparison_edits:
            lines.append(
                "  comparison edits    "
                + "  ".join(f"{kind} {m[f'val/edit/{kind}']:.3f}" for kind in COMPARISON_EDITS)
            )
        if len(layers) > 1:
            best = max(layers, key=lambda layer: m[f"val/layer_{layer}/faithfulness@1"])
            lines.append(
                f"  best layer          {best} (faithfulness@1 {m[f'val/layer_{best}/faithfulness@1']:.3f})"
            )
            lines += ["  by layer"] + [f"    {row}" for row in layer_table(layers, m, top_k, betas)]
        lines.append(f"  wall time           {time.perf_counter() - self._started:.1f} s")
        run_dir = self._run_dir
        lines.append(f"  logs                {run_dir}  (tensorboard --logdir {run_dir.parent})")
        if trainer.state.fn == "fit":
            lines.append(f"  operator            {run_dir / 'operator.pt'}")
            if len(layers) > 1:
                lines.append(f"  by-layer plot       {run_dir / 'faithfulness_by_layer.png'}")
        return "\n".join(lines)
