"""The ``lre-pl`` command: LightningCLI (fit, validate, ...) plus ``lre-pl relations``.

lre-pl fit --config configs/quickstart.yaml [-v | --verbose]
lre-pl fit --config configs/quickstart.yaml --print_config
lre-pl validate --config configs/quickstart.yaml --model.operator_path RUN/operator.pt
lre-pl relations [--category factual]
lre-pl sweep --config configs/sweep/smollm2.yaml [--relations "[factual]"] [--trials "[0, 1]"]
lre-pl beta-study --config configs/beta/all.yaml [--sweep_dir DIR] [--questions "[residual]"]

Bad input ends in one line ``lre-pl: error: ...`` and a non-zero exit code, and leaves no run
folder: what needs no model is checked before the model is loaded, and a run that fails later
removes the folder it created (:class:`~lre_pl.lightning.callbacks.FailedRunCleanup`). SIGTERM stops a run at
once with exit code 143. Without ``--verbose`` only the progress of the real work and the summary
are printed.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import warnings
from argparse import ArgumentError

from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.cli import LightningCLI

from lre_pl.api import ESTIMATION_TRAINER_DEFAULTS
from lre_pl.dataset.relations import CATEGORIES, list_relations
from lre_pl.errors import InputError
from lre_pl.lightning.callbacks import (
    RunInterrupted,
    RunTerminated,
    SampleProgressBar,
    install_sigterm_handler,
    sigint_raises_run_interrupted,
)
from lre_pl.lightning.datamodule import RelationDataModule
from lre_pl.lightning.module import LinearRelationModule

TRAINER_DEFAULTS = {
    **ESTIMATION_TRAINER_DEFAULTS,
    "logger": {
        "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
        "init_args": {"save_dir": ".", "name": "lightning_logs", "default_hp_metric": False},
    },
}

SUBCOMMANDS = ("fit", "validate", "test", "predict", "sweep", "beta-study")

#: Libraries whose INFO lines (GPU/TPU availability, tips, "Seed set") and warnings are shown only with --verbose.
QUIET_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning", "transformers")


class LRECLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.model", "data.model")
        parser.link_arguments("model.dtype", "data.dtype")

    def instantiate_trainer(self, **kwargs):
        """The trainer, with the per-sample progress bar unless the config disables or replaces it."""
        config = self._get(self.config_init, "trainer", default={})
        callbacks = list(config.get("callbacks") or [])
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            kwargs["callbacks"] = [*callbacks, SampleProgressBar()]
        return super().instantiate_trainer(**kwargs)

    def _check_before_running(self) -> None:
        # Cheap cross-checks (model, dtype, the operator's relation) before the run loads anything.
        self.model.check_datamodule(self.datamodule)

    before_fit = before_validate = _check_before_running


def quiet_libraries() -> None:
    """Keep Lightning's and transformers' INFO lines and library warnings off the console."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in (*QUIET_LOGGERS, "torch"):
        warnings.filterwarnings("ignore", module=rf"{name}(\.|$)")
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()


def print_relations(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="lre-pl relations", description="List the shipped relations.", exit_on_error=False
    )
    parser.add_argument("--category", choices=CATEGORIES)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ArgumentError(None, f"unrecognized arguments: {' '.join(unknown)}")
    rows = list_relations(args.category)
    width = max(len(name) for name, _, _ in rows)
    print(f"{'relation':<{width}}  {'category':<11}  samples")
    for name, category, count in rows:
        print(f"{name:<{width}}  {category:<11}  {count:>7}")


def parse_dataclass(config_class, prog: str, description: str, argv: list[str]):
    """An instance of the dataclass ``config_class`` from ``--config`` YAML and flags (jsonargparse)."""
    from dataclasses import fields

    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML config (configs/)")
    parser.add_class_arguments(config_class)
    parsed = parser.parse_args(argv)
    return config_class(**{f.name: parsed[f.name] for f in fields(config_class)})


def run_sweep(argv: list[str]) -> None:
    """``lre-pl sweep``: a :class:`~lre_pl.experiments.sweep.runner.SweepConfig` (YAML and flags), run."""
    from lre_pl.experiments.sweep.runner import Sweep, SweepConfig

    description = "The paper's protocol over many relations and trials; rerun to resume."
    config = parse_dataclass(SweepConfig, "lre-pl sweep", description, argv)
    with sigint_raises_run_interrupted():
        try:
            root = Sweep(config, command=shlex.join(["lre-pl", "sweep", *argv])).run()
        except (RunInterrupted, RunTerminated) as stop:  # the folder stays: every whole file counts as done
            name = "SIGINT" if isinstance(stop, RunInterrupted) else "SIGTERM"
            print(
                f"lre-pl: error: stopped by {name}; the sweep folder {config.output_dir} is kept, and rerunning "
                "the same command resumes it",
                file=sys.stderr,
            )
            sys.exit(stop.code)
    if root is not None:
        print(f"lre_pl sweep: {root}/summary.md, results.csv, figures *.png (tensorboard --logdir {root})")


def run_beta_study(argv: list[str]) -> None:
    """``lre-pl beta-study``: a :class:`~lre_pl.experiments.beta_study.study.BetaStudyConfig` (YAML and flags), run."""
    from lre_pl.experiments.beta_study.study import BetaStudyConfig, run_beta_study

    description = "The beta study's questions on finished sweeps' bundles (one per model); rerun to resume."
    config = parse_dataclass(BetaStudyConfig, "lre-pl beta-study", description, argv)
    folders = run_beta_study(config, command=shlex.join(["lre-pl", "beta-study", *argv]))
    reports = [str(out / "beta_study.md") for out in folders] + ([config.report] if config.report else [])
    print(f"lre_pl beta-study: {', '.join(reports)}")


def take_verbose_flag(argv: list[str]) -> tuple[list[str], bool]:
    """Remove ``-v`` / a bare ``--verbose`` (``validate --verbose true`` stays Lightning's own option)."""
    kept, verbose = [], False
    for i, arg in enumerate(argv):
        value_follows = i + 1 < len(argv) and argv[i + 1].lower() in {"true", "false"}
        if arg == "-v" or (arg == "--verbose" and not value_follows):
            verbose = True
        else:
            kept.append(arg)
    return kept, verbose


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    try:
        if argv and argv[0] == "relations":
            print_relations(argv[1:])
            return
        argv, verbose = take_verbose_flag(argv)
        if not verbose:
            quiet_libraries()
        install_sigterm_handler()
        if argv and argv[0] in ("sweep", "beta-study"):
            {"sweep": run_sweep, "beta-study": run_beta_study}[argv[0]](argv[1:])
            return
        LRECLI(
            LinearRelationModule,
            RelationDataModule,
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "lre-pl", "exit_on_error": False},
            args=argv,
        )
    except InputError as error:  # bad input: one line, no traceback
        print(f"lre-pl: error: {error}", file=sys.stderr)
        sys.exit(2)
    except ArgumentError as error:  # the parser's own: unknown option, wrong type, missing config file
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        message = " ".join(line if line.endswith(":") else line + ";" for line in lines).rstrip(";")
        command = argv[0] if argv and argv[0] in (*SUBCOMMANDS, "relations") else ""
        print(
            f"lre-pl: error: {message} (options: lre-pl {command} --help)".replace("  ", " "), file=sys.stderr
        )
        sys.exit(2)
    except RunTerminated:
        print("lre-pl: error: terminated by SIGTERM; the run folder was removed", file=sys.stderr)
        raise


if __name__ == "__main__":
    main()
