"""``kbench tune SPEC``: the fastest correct backend per op at the workload's shapes, written
as a spec, then run against the spec's own choice end to end.

1. resolve the spec's plan; for every op the pipeline calls, every backend that can run
   here and supports all of the op's model cases is checked against the reference and timed
   at those cases (``kbench.bench.sweep.op_results``: the cases of ``bench.max_op_cases``);
2. a backend's cost is the sum over cases of its kernel time (CUDA-graph replay where
   measured, else as called) times the op's calls per step (``calls_per_step``): prefill
   and decode cases each weigh what one step of theirs spends on the op. The cheapest
   backend that passed every check is chosen; one that failed, or cannot run, is listed with
   the reason and never chosen;
3. the tuned spec is the spec's text with ``backends:`` replaced by one entry per op, each
   with a comment giving its cost and the runner-up's;
4. the tuned and the original pipeline are checked and timed end to end, and the gain printed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from kbench.bench.end_to_end import PIPELINE, time_end_to_end
from kbench.bench.pipeline_check import check_pipeline
from kbench.bench.sweep import op_results
from kbench.commands.options import FamilyFlagsCommand, family_choices, spec_options
from kbench.commands.run import RunOptions, check_outside, progress_display
from kbench.console import make_console
from kbench.env import measure_ceilings
from kbench.errors import KbenchError
from kbench.model import build_pipeline, load_weights
from kbench.model.pipeline import calls_per_step
from kbench.plan import Plan, resolve_plan
from kbench.plugins import get_registry
from kbench.preflight import check_out_file
from kbench.registry import Registry
from kbench.results.record import build_record, write_record_or_keep
from kbench.spec import Overrides, load_spec

ORIGINAL = "spec"


@dataclass(frozen=True)
class Candidate:
    """One backend of one op: its cost per step in µs (None when it cannot be chosen) and why not."""

    op: str
    backend: str
    cost_us: float | None
    reason: str | None = None


def tune(spec_path: str | Path, overrides: Overrides | None, out_spec: Path | None, out_dir: Path,
         console: Console, progress_console: Console | None = None, registry: Registry | None = None) -> dict:
    """The whole ``kbench tune``; returns the record it wrote (with ``tuned_spec`` and ``choices``)."""
    spec = load_spec(spec_path, overrides)
    registry = registry or get_registry()
    plan = resolve_plan(spec, registry)
    out_spec = out_spec or Path(spec.path).with_name(f"{Path(spec.path).stem}-tuned.yaml")
    check_outside(plan, RunOptions(out_dir=out_dir))
    check_out_file(out_spec, "--out-spec")
    rows, candidates = [], []
    with progress_display(progress_console or console) as progress:
        progress("measuring device ceilings")
        ceilings = measure_ceilings(spec.device)
        for index, name in enumerate(plan.pipeline_ops, 1):
            for backend in registry.backends(name):
                progress(f"op {index}/{len(plan.pipeline_ops)} {name}: {backend}")
                found, op_rows = time_candidate(plan, name, backend, ceilings, progress)
                candidates.append(found)
                rows += op_rows
        choices = choose(candidates)
        tuned_text = tuned_spec_text(Path(spec.path).read_text(), choices, candidates)
        out_spec.write_text(tuned_text)
        tuned_plan = resolve_plan(load_spec(out_spec, overrides), registry)
        progress("loading weights")
        weights = load_weights(spec)
        for label, each in ((PIPELINE, tuned_plan), (ORIGINAL, plan)):
            pipeline = build_pipeline(each, weights)
            if label == PIPELINE:
                rows += check_pipeline(each, weights, pipeline, progress)
            rows += time_end_to_end(each, pipeline, label, weights, ceilings, lambda t, lb=label: progress(f"{lb}: {t}"))
            del pipeline
    record = build_record(name=f"{spec.name}-tune", command=tuple(["kbench", *sys.argv[1:]]),
                          spec=tuned_plan.spec.to_dict(), backends=tuned_plan.record(), registry=registry,
                          device=spec.device, ceilings=ceilings, rows=rows)
    record["tune"] = {"tuned_spec": str(out_spec), "choices": choices,
                      "candidates": [dataclasses.asdict(c) for c in candidates]}
    print_tune(record, candidates, choices, console)
    console.print(f"tuned spec: {out_spec}", highlight=False)
    console.print(f"record: {write_record_or_keep(record, out_dir)}", highlight=False)
    return record


def time_candidate(plan: Plan, name: str, backend: str, ceilings: dict, progress) -> tuple[Candidate, list]:
    """Check and time ``backend`` on ``name``'s model cases; its cost, or why it is out."""
    spec, registry = plan.spec, plan.registry
    cases = list(plan.ops[name].cases)
    implementation = registry.get(name, backend)
    reason = next((r for r in (implementation.reason(case, spec.dtype, spec.device) for case in
                               plan.registry.ops[name].cases_for(spec.model, spec.workload)) if r), None)
    if reason:
        return Candidate(name, backend, None, reason), []
    rows = op_results(registry, name, [backend], cases, spec.dtype, spec.device, spec.bench,
                      lambda text: progress(f"{name}: {text}"), ceilings=ceilings)
    failed = [r for r in rows if r.status != "PASS"]
    if failed:
        return Candidate(name, backend, None, f"{failed[0].status} at {failed[0].case}: {failed[0].note}"), rows
    cost = sum(calls_per_step(spec.model, name, case.get("proj")) * (row.graph_latency_us or row.latency_us)
               for case, row in zip(cases, rows, strict=True))
    return Candidate(name, backend, cost), rows


def choose(candidates: list[Candidate]) -> dict[str, str]:
    """op -> the backend of least cost among those that passed."""
    best: dict[str, Candidate] = {}
    for candidate in candidates:
        if candidate.cost_us is None:
            continue
        if candidate.op not in best or candidate.cost_us < best[candidate.op].cost_us:
            best[candidate.op] = candidate
    missing = sorted({c.op for c in candidates} - set(best))
    if missing:
        raise KbenchError(f"No backend of {', '.join(missing)} passed its checks here, the reference included.",
                          "Run `kbench run` on the spec to see the failure.")
    return {op: candidate.backend for op, candidate in best.items()}


def tuned_spec_text(text: str, choices: dict[str, str], candidates: list[Candidate]) -> str:
    """The spec's text with its top-level ``backends:`` replaced by one commented entry per op."""
    lines = ["backends:"]
    for op, backend in choices.items():
        ranked = sorted((c for c in candidates if c.op == op and c.cost_us is not None), key=lambda c: c.cost_us)
        chosen = ranked[0]
        runner = f"runner-up {ranked[1].backend} {ranked[1].cost_us:.4g} µs" if len(ranked) > 1 else "no runner-up"
        failed = [f"{c.backend} ({c.reason})" for c in candidates
                  if c.op == op and c.cost_us is None and c.reason and c.reason.startswith("FAIL")]
        lines.append(f"  # {op}: {backend} {chosen.cost_us:.4g} µs/step, {runner}"
                     + (f"; failed: {'; '.join(failed)}" if failed else ""))
        lines.append(f"  {op}: {backend}")
    block = "\n".join(lines) + "\n"
    kept, skipping, placed = [], False, False
    for line in text.splitlines(keepends=True):
        if re.match(r"backends\s*:", line):
            skipping = True
            kept.append(block)
            placed = True
            continue
        if skipping and (line.startswith((" ", "\t")) or not line.strip()):
            continue
        skipping = False
        kept.append(line)
    result = "".join(kept)
    return result if placed else result.rstrip("\n") + "\n" + block


def print_tune(record: dict, candidates: list[Candidate], choices: dict[str, str], console: Console) -> None:
    table = Table(title="kbench tune: µs per step at the workload's shapes (kernel time x calls per step)")
    for column in ("op", "backend", "µs/step", "vs chosen", "chosen", "why not"):
        table.add_column(column)
    best = {c.op: c.cost_us for c in candidates if c.backend == choices.get(c.op)}
    for c in candidates:
        ratio = f"{c.cost_us / best[c.op]:.2f}x" if c.cost_us and best.get(c.op) else "-"
        table.add_row(c.op, c.backend, f"{c.cost_us:.4g}" if c.cost_us is not None else "-", ratio,
                      "yes" if choices.get(c.op) == c.backend else "", c.reason or "")
    console.print(table)
    gains = Table(title="end to end: tuned mix against the spec's own choice (speedup = spec / tuned)")
    for column in ("kind", "case", "spec µs", "tuned µs", "speedup", "status"):
        gains.add_column(column)
    timed = {(r["kind"], r["case"], r["backend"]): r for r in record["rows"] if r["kind"] in ("prefill", "decode")}
    for (kind, case, backend), row in timed.items():
        base = timed.get((kind, case, ORIGINAL))
        if backend != PIPELINE or base is None:
            continue
        speedup = base["latency_us"] / row["latency_us"] if row.get("latency_us") and base.get("latency_us") else math.nan
        gains.add_row(kind, case, f"{base['latency_us']:.4g}", f"{row['latency_us']:.4g}", f"{speedup:.3f}x",
                      row["status"])
    console.print(gains)


@click.command("tune", cls=FamilyFlagsCommand)
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--backend", "backend", multiple=True, metavar="FAMILY=NAME",
              help="The spec's own choice to tune against, changed as in kbench run (repeatable).")
@spec_options
@click.option("--out-spec", "out_spec", default=None, type=click.Path(dir_okay=False),
              help="Where to write the tuned spec (default: SPEC's name with -tuned, beside it).")
@click.option("--out", "out_dir", default="results", type=click.Path(file_okay=False), show_default=True,
              help="Folder for the run record.")
def tune_command(spec, out_spec, out_dir, **flags):
    """Time every backend per op at SPEC's shapes, write the fastest correct mix as a spec, and
    run it against SPEC's own choice end to end.

    Exit status: 0 when the tuned pipeline passed, 1 when something FAILed, 2 for a mistake.
    """
    overrides = Overrides.from_cli(**family_choices(flags), **flags)
    record = tune(spec, overrides, Path(out_spec) if out_spec else None, Path(out_dir), make_console(),
                  progress_console=make_console(stderr=True))
    failed = any(r["status"] == "FAIL" and r["kind"] != "op" and r["backend"] in (PIPELINE, "-") for r in record["rows"])
    sys.exit(1 if failed else 0)
