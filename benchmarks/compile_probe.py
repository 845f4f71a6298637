"""Would torch.compile bring the Jacobian engine closer to the matmul? Two probes, side by side in one run.

1. **The fusable part, compiled.** The engine's backward is vmap over ``torch.func.vjp``. The part that
   compilation could fuse is the element-wise work between the matmuls: norms, SiLU gates, residual
   adds. This probe takes SmolLM2's own blocks 9..29 (what a layer-8 Jacobian runs through), without
   their attention, as x -> x + mlp(norm(x)) on a 2-token suffix [1, 2, d]. It runs 96 vector-Jacobian
   products (the engine's CPU pass) eagerly and under ``torch.compile``, and prints the time of each,
   the compile time and the relative difference.
2. **The engine, compiled.** It compiles the engine's own ``vmap(products)`` on a tiny Llama and
   prints what Dynamo reports (frames, graph breaks). The vjp closure keeps the forward's autograd
   graph, which Dynamo cannot trace. Compiling the whole transform instead would have to trace the
   model's forward together with lre_pl's hooks, the forked key/value cache and the patched cache
   updates, all inside ``torch.func.vjp``.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/compile_probe.py [--threads 2]`` (about 1 min on 2
cores, most of it compiling). The report goes to ``benchmarks/compile_probe_cpu.txt``. Its last line is
machine-readable::

    compile: eager_ms=... compiled_ms=... speedup=... compile_s=... rel_diff=... engine_graph_breaks=...
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

PRODUCTS = 96  # the engine's rows per backward pass on a CPU (CPU_ROWS_PER_PASS)
FIRST_BLOCK = 9  # a layer-8 Jacobian's backward runs through blocks 9..29


def fusable_part(threads: int) -> tuple[float, float, float, float]:
    """(eager ms, compiled ms, compile s, relative difference) of the blocks' MLP + norm backward."""
    from lre_pl.lm.models import load_language_model

    lm = load_language_model("smollm2-135m")
    blocks = list(lm.blocks)[FIRST_BLOCK:]

    def stack(x: torch.Tensor) -> torch.Tensor:  # x [1, 2, d]
        for block in blocks:
            x = x + block.mlp(block.post_attention_layernorm(x))
        return x

    def rows(x: torch.Tensor, cotangents: torch.Tensor) -> torch.Tensor:  # cotangents [products, 1, 2, d]
        _, products = torch.func.vjp(stack, x)
        return torch.func.vmap(products)(cotangents)[0]

    x = torch.randn(1, 2, lm.hidden_size, generator=torch.Generator().manual_seed(0))
    cotangents = torch.randn(PRODUCTS, 1, 2, lm.hidden_size, generator=torch.Generator().manual_seed(1))
    compiled = torch.compile(rows)
    started = time.perf_counter()
    compiled(x, cotangents)
    compile_seconds = time.perf_counter() - started

    def best(fn) -> tuple[float, torch.Tensor]:
        fn(x, cotangents)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            result = fn(x, cotangents)
            times.append(time.perf_counter() - started)
        return 1e3 * min(times), result

    eager_ms, expected = best(rows)
    compiled_ms, actual = best(compiled)
    compiled_ms = min(compiled_ms, best(compiled)[0])  # eager and compiled alternate: the same machine load
    eager_ms = min(eager_ms, best(rows)[0])
    return eager_ms, compiled_ms, compile_seconds, float((actual - expected).norm() / expected.norm())


def engine_compiled() -> dict:
    """Dynamo's counters when the engine's vmap(products) runs under torch.compile (a tiny Llama)."""
    from tiny_models import tiny_llama
    from torch._dynamo.utils import counters

    from lre_pl.dataset.prompts import encode_prompt, fill_subject
    from lre_pl.lm import jacobian

    lm = tiny_llama()
    prompts = [
        encode_prompt(lm.tokenizer, fill_subject("The capital city of {} is", s)) for s in ("France", "Peru")
    ]
    vmap = torch.func.vmap
    counters.clear()
    with contextlib.ExitStack() as stack:
        stack.callback(setattr, jacobian.torch.func, "vmap", vmap)
        jacobian.torch.func.vmap = lambda fn, *a, **k: torch.compile(vmap(fn, *a, **k))
        jacobian.compute_jacobians(lm, prompts, [1], chunk_size=16)
    return {name: dict(values) for name, values in counters.items() if values}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from jacobian_speed import _machine, reported

    with reported("compile_probe.py", argv, Path(__file__).with_name("compile_probe_cpu.txt")):
        print(f"machine: {_machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
        eager, compiled, compile_seconds, difference = fusable_part(args.threads)
        print(
            f"\n1. SmolLM2 blocks {FIRST_BLOCK}..29 without attention (norm, SiLU-gated MLP, residual), "
            f"{PRODUCTS} vector-Jacobian products of a [1, 2, 576] suffix, vmap over torch.func.vjp, best of 10:"
        )
        print(f"   eager     {eager:8.1f} ms")
        print(f"   compiled  {compiled:8.1f} ms   (first call, compiling: {compile_seconds:.1f} s)")
        print(f"   speed-up  {eager / compiled:8.2f}x, relative difference {difference:.1e}")
        counters = engine_compiled()
        breaks = counters.get("graph_break", {})
        print("\n2. the engine's vmap(products) under torch.compile (tiny Llama): Dynamo's counters")
        print(f"   frames: {counters.get('frames', {})}")
        for reason, count in breaks.items():
            print(f"   graph break x{count}: {reason.splitlines()[0]}")
        print(
            f"compile: eager_ms={eager:.1f} compiled_ms={compiled:.1f} speedup={eager / compiled:.2f} "
            f"compile_s={compile_seconds:.1f} rel_diff={difference:.1e} engine_graph_breaks={sum(breaks.values())}"
        )


if __name__ == "__main__":
    main()
