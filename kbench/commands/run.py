"""``kbench run SPEC``: correctness and speed of the chosen backends, op by op and end to end.

``run()`` reads top to bottom; each step is a function named after what it does:

1. read the spec and resolve the plan: per op the backend, where the choice came from, and
   the cases it runs at (``kbench.plan``); every later step reads the plan;
2. measure the device's ceilings (copy bandwidth, bf16 matmul) on CUDA;
3. check every chosen backend against the reference at the model's own shapes and time
   it there (and the reference, so the table shows the speedup);
4. build the pipeline and check it against the all-reference pipeline, teacher-forced
   (``kbench.bench.pipeline_check``), and with ``--check hf`` (or ``--baseline hf``) both
   against transformers' LlamaForCausalLM on the same weights (``kbench.bench.hf_check``);
5. time prefill and decode over the workload sweep, with peak memory, and the same for
   baselines (``hf``: transformers' LLaMA; ``reference``) (``kbench.bench.end_to_end``);
6. write the run record and print the tables.

A FAIL anywhere is FAIL in every table: the end-to-end rows of a pipeline that uses a
failing backend are FAIL too, and the run's status (exit code 1).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from kbench.bench.end_to_end import BASELINES, PIPELINE, time_end_to_end
from kbench.bench.hf_check import check_against_hf, past_trained_range
from kbench.bench.pipeline_check import check_pipeline
from kbench.bench.stopwatch import HF_CHECK, PIPELINE_CHECK, STOPWATCH, describe
from kbench.bench.sweep import op_results
from kbench.commands.options import FamilyFlagsCommand, family_choices, spec_options
from kbench.console import make_console
from kbench.env import machine_record, machine_state, measure_ceilings
from kbench.errors import EXIT_FAILED, EXIT_OK, KbenchError
from kbench.model import build_pipeline, load_weights
from kbench.model.weights import check_weights
from kbench.plan import Plan, resolve_plan
from kbench.plugins import get_registry
from kbench.preflight import check_model_fits, check_op_cases_fit, check_out_dir, is_out_of_memory, out_of_memory_error
from kbench.registry import REFERENCE
from kbench.results.record import build_record, write_record_or_keep
from kbench.results.report import print_run
from kbench.results.rows import FAILING, Row
from kbench.spec import Overrides, load_spec

CHECKS = ("hf",)


@dataclass(frozen=True)
class RunOptions:
    """What ``kbench run`` does besides the spec: where to write, which parts, which baselines."""

    out_dir: Path = Path("results")
    baselines: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()
    skip_ops: bool = False
    skip_e2e: bool = False
    command: tuple[str, ...] = ()


@dataclass
class RunResult:
    record: dict
    path: Path

    @property
    def failed(self) -> bool:
        return self.record["status"] == "FAIL"


def run(spec_path: str | Path, overrides: Overrides | None, options: RunOptions, console: Console,
        progress_console: Console | None = None) -> RunResult:
    """The whole ``kbench run``; KbenchError (nothing written) for a user mistake.

    A mistake found after work has been done (or a bug) still prints the tables and writes
    the record of the rows so far, marked FAIL with the error, before the error is raised.
    """
    spec = load_spec(spec_path, overrides)
    plan = resolve_plan(spec, get_registry())
    check_baselines(options.baselines)
    check_baselines(options.checks, what="--check")
    check_outside(plan, options)
    note_trained_range(spec, console)
    started = datetime.now(timezone.utc)
    STOPWATCH.reset()
    rows: list[Row] = []
    ceilings: dict = {}
    start_state = machine_state(spec.device)
    try:
        with progress_display(progress_console or console) as progress:
            progress("measuring device ceilings")
            ceilings = measure_ceilings(spec.device)
            if not options.skip_ops:
                rows += check_and_time_ops(plan, ceilings, progress)
            if not options.skip_e2e:
                rows += check_and_time_pipeline(plan, options, ceilings, progress)
    except Exception as error:
        record = build_run_record(plan, options, ceilings, rows, started, start_state, error)
        path = save_record(record, options.out_dir, console)
        raise_after_saving(error, path)
    record = build_run_record(plan, options, ceilings, rows, started, start_state)
    path = save_record(record, options.out_dir, console)
    return RunResult(record, path)


# -- 1. spec, backends, what the run needs from outside ------------------------------------

def check_outside(plan: Plan, options: RunOptions) -> None:
    """The results folder, the checkpoint and the memory the shapes need, before any kernel runs."""
    spec = plan.spec
    check_out_dir(options.out_dir)
    if not options.skip_ops:
        for op in plan.ops.values():
            check_op_cases_fit(op.op, op.cases, spec.dtype, spec.device)
    if not options.skip_e2e:
        check_weights(spec)
        check_model_fits(spec)


def check_and_time_pipeline(plan: Plan, options: RunOptions, ceilings: dict, progress) -> list[Row]:
    progress("loading weights")
    weights = load_weights(plan.spec)
    pipeline = build_pipeline(plan, weights)
    with STOPWATCH.timed(PIPELINE_CHECK):
        rows = check_pipeline(plan, weights, pipeline, progress)
    if "hf" in options.checks or "hf" in options.baselines:
        with STOPWATCH.timed(HF_CHECK):
            rows += check_against_hf(plan, weights, pipeline, progress)
    rows += time_end_to_end(plan, pipeline, PIPELINE, weights, ceilings, progress)
    del pipeline  # one model's weights and KV cache on the device at a time
    for name in options.baselines:
        baseline = build_baseline(plan, weights, name)
        rows += time_end_to_end(plan, baseline, name, weights, ceilings, progress)
        del baseline
    return rows


def build_run_record(plan: Plan, options: RunOptions, ceilings: dict, rows: list[Row], started: datetime,
                     start_state: dict, error: BaseException | None = None) -> dict:
    """The run record, with the machine's state at start and now and the checks' share of the
    wall time (``wall_s``); one that ``error`` cut short is FAIL and says why under ``error``."""
    record = build_record(name=plan.spec.name, command=options.command, spec=plan.spec.to_dict(),
                          backends=plan.record(), registry=plan.registry, device=plan.spec.device,
                          ceilings=ceilings, rows=mark_pipeline_failures(plan, rows), created=started,
                          machine=machine_record(start_state, machine_state(plan.spec.device)))
    record["wall_s"] = STOPWATCH.summary((datetime.now(timezone.utc) - started).total_seconds())
    if error is not None:
        message = error.message if isinstance(error, KbenchError) else f"{type(error).__name__}: {error}"
        record["status"] = "FAIL"
        record["error"] = f"the run stopped early: {message}"
    return record


def save_record(record: dict, out_dir: Path, console: Console) -> Path | None:
    """Print the tables, then write the record (to a temporary folder if ``out_dir`` fails)."""
    print_run(record, console)
    if describe(record.get("wall_s")):
        console.print(describe(record["wall_s"]), highlight=False)
    if record.get("error"):
        console.print(f"[bold red]{escape(record['error'])}[/]", highlight=False)
    path = write_record_or_keep(record, out_dir)
    console.print(f"record: {path}", highlight=False)
    return path


def raise_after_saving(error: Exception, path: Path | None) -> None:
    """Re-raise a run's error with where its partial record went (running out of memory is a
    shape too large for the machine: bad input, not a bug)."""
    if is_out_of_memory(error):
        error = out_of_memory_error(error)
    if isinstance(error, KbenchError):
        raise KbenchError(f"{error.message} (the rows measured before it are in {path})", error.fix) from error
    raise error


def check_baselines(baselines: Sequence[str], what: str = "--baseline") -> None:
    known = BASELINES if what == "--baseline" else CHECKS
    for name in baselines:
        if name not in known:
            raise KbenchError(f"Unknown {what} {name!r}.", f"Choose from: {', '.join(known)}.")
        if name == "hf":
            try:
                import transformers  # noqa: F401
            except ImportError:
                raise KbenchError(f"{what} hf needs transformers.", "pip install 'kbench[hf]'.") from None


def note_trained_range(spec, console: Console) -> None:
    """Say when the workload's positions pass the model's trained range (runs go on, as in transformers)."""
    longest = max(spec.workload.prompt_len) + spec.workload.decode_steps
    note = past_trained_range(spec.model, longest)
    if note:
        console.print(f"note: {note.rstrip('; ')}.", highlight=False)


@contextmanager
def progress_display(console: Console) -> Iterator[Callable[[str], None]]:
    """A transient spinner with the current step; yields ``progress(text)``.

    When the output is not a terminal (a log file, CI, a remote GPU job) each step is printed
    as a plain line with the elapsed time instead, so a slow step can be seen afterwards.
    """
    if not console.is_terminal:
        start = time.perf_counter()
        yield lambda text: console.print(f"\\[{time.perf_counter() - start:7.1f}s] {escape(text)}", highlight=False)
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("starting", total=None)
        yield lambda text: progress.update(task, description=escape(text))


# -- 3. ops at the model's shapes ---------------------------------------------------------

def check_and_time_ops(plan: Plan, ceilings: dict, progress) -> list[Row]:
    """Check and time the chosen backend (and the reference) on every op case of the model."""
    spec, rows = plan.spec, []
    for name, op in plan.ops.items():
        backends = list(dict.fromkeys([REFERENCE, op.backend]))
        rows += op_results(plan.registry, name, backends, list(op.cases), spec.dtype, spec.device, spec.bench,
                        lambda text: progress(f"ops: {text}"), ceilings=ceilings)
    return rows


# -- 4-5. the pipeline ------------------------------------------------------------------

def build_baseline(plan: Plan, weights, name: str):
    """``hf`` (transformers' LLaMA on the same weights) or ``reference`` (the all-reference
    pipeline)."""
    if name == "hf":
        from kbench.model.hf_baseline import HFBaseline

        return HFBaseline(plan.spec, weights)
    return build_pipeline(plan.with_reference(), weights)


# -- FAIL everywhere ----------------------------------------------------------------------

def mark_pipeline_failures(plan: Plan, rows: list[Row]) -> list[Row]:
    """Prefill and decode rows of the pipeline become FAIL when a backend it uses failed its
    op check or the pipeline failed its end-to-end check.
    """
    used = {name: op.backend for name, op in plan.pipeline_ops.items()}
    failed = sorted({f"{r.op}/{r.backend}" for r in rows
                     if r.kind == "op" and r.status in FAILING and used.get(r.op) == r.backend})
    if any(r.kind == "check" and r.status == "FAIL" for r in rows):
        failed.append("end-to-end check")
    if not failed:
        return rows
    note = f"pipeline uses a failing part: {', '.join(failed)}"
    return [dataclasses.replace(r, status="FAIL", note=note) if r.kind in ("prefill", "decode") and r.backend == PIPELINE
            else r for r in rows]



# -- the command line ----------------------------------------------------------------------

@click.command("run", cls=FamilyFlagsCommand)
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--backend", "backend", multiple=True, metavar="FAMILY=NAME",
              help="Backend for a family or one op, e.g. attention_decode=triton (repeatable).")
@spec_options
@click.option("--out", "out_dir", default="results", type=click.Path(file_okay=False), show_default=True,
              help="Folder for the run record.")
@click.option("--baseline", "baselines", multiple=True, type=click.Choice(["hf", "reference"]),
              help="Also time transformers' LLaMA (hf) or the all-reference pipeline end to end.")
@click.option("--check", "checks", multiple=True, type=click.Choice(list(CHECKS)),
              help="Also check the pipeline against transformers' LlamaForCausalLM on the same weights (hf).")
@click.option("--skip-ops", is_flag=True, help="Skip the op-level checks and timings.")
@click.option("--skip-e2e", is_flag=True, help="Skip the end-to-end pipeline check and timings.")
@click.option("--tp", "tp", type=int, default=1, show_default=True,
              help="Tensor-parallel ranks: starts them itself (gloo on cpu, NCCL on cuda), or run under torchrun.")
def run_command(spec, out_dir, baselines, checks, skip_ops, skip_e2e, tp, **flags):
    """Check and time the SPEC's backends op by op and end to end; write a run record.

    Exit status: 0 all PASS, 1 something FAILed, 2 a mistake in the spec or the flags.
    """
    if skip_ops and skip_e2e:
        raise KbenchError("--skip-ops and --skip-e2e together leave nothing to run.", "Drop one of them.")
    overrides = Overrides.from_cli(**family_choices(flags), **flags)
    if checks and skip_e2e:
        raise KbenchError("--check compares the end-to-end pipeline, which --skip-e2e skips.", "Drop one of them.")
    if checks and tp != 1:
        raise KbenchError(f"--check hf compares one unsharded pipeline; --tp {tp} shards it.",
                          "Run --check hf without --tp (the tensor-parallel run checks itself against one rank).")
    options = RunOptions(out_dir=Path(out_dir), baselines=tuple(dict.fromkeys(baselines)),
                         checks=tuple(dict.fromkeys(checks)), skip_ops=skip_ops,
                         skip_e2e=skip_e2e, command=tuple(["kbench", *sys.argv[1:]]))
    if tp != 1:
        from kbench.commands.distributed import run_tensor_parallel

        result = run_tensor_parallel(spec, overrides, options, tp, make_console(), make_console(stderr=True))
    else:
        result = run(spec, overrides, options, make_console(), progress_console=make_console(stderr=True))
    sys.exit(EXIT_FAILED if result.failed else EXIT_OK)
