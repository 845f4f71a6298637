"""The ``lre-pl`` command: ``fit`` and ``validate`` (LightningCLI), ``predict``, ``relations``,
``sweep``, ``beta-study`` and ``cross-relation``.

lre-pl --help
lre-pl --version
lre-pl fit --config configs/quickstart.yaml [-v | --verbose]
lre-pl fit --config configs/quickstart.yaml --print_config
lre-pl validate --config configs/quickstart.yaml --model.operator_path RUN/operator.pt
lre-pl predict --operator RUN/operator.pt France Japan [--subjects_file FILE] [--top_k 3]
lre-pl lens --operators RUN_DIR --prompt "The capital city of France is" [--positions subject --subject France]
lre-pl relations [--category factual]
lre-pl sweep --config configs/sweep/smollm2.yaml [--relations "[factual]"] [--trials "[0, 1]"]
lre-pl beta-study --config configs/beta/all.yaml [--sweep_dirs "[DIR]"] [--questions "[residual]"]
lre-pl distracted-lens --config configs/lens/distracted.yaml
lre-pl cross-relation --sweep_dir DIR [--relations "[factual]"] [--output_dir DIR] [--results_dir DIR]

Bad input ends in one line ``lre-pl: error: ...`` and exit code 2, and leaves no run folder: what
needs no model is checked before the model is loaded, and a run that fails later removes the folder
it created (:class:`~lre_pl.lightning.callbacks.FailedRunCleanup`). SIGINT and SIGTERM stop any command
at once, with exit code 130 and 143 and one line saying what is kept (:data:`STOPPED_KEEPS`). Without
``--verbose`` only the progress of the real work and the summary are printed.
torch, Lightning and transformers are imported by the commands that use them: ``lre-pl --help`` and
``lre-pl relations`` answer at once.
"""

from __future__ import annotations

import argparse
import functools
import logging
import shlex
import signal
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path

from lre_pl.class_paths import allow_only_known_class_paths, refused_class_path
from lre_pl.dataset.relations import CATEGORIES, list_relations
from lre_pl.errors import InputError, ProcessFailed

#: Every command, in the order ``lre-pl --help`` lists them, with its one-line summary.
COMMANDS = {
    "fit": "estimate a relation's LRE at the given layers, evaluate it, save operator.pt",
    "validate": "evaluate a saved operator.pt (--model.operator_path) on a relation's test samples",
    "predict": "apply a saved operator.pt to subjects: their top-k objects and probabilities",
    "lens": "the attribute lens of prompts: an LRE's top objects at every token and layer",
    "relations": "list the shipped relations and their sizes",
    "sweep": "the paper's protocol over many relations, trials, layers and betas; rerun to resume",
    "beta-study": "the beta study's questions on finished sweeps; rerun to resume",
    "distracted-lens": "the attribute lens on distracted prompts over finished sweeps",
    "cross-relation": "every relation's LRE applied to every other relation's subjects, on a finished sweep",
}

USAGE = "\n".join(
    [
        "usage: lre-pl <command> [options]",
        "",
        "Linear Relational Embeddings (Hernandez et al., ICLR 2024) of a language model.",
        "",
        "commands:",
        *(f"  {name:<16} {summary}" for name, summary in COMMANDS.items()),
        "",
        "options:",
        "  -h, --help        show this help and exit",
        "  -v, --verbose     also show the libraries' INFO lines and warnings",
        "",
        "  --version         show lre-pl's version and exit",
        "",
        "A command's options: lre-pl <command> --help (e.g. lre-pl fit --help).",
    ]
)

#: Libraries whose INFO lines (GPU/TPU availability, tips, "Seed set") and warnings are shown only with --verbose.
QUIET_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning", "transformers")


def quiet_libraries() -> None:
    """Keep Lightning's and transformers' INFO lines and library warnings off the console.

    Call it after importing Lightning: ``import pytorch_lightning`` sets its loggers to INFO.
    """
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
    parser.add_argument("--category", choices=CATEGORIES, help="only the relations of this category")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ArgumentError(None, f"unrecognized arguments: {' '.join(unknown)}")
    rows = list_relations(args.category)
    width = max(len(name) for name, _, _ in rows)
    print(f"{'relation':<{width}}  {'category':<11}  samples")
    for name, category, count in rows:
        print(f"{name:<{width}}  {category:<11}  {count:>7}")


def parse_dataclass(config_class, prog: str, description: str, argv: list[str]):
    """An instance of the dataclass ``config_class`` from ``--config`` YAML and flags (jsonargparse);
    ``--help`` describes each option by the docstring under its field."""
    from dataclasses import fields

    from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    allow_only_known_class_paths()
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML config (configs/)")
    parser.add_class_arguments(config_class)
    parsed = parser.parse_args(argv)
    return config_class(**{f.name: parsed[f.name] for f in fields(config_class)})


def run_lightning(subcommand: str, argv: list[str]) -> None:
    """``lre-pl fit`` / ``lre-pl validate``: :class:`~lre_pl.api.LRECLI`."""
    from lre_pl.api import lightning_cli

    lightning_cli([subcommand, *argv])


def read_lines(path: str, option: str = "subjects_file", what: str = "subject") -> list[str]:
    """The non-blank lines of a text file (the subjects, or the prompts, one per line); a UTF-8 byte
    order mark (an editor's) is not part of the first line."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
        raise InputError(
            f"{option} {path!r} cannot be read ({reason}): give a UTF-8 text file, one {what} per line"
        ) from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise InputError(f"{option} {path!r} holds no {what}s: write one {what} per line")
    return lines


def check_top_k(top_k: int, lm=None) -> None:
    """``top_k`` is at least 1 (checked before any model loads) and, given the loaded ``lm``, at most its
    vocabulary."""
    if top_k < 1:
        raise InputError(f"top_k={top_k} must be at least 1")
    vocabulary = None if lm is None else lm.unembedding.weight.shape[0]
    if vocabulary is not None and top_k > vocabulary:
        raise InputError(f"top_k={top_k} exceeds the vocabulary of {lm.spec} ({vocabulary} tokens)")


def format_predictions(predictions: dict[str, list[tuple[str, float]]]) -> list[str]:
    """A table: one row per subject, one column per rank, each cell ``'token' probability``."""
    top_k = max(len(top) for top in predictions.values())
    header = ["subject", *(f"top {rank}" for rank in range(1, top_k + 1))]
    rows = [[subject, *(f"{token!r} {p:.3f}" for token, p in top)] for subject, top in predictions.items()]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]
    ]


def run_predict(argv: list[str]) -> None:
    """``lre-pl predict``: a saved operator applied to subjects; the top-k objects of each."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog="lre-pl predict",
        description="Apply a saved LRE (operator.pt of lre-pl fit) to subjects, on the model it was "
        "estimated on: the top-k objects of each subject, with their probabilities.",
        exit_on_error=False,
    )
    parser.add_argument("subject", nargs="*", default=[], help="subjects, e.g. France Japan")
    parser.add_argument(
        "--operator", type=str, help="the operator file: lightning_logs/version_N/operator.pt of lre-pl fit"
    )
    parser.add_argument("--subjects", type=list[str], default=[], help='more subjects: ["France", "Japan"]')
    parser.add_argument("--subjects_file", type=str, help="a text file of subjects, one per line")
    parser.add_argument("--top_k", type=int, default=3, help="objects shown per subject")
    args = parser.parse_args(argv)
    subjects = [*args.subject, *args.subjects]
    if args.subjects_file:
        subjects += read_lines(args.subjects_file)
    if not args.operator:
        raise InputError(
            "no operator file: give --operator lightning_logs/version_N/operator.pt (of lre-pl fit)"
        )
    if not subjects:
        raise InputError("no subjects: give them as arguments (France Japan), --subjects or --subjects_file")
    blank = [index for index, subject in enumerate(subjects, 1) if not subject.strip()]
    if blank:
        raise InputError(f"subject {blank[0]} of {len(subjects)} is empty: give a non-empty subject")
    check_top_k(args.top_k)
    if Path(args.operator).is_dir():
        inside = Path(args.operator) / "operator.pt"
        raise InputError(
            f"operator {args.operator!r} is a folder: give the operator file in it"
            + (f" (--operator {inside})" if inside.is_file() else ", the operator.pt of an lre-pl fit")
        )

    from lre_pl.lm.models import load_language_model
    from lre_pl.lre.operator import LinearRelationOperator

    operator = LinearRelationOperator.load(args.operator)
    lm = load_language_model(operator.model)
    width, layer = operator.weight.shape[-1], operator.layer  # W is [width, width]
    if width != lm.hidden_size or not lm.has_layer(layer):
        raise InputError(
            f"{args.operator!r} holds a {width}-dimensional LRE of layer {layer}, but {operator.model} has "
            f"d={lm.hidden_size} and blocks 0..{lm.num_blocks - 1}: it is not the model the LRE was estimated on"
        )
    check_top_k(args.top_k, lm)
    predictions = {
        subject: operator.predict(subject, lm, k=args.top_k) for subject in dict.fromkeys(subjects)
    }
    print(
        f"lre_pl predict: {operator.relation!r}, layer {operator.layer}, beta {operator.beta:g}, "
        f"{operator.estimator} on {operator.model}"
    )
    print("\n".join(format_predictions(predictions)))


def run_sweep(argv: list[str]) -> None:
    """``lre-pl sweep``: a :class:`~lre_pl.experiments.sweep.runner.SweepConfig` (YAML and flags), run."""
    from lre_pl.experiments.sweep.runner import Sweep, SweepConfig

    description = "The paper's protocol over many relations and trials; rerun to resume."
    config = parse_dataclass(SweepConfig, "lre-pl sweep", description, argv)
    root = Sweep(config, command=shlex.join(["lre-pl", "sweep", *argv])).run()
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


def run_lens(argv: list[str]) -> None:
    """``lre-pl lens``: the attribute lens of prompts: a table on the terminal, a PNG and TensorBoard."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog="lre-pl lens",
        description="The attribute lens (Hernandez et al., section 5): at every token and every layer that "
        "has an operator, the top objects of decode(beta W h + b), with the logit lens beside it.",
        exit_on_error=False,
    )
    parser.add_argument(
        "--operators",
        type=str,
        help="a fit's run folder (lightning_logs/version_N), an operator.pt, or a sweep folder with --relation",
    )
    parser.add_argument("--relation", type=str, help="the relation, where --operators is a sweep folder")
    parser.add_argument(
        "--model", type=str, help="the model spec to read (default: the operators' own); it must be theirs"
    )
    parser.add_argument(
        "--trial", type=int | None, help="the sweep's trial, where --operators is a sweep folder (default 0)"
    )
    parser.add_argument(
        "--prompt", type=list[str] | str, default=[], help='a prompt, or several: ["...", "..."]'
    )
    parser.add_argument("--prompts_file", type=str, help="a text file of prompts, one per line")
    parser.add_argument(
        "--positions", type=str, default="all", help="all tokens, or subject: only --subject's"
    )
    parser.add_argument("--subject", type=str, help="the subject whose tokens --positions subject shows")
    parser.add_argument(
        "--layers", type=list[int | str], help="a subset of the operators' layers, e.g. [4, 8, 12]"
    )
    parser.add_argument("--top_k", type=int, default=3, help="objects kept per cell")
    parser.add_argument(
        "--output_dir", type=str, default="lightning_logs/lens", help="where the PNGs and TensorBoard go"
    )
    args = parser.parse_args(argv)
    prompts = [args.prompt] if isinstance(args.prompt, str) else list(args.prompt)
    if args.prompts_file:
        prompts += read_lines(args.prompts_file, "prompts_file", "prompt")
    if not args.operators:
        raise InputError("no operators: give --operators lightning_logs/version_N (a run of lre-pl fit)")
    if not prompts:
        raise InputError('no prompt: give --prompt "..." or --prompts_file')
    empty = [index for index, prompt in enumerate(prompts, 1) if not prompt.strip()]
    if empty:
        raise InputError(f"prompt {empty[0]} of {len(prompts)} is empty: give a text for the lens to read")
    if args.positions == "subject" and not args.subject:
        raise InputError("--positions subject needs --subject: the subject whose tokens to show")
    check_top_k(args.top_k)
    from lre_pl.files import check_writable_folder

    check_writable_folder(args.output_dir, "output_dir")

    from lre_pl.api import attribute_lens
    from lre_pl.experiments.attribute_lens.operators import lens_operators
    from lre_pl.lightning.outputs import write_figure
    from lre_pl.lm.models import load_language_model

    operators = lens_operators(args.operators, args.relation, args.trial)
    estimated_on = next(iter(operators.values())).model
    if args.model and args.model != estimated_on:
        raise InputError(
            f"the operators in {args.operators!r} were estimated on {estimated_on}, not on --model {args.model}: "
            "drop --model, or give operators estimated on that model"
        )
    lm = load_language_model(estimated_on)
    check_top_k(args.top_k, lm)
    views = [
        attribute_lens(
            operators,
            prompt,
            lm,
            k=args.top_k,
            positions=args.positions,
            subject=args.subject,
            layers=args.layers,
        )
        for prompt in prompts
    ]  # every prompt read before anything is written
    from torch.utils.tensorboard import SummaryWriter

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(out / "tensorboard"))
    for index, view in enumerate(views):
        table = view.table()
        print(table + "\n")
        path = write_figure(
            view.figure(), out / f"lens_{index}.png", writer, step=index
        )  # PNG and TensorBoard
        writer.add_text("lens", "    " + table.replace("\n", "\n    "), index)
        print(f"lre_pl lens: {path}")
    writer.close()
    print(f"lre_pl lens: tensorboard --logdir {out / 'tensorboard'}")


def run_distracted_lens(argv: list[str]) -> None:
    """``lre-pl distracted-lens``: a :class:`~lre_pl.experiments.attribute_lens.run.DistractedLensConfig`, run."""
    from lre_pl.experiments.attribute_lens.run import DistractedLensConfig, run_distracted_lens

    description = (
        "The attribute lens on distracted prompts over finished sweeps (one per model); rerun to resume."
    )
    config = parse_dataclass(DistractedLensConfig, "lre-pl distracted-lens", description, argv)
    folders = run_distracted_lens(config, command=shlex.join(["lre-pl", "distracted-lens", *argv]))
    reports = [str(out / "attribute_lens.md") for out in folders] + ([config.report] if config.report else [])
    print(f"lre_pl distracted-lens: {', '.join(reports)}")


def run_cross_relation(argv: list[str]) -> None:
    """``lre-pl cross-relation``: a :class:`~lre_pl.experiments.cross_relation.study.CrossRelationConfig`
    (YAML and flags), run."""
    from lre_pl.experiments.cross_relation.study import CrossRelationConfig, run_cross_relation

    description = (
        "Relation r's LRE (at its sweep's dev-chosen layer and beta) applied to relation r′'s subject states, "
        "for every ordered pair of a finished sweep's relations: type share and shared-subject recall."
    )
    config = parse_dataclass(CrossRelationConfig, "lre-pl cross-relation", description, argv)
    out = run_cross_relation(config, command=shlex.join(["lre-pl", "cross-relation", *argv]))
    print(
        f"lre_pl cross-relation: {out}/cross_relation.md, results.csv, figures *.png (tensorboard --logdir {out})"
    )


#: The commands that load a model, and their runners.
RUNS = {
    "fit": functools.partial(run_lightning, "fit"),
    "validate": functools.partial(run_lightning, "validate"),
    "predict": run_predict,
    "sweep": run_sweep,
    "beta-study": run_beta_study,
    "lens": run_lens,
    "distracted-lens": run_distracted_lens,
    "cross-relation": run_cross_relation,
}

#: What a command stopped by SIGINT or SIGTERM leaves: the end of its one line (``stopped by SIGINT; ...``).
STOPPED_KEEPS = {
    "fit": "the run folder was removed",
    "validate": "the run folder was removed",
    "predict": "it writes nothing",
    "sweep": "the sweep folder is kept (every whole file counts as done), and rerunning the same command "
    "resumes it",
    "beta-study": "the rows of each bundle's questions answered so far are kept, and rerunning the same "
    "command resumes it",
    "lens": "the pictures of the prompts written so far are kept; rerunning the same command makes them all",
    "distracted-lens": "the rows of each relation done so far are kept, and rerunning the same command "
    "resumes it",
    "cross-relation": "its files appear together at its end, so none of this run's is there (an earlier "
    "run's stay as they were); rerun the same command",
}


def run_stoppable(command: str, argv: list[str], verbose: bool) -> None:
    """Run ``command`` with SIGINT and SIGTERM stopping it at once, exit code 130 or 143, in one line
    saying what it leaves (:data:`STOPPED_KEEPS`)."""
    from lre_pl.lightning.callbacks import (
        RunInterrupted,
        RunTerminated,
        install_sigterm_handler,
        sigint_raises_run_interrupted,
    )

    if not verbose:
        quiet_libraries()
    install_sigterm_handler()
    with sigint_raises_run_interrupted():
        try:
            RUNS[command](argv)
        except (RunInterrupted, RunTerminated) as stop:
            name = signal.Signals(stop.code - 128).name
            print(f"lre-pl: error: stopped by {name}; {STOPPED_KEEPS[command]}", file=sys.stderr)
            raise


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


def dispatch(argv: list[str], verbose: bool) -> None:
    """Run the command named first in ``argv``, or print the overview."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    if argv[0] == "--version":
        from importlib.metadata import version

        print(f"lre-pl {version('lre_pl')}")
        return
    command, options = argv[0], argv[1:]
    if command == "relations":
        print_relations(options)
        return
    if command == "test":
        raise InputError(
            "there is no lre-pl test: lre-pl validate evaluates an operator on the test samples "
            "(options: lre-pl validate --help)"
        )
    if command.startswith("-"):
        named = next((arg for arg in argv if arg in COMMANDS), "<command>")
        rest = [arg for arg in argv if arg != named]
        raise ArgumentError(None, f"{command} before the command: write lre-pl {named} {shlex.join(rest)}")
    if command not in COMMANDS:
        choices = ", ".join(repr(name) for name in COMMANDS)
        raise ArgumentError(None, f"invalid choice: {command!r} (choose from {choices})")
    run_stoppable(command, options, verbose)


def main(args: list[str] | None = None) -> None:
    argv, verbose = take_verbose_flag(sys.argv[1:] if args is None else args)
    try:
        dispatch(argv, verbose)
    except InputError as error:  # bad input: one line, no traceback
        print(f"lre-pl: error: {error}", file=sys.stderr)
        sys.exit(2)
    except ProcessFailed as error:  # another process of this command: its own stderr is above
        print(f"lre-pl: error: {error}", file=sys.stderr)
        sys.exit(error.code if error.code > 0 else 1)
    except ArgumentError as error:  # the parser's own: unknown option, wrong type, missing config file
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        message = " ".join(line if line.endswith(":") else line + ";" for line in lines).rstrip(";")
        command = argv[0] if argv and argv[0] in COMMANDS else ""
        refused = refused_class_path(message)  # a class_path outside the allow-list: what is allowed
        print(
            f"lre-pl: error: {refused or message} (options: lre-pl {command} --help)".replace("  ", " "),
            file=sys.stderr,
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
