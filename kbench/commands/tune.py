"""``kbench tune SPEC``: the fastest correct backend per op at the workload's shapes, written
as a spec, then run end to end against the spec's own choice and single-backend mixes.

1. resolve the spec's plan; set up each candidate backend once (its ``available`` probe: a JIT
   build, a library import), timed as its own phase; for every op the pipeline calls, every
   backend that can run here and supports all of the op's model cases is checked against the
   reference and timed at every shape the workload gives it (``Op.cases_for``, not cut to
   ``bench.max_op_cases``), the backends taking each shape in turn so its inputs and reference
   are made once. A backend that compiles per shape (``slow_setup``: torch.compile) is listed as
   left out unless ``--candidates`` names it: at a model's dozen shapes per op its compiles
   alone outlast the rest; one that only picks another's kernel at every shape (``runs_as``:
   ``flash`` running one FlashAttention generation) takes that backend's check and timing
   instead of a second one;
2. a backend's cost is the time one request of the workload spends in the op: per case its
   kernel time (CUDA-graph replay where measured, the time as called then recorded on
   ``CALLED_SHARE`` of the budget; else as called) times the op's calls per
   step (``calls_per_step``), and per step of a request that runs the case's shape
   (``steps_per_request``): prefill shapes once, decode shapes ``decode_steps`` times. Prefill
   and decode are shown apart; their sum chooses. The cheapest backend that passed every check
   is chosen; one that failed, or cannot run, is listed with the reason and never chosen;
3. the per-op choice, the spec's own choice and each single-backend mix (one backend on every
   op where it passed, as ``--norm X --rope X ...`` would ask; backends that passed ops of two
   families or more, or ``--mixes``) are timed end to end (prefill and decode; no separate
   time-to-first-token timing, which the choice does not use); the fastest over the workload
   (prefill plus ``decode_steps`` decode steps, summed over its points) is written, so the
   tuned spec is never slower end to end than a mix tune tried. Only the written mix gets the
   per-op breakdown of its steps (``kbench.bench.breakdown``), traced once the mixes are timed:
   tracing a step under the profiler costs more than timing it, and the choice needs only the
   timings;
4. the tuned spec is the spec's text with ``backends:`` replaced by one entry per op, each
   with a comment giving its cost and the runner-up's; it is checked end to end against the
   float32 oracle.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.table import Table

from kbench.bench.end_to_end import breakdowns_of, time_end_to_end
from kbench.bench.pipeline_check import check_pipeline
from kbench.bench.stopwatch import PIPELINE_CHECK, STOPWATCH, describe
from kbench.bench.sweep import op_results
from kbench.commands.options import FamilyFlagsCommand, family_choices, spec_options
from kbench.commands.run import RunOptions, check_outside, progress_display
from kbench.console import make_console
from kbench.env import machine_record, machine_state, measure_ceilings
from kbench.errors import EXIT_FAILED, EXIT_OK, KbenchError, did_you_mean
from kbench.model import build_pipeline, load_weights
from kbench.model.pipeline import calls_per_step, steps_per_request
from kbench.plan import Plan, resolve_plan
from kbench.plugins import get_registry
from kbench.preflight import check_out_file
from kbench.registry import REFERENCE, Registry
from kbench.results.figures import describe_phases
from kbench.results.record import build_record, write_record_or_keep
from kbench.spec import Overrides, load_spec

ORIGINAL = "spec"
# The as-called timing's share of the spec's budget where a graph replay times the kernel:
# the choice costs each backend by its kernel time, so the time as called is only recorded
# (still a median over as many repetitions as fit, MIN_REPS at least).
CALLED_SHARE = 0.25
PER_OP = "per-op"
SETUP_PHASE = "backend setup"
OPS_PHASE = "op timings"
MIXES_PHASE = "end to end"
MIX_PREFIX = "all-"


@dataclass(frozen=True)
class Candidate:
    """One backend of one op: the µs one request spends in it, as its prefill and decode parts
    (``decode_us`` over all decode steps; None when it cannot be chosen), and why not;
    ``same_as``: the backend it runs at every shape (``runs_as``), whose timing it took."""

    op: str
    backend: str
    prefill_us: float | None = None
    decode_us: float | None = None
    reason: str | None = None
    same_as: str | None = None

    @property
    def cost_us(self) -> float | None:
        return None if self.prefill_us is None or self.decode_us is None else self.prefill_us + self.decode_us

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {"cost_us": self.cost_us}


def tune(spec_path: str | Path, overrides: Overrides | None, out_spec: Path | None, out_dir: Path,
         console: Console, progress_console: Console | None = None, registry: Registry | None = None,
         mixes: tuple[str, ...] | None = None, candidates_wanted: tuple[str, ...] | None = None) -> dict:
    """The whole ``kbench tune``; returns the record it wrote (with ``tune``: the tuned spec, the
    choices, every candidate and the end-to-end time of every mix). ``mixes``: the single-backend
    mixes to time end to end (None: every backend that passed ops of two families or more);
    ``candidates_wanted``: the backends tried besides the reference (None: every one)."""
    spec = load_spec(spec_path, overrides)
    registry = registry or get_registry()
    plan = resolve_plan(spec, registry)
    out_spec = out_spec or Path(spec.path).with_name(f"{Path(spec.path).stem}-tuned.yaml")
    check_outside(plan, RunOptions(out_dir=out_dir))
    check_out_file(out_spec, "--out-spec")
    check_backend_names(plan, mixes, "--mixes")
    check_backend_names(plan, candidates_wanted, "--candidates")
    started = time.perf_counter()
    start_state = machine_state(spec.device)
    STOPWATCH.reset()
    rows, candidates, laps = [], [], Laps()
    with progress_display(progress_console or console) as progress:
        progress("measuring device ceilings")
        ceilings = measure_ceilings(spec.device)
        laps.lap("ceilings")
        # an op the workload never calls (all_reduce on one rank) has nothing to choose
        tuned_ops = [name for name in plan.pipeline_ops if registry.ops[name].cases_for(spec.model, spec.workload)]
        wanted_by_op = {name: [b for b in registry.backends(name)
                               if candidates_wanted is None or b in (REFERENCE, *candidates_wanted)]
                        for name in tuned_ops}
        set_up_backends(registry, wanted_by_op, candidates_wanted or (), progress, laps)
        for index, name in enumerate(tuned_ops, 1):
            wanted = wanted_by_op[name]
            progress(f"op {index}/{len(tuned_ops)} {name}: {', '.join(wanted)}")
            found, op_rows = time_candidates(plan, name, wanted, ceilings, progress,
                                             named=candidates_wanted or ())
            candidates += found
            rows += op_rows
            laps.lap(f"{OPS_PHASE}:{name}")
        per_op = choose(candidates)
        mix_choices = {PER_OP: per_op, ORIGINAL: {name: plan.backend(name) for name in tuned_ops}}
        mix_choices |= single_backend_mixes(plan, candidates, mixes)
        progress("loading weights")
        weights = load_weights(spec)
        laps.lap("weights")
        timed, first_of = {}, {}
        for number, (label, choices) in enumerate(mix_choices.items(), 1):
            same = first_of.setdefault(tuple(sorted(choices.items())), label)
            if same != label:  # the same backends as a mix timed already: its time, not a second run
                timed[label] = timed[same]
                continue
            each = plan.with_backends(choices, f"kbench tune ({label})")
            pipeline = build_pipeline(each, weights)
            say = lambda text, lb=label, n=number: progress(f"end to end {n}/{len(mix_choices)} {lb}: {text}")  # noqa: E731
            # the choice is prefill and decode time: no second timing of each prefill for its first token
            mix_rows = time_end_to_end(each, pipeline, label, weights, ceilings, say, ttft=False, breakdown=False)
            timed[label] = request_us(mix_rows, spec.workload.decode_steps)
            rows += mix_rows
            del pipeline
            laps.lap(f"{MIXES_PHASE}:{label}")
        winner = min((label for label in timed if timed[label] is not None), key=lambda lb: timed[lb],
                     default=PER_OP)
        tuned_text = tuned_spec_text(Path(spec.path).read_text(), mix_choices[winner], candidates,
                                     header=winner_comment(winner, timed, spec.workload))
        out_spec.write_text(tuned_text)
        kept = dataclasses.replace(overrides, backends={}, backend_flags={}) if overrides else None
        tuned_plan = resolve_plan(load_spec(out_spec, kept), registry)
        pipeline = build_pipeline(tuned_plan, weights)
        with STOPWATCH.timed(PIPELINE_CHECK):
            checked = check_pipeline(tuned_plan, weights, pipeline, progress)
        rows += [dataclasses.replace(r, backend=winner) for r in checked]
        laps.lap("check")
        timed_as = first_of[tuple(sorted(mix_choices[winner].items()))]  # the label its rows carry
        rows += breakdowns_of(tuned_plan, pipeline, timed_as, [r for r in rows if r.backend == timed_as],
                              lambda text: progress(f"written mix {winner}: {text}"), ceilings)
        del pipeline
        laps.lap("breakdown")
    record = build_record(name=f"{spec.name}-tune", command=tuple(["kbench", *sys.argv[1:]]),
                          spec=tuned_plan.spec.to_dict(), backends=tuned_plan.record(), registry=registry,
                          device=spec.device, ceilings=ceilings, rows=rows,
                          machine=machine_record(start_state, machine_state(spec.device)))
    record["tune"] = {"tuned_spec": str(out_spec), "choices": mix_choices[winner], "winner": winner,
                      "mixes": {label: {"choices": choices, "request_us": timed.get(label),
                                        "rows": first_of[tuple(sorted(choices.items()))]}
                                for label, choices in mix_choices.items()},
                      "candidates": [c.as_dict() for c in candidates], "phases_s": laps.seconds}
    record["wall_s"] = STOPWATCH.summary(time.perf_counter() - started)
    print_tune(record, candidates, per_op, console)
    console.print(describe(record["wall_s"]), highlight=False)
    console.print(describe_phases(laps.seconds), highlight=False)
    console.print(f"tuned spec: {out_spec} ({winner})", highlight=False)
    console.print(f"record: {write_record_or_keep(record, out_dir)}", highlight=False)
    return record


class Laps:
    """Seconds per named phase of a tune, each from the end of the one before."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._mark = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._mark
        self._mark = now


def set_up_backends(registry: Registry, wanted_by_op: dict[str, list[str]], named: tuple[str, ...], progress,
                    laps: Laps) -> None:
    """Each candidate backend's one-time setup (its ``available`` probe: a JIT build of CUDA
    sources, an import of a kernel library) as its own phase, ``SETUP_PHASE:backend``, so the
    first op a backend meets is not charged with it. A backend the tune leaves out for compiling
    per shape (``slow_setup``, unless ``named``) is not set up."""
    backends = dict.fromkeys(b for wanted in wanted_by_op.values() for b in wanted)
    for backend in backends:
        implementations = [registry.get(name, backend) for name, wanted in wanted_by_op.items() if backend in wanted]
        implementations = [i for i in implementations if not left_out(i, named)]
        if not implementations:
            continue
        progress(f"setting up {backend}")
        for implementation in implementations:
            implementation.unavailable_reason()  # checked once per implementation, kept for the op's turn
        laps.lap(f"{SETUP_PHASE}:{backend}")


def left_out(implementation, named: tuple[str, ...]) -> bool:
    """Whether the tune leaves ``implementation`` out: it compiles per shape (``slow_setup``) and
    ``--candidates`` (``named``) does not ask for it."""
    return bool(implementation.slow_setup) and implementation.backend not in named


def time_candidates(plan: Plan, name: str, backends: list[str], ceilings: dict, progress,
                    named: tuple[str, ...] = ()) -> tuple[list[Candidate], list]:
    """Check and time each of ``backends`` on every shape the workload gives ``name``; each one's
    cost, or why it is out. The backends take each case in turn, so a case's inputs and its
    reference output are made once for all of them. One that declares a ``slow_setup``
    (a compiler per shape) is left out unless ``named`` (``--candidates``) asks for it; one whose
    ``runs_as`` names the same other candidate at every shape takes that one's check and cost."""
    spec, registry = plan.spec, plan.registry
    cases = registry.ops[name].cases_for(spec.model, spec.workload)
    out: dict[str, Candidate] = {}
    for backend in backends:
        implementation = registry.get(name, backend)
        if left_out(implementation, named):
            # before its support probes, which may compile too (torch.compile's costs seconds)
            reason = (f"left out of the tune: {implementation.slow_setup}, at each of {len(cases)} shapes "
                      f"(--candidates {backend} tries it)")
        else:
            reason = next((r for r in (implementation.reason(case, spec.dtype, spec.device) for case in cases) if r),
                          None)
        if reason:
            out[backend] = Candidate(name, backend, reason=reason)
    aliases = same_kernel(registry, name, [b for b in backends if b not in out], cases, spec.dtype, spec.device)
    timed = [b for b in backends if b not in out and b not in aliases]
    rows = op_results(registry, name, timed, cases, spec.dtype, spec.device, spec.bench,
                      lambda text: progress(f"{name}: {text}"), ceilings=ceilings,
                      called_share=CALLED_SHARE) if timed else []
    for backend in timed:
        mine = [r for r in rows if r.backend == backend]  # in case order
        failed = [r for r in mine if r.status != "PASS"]
        if failed:
            out[backend] = Candidate(name, backend, reason=f"{failed[0].status} at {failed[0].case}: {failed[0].note}")
            continue
        prefill = decode = 0.0
        for case, row in zip(cases, mine, strict=True):
            per_step = calls_per_step(spec.model, name, case.get("proj")) * (row.graph_latency_us or row.latency_us)
            prefill_steps, decode_steps = steps_per_request(name, case, spec.workload)
            prefill += prefill_steps * per_step
            decode += decode_steps * per_step
        out[backend] = Candidate(name, backend, prefill_us=prefill, decode_us=decode)
    for backend, target in aliases.items():
        out[backend] = dataclasses.replace(out[target], backend=backend, same_as=target)
    return [out[b] for b in backends], rows


def same_kernel(registry: Registry, name: str, backends: list[str], cases, dtype, device) -> dict[str, str]:
    """backend -> the other of ``backends`` its ``runs_as`` names at every one of ``cases``
    (itself no such alias), for the backends that only pick another's kernel."""
    def target(backend: str) -> str | None:
        runs_as = registry.get(name, backend).runs_as
        if runs_as is None:
            return None
        try:
            named = {runs_as(case, dtype, torch.device(device)) for case in cases}
        except Exception:  # a probe that fails leaves the backend timed like any other
            return None
        return named.pop() if len(named) == 1 else None

    found = {backend: target(backend) for backend in backends}
    return {b: t for b, t in found.items() if t is not None and t != b and t in found and found[t] is None}


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


def single_backend_mixes(plan: Plan, candidates: list[Candidate], wanted: tuple[str, ...] | None) -> dict[str, dict]:
    """'all-NAME' -> op choices: the spec's own with NAME on every op where it passed (none if it
    passed none). Without ``wanted``, for every backend that passed ops of two families or more
    (an attention-only backend is a per-op choice, not a mix)."""
    passed: dict[str, list[str]] = {}
    for c in candidates:
        if c.cost_us is not None and c.backend != REFERENCE:
            passed.setdefault(c.backend, []).append(c.op)
    if wanted is None:
        wanted = tuple(b for b, ops in passed.items() if len({plan.ops[op].family for op in ops}) >= 2)
    spec_choice = {c.op: plan.backend(c.op) for c in candidates}
    return {f"{MIX_PREFIX}{b}": spec_choice | dict.fromkeys(passed[b], b) for b in wanted if b in passed}


def check_backend_names(plan: Plan, wanted: tuple[str, ...] | None, flag: str) -> None:
    """KbenchError (before any work) for a ``flag`` name no op of the pipeline has."""
    have = list(dict.fromkeys(b for name in plan.pipeline_ops for b in plan.registry.backends(name)
                              if b != REFERENCE))
    unknown = [b for b in wanted or () if b not in have]
    if unknown:
        raise KbenchError(f"{flag} {', '.join(unknown)}: no op the pipeline calls has such a backend.",
                          f"{did_you_mean(unknown[0], have)}Choose from: {', '.join(have)}"
                          + ("; or 'none' for no single-backend mix." if flag == "--mixes" else "."))


def request_us(rows, decode_steps: int) -> float | None:
    """µs the workload's requests take end to end: per point its prefill plus ``decode_steps``
    decode steps, summed; None if a point did not run."""
    total = 0.0
    for row in rows:
        if row.kind not in ("prefill", "decode"):
            continue
        if row.status == "FAIL" or not row.latency_us:
            return None
        total += row.latency_us * (decode_steps if row.kind == "decode" else 1)
    return total or None


def winner_comment(winner: str, timed: dict[str, float | None], workload) -> str:
    """The tuned spec's header: the workload tuned at, every mix's end-to-end time, fastest first."""
    ranked = sorted(((lb, us) for lb, us in timed.items() if us is not None), key=lambda item: item[1])
    parts = [f"{label} {us / 1e3:.4g} ms" for label, us in ranked]
    at = (f"batch {','.join(map(str, workload.batch))}, prompt {','.join(map(str, workload.prompt_len))}, "
          f"{workload.decode_steps} decode steps")
    return (f"# kbench tune at {at}: {winner} was fastest end to end over that workload (prefill + decode "
            f"steps, summed): {', '.join(parts)}")


def tuned_spec_text(text: str, choices: dict[str, str], candidates: list[Candidate], header: str = "") -> str:
    """The spec's text with its top-level ``backends:`` replaced by one commented entry per op
    (``header`` above it): the chosen backend's µs per request and the best other one's (``faster
    alone`` where the choice is a single-backend mix's that won end to end)."""
    lines = ([header] if header else []) + ["backends:"]
    for op, backend in choices.items():
        ranked = sorted((c for c in candidates if c.op == op and c.cost_us is not None), key=lambda c: c.cost_us)
        chosen = next((c for c in ranked if c.backend == backend), None)
        # the runner-up is another kernel: not a backend that runs the chosen one's (``same_as``)
        kernel = chosen.same_as if chosen is not None and chosen.same_as else backend
        others = [c for c in ranked if (c.same_as or c.backend) != kernel]
        # Where a whole mix won end to end, another backend may be the faster one alone.
        faster = others and chosen is not None and others[0].cost_us < chosen.cost_us
        runner = (f"{'faster alone' if faster else 'runner-up'} {others[0].backend} {others[0].cost_us:.4g} µs"
                  if others else "no runner-up")
        cost = f"{chosen.cost_us:.4g} µs/request" if chosen else "not timed"
        failed = [f"{c.backend} ({c.reason})" for c in candidates
                  if c.op == op and c.cost_us is None and c.reason and c.reason.startswith("FAIL")]
        lines.append(f"  # {op}: {backend} {cost}, {runner}"
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
    """The candidates per op, every mix end to end, and the chosen mix against the spec's own per point."""
    table = Table(title="kbench tune: µs one request spends in each op (kernel time x calls per step x steps)")
    for column in ("op", "backend", "prefill µs", "decode µs", "µs/request", "vs best", "per-op choice", "why not"):
        table.add_column(column)
    best = {c.op: c.cost_us for c in candidates if c.backend == choices.get(c.op)}
    number = lambda value: f"{value:.4g}" if value is not None else "-"  # noqa: E731
    for c in candidates:
        ratio = f"{c.cost_us / best[c.op]:.2f}x" if c.cost_us and best.get(c.op) else "-"
        table.add_row(c.op, c.backend, number(c.prefill_us), number(c.decode_us), number(c.cost_us), ratio,
                      "yes" if choices.get(c.op) == c.backend else "",
                      c.reason or (f"runs {c.same_as} at every shape: its timing" if c.same_as else ""))
    console.print(table)
    tuned, winner = record["tune"], record["tune"]["winner"]
    spec_us = tuned["mixes"][ORIGINAL]["request_us"]
    mixes = Table(title="end to end: every mix over the workload (prefill + decode steps, summed over its points)")
    for column in ("mix", "ms", "speedup vs spec", "written"):
        mixes.add_column(column)
    for label, mix in sorted(tuned["mixes"].items(), key=lambda item: item[1]["request_us"] or math.inf):
        us = mix["request_us"]
        mixes.add_row(label, f"{us / 1e3:.4g}" if us else "did not run",
                      f"{spec_us / us:.3f}x" if us and spec_us else "-", "yes" if label == winner else "")
    console.print(mixes)
    gains = Table(title=f"end to end: the written mix ({winner}) against the spec's own choice (speedup = spec / tuned)")
    for column in ("kind", "case", "spec µs", "tuned µs", "speedup", "status"):
        gains.add_column(column)
    timed = {(r["kind"], r["case"], r["backend"]): r for r in record["rows"] if r["kind"] in ("prefill", "decode")}
    for (kind, case, backend), row in timed.items():
        base = timed.get((kind, case, ORIGINAL))
        if backend != winner or base is None:
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
@click.option("--mixes", "mixes", default=None, metavar="NAME,NAME|none",
              help="Single-backend mixes to time end to end beside the per-op choice "
                   "(default: every backend that passed ops of two families or more).")
@click.option("--candidates", "candidates", default=None, metavar="NAME,NAME",
              help="Backends to try besides the reference (default: every registered one).")
def tune_command(spec, out_spec, out_dir, mixes, candidates, **flags):
    """Time every backend per op at SPEC's shapes, then the fastest correct per-op mix, SPEC's own
    choice and single-backend mixes end to end; write the fastest as a spec.

    Exit status: 0 when the tuned pipeline passed, 1 when something FAILed, 2 for a mistake.
    """
    overrides = Overrides.from_cli(**family_choices(flags), **flags)
    def names(text):
        return None if text is None else tuple(n.strip() for n in text.split(",") if n.strip() and n.strip() != "none")

    record = tune(spec, overrides, Path(out_spec) if out_spec else None, Path(out_dir), make_console(),
                  progress_console=make_console(stderr=True), mixes=names(mixes), candidates_wanted=names(candidates))
    winner = record["tune"]["winner"]
    failed = any(r["status"] == "FAIL" and r["kind"] != "op" and r["backend"] in (winner, "-") for r in record["rows"])
    sys.exit(EXIT_FAILED if failed else EXIT_OK)
