"""``kbench bench OP --backend NAME [--vs OTHER ...]``: one op over a shape sweep, the kernel
author's inner loop, with the same rows, record and tables as ``kbench run``."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from kbench.console import make_console
from kbench.errors import EXIT_FAILED, KbenchError, unknown_name
from kbench.preflight import check_op_cases_fit, check_out_dir


def parse_dim_args(args: list[str]) -> dict[str, list[str]]:
    """``['--tokens', '1,16', '--hidden=4096']`` -> ``{'tokens': ['1', '16'], 'hidden': ['4096']}``."""
    dims: dict[str, list[str]] = {}
    position = 0
    while position < len(args):
        arg = args[position]
        if not arg.startswith("--") or arg == "--":
            raise KbenchError(f"Unexpected argument {arg!r}.",
                              "Shape dimensions are given as --DIM v1,v2,... (e.g. --tokens 1,16,256 --hidden 4096).")
        if "=" in arg:
            name, text = arg[2:].split("=", 1)
        else:
            if position + 1 >= len(args) or args[position + 1].startswith("--"):
                raise KbenchError(f"{arg} needs values.", f"Write e.g. {arg} 1,16,256.")
            name, text = arg[2:], args[position + 1]
            position += 1
        position += 1
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not values:
            raise KbenchError(f"--{name} has no values.", f"Write e.g. --{name} 1,16,256.")
        dims[name.replace("-", "_")] = values
    return dims


def parse_value(text: str, default: Any, dim: str) -> Any:
    if isinstance(default, (list, tuple)):
        element = default[0] if default else 0
        return type(default)(parse_value(part, element, dim) for part in text.split("/") if part)
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        kind = {bool: "true or false", int: "an integer", float: "a number"}[type(default)]
        raise KbenchError(f"--{dim.replace('_', '-')} value {text!r} is not {kind}.",
                          f"The op's first test case has {dim}={default!r}.") from None
    return text


def sweep_cases(op, dim_values: dict[str, list[str]]) -> list:
    """The cross product of the given dimension values over the op's first test case."""
    from kbench.ops.base import Case

    base = op.test_cases[0] if op.test_cases else Case(op.name)
    known = base.keys()
    for dim in dim_values:
        if dim not in known:
            raise unknown_name(f"{op.name} dimension", dim, known)
    axes = [[(dim, parse_value(text, base[dim], dim)) for text in texts] for dim, texts in dim_values.items()]
    for dim, value in itertools.chain.from_iterable(axes):
        check_dim_value(op, dim, value, base[dim])
    return [base.replace(**dict(combo)) for combo in itertools.product(*axes)]


def check_dim_value(op, dim: str, value: Any, default: Any) -> None:
    """A size is at least 1 (0 only where the op's own test cases use 0, e.g. top_k off); a
    number is finite."""
    flag = f"--{dim.replace('_', '-')}"
    for element in value if isinstance(value, (list, tuple)) else (value,):
        if isinstance(element, bool):
            continue
        if isinstance(element, int):
            lowest = 0 if any(case.get(dim) == 0 for case in op.test_cases) else 1
            if element < lowest:
                why = "a dimension cannot be negative" if element < 0 else f"{op.name}'s {dim} must be at least 1"
                raise KbenchError(f"{flag} {element}: {why}.", f"The op's first test case has {dim}={default!r}.")
        elif isinstance(element, float) and not math.isfinite(element):
            raise KbenchError(f"{flag} {element}: {op.name}'s {dim} must be a finite number.",
                              f"The op's first test case has {dim}={default!r}.")


def get_backend(registry, op_name: str, backend: str):
    """The implementation, or KbenchError with the closest backend and any plugin load errors."""
    from kbench.testing.conformance import with_plugin_errors

    try:
        return registry.get(op_name, backend)
    except KbenchError as error:
        raise with_plugin_errors(error, registry) from None


def bench_record(op_name: str, backends: list[str], rows: list, registry, device: str, dtype,
                 bench, spec=None, ceilings: dict | None = None, machine: dict | None = None) -> dict:
    """A run record of one op's sweep; ``backends`` names the backend under test and its ``vs``."""
    import dataclasses

    from kbench.ops.base import dtype_name
    from kbench.results.record import build_record, implementation_provenance

    name = spec.name if spec is not None else f"bench-{op_name}"
    family = registry.op(op_name).family
    return build_record(
        name=name,
        command=["kbench", *sys.argv[1:]],
        spec=spec.to_dict() if spec is not None else {
            "name": name, "dtype": dtype_name(dtype), "device": str(device), "bench": dataclasses.asdict(bench),
        },
        backends={family: {
            "backend": backends[0], "ops": {op_name: implementation_provenance(registry, op_name, backends[0])},
            "vs": {other: {"ops": {op_name: implementation_provenance(registry, op_name, other)}}
                   for other in backends[1:]},
        }},
        registry=registry,
        device=device,
        ceilings=ceilings,
        rows=rows,
        machine=machine,
    )


class FiniteFloat(click.FloatRange):
    """A float range that also refuses nan and inf (which pass every comparison unnoticed)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number; give milliseconds, e.g. 100.", param, ctx)
        return number


@click.command("bench", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("op_name", metavar="OP")
@click.option("--backend", "backend", required=True, help="The backend under test.")
@click.option("--vs", "others", multiple=True, help="Backends to compare with (repeatable), e.g. --vs reference.")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False), default=None,
              help="Take the op's cases from this model spec instead of --DIM values.")
@click.option("--dtype", default=None, help="bfloat16, float16 or float32 (default: the spec's, else bf16 on CUDA, fp32 on CPU).")
@click.option("--device", default=None, help="cuda or cpu (default: the spec's, else cuda if present).")
@click.option("--warmup-ms", type=FiniteFloat(min=0), default=None, help="Warm-up time per measurement (default 25).")
@click.option("--rep-ms", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Repetition time per measurement (default 100).")
@click.option("--rounds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Paired mode: time the backends in turn, this many rounds of --rep-ms / N each, so the "
                   "machine's drift falls on all of them alike.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="results",
              help="Where the run record is written (default: results/).")
@click.option("--no-record", is_flag=True, help="Print the tables, write no record.")
@click.option("--tp", "tp", type=int, default=None,
              help="Ranks of a collective (comm family), e.g. kbench bench all_reduce --tp 4 --backend nccl.")
@click.pass_context
def bench_command(ctx, op_name, backend, others, spec_path, dtype, device, warmup_ms, rep_ms, rounds, out_dir,
                  no_record, tp):
    """Check and time one OP for --backend (and each --vs) over a shape sweep.

    --DIM v1,v2,... sweeps any dimension of the op's test cases (an unknown --DIM lists them),
    e.g. --tokens 1,16,256,4096 --hidden 4096; the others keep the op's first test case.
    """
    import torch

    from kbench.bench.sweep import op_results
    from kbench.ops.base import parse_dtype
    from kbench.plan import model_cases
    from kbench.plugins import get_registry
    from kbench.results.report import print_run
    from kbench.spec import BenchConfig, Overrides, load_spec

    console = make_console()
    registry = get_registry()
    op = registry.op(op_name)
    backends = list(dict.fromkeys([backend, *others]))
    for name in backends:
        get_backend(registry, op.name, name)
    dim_values = parse_dim_args(ctx.args)
    if not no_record:
        check_out_dir(out_dir)

    spec = None
    if spec_path:
        if dim_values:
            raise KbenchError("Give either --spec or --DIM values, not both.",
                              f"Dropped: {', '.join('--' + d for d in dim_values)}.")
        spec = load_spec(spec_path, Overrides(dtype=dtype, device=device))
        cases = model_cases(spec, op)
        if not cases:
            raise KbenchError(f"The spec {spec_path} runs no {op.name} cases.", "Pass the op's dimensions as --DIM values.")
        dtype, device = spec.dtype, spec.device
        bench = spec.bench
    else:
        cases = sweep_cases(op, dim_values)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = parse_dtype(dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
        bench = BenchConfig()
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise KbenchError("--device cuda, but torch sees no CUDA device here.", "Use --device cpu.")
    bench = BenchConfig(**{**bench.__dict__, **{k: v for k, v in (("warmup_ms", warmup_ms), ("rep_ms", rep_ms))
                                                 if v is not None}})

    if op.family == "comm" or tp is not None:
        return _bench_across_ranks(op, tp, backends, dim_values, spec, dtype, device, bench, out_dir, no_record, console)
    check_op_cases_fit(op, cases, dtype, device)
    if all(get_backend(registry, op.name, backend).reason(case, dtype, device) for case in cases):
        registry.resolve(op.name, backend, cases[0], dtype, device)  # raises: the reason, and who can
    from kbench.env import machine_record, machine_state, measure_ceilings

    start_state = machine_state(device)
    ceilings = measure_ceilings(device)  # every row is held against them (kbench.bench.limits)
    with console.status(f"{op.name}: checking and timing") as status:
        rows = op_results(registry, op.name, backends, cases, dtype, device, bench,
                          progress=lambda text: status.update(escape(text)), ceilings=ceilings, rounds=rounds)
    record = bench_record(op.name, backends, rows, registry, device, dtype, bench, spec, ceilings,
                          machine_record(start_state, machine_state(device)))
    print_run(record, console)
    for row in rows:
        if row.status == "SKIP":
            console.print(f"[yellow]SKIP[/] {escape(f'{row.op} [{row.backend}] {row.case}: {row.note}')}", highlight=False)
    if not no_record:
        from kbench.results.record import write_record_or_keep

        path = write_record_or_keep(record, out_dir)
        console.print(f"record: {path}", highlight=False)
        if others:
            _print_speedups(path, record["run_id"], backends, console)
    if record["status"] == "FAIL":
        sys.exit(EXIT_FAILED)


def _print_speedups(path: Path, run_id: str, backends: list[str], console) -> None:
    """--backend against each --vs that was timed: the comparison table of ``kbench compare``."""
    from kbench.results import compare_backends, load
    from kbench.results.report import print_comparison

    frame = load([path])
    for other in backends[1:]:
        pair = frame[frame["backend"].isin([backends[0], other])]
        if pair[pair["backend"] == other]["latency_us"].isna().all():
            notes = sorted(set(pair[pair["backend"] == other]["note"].dropna()))
            console.print(f"no speedups against {other}: it was not timed ({'; '.join(notes) or 'no rows'})",
                          highlight=False)
            continue
        print_comparison(compare_backends(pair, run_id, baseline=other), console)


def _bench_across_ranks(op, tp, backends, dim_values, spec, dtype, device, bench, out_dir, no_record, console):
    """A collective over ``tp`` ranks that this command starts (``kbench.commands.distributed``)."""
    import tempfile

    from kbench.commands.distributed import bench_all_reduce
    from kbench.results.load import read_json
    from kbench.results.report import print_run

    if op.family != "comm":
        raise KbenchError(f"--tp runs collectives; {op.name} is a {op.family} op that runs on one device.",
                          "Drop --tp, or bench all_reduce.")
    if tp is None or tp < 2:
        raise KbenchError(f"{op.name} is a collective: it needs --tp N with N >= 2 ranks.",
                          f"Write e.g. kbench bench {op.name} --tp 2 --backend reference.")
    if spec is not None:
        raise KbenchError("--spec with --tp: give the all_reduce shapes as --tokens and --hidden.",
                          "Write e.g. --tokens 1,64,4096 --hidden 8192.")
    with tempfile.TemporaryDirectory() as scratch:
        path = bench_all_reduce(tp, backends, dim_values, dtype, str(device), bench, scratch if no_record else out_dir)
        record = read_json(path)
    print_run(record, console)
    if not no_record:
        console.print(f"record: {path}", highlight=False)
    if record["status"] == "FAIL":
        sys.exit(EXIT_FAILED)
