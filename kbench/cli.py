"""The ``kbench`` command line: ``run``, ``compare``, ``list``, ``bench``, ``env``, ``new-plugin``.

Every user mistake is a ``KbenchError``: printed as one paragraph, exit status 2. ``run`` and
``compare`` exit with status 1 when something FAILed or regressed.
"""

from __future__ import annotations

import json
import sys

import click
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import kbench
from kbench.errors import KbenchError

console = Console()
err_console = Console(stderr=True)


class KbenchGroup(click.Group):
    """Turns KbenchError into a clean message and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KbenchError as error:
            err_console.print(f"[bold red]error:[/] {error.message}" + (f"\n  {error.fix}" if error.fix else ""),
                              highlight=False, soft_wrap=True)
            sys.exit(2)


@click.group(cls=KbenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(kbench.__version__, prog_name="kbench")
def cli():
    """kbench: is my LLaMA kernel correct, how fast is it, and what does it change end to end?"""


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--op", "op_filter", default=None, help="Only this op.")
def list_command(as_json: bool, op_filter: str | None):
    """Every op, its backends, and why a backend cannot run here.

    "Here" is this machine's default device (CUDA if visible, else the CPU): a backend is
    available when it can run the op's first test case there in at least one dtype.
    """
    from kbench.plugins import get_registry

    registry = get_registry()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ops = [registry.op(op_filter)] if op_filter else list(registry.ops.values())
    rows = []
    for op in ops:
        for backend in registry.backends(op.name):
            impl = registry.implementations[(op.name, backend)]
            reason = _why_not_here(impl, op, device)
            rows.append({
                "family": op.family, "op": op.name, "backend": backend, "plugin": impl.plugin,
                "available": reason is None, "reason": reason or "", "device": device,
                "cuda_graphs": impl.cuda_graphs, "version": impl.version,
            })
    if as_json:
        click.echo(json.dumps({"implementations": rows, "plugin_errors": registry.plugin_errors,
                               "plugins": registry.plugins}, indent=2))
        return
    table = Table(title="kbench ops and backends")
    for column in ("family", "op", "backend", "plugin", "status"):
        table.add_column(column)
    for row in rows:
        status = "[green]available[/]" if row["available"] else f"[yellow]unavailable:[/] {escape(row['reason'])}"
        table.add_row(row["family"], row["op"], row["backend"], row["plugin"], status)
    console.print(table)
    for name, error in registry.plugin_errors.items():
        console.print(f"[red]plugin {name!r} failed to load:[/] {error}", highlight=False)


def _why_not_here(impl, op, device: str) -> str | None:
    """None if ``impl`` runs the op's first test case on ``device`` in some dtype, else why not."""
    reason = impl.unavailable_reason()
    if reason or not op.test_cases:
        return reason
    reasons = [impl.reason(op.test_cases[0], dtype, device) for dtype in op.dtypes]
    return None if None in reasons else reasons[0]


# -- kbench run -----------------------------------------------------------------------------

@cli.command("run")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--attention", default=None, metavar="NAME", help="Backend for the attention family.")
@click.option("--norm", default=None, metavar="NAME", help="Backend for the norm family.")
@click.option("--rope", default=None, metavar="NAME", help="Backend for the rope family.")
@click.option("--ffn", default=None, metavar="NAME", help="Backend for the ffn family.")
@click.option("--sampling", default=None, metavar="NAME", help="Backend for the sampling family.")
@click.option("--backend", "backend", multiple=True, metavar="FAMILY=NAME", help="Backend for a family (repeatable).")
@click.option("--dtype", default=None, help="float32, bfloat16 (bf16), float16 (fp16).")
@click.option("--device", default=None, help="cpu or cuda.")
@click.option("--batch", default=None, metavar="1,8,32", help="Batch sizes of the workload.")
@click.option("--prompt-len", "prompt_len", default=None, metavar="128,1024", help="Prompt lengths of the workload.")
@click.option("--decode-steps", "decode_steps", type=click.IntRange(min=1), default=None, help="Decode steps timed.")
@click.option("--layers", type=click.IntRange(min=1), default=None, help="Build the model with this many layers.")
@click.option("--cuda-graphs/--no-cuda-graphs", "cuda_graphs", default=None,
              help="Decode under a captured CUDA graph. (Op rows report graph-replay kernel time on CUDA either way.)")
@click.option("--out", "out_dir", default="results", type=click.Path(file_okay=False), show_default=True,
              help="Folder for the run record.")
@click.option("--baseline", "baselines", multiple=True, type=click.Choice(["hf", "reference"]),
              help="Also time transformers' LLaMA (hf) or the all-reference pipeline end to end.")
@click.option("--skip-ops", is_flag=True, help="Skip the op-level checks and timings.")
@click.option("--skip-e2e", is_flag=True, help="Skip the end-to-end pipeline check and timings.")
def run_command(spec, out_dir, baselines, skip_ops, skip_e2e, **flags):
    """Check and time the SPEC's backends op by op and end to end; write a run record.

    Exit status: 0 all PASS, 1 something FAILed, 2 a mistake in the spec or the flags.
    """
    from pathlib import Path

    from kbench.runner import RunOptions, run
    from kbench.spec import Overrides

    if skip_ops and skip_e2e:
        raise KbenchError("--skip-ops and --skip-e2e together leave nothing to run.", "Drop one of them.")
    overrides = Overrides.from_cli(**flags)
    options = RunOptions(out_dir=Path(out_dir), baselines=tuple(dict.fromkeys(baselines)), skip_ops=skip_ops,
                         skip_e2e=skip_e2e, command=tuple(["kbench", *sys.argv[1:]]))
    result = run(spec, overrides, options, console, progress_console=err_console)
    sys.exit(1 if result.failed else 0)


# -- kbench compare -------------------------------------------------------------------------

@cli.command("compare")
@click.argument("runs", nargs=-1)
@click.option("--baseline", default=None, metavar="BACKEND",
              help="Compare the backends inside one run against this one (default run: the latest).")
@click.option("--threshold", type=click.FloatRange(min=0), default=0.05, show_default=True,
              help="A row slower than base by more than this fraction is a regression (exit 1).")
@click.option("--metric", type=click.Choice(["latency_us", "graph_latency_us", "min_us", "kernel_us"]),
              default="latency_us", show_default=True,
              help="Latency compared; kernel_us: CUDA-graph replay where measured, else as called.")
@click.option("--format", "output_format", type=click.Choice(["markdown", "csv", "json", "html"]), default=None,
              help="Write the comparison in this format (to --output, or stdout).")
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="File for --format.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write speedup bars to this PNG.")
@click.option("--results-dir", default="results", type=click.Path(file_okay=False), show_default=True,
              help="Where run ids and the latest runs are looked up.")
def compare_command(runs, baseline, threshold, metric, output_format, output, plot, results_dir):
    """Speedups of RUNS (paths or run ids; default: the two latest in results/).

    Two runs: the second against the first, row by row. With --baseline: every backend of
    one run against that backend. Exit status 1 on a regression past --threshold, a FAIL
    row, or nothing to join.
    """
    from pathlib import Path

    from kbench.results import compare_backends, compare_runs, load, record_paths
    from kbench.results.plots import plot_speedups
    from kbench.results.report import print_comparison, render

    wanted = 1 if baseline else 2
    if not runs:
        runs = [str(p) for p in record_paths(results_dir)[-wanted:]]
        if len(runs) < wanted:
            raise KbenchError(f"{results_dir} holds {len(runs)} run record(s); comparing needs {wanted}.",
                              "Run `kbench run SPEC` first, or pass record paths.")
    frame = load(list(runs), results_dir=results_dir)
    run_ids = list(dict.fromkeys(frame["run_id"]))
    if baseline:
        if len(run_ids) != 1:
            raise KbenchError(f"--baseline compares backends inside one run; got {len(run_ids)} runs.",
                              "Pass one run (or none for the latest).")
        comparison = compare_backends(frame, run_ids[0], baseline, metric=metric, threshold=threshold)
    else:
        if len(run_ids) != 2:
            raise KbenchError(f"Comparing runs needs exactly two; got {len(run_ids)}.",
                              "Pass two records or run ids (base first), or use --baseline BACKEND for one run.")
        comparison = compare_runs(frame, run_ids[0], run_ids[1], metric=metric, threshold=threshold)
    if output_format:
        text = render(comparison, output_format)
        if output:
            Path(output).write_text(text)
            err_console.print(f"wrote {output}", highlight=False)
        else:
            click.echo(text, nl=False)
    else:
        if output:
            raise KbenchError("--output needs --format.", "Add --format markdown|csv|json|html.")
        print_comparison(comparison, console)
    if plot:
        err_console.print(f"wrote {plot_speedups(comparison, plot)}", highlight=False)
    sys.exit(0 if comparison.ok else 1)


# -- kbench env -----------------------------------------------------------------------------

@cli.command("env")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--device", default=None, help="Device whose ceilings to measure (default: cuda if present).")
@click.option("--no-ceilings", is_flag=True, help="Skip measuring copy bandwidth and matmul throughput.")
def env_command(as_json: bool, device: str | None, no_ceilings: bool):
    """The environment a run record stores, and the device's measured ceilings on CUDA."""
    import torch

    from kbench.env import environment, measure_ceilings

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise KbenchError(f"--device {device}, but no CUDA device is available here.", "Use --device cpu.")
    info = {"env": environment(device)}
    if not no_ceilings:
        info["ceilings"] = measure_ceilings(device)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    table = Table(title="kbench environment", show_header=False)
    table.add_column("key")
    table.add_column("value")
    for key, value in info["env"].items():
        table.add_row(key, "-" if value is None else str(value))
    for key, value in info.get("ceilings", {}).items():
        shown = f"{value:.1f}" if isinstance(value, float) else ("n/a" if value is None else str(value))
        table.add_row(key, shown)
    console.print(table)


from kbench.bench_command import bench_command  # noqa: E402
from kbench.scaffold import new_plugin_command  # noqa: E402

cli.add_command(bench_command)
cli.add_command(new_plugin_command)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="kbench")


if __name__ == "__main__":
    main()
