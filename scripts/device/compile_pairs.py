"""The memory-bound ops against torch.compile, case by case, over several rounds: GPU machine.

    python3 scripts/device/compile_pairs.py [--rounds 3] [--processes 1] [--compile-configs N]
        [--min-tokens 0] [--max-tokens 1024] [--spec NAME ...] [--output PAIRS.md]

The issues ask triton and cuda to be "never slower than torch.compile of the reference at any
shape of the shipped specs". At a few tokens the kernels take 1.5-3 µs and one sweep's
difference is about the spread between device calls, so this times every case of the specs
(up to ``--max-tokens`` tokens) round after round in one process, compile and the backends
back to back within a round (``op_rows``: outputs checked, CUDA-graph replay as ``kbench bench``),
and prints per case compile µs and, per backend, its µs and compile / backend as the median and
range over the rounds. A case is slower only where its best round is below 1. ``--output`` also
writes the tables as markdown, with the command and the device.

``--processes N`` runs all of that in N fresh processes and reports across them: compile's own
time at 2-3 µs moved by up to 25% from one process to the next (rope at 32 tokens: 2.2-2.3 µs
in some, 2.8-2.9 in others) while the rounds of one process agreed, so one process's verdict
at those shapes is that process's. Per case it gives the median and range of the processes'
median ratios, and in how many processes the case was slower.

``--inplace-compile`` adds a backend ``compile-inplace``: torch.compile of the reference with
its results copied into the inputs the op may overwrite (rope's q and k, add_rmsnorm's
residual), as the triton and cuda kernels write them. The ``compile`` backend returns new
tensors, which the graph keeps one a set of inputs (``kbench.bench.timing.capture_calls``), so
they are written as cold as an in-place backend's copies; compile-inplace shows what writing in
place itself costs compile.

``--compile-configs N`` runs N fresh processes, the k-th with each of Inductor's autotuned kernels
forced to its k-th candidate config (counted modulo the kernel's candidates) and Inductor's caches
off. Inductor picks a 1-D pointwise kernel's config at run time, from two candidates
(``triton_heuristics.pointwise``: a block of up to 1024 elements at 256 a warp, or half that at
64 a warp), by timing each once in the process, and caches the winner on disk for the processes
after; so which one a process runs depends on that first timing. Here every candidate is timed,
a case is slower in k of N where it is slower than k of compile's configs, and the markdown lists
the config each process ran.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from kbench.bench.sweep import op_rows
from kbench.env import environment
from kbench.plugins import get_registry
from kbench.spec import BenchConfig, load_spec

OPS = ("rmsnorm", "add_rmsnorm", "rope", "swiglu")
SPECS = ("llama2-7b", "llama2-13b", "llama3-8b")
# The reference's outputs that an in-place backend writes into its inputs: output index -> input.
INPLACE_OUTPUTS = {"rope": {0: "q", 1: "k"}, "add_rmsnorm": {1: "residual"}}


def spec_cases(registry, op_name: str, spec_names, keep=lambda tokens: True) -> dict:
    """{label: case} of ``op_name`` at the shapes of model_specs/NAME.yaml for each name, where
    ``keep(tokens)`` (0 tokens for a case without any); a shape two specs share appears once.
    The device scripts that pick spec shapes (compile_kernels.py, placement_probe.py) share it."""
    cases = {}
    for name in spec_names:
        spec = load_spec(f"model_specs/{name}.yaml")
        for case in registry.op(op_name).cases_for(spec.model, spec.workload):
            if keep(case.get("tokens", 0)):
                cases[case.label] = case
    return cases


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
    parser.add_argument("--processes", type=int, default=1,
                        help="run the whole measurement in this many fresh processes and report across them")
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--min-tokens", type=int, default=0)
    parser.add_argument("--spec", action="append", default=None, help="model_specs/NAME.yaml (default: 7b, 13b, 3-8b)")
    parser.add_argument("--backend", action="append", default=None, help="default: triton and cuda")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--inplace-compile", action="store_true",
                        help="also time torch.compile writing its results in place (compile-inplace)")
    parser.add_argument("--patch", action="append", default=[], metavar="MODULE.NAME=INT",
                        help="set a module's integer constant first (a triton launch threshold, say)")
    parser.add_argument("--output", type=Path, default=None, help="also write the tables here as markdown")
    parser.add_argument("--compile-configs", type=int, default=0, metavar="N",
                        help="N processes, the k-th with compile's autotuned kernels forced to their k-th config")
    parser.add_argument("--compile-config", type=int, default=None, help=argparse.SUPPRESS)  # a child's k
    parser.add_argument("--times-json", type=Path, default=None, help=argparse.SUPPRESS)  # a child's times
    args = parser.parse_args()
    if args.compile_configs:
        args.processes = args.compile_configs
    if args.processes > 1:
        runs, configs = [], []
        for index in range(args.processes):
            child = child_times(index, args.compile_configs > 0)
            runs.append(child["times"])
            configs.append(child["configs"])
            if args.output is not None and index + 1 < args.processes:  # a run cut off later keeps these
                args.output.write_text("\n".join(markdown_lines(args, runs, configs)) + "\n")
    else:
        times, chosen = measure_cases(args)
        runs, configs = [times], [chosen]
    if args.times_json is not None:
        args.times_json.write_text(json.dumps({"times": runs[0], "configs": configs[0]}))
        return
    report(args, runs, configs)


def child_times(index: int, force_config: bool) -> dict:
    """One fresh process's {"times", "configs"}: this script's own arguments, one process (forcing
    compile's config ``index`` where ``force_config``), results to a file."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "times.json"
        command = [sys.executable, sys.argv[0], *sys.argv[1:], "--processes", "1", "--compile-configs", "0",
                   "--times-json", str(path)]
        if force_config:
            command += ["--compile-config", str(index)]
        print(f"\n--- process {index + 1}" + (f": compile's config {index + 1}" if force_config else ""), flush=True)
        subprocess.run(command, check=True)
        return json.loads(path.read_text())


def force_compile_config(index: int, chosen: list) -> None:
    """Make every autotuned Inductor kernel of this process pick its candidate config ``index``
    (modulo its count) and append ``name: config (k of n)`` to ``chosen`` when it does.

    Inductor times each candidate with ``CachingAutotuner.bench`` and keeps the fastest; this
    bench gives the forced one 0 and the rest 1. Its caches are turned off, or a config cached
    by an earlier process would be loaded without any timing."""
    from kbench_torch.compiled import describe_config
    from torch._inductor.runtime.triton_heuristics import CachingAutotuner

    torch._inductor.config.force_disable_caches = True

    def bench(self, launcher, *args, **kwargs):
        count = len(self.launchers)
        pick = self.launchers[index % count]
        if launcher is pick:
            chosen.append(f"{self.fn.__name__}: {describe_config(launcher.config)} ({index % count + 1} of {count})")
        return 0.0 if launcher is pick else 1.0

    CachingAutotuner.bench = bench


def measure_cases(args) -> tuple[dict, dict]:
    """{op: {case label: {backend: [µs a round]}}}, compile first, each op's table printed as it
    ends; and {op: {case label: [compile's forced configs]}} (empty unless --compile-config)."""
    chosen: list[str] = []
    if args.compile_config is not None:
        force_compile_config(args.compile_config, chosen)
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
    cases = {op_name: spec_cases(registry, op_name, args.spec or SPECS, lambda t: args.min_tokens <= t <= args.max_tokens)
             for op_name in args.ops.split(",")}
    times: dict = {}
    configs: dict = {}
    for op_name, by_label in cases.items():
        timed = [b for b in backends if b in registry.backends(op_name)]  # compile-inplace: in-place ops only
        op_times = times.setdefault(op_name, {label: {b: [] for b in ["compile", *timed]} for label in by_label})
        for _ in range(args.rounds):
            for label, case in by_label.items():
                first = len(chosen)  # compile autotunes in a case's first round only
                rows = op_rows(registry, op_name, ["compile", *timed], [case], torch.bfloat16, "cuda", bench)
                if len(chosen) > first:
                    configs.setdefault(op_name, {})[label] = chosen[first:]
                for row in rows:
                    if row["status"] != "PASS":
                        print(f"{op_name} {label} {row['backend']}: {row['status']} {row.get('note') or ''}")
                        continue
                    op_times[label][row["backend"]].append(row["graph_latency_us"] or row["latency_us"])
        print_table(op_name, [op_times], args.rounds)
    return times, configs


def summary(per_process: list[dict], backend: str) -> tuple[float, float, float, float, int] | None:
    """(backend µs, ratio, low, high, slower processes) of compile / backend for one case.

    One process: the median, min and max of the per-round ratios; slower where even the best
    round is below 1. Several: the median, min and max of each process's median ratio; slower
    in each process whose best round is below 1."""
    rounds = [(t["compile"], t.get(backend) or []) for t in per_process]
    rounds = [(c, b) for c, b in rounds if c and b]
    if not rounds:
        return None
    ratios = [[c / b for c, b in zip(compiled, own, strict=False)] for compiled, own in rounds]
    slower = sum(max(r) < 1 for r in ratios)
    own_us = statistics.median(statistics.median(own) for _, own in rounds)
    if len(ratios) == 1:
        return own_us, statistics.median(ratios[0]), min(ratios[0]), max(ratios[0]), slower
    medians = [statistics.median(r) for r in ratios]
    return own_us, statistics.median(medians), min(medians), max(medians), slower


def print_table(op_name: str, per_process: list[dict], rounds: int, echo: bool = True) -> list[str]:
    """One op's table (per_process: each process's {label: {backend: [µs]}}) as markdown lines,
    printed too where ``echo``."""
    processes = len(per_process)
    backends = [b for b in next(iter(per_process[0].values())) if b != "compile"]
    over = f"{rounds} rounds" if processes == 1 else f"the medians of {processes} processes of {rounds} rounds"
    if echo:
        print(f"\n{op_name}: compile µs | backend µs (compile / backend: median [min, max] over {over})")
    lines = [f"\n## {op_name}\n", "| case | compile µs | " + " | ".join(f"{b} µs | compile / {b}" for b in backends)
             + " |", "| --- | --- |" + " --- | --- |" * len(backends)]
    for label in per_process[0]:
        cases = [process[label] for process in per_process if label in process]
        compiled = [statistics.median(case["compile"]) for case in cases if case["compile"]]
        if not compiled:
            continue
        cells, columns = [], []
        for backend in backends:
            result = summary(cases, backend)
            if result is None:
                cells.append(f"{backend} -")
                columns += ["-", "-"]
                continue
            own_us, ratio, low, high, slower = result
            text = f"{ratio:.2f} [{low:.2f}, {high:.2f}]"
            if processes == 1:
                mark = " SLOWER" if slower else ""
                column = f"**{text} slower**" if slower else text
            else:
                mark = f" slower in {slower} of {processes}" if slower else ""
                column = f"**{text}, slower in {slower} of {processes}**" if slower else text
            cells.append(f"{backend} {own_us:.2f} ({text}){mark}")
            columns += [f"{own_us:.2f}", column]
        compile_us = statistics.median(compiled)
        if echo:
            print(f"  {label}: compile {compile_us:.2f} | " + " | ".join(cells), flush=True)
        lines.append(f"| {label} | {compile_us:.2f} | " + " | ".join(columns) + " |")
    return lines


def markdown_lines(args, runs: list[dict], configs: list[dict] | None = None, echo: bool = False) -> list[str]:
    """The markdown of the tables across ``runs`` (each process's times), printed too where
    ``echo``, then the configs compile was forced to in each process (``configs``), if any."""
    markdown = [header_lines(args, len(runs))]
    for op_name in runs[0]:
        markdown += print_table(op_name, [run[op_name] for run in runs if op_name in run], args.rounds, echo=echo)
    return markdown + config_lines(configs or [])


def config_lines(configs: list[dict]) -> list[str]:
    """Markdown of which config each of compile's autotuned kernels ran, case by case and process
    by process (``configs``: each process's {op: {label: [descriptions]}})."""
    if not any(configs):
        return []
    lines = ["\n## compile's configs, process by process\n", "| op | case | process | kernels |",
             "| --- | --- | --- | --- |"]
    for op_name in dict.fromkeys(op for process in configs for op in process):
        labels = dict.fromkeys(label for process in configs for label in process.get(op_name, {}))
        for label in labels:
            for index, process in enumerate(configs):
                kernels = process.get(op_name, {}).get(label)
                if kernels:
                    lines.append(f"| {op_name} | {label} | {index + 1} | {'; '.join(kernels)} |")
    return lines


def report(args, runs: list[dict], configs: list[dict]) -> None:
    """Print the tables across ``runs`` (several processes) and write the markdown (``--output``)."""
    markdown = markdown_lines(args, runs, configs, echo=len(runs) > 1)  # one process printed its tables as it went
    if args.output is not None:
        args.output.write_text("\n".join(markdown) + "\n")
        print(f"wrote {args.output}")


def header_lines(args, processes: int) -> str:
    """The markdown's opening: what was run and where, and over how many of the processes asked for."""
    env = environment("cuda")
    return "\n".join([
        "# Memory-bound ops against torch.compile of the reference",
        "",
        f"`python3 {' '.join(sys.argv)}`",
        "",
        f"Device: {env['gpu']}, driver {env['driver']}; torch {env['torch']}, triton {env['triton']}.",
        "",
        f"Kernel µs under CUDA-graph replay, {args.rounds} rounds a process, compile and the backends back to back "
        "in each round, outputs checked. compile / backend above 1: the backend is faster. "
        + verdict_rule(args, processes),
    ])


def verdict_rule(args, processes: int) -> str:
    """How the tables' ratio and **slower** mark are formed, for one process, several, or one a
    compile config."""
    if processes == 1:
        return ("The ratio is the median and [min, max] of the rounds' ratios, and a case is **slower** only where "
                "even its best round is below 1.")
    if args.compile_configs:
        return (f"Process k ran each of compile's autotuned kernels at its k-th candidate config, {processes} "
                f"processes (of {args.processes} asked for), Inductor's caches off: the median and [min, max] of "
                "each process's median ratio; a case is **slower in k of N** where, against k of compile's configs, "
                "even the best round is below 1. Which config each process ran is listed at the end.")
    return (f"Over {processes} fresh processes (of {args.processes} asked for): the median and [min, max] of each "
            "process's median ratio; a case is **slower in k of N** processes where, in k of them, even the best "
            "round is below 1.")


if __name__ == "__main__":
    main()
