"""Where the whole protocol's time goes, and how it compares with the paper's code on the same work.

Runs the sweep's own code (:class:`lre_pl.experiments.sweep.runner.Sweep`, the config of ``configs/sweep/smollm2.yaml``)
on ``--relations`` x ``--trials`` of SmolLM2-135M in a fresh temporary folder, and reads the timing rows
it writes (knowns, Jacobians, grid, causality per relation and trial). In the same process, after the
sweep, it measures the unit costs of the paper's code (evandez/relations) on each relation's own
prompts (their lengths, and so the costs, differ between relations):

- one Jacobian as the paper computes it (``benchmarks/jacobian_speed.py``'s row (a): cached prefix, a
  hooked suffix function, ``torch.autograd.functional.jacobian(vectorize=True)``), one layer per pass,
  at block ``--layer`` of the trial's first training prompt, mean of ``--paper-reps``;
- one edit as the paper runs it: a forward of the whole test prompt (batch 1, no cache) with Δs added at
  the subject token, then the top-1 token; mean over ``--edit-reps`` test prompts;
- the knowns filter as the paper runs it: whole test prompts in left-padded batches of 8 (no shared
  prefix cache), per prompt, over ``--knowns-reps`` prompts. Its sweep then runs the known prompts once
  more (``compute_hs_and_zs``) to read h at every layer and z: the same per-prompt cost again;
- one faithfulness decode as the paper runs it (``LinearRelationOperator.__call__`` with h given):
  z = h W^T + b for one vector, the LM head, softmax, top-k and the k token strings; mean over
  ``--decode-reps`` decodes.

The paper's cost of the same work, summed over relations and trials = model load + (test prompts +
known prompts) x its per-prompt time + (n_train x layers) Jacobians x its per-Jacobian time + our decodes
(the same points: every estimator, layer and beta we scan, on every known sample) x its per-decode
time + our edits x its per-edit time (the same edits: every pair x every rank and comparison edit x
every layer edited). Its own sweep does more (every layer x every beta x 40 ranks); that is not
counted. ``--layer`` 14 is the mean backward depth of the 31 layers (15 blocks).

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/protocol_speed.py [--relations ...] [--trials 0]
[--device cpu|cuda] [--threads 2]``. The report is written to ``benchmarks/protocol_<cpu|cuda>.txt``
(the one place its numbers are kept). The last line is machine-readable::

    protocol: total_s=<ours> paper_s=<paper code> speedup=<paper/ours> eval_over_jacobians=<(grid + causality) / jacobians>
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from jacobian_speed import paper_jacobian  # noqa: E402

#: Relations across the dataset's size distribution: 24 samples (the smallest quartile), 57 (the
#: median), 318 (the upper quartile) and 821 (a large one); their mean, 305, is above the dataset's 235.
DEFAULT_RELATIONS = ["country capital city", "adjective comparative", "plays pro sport", "person occupation"]


def paper_edit_seconds(lm, bundle, reps: int) -> float:
    """Mean seconds of one edit the paper's way: the whole prompt, batch 1, Δs added at the subject."""
    from lre_pl.dataset.prompts import encode_prompt, fill_subject
    from lre_pl.lm.hooks import patched

    layer = bundle.layers[len(bundle.layers) // 2]
    seconds = []
    for subject in bundle.test_subjects[:reps]:
        prompt = encode_prompt(lm.tokenizer, fill_subject(bundle.test_prompt_template, subject))
        delta = torch.randn(lm.hidden_size, device=lm.device)

        def add(_, hidden, at=prompt.subject_index, delta=delta):
            hidden = hidden.clone()
            hidden[0, at] += delta
            return hidden

        started = time.perf_counter()
        with torch.no_grad(), patched({layer: lm.layer_module(layer)}, add):
            hidden = lm.base_model(input_ids=torch.tensor([prompt.input_ids], device=lm.device))[0]
            lm.decode(hidden[0, -1]).argmax().item()
        seconds.append(time.perf_counter() - started)
    return statistics.mean(seconds[1:] or seconds)  # the first one warms up


def paper_knowns_seconds(lm, bundle, reps: int) -> float:
    """Seconds per test prompt of a knowns filter over whole prompts, left-padded batches of 8."""
    from lre_pl.dataset.prompts import encode_prompt, fill_subject, pad_left

    subjects = (bundle.test_subjects * reps)[:reps]
    prompts = [encode_prompt(lm.tokenizer, fill_subject(bundle.test_prompt_template, s)) for s in subjects]
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(prompts), 8):
            batch = pad_left(prompts[start : start + 8], lm.tokenizer.pad_token_id)
            hidden = lm.base_model(
                input_ids=batch.input_ids.to(lm.device),
                attention_mask=batch.attention_mask.to(lm.device),
                position_ids=batch.position_ids.to(lm.device),
            )[0]
            lm.decode(hidden[:, -1]).argmax(-1).tolist()
    return (time.perf_counter() - started) / len(prompts)


def paper_decode_seconds(lm, bundle, reps: int) -> float:
    """Mean seconds of one faithfulness decode the paper's way: one h at a time through W, b and the head."""
    layer = bundle.layers[len(bundle.layers) // 2]
    weight, bias = bundle.weights[bundle.layer_index(layer)], bundle.biases[bundle.layer_index(layer)]
    states = bundle.test_states(layer).to(lm.device)  # [n, d]
    weight, bias = weight.to(lm.device), bias.to(lm.device)
    seconds = []
    with torch.no_grad():
        for i in range(reps + 1):
            started = time.perf_counter()
            z = states[i % len(states)][None].mm(weight.t()) + bias
            top = torch.softmax(lm.decode(z).float(), dim=-1).topk(k=3, dim=-1)
            top.values.view(3).tolist()
            [lm.tokenizer.decode(token) for token in top.indices.view(3).tolist()]
            seconds.append(time.perf_counter() - started)
    return statistics.mean(seconds[1:])  # the first one warms up


def paper_jacobian_seconds(lm, relation: str, seed: int, n_train: int, layer: int, reps: int) -> float:
    """Mean seconds of one Jacobian the paper's way, on the first training prompt of this trial."""
    from lre_pl.dataset.relations import load_relation
    from lre_pl.lightning.datamodule import RelationPrompts

    prompt = RelationPrompts.build(load_relation(relation), lm, n_train=n_train, seed=seed).train[0].prompt
    paper_jacobian(lm, prompt, lm.num_blocks - 2)  # warm-up
    seconds = []
    for _ in range(reps):
        started = time.perf_counter()
        paper_jacobian(lm, prompt, layer)
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return statistics.mean(seconds)


def sweep_work(rows: list[dict], n_jacobians: int) -> tuple[dict, dict]:
    """What a sweep's rows say it did: its stage seconds summed (knowns, jacobians, grid, causality, from
    the timing rows), and per (relation, trial) those seconds and its work: test and known samples,
    decodes, edits, and ``n_jacobians`` (n_train x layers) where it was evaluated."""
    stages = defaultdict(float)
    per_relation = defaultdict(lambda: defaultdict(float))
    for row in rows:
        values = per_relation[row["relation"], row["trial"]]
        if row["kind"] == "timing":
            stage = row["metric"].removeprefix("seconds_")
            stages[stage] += row["value"]
            values[stage] = row["value"]
        elif row["kind"] == "grid" and row["metric"] == "efficacy" and row["split"] == "all":
            values["edits"] += row["n"]
        elif row["kind"] == "grid" and row["metric"] == "faithfulness@1" and row["split"] == "all":
            values["decodes"] += row["n"]
            values["n_jacobians"] = n_jacobians  # estimated (and evaluated)
        elif row["metric"] == "known_test_samples":
            values["known"], values["test"] = row["value"], row["n"]
    return stages, per_relation


def report(args) -> None:
    from lre_pl.experiments.sweep.runner import Sweep, SweepConfig
    from lre_pl.lm.models import load_language_model
    from lre_pl.lre.bundle import Bundle
    from lre_pl.protocol.rows import read_rows

    device = "cuda:0" if args.device == "cuda" else "cpu"
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else None
    print(f"machine: {gpu or platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")  # fmt: skip
    started = time.perf_counter()
    lm = load_language_model("smollm2-135m", "float32", device)
    load_seconds = time.perf_counter() - started

    config = yaml.safe_load((ROOT / "configs/sweep/smollm2.yaml").read_text())
    config.pop("output_dir")
    config.update(relations=args.relations, trials=args.trials)
    config["trainer"] = {"accelerator": "gpu" if args.device == "cuda" else "cpu"}
    n_layers = lm.num_blocks + 1 if config["layers"] == "all" else len(config["layers"])
    with tempfile.TemporaryDirectory() as folder:
        sweep = Sweep(SweepConfig(**config, output_dir=folder))
        sweep_started = time.perf_counter()
        sweep.run()
        sweep_seconds = time.perf_counter() - sweep_started
        rows = read_rows(sorted(Path(folder, "rows").glob("*.jsonl")))
        bundles = {
            (relation, trial): Bundle.load(sweep.bundle_path(relation, trial))
            for relation in args.relations
            for trial in args.trials
            if sweep.bundle_path(relation, trial).exists()
        }

    # What our run did, per (relation, trial): its stage seconds and the work the paper's code would redo.
    stages, per_relation = sweep_work(rows, config["n_train"] * n_layers)

    # The paper code's unit costs, measured now on each relation's own prompts (their lengths differ).
    per_decode = paper_decode_seconds(lm, next(iter(bundles.values())), args.decode_reps)
    paper_units = {}
    for (relation, trial), bundle in bundles.items():
        paper_units[relation, trial] = {
            "jacobian": paper_jacobian_seconds(lm, relation, trial, config["n_train"], args.layer, args.paper_reps),
            "edit": paper_edit_seconds(lm, bundle, args.edit_reps),
            "prompt": paper_knowns_seconds(lm, bundle, args.knowns_reps),
        }  # fmt: skip
    paper = {"model load": load_seconds, "knowns": 0.0, "jacobians": 0.0, "grid": 0.0, "causality": 0.0}
    totals = defaultdict(float)
    for key, units in paper_units.items():
        values = per_relation[key]
        paper["knowns"] += (values["test"] + values["known"]) * units["prompt"]
        paper["jacobians"] += values["n_jacobians"] * units["jacobian"]
        paper["grid"] += values["decodes"] * per_decode
        paper["causality"] += values["edits"] * units["edit"]
        for what in ("test", "known", "n_jacobians", "decodes", "edits"):
            totals[what] += values[what]

    ours = load_seconds + sum(stages.values())
    print(f"relations: {', '.join(args.relations)}; trials {args.trials}; config configs/sweep/smollm2.yaml "
          f"({n_layers} layers, {len(config['betas'])} betas, ranks {config['ranks']})")  # fmt: skip
    print(
        f"sweep wall time {sweep_seconds:.1f} s (its stages below, plus Lightning set-up and file writes)\n"
    )
    mean = {
        unit: sum(units[unit] * weight for units, weight in zip(paper_units.values(), counts)) / sum(counts)
        for unit, counts in (
            ("prompt", [per_relation[k]["test"] + per_relation[k]["known"] for k in paper_units]),
            ("jacobian", [per_relation[k]["n_jacobians"] for k in paper_units]),
            ("edit", [per_relation[k]["edits"] for k in paper_units]),
        )
    }  # the unit costs weighted by how often each relation needs them
    what = {
        "model load": "taken as ours (the converted-GGUF cache; a machine's first load converts, ~28 s)",
        "knowns": f"({int(totals['test'])} test + {int(totals['known'])} known) prompts x {mean['prompt'] * 1000:.1f} ms "
        "(whole prompts, batches of 8; the filter, then h and z)",
        "jacobians": f"{int(totals['n_jacobians'])} Jacobians x {mean['jacobian']:.3f} s (one layer per pass)",
        "grid": f"{int(totals['decodes'])} decodes x {per_decode * 1000:.2f} ms (one vector per call)",
        "causality": f"{int(totals['edits'])} edits x {mean['edit'] * 1000:.1f} ms (whole prompt per edit)",
    }  # fmt: skip
    print(f"{'stage':<12}{'lre_pl s':>10}{'share':>8}{'paper code s':>15}   paper's work (mean unit costs)")
    ours_stages = {
        "model load": load_seconds,
        **{k: stages[k] for k in ("knowns", "jacobians", "grid", "causality")},
    }
    for stage, seconds in ours_stages.items():
        print(f"{stage:<12}{seconds:>10.1f}{seconds / ours:>8.1%}{paper[stage]:>15.1f}   {what[stage]}")
    print(f"{'total':<12}{ours:>10.1f}{1:>8.0%}{sum(paper.values()):>15.1f}\n")
    print("per relation and trial: our seconds; the paper code's unit costs measured on its prompts")
    for key in sorted(per_relation):
        values, units = per_relation[key], paper_units.get(key, {})
        print(f"  {key[0]:<24} trial {key[1]}: {int(values['test'])} test, {int(values['known'])} known; "
              + ", ".join(f"{k} {values[k]:.1f}" for k in ("knowns", "jacobians", "grid", "causality") if k in values)
              + (f" | paper: {units['prompt'] * 1000:.0f} ms/prompt, {units['jacobian']:.2f} s/Jacobian, "
                 f"{units['edit'] * 1000:.0f} ms/edit" if units else ""))  # fmt: skip
    count = len(per_relation)
    per_unit = (ours - load_seconds) / max(count, 1)
    print(
        f"\nscaling: total ~ model load + relations x trials x {per_unit:.1f} s (the mean of these {count}; "
        "knowns grow with test samples, grid and causality with known samples, Jacobians are fixed)"
    )
    eval_over_jacobians = (stages["grid"] + stages["causality"]) / stages["jacobians"]
    speedup = sum(paper.values()) / ours
    print(
        f"targets: (grid + causality) / jacobians = {eval_over_jacobians:.2f} (< 1 wanted); "
        f"paper code / lre_pl = {speedup:.1f}x (>= 20 wanted)"
    )
    print(f"protocol: total_s={ours:.1f} paper_s={sum(paper.values()):.1f} speedup={speedup:.1f} "
          f"eval_over_jacobians={eval_over_jacobians:.2f}")  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relations", nargs="+", default=DEFAULT_RELATIONS)
    parser.add_argument("--trials", nargs="+", type=int, default=[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--layer", type=int, default=14, help="block of the paper-code Jacobian")
    parser.add_argument("--paper-reps", type=int, default=2)
    parser.add_argument("--edit-reps", type=int, default=11)
    parser.add_argument("--knowns-reps", type=int, default=32)
    parser.add_argument("--decode-reps", type=int, default=200)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from jacobian_speed import reported

    with reported("protocol_speed.py", argv, Path(__file__).with_name(f"protocol_{args.device}.txt")):
        report(args)


if __name__ == "__main__":
    main()
