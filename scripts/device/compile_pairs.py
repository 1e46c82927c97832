"""The memory-bound ops against torch.compile, case by case, over several rounds: GPU machine.

    python3 scripts/device/compile_pairs.py [--rounds 3] [--max-tokens 1024] [--spec NAME ...] [--output PAIRS.md]

The issues ask triton and cuda to be "never slower than torch.compile of the reference at any
shape of the shipped specs". At a few tokens the kernels take 1.5-3 µs and one sweep's
difference is about the spread between device calls, so this times every case of the specs
(up to ``--max-tokens`` tokens) round after round in one process, compile and the backends
back to back within a round (``op_rows``: outputs checked, CUDA-graph replay as ``kbench bench``),
and prints per case compile µs and, per backend, its µs and compile / backend as the median and
range over the rounds. A case is slower only where its best round is below 1. ``--output`` also
writes the tables as markdown, with the command, the device and the code they came from.

``--inplace-compile`` adds a backend ``compile-inplace``: torch.compile of the reference with
its results copied into the inputs the op may overwrite (rope's q and k, add_rmsnorm's
residual), as the triton and cuda kernels write them. The ``compile`` backend returns new
tensors, and in a graph its output buffer is reused by every call, where an in-place backend
writes to each call's own copy.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
from pathlib import Path

import torch

from kbench.bench.sweep import op_rows
from kbench.env import environment
from kbench.plugins import get_registry
from kbench.spec import BenchConfig, load_spec

OPS = ("rmsnorm", "add_rmsnorm", "rope", "swiglu")
# The reference's outputs that an in-place backend writes into its inputs: output index -> input.
INPLACE_OUTPUTS = {"rope": {0: "q", 1: "k"}, "add_rmsnorm": {1: "residual"}}


def register_inplace_compile(registry) -> None:
    """A ``compile-inplace`` backend for the ops of INPLACE_OUTPUTS (see the module docstring)."""
    from kbench_torch.compiled import compiled

    from kbench.registry import Implementation

    for op_name, targets in INPLACE_OUTPUTS.items():
        reference = registry.op(op_name).reference

        def in_place(_reference=reference, _targets=targets, **inputs):
            outputs = list(_reference(**inputs))
            for index, name in _targets.items():
                inputs[name].copy_(outputs[index])
                outputs[index] = inputs[name]
            return tuple(outputs)

        in_place.__name__ = f"{op_name}_in_place"
        registry.add_implementation(Implementation(op=op_name, backend="compile-inplace", fn=compiled(in_place),
                                                   plugin="compile_pairs"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--spec", action="append", default=None, help="model_specs/NAME.yaml (default: 7b, 13b, 3-8b)")
    parser.add_argument("--backend", action="append", default=None, help="default: triton and cuda")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--inplace-compile", action="store_true",
                        help="also time torch.compile writing its results in place (compile-inplace)")
    parser.add_argument("--patch", action="append", default=[], metavar="MODULE.NAME=INT",
                        help="set a module's integer constant first (a triton launch threshold, say)")
    parser.add_argument("--output", type=Path, default=None, help="also write the tables here as markdown")
    args = parser.parse_args()
    for item in args.patch:
        target, value = item.split("=")
        module_name, name = target.rsplit(".", 1)
        module = importlib.import_module(module_name)
        print(f"{target}: {getattr(module, name)} -> {int(value)}")
        setattr(module, name, int(value))
    registry = get_registry()
    backends = args.backend or ["triton", "cuda"]
    if args.inplace_compile:
        register_inplace_compile(registry)
        backends.append("compile-inplace")
    bench = BenchConfig(warmup_ms=5.0, rep_ms=30.0, flush_l2=True)
    cases: dict[str, dict[str, object]] = {}
    for name in args.spec or ["llama2-7b", "llama2-13b", "llama3-8b"]:
        spec = load_spec(f"model_specs/{name}.yaml")
        for op_name in args.ops.split(","):
            for case in registry.op(op_name).cases_for(spec.model, spec.workload):
                if case.get("tokens", 0) <= args.max_tokens:
                    cases.setdefault(op_name, {})[case.label] = case
    markdown = [header_lines(args)]
    for op_name, by_label in cases.items():
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for label, case in by_label.items():
                timed = [b for b in backends if b in registry.backends(op_name)]  # compile-inplace: in-place ops only
                for row in op_rows(registry, op_name, ["compile", *timed], [case], torch.bfloat16, "cuda", bench):
                    if row["status"] != "PASS":
                        print(f"{op_name} {label} {row['backend']}: {row['status']} {row.get('note') or ''}")
                        continue
                    times.setdefault((label, row["backend"]), []).append(row["graph_latency_us"] or row["latency_us"])
        shown = [b for b in backends if b in registry.backends(op_name)]
        print(f"\n{op_name}: compile µs | backend µs (compile / backend: median [min, max] over {args.rounds} rounds)")
        markdown += [f"\n## {op_name}\n", "| case | compile µs | " + " | ".join(f"{b} µs | compile / {b}" for b in shown)
                     + " |", "| --- | --- |" + " --- | --- |" * len(shown)]
        for label in by_label:
            compiled = times.get((label, "compile"))
            if not compiled:
                continue
            cells, columns = [], []
            for backend in shown:
                own = times.get((label, backend))
                if not own:
                    cells.append(f"{backend} -")
                    columns += ["-", "-"]
                    continue
                ratios = [c / b for c, b in zip(compiled, own, strict=False)]
                mark = " SLOWER" if max(ratios) < 1 else ""
                ratio = f"{statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}]"
                cells.append(f"{backend} {statistics.median(own):.2f} ({ratio}){mark}")
                columns += [f"{statistics.median(own):.2f}", f"**{ratio} slower**" if mark else ratio]
            print(f"  {label}: compile {statistics.median(compiled):.2f} | " + " | ".join(cells), flush=True)
            markdown.append(f"| {label} | {statistics.median(compiled):.2f} | " + " | ".join(columns) + " |")
        if args.output is not None:  # after every op, so a cut-off run keeps what it measured
            args.output.write_text("\n".join(markdown) + "\n")


def header_lines(args) -> str:
    """The markdown's opening: what was run, where, on which code."""
    env = environment("cuda")
    return "\n".join([
        "# Memory-bound ops against torch.compile of the reference",
        "",
        f"`python3 {' '.join(sys.argv)}`",
        "",
        f"Device: {env['gpu']}, driver {env['driver']}; torch {env['torch']}, triton {env['triton']}.",
        "",
        f"Kernel µs under CUDA-graph replay (median of {args.rounds} rounds, each in this one process, compile and "
        "the backends back to back, outputs checked). compile / backend above 1: the backend is faster. "
        "A case is **slower** only where even its best round is below 1.",
    ])

if __name__ == "__main__":
    main()
