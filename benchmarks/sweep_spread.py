"""How a sweep's work spreads over processes: one process, ``spread: prompts`` and ``spread: tasks``, side by side.

Runs ``python -m lre_pl.cli sweep`` three times on the same relations and grid, each in a fresh
temporary folder and its own subprocess:

1. one process of ``--threads`` threads;
2. ``spread: prompts``: 2 DDP processes of ``--threads / 2`` threads (one fit per task, its prompts
   sharded, evaluation on rank 0);
3. ``spread: tasks``: 2 processes of ``--threads / 2`` threads, each taking whole (relation, trial) tasks.

It prints each setting's wall seconds and the stage seconds its rows record (``sweep_work`` of
``protocol_speed.py``: knowns, Jacobians, grid, causality per task; under the prompts spread the knowns and
Jacobians are global rank 0's share; which process ran a task is not recorded, so busy time is given
for all processes together), the speed-ups over one process, the largest difference between the three
folders' non-timing rows, and a cost model, from the one-process run's stage seconds, of how each
spread scales to N devices:

- one process: model load + the sum of the tasks' stages and the rest (Lightning set-up, files: spread
  over the tasks);
- ``prompts``: one model load per process (in parallel) + per task: knowns / N (test prompts sharded),
  Jacobians x ceil(n_train / N) / n_train (the slowest rank's share: with n_train = 5, N > 5 idles),
  grid + causality + the rest whole (rank 0 alone);
- ``tasks``: one model load per process (in parallel) + a list schedule of the task costs on N processes
  in the order they are claimed (largest relation first; each next task to the first free process): at
  most sum / N + the largest task.

It models three sets of tasks: the measured ones; the paper's whole grid (47 relations x 3 trials = 141
tasks, the measured ones cycled); and those 141 at the per-task stage seconds of the H100 protocol
report (``protocol_cuda.txt``), where evaluation, which the prompts spread leaves to rank 0, dominates.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/sweep_spread.py [--model smollm2-135m] [--relations ...]
[--threads 2] [--device cpu|cuda]`` (about 10 min on 2 cores with the defaults). The report goes to
``benchmarks/sweep_spread_<cpu|cuda>.txt`` (``--report`` elsewhere, e.g. for a smoke run on a tiny
model); its last line is machine-readable::

    spread: one_s=... prompts_s=... tasks_s=... prompts_speedup=... tasks_speedup=... max_abs_diff=...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from protocol_speed import DEFAULT_RELATIONS, sweep_work  # noqa: E402

STAGES = ("knowns", "jacobians", "grid", "causality")
#: The settings compared: (name, spread, processes).
SETTINGS = (("one process", "prompts", 1), ("spread: prompts", "prompts", 2), ("spread: tasks", "tasks", 2))


def run_sweep(args, folder: Path, spread: str, processes: int) -> float:
    """Wall seconds of one ``lre-pl sweep`` command in a subprocess."""
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    trainer = {"accelerator": accelerator, "enable_progress_bar": False}
    if processes > 1:
        trainer.update(strategy="ddp", devices=processes)
    command = [
        sys.executable, "-m", "lre_pl.cli", "sweep", "--model", args.model, "--relations", json.dumps(args.relations),
        "--trials", json.dumps(args.trials), "--layers", json.dumps(args.layers), "--betas", json.dumps(args.betas),
        "--ranks", json.dumps(args.ranks), "--max_known", str(args.max_known), "--n_train", str(args.n_train),
        "--threads", str(max(1, args.threads // processes)), "--spread", spread, "--output_dir", str(folder),
        "--trainer", json.dumps(trainer), *(["--known_only", "false"] if args.all_samples else []),
    ]  # fmt: skip
    print(f"$ {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"sweep failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return seconds


def non_timing_values(folder: Path) -> dict[tuple, float]:
    from lre_pl.protocol.rows import read_rows

    fields = (
        "relation",
        "trial",
        "kind",
        "selection",
        "estimator",
        "layer",
        "beta",
        "rank",
        "split",
        "metric",
    )
    rows = read_rows(sorted((folder / "rows").glob("*.jsonl")))
    return {tuple(row[f] for f in fields): row["value"] for row in rows if row["kind"] != "timing"}


def max_abs_diff(first: dict, second: dict) -> float:
    if first.keys() != second.keys():
        return math.inf
    differences = [
        0.0 if (math.isnan(a) and math.isnan(b)) else abs(a - b)
        for a, b in ((first[k], second[k]) for k in first)
    ]
    return max(differences, default=0.0)


#: Tasks of the paper's whole grid: 47 relations x 3 trials.
GRID_TASKS = 47 * 3
#: Model load in the H100 report (seconds).
H100_LOAD = 23.5


def h100_tasks() -> list[dict]:
    """Per-task stage seconds of the H100 protocol report (``protocol_cuda.txt``), if it is there."""
    path = Path(__file__).with_name("protocol_cuda.txt")
    if not path.exists():
        return []
    pattern = re.compile(
        r"trial \d+: (\d+) test, .*; knowns ([\d.]+), jacobians ([\d.]+), grid ([\d.]+), causality ([\d.]+)"
    )
    tasks = []
    for match in map(pattern.search, path.read_text().splitlines()):
        if match:
            test, *seconds = match.groups()
            tasks.append({"test": float(test), "other": 0.0, **dict(zip(STAGES, map(float, seconds)))})
    return tasks


def prompts_seconds(tasks: list[dict], processes: int, n_train: int) -> float:
    """The tasks' stage seconds under ``spread: prompts`` on ``processes`` processes."""
    total = 0.0
    for task in tasks:
        test = max(int(task["test"]), 1)
        total += task["knowns"] * math.ceil(test / processes) / test
        total += task["jacobians"] * math.ceil(n_train / processes) / n_train
        total += task["grid"] + task["causality"] + task["other"]
    return total


def scaling_table(label: str, tasks: list[dict], load: float, n_train: int, measured_one) -> None:
    """Modelled seconds of both spreads on N processes, and the speed-up over one process (``measured_one``,
    or the model's own one-process seconds)."""
    costs = [sum(task[s] for s in (*STAGES, "other")) for task in tasks]
    one = measured_one or load + sum(costs)
    print(f"\n{label}: {len(tasks)} tasks, {sum(costs):.1f} s of work, the largest {max(costs):.1f} s")
    print(f"{'N':>4}{'prompts s':>12}{'tasks s':>10}{'bound s':>10}{'prompts x':>11}{'tasks x':>9}")
    for n in (1, 2, 4, 8, 16, 64):
        prompts = load + prompts_seconds(tasks, n, n_train)
        spread = load + list_schedule(costs, n)
        bound = load + sum(costs) / n + max(costs)
        print(
            f"{n:>4}{prompts:>12.1f}{spread:>10.1f}{bound:>10.1f}{one / prompts:>11.2f}{one / spread:>9.2f}"
        )


def list_schedule(costs: list[float], processes: int) -> float:
    """The makespan of ``costs`` taken in order, each by the first free process."""
    free = [0.0] * processes
    for cost in costs:
        free[free.index(min(free))] += cost
    return max(free)


def report(args) -> None:
    from lre_pl.experiments.sweep.runner import largest_first
    from lre_pl.lm.models import load_language_model
    from lre_pl.protocol.rows import read_rows

    device = "cuda:0" if args.device == "cuda" else "cpu"
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else None
    from jacobian_speed import _machine

    print(f"machine: {gpu or _machine()}, torch {torch.__version__}")
    print(f"model {args.model}; relations {', '.join(args.relations)}; trials {args.trials}; layers {args.layers}; "
          f"betas {args.betas}; ranks {args.ranks}; n_train {args.n_train}; max_known {args.max_known}; "
          f"--threads {args.threads}")  # fmt: skip
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_language_model(args.model, "float32", device)
    load = time.perf_counter() - started
    print(f"model load (this process, once): {load:.1f} s\n")

    walls, values, work, loads = {}, {}, {}, {}
    with tempfile.TemporaryDirectory() as temporary:
        for name, spread, processes in SETTINGS:
            folder = Path(temporary) / name.replace(" ", "_").replace(":", "")
            walls[name] = run_sweep(args, folder, spread, processes)
            loads[name] = os.getloadavg()[0]  # other work on the machine slows a setting down
            values[name] = non_timing_values(folder)
            work[name] = sweep_work(read_rows(sorted((folder / "rows").glob("*.jsonl"))), 0)

    print(
        f"\n{'setting':<18}{'wall s':>9}{'speed-up':>10}"
        + "".join(f"{s:>11}" for s in STAGES)
        + f"{'busy s':>9}"
    )
    one = walls["one process"]
    for name, _, _ in SETTINGS:
        stages = work[name][0]
        busy = sum(stages[s] for s in STAGES)
        print(f"{name:<18}{walls[name]:>9.1f}{one / walls[name]:>10.2f}"
              + "".join(f"{stages[s]:>11.1f}" for s in STAGES) + f"{busy:>9.1f}{loads[name]:>6.1f}")  # fmt: skip
    print("(stage seconds summed over tasks, all processes together; under spread: prompts, knowns and "
          "Jacobians are rank 0's share. busy = their sum; the rest of the wall time is model loads, "
          "Lightning set-up, files and the report; load: the 1-min load average at the setting's end, --threads wanted)\n")  # fmt: skip

    per_task = work["one process"][1]
    tasks = [task for task in largest_first([tuple(key) for key in per_task]) if task in per_task]
    print("per task (one process): " + "; ".join(
        f"{r} trial {t}: {int(per_task[r, t]['test'])} test, " + ", ".join(f"{s} {per_task[r, t][s]:.1f}" for s in STAGES)
        for r, t in tasks))  # fmt: skip
    rest = max(one - load - sum(sum(per_task[task][s] for s in STAGES) for task in tasks), 0.0)
    # The rest (Lightning set-up, file writes) is spent per task: spread evenly over the tasks.
    measured = [{**per_task[task], "other": rest / len(tasks)} for task in tasks]
    grid_tasks = [measured[i % len(measured)] for i in range(GRID_TASKS)]
    print(f"\ncost model (model load {load:.1f} s once per process; the rest of the one-process run, "
          f"{rest:.1f} s, spread over its tasks):")  # fmt: skip
    scaling_table("the measured tasks", measured, load, args.n_train, one)
    scaling_table(f"the {GRID_TASKS} tasks of 47 relations x 3 trials, the measured tasks cycled", grid_tasks, load,
                  args.n_train, None)  # fmt: skip
    h100 = h100_tasks()
    if h100:
        scaling_table(
            f"the same {GRID_TASKS} tasks at the H100 report's stage seconds (protocol_cuda.txt, its 4 relations "
            "cycled; its causality predates the one-pass edits)",
            [h100[i % len(h100)] for i in range(GRID_TASKS)], H100_LOAD, args.n_train, None,
        )  # fmt: skip
    print(
        "(prompts: knowns / N (test prompts sharded), Jacobians x ceil(n_train / N) / n_train (the slowest "
        "rank's share), grid + causality whole (rank 0 alone); tasks: a list schedule of whole tasks in "
        "claim order (largest first), at most sum / N + the largest task; "
        f"measured at N = 2: prompts {walls['spread: prompts']:.1f} s, tasks {walls['spread: tasks']:.1f} s)"
    )

    diff = max(max_abs_diff(values["one process"], values[name]) for name, _, _ in SETTINGS[1:])
    print(f"\nnon-timing rows: {len(values['one process'])} per folder, max abs difference {diff:.2e}")
    print(f"spread: one_s={one:.1f} prompts_s={walls['spread: prompts']:.1f} tasks_s={walls['spread: tasks']:.1f} "
          f"prompts_speedup={one / walls['spread: prompts']:.2f} tasks_speedup={one / walls['spread: tasks']:.2f} "
          f"max_abs_diff={diff:.2e}")  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="smollm2-135m", help="model spec (a tiny model folder for a smoke run)"
    )
    parser.add_argument("--relations", nargs="+", default=DEFAULT_RELATIONS)
    parser.add_argument("--trials", nargs="+", type=int, default=[0])
    parser.add_argument("--layers", nargs="+", default=["emb", 4, 8, 12, 16, 20, 24, 28])
    parser.add_argument("--betas", nargs="+", type=float, default=[0.0, 1.0, 2.0, 3.0])
    parser.add_argument("--ranks", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--n-train", type=int, default=5)
    parser.add_argument("--max-known", type=int, default=40)
    parser.add_argument(
        "--threads", type=int, default=2, help="threads of the one process; half each for two"
    )
    parser.add_argument(
        "--all-samples", action="store_true", help="evaluate every test sample (a tiny model knows none)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--report", type=Path, help="where the report goes (default benchmarks/sweep_spread_<device>.txt)"
    )
    args = parser.parse_args(argv)
    args.layers = [layer if layer == "emb" else int(layer) for layer in args.layers]
    from jacobian_speed import reported

    with reported(
        "sweep_spread.py", argv, args.report or Path(__file__).with_name(f"sweep_spread_{args.device}.txt")
    ):
        report(args)


if __name__ == "__main__":
    main()
