"""How fast is lre_pl's Jacobian engine against the paper's way of computing J = d o / d s?

Model: SmolLM2-135M (d = 576, 30 blocks, float32, CPU). Prompts: exactly the quickstart's 5 training
prompts (``RelationPrompts.build``: relation "country capital city", template 0, n_train 5, seed 0), each
with the other 4 training samples as few-shot examples (no prefix: SmolLM2 is Llama-style). ``s`` is the output of block ``layer`` (or of the token
embedding for ``"emb"``) at the subject token, ``o`` the last block's output at the last token (pre-norm).

Methods (one table row each):

(a)  the paper's code as it runs: the prefix (tokens before the subject) runs once with ``use_cache=True``;
     ``f(s)`` re-runs the suffix (subject token on) through ``lm.base_model`` with a deep copy of that cache,
     explicit position ids, a forward hook writing ``s`` into column 0 of layer ``layer``'s output and a
     forward hook reading ``o`` from the last block; ``torch.autograd.functional.jacobian(f, s0,
     vectorize=True)``. One layer, ONE sample (its legacy-vmap path is the slowest, worst on a busy CPU).
(a') the same ``f`` with ``torch.func.jacrev(f)(s0)``: the strongest single-layer baseline. One layer on
     every sample, and all 31 layers ("emb" + blocks 0..29) layer by layer on sample 0 (really run, not
     extrapolated).
(b)  ``lre_pl.lm.jacobian.compute_jacobians(lm, prompts, [layer])``, per sample and batched over all samples;
     the faster of the two is (b).
(c)  ``compute_jacobians`` for all 31 layers in one call, per sample and batched; the faster is (c).

Every method family runs in its own subprocess (this script with the hidden ``--method`` flag), which
loads the model, sets ``torch.set_num_threads(--threads)``, warms up on a cheap layer, then times each
phase. Peak memory of a phase = the process's peak RSS (``resource.getrusage().ru_maxrss``) during the
phase minus its RSS right after the model was loaded; the peak is reset between phases by writing ``5``
to ``/proc/self/clear_refs`` (Linux), so phases sharing a process do not see each other's peaks.

The relative differences are Frobenius: ``||J_x - J_ref|| / ||J_ref||`` on the same sample and layer.
Useful FLOPs (weights frozen, so only input gradients count): each vector-Jacobian product goes backward
through every block from ``min(layers) + 1`` ("emb" counts as -1) to the last one, at every suffix token,
costing ``2 * P`` FLOPs per token per block with ``P`` = number of weights of one block's ``nn.Linear``
layers; a Jacobian is ``d`` such products. Attention scores, norms and activations are not counted. The
achieved rate is compared with a plain ``[1152, 576] @ [576, 1536]`` float32 matmul timed in the engine's
process (the shape of down_proj's input-gradient product for 576 products x 2 suffix tokens).

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/jacobian_speed.py [--samples N] [--layer 8] [--threads 2]
[--skip-paper-code]``. The whole report is also written to ``benchmarks/last_run_<cpu|cuda>.txt`` (the one
place its numbers are kept; the READMEs quote none). The last line printed is machine-readable::

    ratios: one_layer=<(a')/(b)> all_layers=<31 layers of (a')/(c)> paper_code=<(a)/(b)> max_rel_diff=<x>
        slices_over_parts=<the slicing attention / the engine's, batched one layer>
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import io
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

MODEL = "smollm2-135m"
RELATION = "country capital city"
TRAINING_SAMPLES = 5
MATMUL_SHAPE = (1152, 576, 1536)  # [m, k] @ [k, n]
MATMUL_REPS = 20
DISAGREEMENT = 1e-4  # an engine-vs-reference difference above this is reported loudly
METHODS = ("paper", "jacrev", "engine")
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- memory


def _rss_mib() -> float:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def _reset_peak() -> bool:
    """Free what can be freed, then reset the peak RSS to the current RSS; False where unsupported."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back to the OS
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- the methods (child side)


def _training_prompts(lm):
    """Exactly the quickstart's 5 training prompts: seed-0 split, each with the other 4 as examples."""
    from lre_pl.dataset.relations import load_relation
    from lre_pl.lightning.datamodule import RelationPrompts

    prompts = RelationPrompts.build(load_relation(RELATION), lm, n_train=TRAINING_SAMPLES, seed=0)
    return [item.prompt for item in prompts.train]


def suffix_function(lm, prompt, layer, inplace: bool):
    """(f, s0) of the paper's construction for one prompt: f(s) [d] -> o [d].

    The paper writes ``hs[0, i] = h`` in place (``inplace=True``, what (a) runs). Under ``torch.func``
    an in-place write of a vmapped tensor into a plain one is not allowed, so (a') writes s with an
    out-of-place ``torch.cat``; both compute the same values through the same graph.
    """
    from lre_pl.lm.hooks import capture, patched

    ids = torch.tensor([prompt.input_ids], device=lm.device)  # [1, T]
    k = prompt.subject_index
    suffix = ids[:, k:]  # [1, T - k]: subject token first
    positions = torch.arange(k, ids.shape[1], device=lm.device)[None]  # [1, T - k]: continue after the prefix
    cache = None
    if k > 0:
        with torch.no_grad():
            out = lm.base_model(input_ids=ids[:, :k], use_cache=True)
        cache = out[lm.cache_argument]  # the output field has the forward argument's name
    module = lm.layer_module(layer)

    def run(state: torch.Tensor | None) -> dict[str, torch.Tensor]:
        captured = {}

        def write(_, hidden):  # hidden [1, T - k, d]
            captured["s"] = hidden[0, 0]
            if state is None:
                return hidden
            if inplace:
                hidden[0, 0] = state
                return hidden
            return torch.cat([state[None, None], hidden[:, 1:]], dim=1)

        # Entered in this order, so that when both sit on the last block `read` sees the written output.
        with patched({layer: module}, write), capture({"o": lm.blocks[-1]}, lambda _, h: h[0, -1]) as read:
            lm.base_model(
                input_ids=suffix,
                position_ids=positions,
                use_cache=cache is not None,
                **{lm.cache_argument: copy.deepcopy(cache)},  # the suffix run appends to the cache
            )
        captured["o"] = read["o"]  # [d]
        return captured

    with torch.no_grad():
        s0 = run(None)["s"].clone()  # [d]
    return (lambda state: run(state)["o"]), s0


def paper_jacobian(lm, prompt, layer) -> torch.Tensor:
    """(a): J [d, d] the way the paper's code computes it.

    Why it is slow: ``vectorize=True`` makes ``torch.autograd.functional.jacobian`` call
    ``autograd.grad(..., is_grads_batched=True)``, which batches the d vector-Jacobian products with the
    legacy ``torch._vmap_internals`` prototype. Ops without a legacy batching rule fall back to a loop
    over the d rows (slice, run, restack); the ``profile`` phase measures this (``aten::silu_backward`` and
    ``aten::copy_`` calls for one block's backward, and the fallback warnings) instead of assuming it.
    Measured on 2 EPYC cores (torch 2.13): 577 silu_backward calls for one block (the per-row loop),
    but with only 2 suffix tokens the looped ops are tiny, so on an idle machine (a) is about as fast as
    jacrev (~5 s). The same Jacobian took 39 s and 127 s in two runs while other jobs competed for the
    2 cores (1-min load average up to 5.8): per-row loops of tiny multi-threaded ops suffer most from a
    busy CPU.
    """
    function, s0 = suffix_function(lm, prompt, layer, inplace=True)
    return torch.autograd.functional.jacobian(function, s0, vectorize=True)


def jacrev_jacobian(lm, prompt, layer) -> torch.Tensor:
    """(a'): J [d, d] with torch.func.jacrev (functorch vmap, which has batching rules for these ops)."""
    function, s0 = suffix_function(lm, prompt, layer, inplace=False)
    return torch.func.jacrev(function)(s0)


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _useful_flops(lm, prompts, lowest_layer) -> float:
    """2 * P * suffix tokens * blocks above the lowest layer * d, summed over prompts (one J per prompt)."""
    linear = sum(m.weight.numel() for m in lm.blocks[0].modules() if isinstance(m, torch.nn.Linear))
    first = 0 if lowest_layer == "emb" else lowest_layer + 1
    blocks = lm.num_blocks - first
    tokens = sum(len(p.input_ids) - p.subject_index for p in prompts)
    return 2.0 * linear * tokens * blocks * lm.hidden_size


def _profile_fallbacks(compute) -> dict:
    """Run ``compute`` under the profiler with vmap fallback warnings on; count the backward ops."""
    legacy = torch._C._debug_only_display_vmap_fallback_warnings
    functorch = getattr(torch._C._functorch, "_set_vmap_fallback_warning_enabled", None)
    legacy(True)
    if functorch:
        functorch(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                compute()
    finally:
        legacy(False)
    counts = {event.key: event.count for event in prof.key_averages()}
    ops = set()
    for warning in caught:
        ops.update(re.findall(r"batching rule for (\S+?)\.\s", str(warning.message)))
    return {
        "silu_backward": counts.get("aten::silu_backward", 0),
        "softmax_backward": counts.get("aten::_softmax_backward_data", 0),
        "stack": counts.get("aten::stack", 0),
        "copy": counts.get("aten::copy_", 0),
        "fallback_ops": sorted(ops),
        "fallback_warnings": len(caught),
    }


#: Rows of the engine's time profile in the report.
HOTSPOTS = 8


def _cache_parts_ab(compute, layer, rounds: int = 3) -> dict:
    """The batched one-layer call with the attention taking the cache's parts (the engine) and with it
    slicing the joined keys and values (the path before issue 17), alternated ``rounds`` times in this
    process: the best of each, so that the machine's load hits both alike."""
    from lre_pl.lm import jacobian

    split, best, results = jacobian.CacheParts.split, {"parts": [], "slices": []}, {}
    try:
        for _ in range(rounds):
            for path in best:
                jacobian.CacheParts.split = split if path == "parts" else (lambda self, key, value: None)
                results[path], seconds = _timed(compute)
                best[path].append(seconds)
    finally:
        jacobian.CacheParts.split = split
    return {
        "parts_s": min(best["parts"]),
        "slices_s": min(best["slices"]),
        "rel_diff": _rel(results["slices"][layer], results["parts"][layer]),
    }


def _hotspots(compute, shapes: bool) -> list[dict]:
    """Where ``compute``'s CPU time goes (torch.profiler): the ops with the most self CPU time, or with
    ``shapes`` the (op, input shapes) pairs; each with its share of the total, calls and mean time."""
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=shapes
    ) as prof:
        compute()
    events = prof.key_averages(group_by_input_shape=shapes)
    total = sum(event.self_cpu_time_total for event in events) or 1.0
    top = sorted(events, key=lambda event: -event.self_cpu_time_total)[:HOTSPOTS]
    return [
        {
            "op": event.key,
            "shapes": str(event.input_shapes) if shapes else "",
            "share": event.self_cpu_time_total / total,
            "calls": event.count,
            "mean_ms": event.self_cpu_time_total / max(event.count, 1) / 1e3,
        }
        for event in top
    ]


def run_child(args) -> None:
    """One method family in this (sub)process; writes <workdir>/<method>.json and .pt."""
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from lre_pl.lm.jacobian import compute_jacobians
    from lre_pl.lm.models import load_language_model

    lm = load_language_model(MODEL)
    rss_after_load = _rss_mib()
    prompts = _training_prompts(lm)[: args.samples]
    layer, all_layers = args.layer, lm.layer_names()
    cheap = lm.num_blocks - 2  # backward through the last block only
    phases: dict[str, dict] = {}
    saved: dict[str, object] = {}
    resettable = True

    def phase(name, body):
        nonlocal resettable
        resettable = _reset_peak() and resettable
        seconds, flops = body()
        phases[name] = {
            "seconds": seconds,  # one entry per timed call
            "flops": flops,  # useful FLOPs of all the timed calls together
            "peak_mib": _peak_rss_mib() - rss_after_load,
            "load": os.getloadavg()[0],  # 1-min load average when the phase ended
        }

    def engine_j(batch, layers):
        return compute_jacobians(lm, batch, layers).jacobians  # layer -> [batch, d, d]

    if args.method == "paper":
        paper_jacobian(lm, prompts[0], cheap)  # warm-up

        def paper():
            j, t = _timed(lambda: paper_jacobian(lm, prompts[0], layer))
            saved["a"] = j  # [d, d]
            return [t], _useful_flops(lm, prompts[:1], layer)

        phase("a", paper)
        phases["profile"] = _profile_fallbacks(lambda: paper_jacobian(lm, prompts[0], cheap))

    elif args.method == "jacrev":
        jacrev_jacobian(lm, prompts[0], cheap)  # warm-up

        def one_layer():
            times, js = [], []
            for prompt in prompts:
                j, t = _timed(lambda p=prompt: jacrev_jacobian(lm, p, layer))
                times.append(t)
                js.append(j)
            saved["a1"] = torch.stack(js)  # [samples, d, d]
            return times, _useful_flops(lm, prompts, layer)

        def every_layer():
            times, js = [], {}
            for each in all_layers:  # really run, layer by layer, on sample 0
                js[str(each)], t = _timed(lambda e=each: jacrev_jacobian(lm, prompts[0], e))
                times.append(t)
            saved["a31"] = js  # layer -> [d, d]
            flops = sum(_useful_flops(lm, prompts[:1], each) for each in all_layers)
            return [sum(times)], flops

        phase("a1", one_layer)
        phase("a31", every_layer)
        phases["profile"] = _profile_fallbacks(lambda: jacrev_jacobian(lm, prompts[0], cheap))

    else:  # engine
        engine_j(prompts[:1], [cheap])  # warm-up
        m, k, n = MATMUL_SHAPE
        a, b, c = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)  # [1152, 576] @ [576, 1536]

        def matmul_rate() -> float:
            for _ in range(3):
                torch.mm(a, b, out=c)
            _, t = _timed(lambda: [torch.mm(a, b, out=c) for _ in range(MATMUL_REPS)])
            return 2.0 * m * k * n * MATMUL_REPS / t

        matmul_rates = [matmul_rate()]  # once before and once after the engine phases; the best counts

        def per_sample(layers, key):
            def body():
                times, js = [], []
                for prompt in prompts:
                    j, t = _timed(lambda p=prompt: engine_j([p], layers))
                    times.append(t)
                    js.append({str(each): j[each][0] for each in layers})
                saved[key] = js  # [samples] of layer -> [d, d]
                return times, _useful_flops(lm, prompts, min(layers, key=lambda x: -1 if x == "emb" else x))

            return body

        def batched(layers, key):
            def body():
                j, t = _timed(lambda: engine_j(prompts, layers))
                saved[key] = [{str(each): j[each][i] for each in layers} for i in range(len(prompts))]
                return [t], _useful_flops(lm, prompts, min(layers, key=lambda x: -1 if x == "emb" else x))

            return body

        phase("b1", per_sample([layer], "b1"))
        phase("b2", batched([layer], "b2"))
        phase("c1", per_sample(all_layers, "c1"))
        phase("c2", batched(all_layers, "c2"))
        matmul_rates.append(matmul_rate())
        phases["matmul"] = {"flops_per_s": max(matmul_rates), "all": matmul_rates}
        phases["cache_parts"] = _cache_parts_ab(lambda: engine_j(prompts, [layer]), layer)
        phases["profile"] = _profile_fallbacks(lambda: engine_j(prompts[:1], [cheap]))
        # The batched one-layer row (b2) under the profiler: its ops, then (one prompt: a profile of shapes
        # holds every event's shapes in memory) the ops with their shapes, which say where each sits.
        phases["hotspots"] = _hotspots(lambda: engine_j(prompts, [layer]), shapes=False)
        phases["hotspot_shapes"] = _hotspots(lambda: engine_j(prompts[:1], [layer]), shapes=True)

    workdir = Path(args.workdir)
    torch.save(saved, workdir / f"{args.method}.pt")
    info = {
        "phases": phases,
        "rss_after_load_mib": rss_after_load,
        "peak_reset": resettable,
        "cheap_layer": cheap,
        "prompt_lengths": [len(p.input_ids) for p in prompts],
        "subject_indices": [p.subject_index for p in prompts],
        "linear_params_per_block": sum(
            m.weight.numel() for m in lm.blocks[0].modules() if isinstance(m, torch.nn.Linear)
        ),
        "d": lm.hidden_size,
        "num_blocks": lm.num_blocks,
    }
    (workdir / f"{args.method}.json").write_text(json.dumps(info))


# --------------------------------------------------------------------------- report (parent side)


def _machine() -> str:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read(), flags=re.M)
        model = names[0] if names else model
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {os.cpu_count()} logical cores ({usable} usable)"


def _rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative Frobenius difference; 0 where both are exactly zero (e.g. J of the last block)."""
    den = expected.norm().item()
    num = (actual - expected).norm().item()
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def _spawn(method: str, args, workdir: str) -> tuple[dict, dict]:
    command = [sys.executable, str(Path(__file__).resolve()), "--method", method, "--workdir", workdir]
    command += ["--samples", str(args.samples), "--layer", str(args.layer), "--threads", str(args.threads)]
    env = dict(os.environ, TQDM_DISABLE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    print(f"[jacobian_speed] running {method} in a subprocess ...", file=sys.stderr, flush=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise SystemExit(f"the {method} subprocess failed with exit status {done.returncode}")
    elapsed = time.perf_counter() - start
    print(f"[jacobian_speed] {method} done in {elapsed:.0f} s", file=sys.stderr, flush=True)
    info = json.loads((Path(workdir) / f"{method}.json").read_text())
    info["wall_s"] = elapsed
    return info, torch.load(Path(workdir) / f"{method}.pt")


def report(args) -> None:
    load_before = os.getloadavg()
    print(f"machine: {_machine()}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, torch threads {args.threads}")
    print(f"load average before: {load_before[0]:.2f} (1 min)")
    print(
        f"model {MODEL}, relation {RELATION!r}, template 0, {args.samples} of the {TRAINING_SAMPLES} "
        f"training prompts, layer {args.layer}"
    )
    methods = [m for m in METHODS if not (m == "paper" and args.skip_paper_code)]
    with tempfile.TemporaryDirectory(prefix="jacobian_speed_") as workdir:
        results = {m: _spawn(m, args, workdir) for m in methods}
    engine, engine_j = results["engine"]
    jacrev, jacrev_j = results["jacrev"]
    layer = str(args.layer)
    d, num_blocks = engine["d"], engine["num_blocks"]
    matmul = engine["phases"]["matmul"]["flops_per_s"]
    lengths, subjects = engine["prompt_lengths"], engine["subject_indices"]
    print(
        f"prompts: {lengths} tokens, subject at {subjects} -> suffix of "
        f"{[n - s for n, s in zip(lengths, subjects)]} tokens; d = {d}, {num_blocks} blocks"
    )

    # Relative differences (Frobenius). Engine references: per-sample runs (b1 one layer, c1 all layers).
    b1 = engine_j["b1"]  # [samples] of {layer: [d, d]}
    c1 = engine_j["c1"]
    diffs: dict[str, float] = {}
    samples = range(args.samples)
    diffs["a' vs engine (b1), layer L, every sample"] = max(
        _rel(jacrev_j["a1"][i], b1[i][layer]) for i in samples
    )
    diffs["engine batched (b2) vs per sample (b1)"] = max(
        _rel(engine_j["b2"][i][layer], b1[i][layer]) for i in samples
    )
    diffs["a' vs engine all layers (c1), sample 0, 31 layers"] = max(
        _rel(jacrev_j["a31"][name], c1[0][name]) for name in c1[0]
    )
    diffs["engine all layers (c1) vs one layer (b1), layer L"] = max(
        _rel(c1[i][layer], b1[i][layer]) for i in samples
    )
    diffs["engine batched (c2) vs per sample (c1), 31 layers"] = max(
        _rel(engine_j["c2"][i][name], c1[i][name]) for i in samples for name in c1[i]
    )
    if "paper" in results:
        paper_j = results["paper"][1]["a"]
        diffs["a vs engine (b1), layer L, sample 0"] = _rel(paper_j, b1[0][layer])
        diffs["a vs a', layer L, sample 0"] = _rel(paper_j, jacrev_j["a1"][0])
    max_rel_diff = max(diffs.values())

    # Rows: (name, description, phase info, Jacobians per sample, rel diff vs engine).
    def row(label, what, phase, per_sample, diff, samples):
        seconds = sum(phase["seconds"])
        return {
            "label": label,
            "what": what,
            "per_sample": seconds / samples,
            "min": min(phase["seconds"]) / (1 if len(phase["seconds"]) == samples else samples),
            "load": phase["load"],
            "per_jacobian": seconds / samples / per_sample,
            "peak": phase["peak_mib"],
            "rate": phase["flops"] / seconds,
            "diff": diff,
        }

    n = args.samples
    ep, jp = engine["phases"], jacrev["phases"]
    rows = []
    if "paper" in results:
        pp = results["paper"][0]["phases"]
        what = "autograd.functional.jacobian(vectorize), 1 sample"
        rows.append(row("(a)", what, pp["a"], 1, diffs["a vs engine (b1), layer L, sample 0"], 1))
    one, every = (
        diffs["a' vs engine (b1), layer L, every sample"],
        diffs["a' vs engine all layers (c1), sample 0, 31 layers"],
    )
    rows.append(row("(a')", f"torch.func.jacrev, {n} samples", jp["a1"], 1, one, n))
    rows.append(row("(b1)", "engine, 1 layer, one call per sample", ep["b1"], 1, 0.0, n))
    b2 = diffs["engine batched (b2) vs per sample (b1)"]
    rows.append(row("(b2)", f"engine, 1 layer, {n} samples batched", ep["b2"], 1, b2, n))
    rows.append(row("(a'x31)", "jacrev at each of 31 layers, sample 0", jp["a31"], 31, every, 1))
    rows.append(row("(c1)", "engine, 31 layers, one call per sample", ep["c1"], 31, 0.0, n))
    c2 = diffs["engine batched (c2) vs per sample (c1), 31 layers"]
    rows.append(row("(c2)", f"engine, 31 layers, {n} samples batched", ep["c2"], 31, c2, n))
    by_label = {r["label"]: r for r in rows}
    best_b = min(("(b1)", "(b2)"), key=lambda x: by_label[x]["per_sample"])
    best_c = min(("(c1)", "(c2)"), key=lambda x: by_label[x]["per_sample"])

    print()
    print(
        f"layer L = {args.layer}; s/sample = mean over the timed samples, min = fastest sample "
        "(batched rows: "
        "the one call / samples); 31 layers = 'emb' + blocks 0..29; load = 1-min load average at the end of "
        "the phase"
    )
    header = (
        f"{'':8} {'method':49} {'s/sample':>9} {'min':>8} {'s/Jacobian':>10} {'peak MiB':>9} "
        f"{'GFLOP/s':>8} {'% mm':>5} {'rel diff':>9} {'load':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        mark = " <- (b)" if r["label"] == best_b else " <- (c)" if r["label"] == best_c else ""
        print(
            f"{r['label']:8} {r['what']:49} {r['per_sample']:9.3f} {r['min']:8.3f} {r['per_jacobian']:10.3f} "
            f"{r['peak']:9.0f} {r['rate'] / 1e9:8.1f} {100 * r['rate'] / matmul:5.0f} {r['diff']:9.2e} "
            f"{r['load']:5.2f}{mark}"
        )
    print("-" * len(header))
    tries = " and ".join(f"{rate / 1e9:.1f}" for rate in engine["phases"]["matmul"]["all"])
    print(
        f"plain matmul [1152, 576] @ [576, 1536] float32, {MATMUL_REPS} reps, in the engine's process before "
        f"and after its phases: {tries} GFLOP/s; '% mm' uses the best, {matmul / 1e9:.1f} GFLOP/s"
    )
    print()
    print("notes:")
    print(
        "- useful FLOPs per Jacobian = 2 * P * (suffix tokens) * (blocks from min(layers) + 1 to the last)"
        " * d, "
        f"P = {engine['linear_params_per_block']:,} weights in one block's nn.Linear layers, d = {d}; "
        "input gradients only (weights are frozen); attention scores, norms and activations not counted. "
        "'% mm' = achieved useful FLOP/s / the matmul's FLOP/s."
    )
    print(
        "- rel diff = ||J - J_engine||_F / ||J_engine||_F against the engine's per-sample call on the same "
        "sample and layer(s) ((b1) for one layer, (c1) for 31 layers; (b2)/(c2) against (b1)/(c1)); "
        "max over samples and layers. J at block 29 is exactly 0 (o does not depend on the last block's "
        "output at another token); both zero counts as 0; 0.00e+00 elsewhere means bitwise equal."
    )
    print(
        "- peak MiB = peak RSS during the phase - RSS right after model load, in that method's own process "
        f"(model loaded: {engine['rss_after_load_mib']:.0f} MiB); the peak is reset between phases via "
        "/proc/self/clear_refs"
        + (
            ""
            if all(r[0]["peak_reset"] for r in results.values())
            else " (NOT available here: peaks are cumulative)"
        )
        + "."
    )
    print(
        f"- (a'x31) is really run layer by layer on sample 0 (s/sample = the sum over 31 layers); "
        f"(c1)/(c2) are means over {n} samples."
    )
    print("- relative differences:")
    for name, value in diffs.items():
        print(f"    {name}: {value:.2e}")
    loud = {name: v for name, v in diffs.items() if "engine" in name and v > DISAGREEMENT}
    if loud:
        print(f"!!! WARNING: the engine disagrees with a reference by more than {DISAGREEMENT:g}: {loud} !!!")
    cheap = engine["cheap_layer"]
    print(
        f"- vmap fallback, measured: each method profiled once at layer {cheap}, where the backward goes "
        f"through exactly one block (block {num_blocks - 1}), so a batched backward calls "
        "aten::silu_backward "
        f"at most once (0 where vmap decomposes it) and a per-row loop about d = {d} times:"
    )
    for method, (info, _) in results.items():
        prof = info["phases"]["profile"]
        ops = ", ".join(prof["fallback_ops"]) or "none"
        print(
            f"    {method:7} silu_backward calls {prof['silu_backward']:4}, _softmax_backward_data calls "
            f"{prof['softmax_backward']:4}, stack {prof['stack']:3}, copy_ {prof['copy']:4}; "
            f"ops reported as lacking a batching rule: {ops}"
        )
    if "paper" in results:
        prof = results["paper"][0]["phases"]["profile"]
        paper_s = results["paper"][0]["phases"]["a"]["seconds"][0]
        jacrev_s = jp["a1"]["seconds"][0]
        engine_prof = engine["phases"]["profile"]
        print(
            "- why (a) is slow: vectorize=True runs autograd.grad(is_grads_batched=True), which batches "
            "the d vector-Jacobian products with the legacy torch._vmap_internals prototype. Measured "
            "above: it has "
            f"no batching rule for {', '.join(prof['fallback_ops']) or 'nothing'} and runs one block's "
            f"aten::silu_backward {prof['silu_backward']} times, i.e. a per-row loop over the {d} rows, "
            f"and {prof['copy']} aten::copy_ calls (jacrev: {jp['profile']['copy']}). On sample 0, same "
            f"suffix function: (a) {paper_s:.1f} s vs "
            f"jacrev (a') {jacrev_s:.1f} s, ratio {paper_s / jacrev_s:.2g}. The engine in this checkout "
            f"{'also takes' if engine_prof['silu_backward'] > d // 2 else 'does not take'} that fallback "
            f"({engine_prof['silu_backward']} silu_backward calls)."
        )
    else:
        print("- (a) skipped (--skip-paper-code).")
    print(
        f"- where the engine's time goes (torch.profiler, self CPU time; the batched one-layer row at layer "
        f"{args.layer}, then one prompt by op and input shapes; a profile slows every op, so shares, not "
        "seconds, carry over):"
    )
    ab = engine["phases"]["cache_parts"]
    print(
        f"- the attention's keys and values, side by side (the batched one-layer call, best of 3 each, "
        f"alternated): the cache's parts (the engine) {ab['parts_s']:.2f} s, slices of the joined tensors "
        f"(before issue 17: zero-filled gradients of the whole prefix + suffix) {ab['slices_s']:.2f} s, "
        f"ratio {ab['slices_s'] / ab['parts_s']:.2f}; relative difference {ab['rel_diff']:.1e}; best-of-3 "
        f"useful rate of the parts path {engine['phases']['b2']['flops'] / ab['parts_s'] / 1e9:.1f} GFLOP/s, "
        f"{engine['phases']['b2']['flops'] / ab['parts_s'] / matmul:.0%} of the matmul"
    )
    for key in ("hotspots", "hotspot_shapes"):
        for row in engine["phases"][key]:
            print(
                f"    {row['share']:6.1%}  {row['op']:<28} {row['calls']:6} calls, {row['mean_ms']:7.3f} ms each"
                + (f"  {row['shapes']}" if row["shapes"] else "")
            )
        print("    --")
    walls = ", ".join(f"{m} {info['wall_s']:.0f} s" for m, (info, _) in results.items())
    print(
        f"- subprocess wall times (model load ~25 s each included): {walls}. The benchmark itself keeps the "
        f"load near {args.threads}; a clearly higher load (or one above {os.cpu_count()} cores) means other "
        "processes competed for the CPU and inflated the timings."
    )

    a_prime = by_label["(a')"]["per_sample"]
    b = by_label[best_b]["per_sample"]
    c = by_label[best_c]["per_sample"]
    a31 = by_label["(a'x31)"]["per_sample"]
    paper = by_label["(a)"]["per_sample"] / b if "(a)" in by_label else float("nan")
    print(
        f"ratios: one_layer={a_prime / b:.3g} all_layers={a31 / c:.3g} paper_code={paper:.3g} "
        f"max_rel_diff={max_rel_diff:.3g} slices_over_parts={ab['slices_s'] / ab['parts_s']:.3g}"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=TRAINING_SAMPLES, help="training prompts timed (1..5)")
    parser.add_argument("--layer", type=int, default=8, help="block index L of the one-layer rows")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every process")
    parser.add_argument(
        "--skip-paper-code", action="store_true", help="skip (a), the paper code's legacy-vmap Jacobian"
    )
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.samples <= TRAINING_SAMPLES:
        parser.error(f"--samples must be 1..{TRAINING_SAMPLES}")
    if not 0 <= args.layer < 29:
        parser.error("--layer must be a block index 0..28 (J of the last block, 29, is identically 0)")
    torch.set_num_threads(args.threads)
    if args.method:
        run_child(args)
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with reported("jacobian_speed.py", argv, Path(__file__).with_name(f"last_run_{device}.txt")):
        report(args)


@contextlib.contextmanager
def reported(script: str, argv, path: Path):
    """What the block prints, shown as it runs and kept whole in ``path`` (the one place a benchmark's
    numbers are kept), headed by the command and the date."""
    from lre_pl.files import write_text_atomically

    captured = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, captured)):
        print(f"command: {' '.join([f'benchmarks/{script}', *(argv if argv is not None else sys.argv[1:])])}")
        print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        yield
    write_text_atomically(path, captured.getvalue())
    print(f"[{Path(script).stem}] report written to {path}", file=sys.stderr)


class _Tee(io.TextIOBase):
    """A text stream that writes to several streams."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


if __name__ == "__main__":
    main()
