"""``kbench report RUN [RUN] --html FILE``: a run, or two compared, as one self-contained page."""

from __future__ import annotations

from pathlib import Path

import click

from kbench.console import make_console
from kbench.errors import KbenchError
from kbench.preflight import check_out_file, write_text_file


@click.command("report")
@click.argument("runs", nargs=-1, required=True)
@click.option("--html", "html_path", required=True, type=click.Path(dir_okay=False),
              help="Write the HTML page here.")
@click.option("--threshold", type=click.FloatRange(min=0), default=0.05, show_default=True,
              help="With two runs: the regression and Amdahl-gap threshold.")
@click.option("--results-dir", default="results", type=click.Path(file_okay=False), show_default=True,
              help="Where run ids are looked up.")
def report_command(runs, html_path, threshold, results_dir):
    """Write RUNS (one run, or base then new; paths or run ids) as an HTML page with tables,
    the step breakdown as stacked bars, op speedups and the machine's ceilings."""
    import pandas as pd

    from kbench.results import compare_runs
    from kbench.results.html import report_html
    from kbench.results.load import frame_from_record, is_run_record, read_json, resolve_paths

    if len(runs) > 2:
        raise KbenchError(f"kbench report takes one run or two (base, new); got {len(runs)}.",
                          "Pass one record, or the base and the new one.")
    check_out_file(html_path, "--html")
    paths = resolve_paths(list(runs), results_dir=results_dir)
    records = [read_json(Path(p)) for p in paths]
    frames = []
    for path, record in zip(paths, records, strict=True):
        if not is_run_record(record):
            raise KbenchError(f"{path} is not a kbench run record.", "Pass a record kbench run, bench or tune wrote.")
        frames.append(frame_from_record(record, path))  # checks the record and its schema version
    comparison = None
    if len(records) == 2:
        comparison = compare_runs(pd.concat(frames, ignore_index=True), records[0]["run_id"], records[1]["run_id"],
                                  threshold=threshold)
    write_text_file(Path(html_path), report_html(records, comparison))
    make_console(stderr=True).print(f"wrote {html_path}", highlight=False)
