"""Launch shapes of the triton memory-bound kernels against torch.compile, on the GPU machine.

    python3 scripts/device/tune_small.py [--quick]

For rope, add_rmsnorm and swiglu, each candidate launch shape replaces the kernel's own config
function for one sweep of ``op_rows`` (so every figure comes from a checked output, timed as
``kbench bench`` times it: CUDA-graph replay), beside the ``compile`` backend on the same cases.
Prints one table per op: kernel µs per case and candidate, and compile / candidate.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools

import kbench_triton.ffn as ffn
import kbench_triton.norm as norm
import kbench_triton.rope as rope
import torch
import triton

from kbench.bench.sweep import op_rows
from kbench.ops.base import Case
from kbench.plugins import get_registry
from kbench.spec import BenchConfig


@contextlib.contextmanager
def patched(module, name: str, fn):
    saved = getattr(module, name)
    setattr(module, name, fn)
    try:
        yield
    finally:
        setattr(module, name, saved)


def rope_candidates():
    current = rope._config
    yield "current", current
    for heads, warps in itertools.product((1, 2, 4, 8), (1, 2, 4)):
        def config(tokens, h, kv, block_half, heads=heads, warps=warps):
            if tokens >= rope.FEW_TOKENS:
                return current(tokens, h, kv, block_half)
            return heads, heads, warps
        yield f"{heads}h/{warps}w", config


def norm_candidates():
    yield "current", norm._row_config
    for warps in (2, 4, 16):
        yield f"{warps}w", lambda hidden, itemsize, warps=warps: (triton.next_power_of_2(hidden), warps)


def swiglu_candidates():
    yield "current", ffn._swiglu_config
    for block, warps in ((1024, 4), (2048, 8), (4096, 8)):
        yield f"flat {block}/{warps}w", lambda tokens, i, block=block, warps=warps: (True, block, warps)
    yield "rows 1024/4w", lambda tokens, i: (False, 1024, 4)


def sweep(registry, op: str, cases, module, name: str, candidates, bench):
    results: dict[str, dict[str, float]] = {}
    rows = op_rows(registry, op, ["compile"], cases, torch.bfloat16, "cuda", bench)
    results["compile"] = {row["case"]: row["graph_latency_us"] or row["latency_us"] for row in rows}
    for label, fn in candidates:
        with patched(module, name, fn):
            rows = op_rows(registry, op, ["triton"], cases, torch.bfloat16, "cuda", bench)
        failed = [row["case"] for row in rows if row["status"] != "PASS"]
        if failed:
            print(f"  {op} {label}: FAIL at {failed}")
        results[label] = {row["case"]: row["graph_latency_us"] or row["latency_us"] for row in rows}
    print(f"\n{op}: kernel µs (compile / candidate)")
    labels = list(results)
    print("| case | " + " | ".join(labels) + " |")
    print("| --- |" + " --- |" * len(labels))
    for case in cases:
        compiled = results["compile"][case.label]
        cells = [f"{compiled:.2f}"] + [f"{results[label][case.label]:.2f} ({compiled / results[label][case.label]:.2f})"
                                       for label in labels[1:]]
        print(f"| {case.label} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases and shorter timings")
    args = parser.parse_args()
    registry = get_registry()
    bench = BenchConfig(warmup_ms=5.0, rep_ms=20.0 if args.quick else 50.0, flush_l2=True)
    rope_cases = [Case("rope", tokens=t, heads=h, kv_heads=kv, head_dim=128, phase="decode", seq_len=544,
                       style="half", scaling="none", theta=10000.0)
                  for t in (1, 8, 64, 128) for h, kv in ((32, 32), (32, 8), (40, 40), (64, 8))]
    sweep(registry, "rope", rope_cases, rope, "_config", rope_candidates(), bench)
    norm_cases = [Case("add_rmsnorm", tokens=t, hidden=h, eps=1e-5) for t in (32, 128, 512) for h in (4096, 8192)]
    sweep(registry, "add_rmsnorm", norm_cases, norm, "_row_config", norm_candidates(), bench)
    swiglu_cases = [Case("swiglu", tokens=t, intermediate=i)
                    for t in (1, 128, 1024, 8192, 32768) for i in (11008, 28672)]
    sweep(registry, "swiglu", swiglu_cases, ffn, "_swiglu_config", swiglu_candidates(), bench)


if __name__ == "__main__":
    main()
