"""What a run shows a person: the per-sample table, W's spectra, the per-layer table, the plots, the hparams tab.

Plain functions of what they show (no Lightning object), written by global rank 0 only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lre_pl.files import atomic_path

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
