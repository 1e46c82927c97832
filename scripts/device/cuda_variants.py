"""Builds of the cuda backend with other tuning knobs, timed against each other and torch.compile.

    python3 scripts/device/cuda_variants.py [--specs llama2-7b,llama2-70b] [--variants current,plain]

Each variant is a set of ``KBENCH_...=VALUE`` macros (the ``#ifndef`` knobs of ``csrc/``) given
to the build through ``KBENCH_CUDA_DEFINES``, so it gets its own cached build. The builds run
side by side while torch.compile is timed; then one process a variant (the ``kbench_cuda`` op library loads once per
process) times ``rmsnorm``, ``add_rmsnorm``, ``rope`` and ``swiglu`` at the specs' shapes with
``op_rows``: every figure comes from an output checked against the reference, and is the
kernel's time under CUDA-graph replay, as ``kbench bench`` reports it. The ``compile`` backend
is timed on the same cases, in a process of its own too. Prints one table per op: kernel µs per case
and variant, with compile / variant in brackets; ``--json`` keeps every figure.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
from pathlib import Path

OPS = ("rmsnorm", "add_rmsnorm", "rope", "swiglu")

# Each variant changes at most one knob per op, so one build answers one question for each op.
# Rounds 1-4 (notes/cuda.md) and gpu_runs.sh's one-angle and small-knobs phases chose the
# defaults; each variant here is the default it replaced: norm blocks kept within 256 threads,
# swiglu's 128 threads of 16 bytes, rope's slices without one-angle threads.
VARIANTS: dict[str, list[str]] = {
    "current": [],
    "previous": ["KBENCH_NORM_WIDE_THREADS=256", "KBENCH_SWIGLU_VEC=8", "KBENCH_SWIGLU_THREADS=128",
                 "KBENCH_ROPE_TINY_TOKENS=0"],
}


def variant_env(name: str) -> dict[str, str]:
    return {**os.environ, "KBENCH_CUDA_DEFINES": " ".join(VARIANTS[name])}


def build(name: str) -> tuple[str, str | None]:
    """Build one variant in its own process; (name, why it failed or None)."""
    code = "import kbench_cuda.build as b; r = b.load(); print(r or 'ok')"
    result = subprocess.run([sys.executable, "-c", code], env=variant_env(name), capture_output=True, text=True)
    text = (result.stdout.strip().splitlines() or [result.stderr[-500:]])[-1]
    return name, None if text == "ok" else text


def cases_of(spec_names: list[str]):
    """{op: [Case]} over the specs' shapes, each case once."""
    from kbench.plugins import get_registry
    from kbench.spec import load_spec, op_cases

    registry = get_registry()
    cases: dict[str, list] = {op: [] for op in OPS}
    for name in spec_names:
        spec = load_spec(Path("model_specs") / f"{name}.yaml")
        for op, op_list in op_cases(spec, registry).items():
            if op in cases:
                cases[op] += [case for case in op_list if case not in cases[op]]
    return registry, cases


def time_backend(backend: str, spec_names: list[str], rep_ms: float) -> dict:
    """{op: {case label: kernel µs}} for one backend; a failed check is reported and left out."""
    import torch

    from kbench.bench.sweep import op_rows
    from kbench.spec import BenchConfig

    registry, cases = cases_of(spec_names)
    bench = BenchConfig(warmup_ms=5.0, rep_ms=rep_ms, flush_l2=True)
    figures: dict[str, dict[str, float]] = {}
    for op in OPS:
        figures[op] = {}
        for row in op_rows(registry, op, [backend], cases[op], torch.bfloat16, "cuda", bench):
            if row["status"] != "PASS":
                print(f"  {backend} {op} {row['case']}: {row['status']} {row.get('note') or ''}", file=sys.stderr)
                continue
            figures[op][row["case"]] = row["graph_latency_us"] or row["latency_us"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default="llama2-7b,llama2-70b", help="comma-separated names in model_specs/")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--rep-ms", type=float, default=10.0)
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # time this backend, print JSON
    args = parser.parse_args()
    specs = args.specs.split(",")
    if args.child:
        print(json.dumps(time_backend(args.child, specs, args.rep_ms)))
        return
    names = args.variants.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")

    def timed(backend: str, name: str) -> dict | None:
        """One backend's figures, timed in a process of its own (each holds GPU memory till it ends)."""
        child = subprocess.run([sys.executable, __file__, "--child", backend, "--specs", args.specs,
                                "--rep-ms", str(args.rep_ms)], env=variant_env(name), capture_output=True, text=True)
        sys.stderr.write(child.stderr[-3000:])
        if child.returncode:
            print(f"{backend} ({name}): exit {child.returncode}")
            return None
        return json.loads(child.stdout.strip().splitlines()[-1])

    # the builds take the CPU while compile is timed: kernel times under graph replay are GPU time
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        builds = pool.map(build, names)
        results: dict[str, dict] = {"compile": timed("compile", "current") or {op: {} for op in OPS}}
        failed = {name: reason for name, reason in builds if reason}
    for name, reason in failed.items():
        print(f"variant {name}: build failed: {reason}")
    names = [name for name in names if name not in failed]
    for name in names:
        figures = timed("cuda", name)
        if figures is not None:
            results[name] = figures
    if args.json:
        args.json.write_text(json.dumps({"variants": {n: VARIANTS[n] for n in names}, "figures": results}, indent=1))

    shown = [name for name in names if name in results]
    for op in OPS:
        print(f"\n{op}: kernel µs, compile / variant in brackets")
        print("| case | compile | " + " | ".join(shown) + " |")
        print("| --- |" + " --- |" * (len(shown) + 1))
        for case, compiled in results["compile"][op].items():
            cells = []
            for name in shown:
                value = results[name][op].get(case)
                cells.append("FAIL" if value is None else f"{value:.2f} ({compiled / value:.2f})")
            print(f"| {case} | {compiled:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
