"""What the chord Jacobian costs beside the plain Jacobian engine, side by side in one run, as ratios.

Model: SmolLM2-135M (float32, CPU). Prompts: the quickstart's 5 training prompts ("country capital city",
template 0, n_train 5, seed 0), one layer. Rows:

(engine)   ``compute_jacobians(lm, prompts, [layer])``: its seconds per row (one vector-Jacobian product)
           = its time / (5 d).
(one)      one forward-mode product per call (``directional_products`` with one point and one tangent),
           ``--single`` times: the prefix and the layer's output are run again by every call.
(batched)  every product of W_chord applied to ``--vectors`` vectors in one call: 5 x 4 x ``--nodes``
           chord points, each with all the vectors as tangents (``ChordOperator.apply``).
(form)     W_chord formed (``ChordOperator.form``: d tangents at every chord point).

Printed ratios (time per product unless said): one_product_over_engine_row = (batched) / (engine);
one_at_a_time_over_batched = (one) / (batched); form_over_apply = (form) / (batched), whole calls. Times
are CPU seconds of this process (``time.process_time``, every thread), which a busy shared machine
disturbs less than wall seconds (both are printed). The whole report is written to
``benchmarks/chord_speed_cpu.txt``.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/chord_speed.py [--layer 8] [--nodes 8] [--vectors 55]
[--single 10] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def timed(function):
    """(result, wall seconds, CPU seconds) of ``function()``, printed as it ends (a long run shows progress)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{getattr(function, '__name__', 'phase')}: wall {wall:.1f} s, CPU {cpu:.1f} s", flush=True)
    return result, wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", type=int, default=8)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--vectors", type=int, default=55)
    parser.add_argument("--single", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lre_pl.dataset.relations import load_relation
    from lre_pl.lightning.datamodule import RelationPrompts
    from lre_pl.lm.directional import directional_products
    from lre_pl.lm.jacobian import compute_jacobians
    from lre_pl.lm.models import load_language_model
    from lre_pl.lre.chord import ChordJacobian

    lm = load_language_model("smollm2-135m")
    prompts = [
        item.prompt for item in RelationPrompts.build(load_relation("country capital city"), lm, 5, 0).train
    ]
    n, d, layer = len(prompts), lm.hidden_size, args.layer
    result, engine_wall, engine_cpu = timed(lambda: compute_jacobians(lm, prompts, [layer]))
    states, outputs = result.subject_states[layer], result.output_states  # [n, d]
    chord = ChordJacobian(args.nodes)(lm, prompts, layer, states, outputs)
    vectors = (
        torch.randn(args.vectors, d, generator=torch.Generator().manual_seed(0)) * states.norm(dim=-1).mean()
    )

    def one_at_a_time():
        for k in range(args.single):
            directional_products(
                lm,
                prompts[k % n : k % n + 1],
                layer,
                states[k % n, None, None],
                vectors[None, None, k : k + 1],
            )

    _, one_wall, one_cpu = timed(one_at_a_time)
    applied, apply_wall, apply_cpu = timed(lambda: chord.apply(vectors))
    formed, form_wall, form_cpu = timed(chord.form)
    difference = ((applied - vectors @ formed.T).norm() / applied.norm()).item()

    points = n * (n - 1) * args.nodes
    per = {  # (label, products, wall, cpu)
        "engine": ("compute_jacobians, one row (VJP)", n * d, engine_wall, engine_cpu),
        "one": ("forward-mode product, one per call", args.single, one_wall, one_cpu),
        "batched": (
            f"W_chord applied to {args.vectors} vectors ({points} points)",
            points * args.vectors,
            apply_wall,
            apply_cpu,
        ),
        "form": (f"W_chord formed ({points} points x d = {d})", points * d, form_wall, form_cpu),
    }
    out = io.StringIO()
    load = os.getloadavg()[0]
    print(f"command: {' '.join(sys.argv)}", file=out)
    print(f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch threads {args.threads}; 1-min load at the end: {load:.1f}", file=out)  # fmt: skip
    print(f"SmolLM2-135M, layer {layer}, {n} prompts, {args.nodes} nodes, d = {d}\n", file=out)
    print(
        f"{'row':<9}{'what':<52}{'products':>10}{'wall s':>10}{'CPU s':>10}{'CPU ms/product':>16}", file=out
    )
    for key, (label, count, wall, cpu) in per.items():
        print(f"{key:<9}{label:<52}{count:>10}{wall:>10.2f}{cpu:>10.2f}{1e3 * cpu / count:>16.3f}", file=out)
    cost = {key: cpu / count for key, (_, count, _, cpu) in per.items()}
    print(f"\n|applied - formed| / |applied| = {difference:.2e}", file=out)
    print(
        f"ratios: one_product_over_engine_row={cost['batched'] / cost['engine']:.3f} "
        f"one_at_a_time_over_batched={cost['one'] / cost['batched']:.1f} form_over_apply={form_cpu / apply_cpu:.1f}",
        file=out,
    )
    report = out.getvalue()
    print(report, end="")
    (ROOT / "benchmarks" / "chord_speed_cpu.txt").write_text(report)


if __name__ == "__main__":
    main()
