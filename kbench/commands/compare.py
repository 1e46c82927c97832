"""``kbench compare``: speedups between two runs, or between backends inside one run."""

from __future__ import annotations

import sys

import click

from kbench.console import make_console
from kbench.errors import EXIT_FAILED, EXIT_OK, KbenchError
from kbench.preflight import check_out_file, write_text_file


@click.command("compare")
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

    Two runs: the second against the first. With --baseline: every backend of one run against
    that backend. Exit status 1 on a regression past --threshold, a FAIL row, or nothing to join.
    """
    from pathlib import Path

    from kbench.results import compare_backends, compare_runs, load, record_paths
    from kbench.results.plots import plot_speedups
    from kbench.results.report import print_comparison, render

    for option, path in (("--output", output), ("--plot", plot)):
        if path:
            check_out_file(path, option)
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
            write_text_file(Path(output), text)
            make_console(stderr=True).print(f"wrote {output}", highlight=False)
        else:
            click.echo(text, nl=False)
    else:
        if output:
            raise KbenchError("--output needs --format.", "Add --format markdown|csv|json|html.")
        print_comparison(comparison, make_console())
    if plot:
        make_console(stderr=True).print(f"wrote {plot_speedups(comparison, plot)}", highlight=False)
    sys.exit(EXIT_OK if comparison.ok else EXIT_FAILED)
