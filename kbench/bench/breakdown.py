"""Where a prefill or a decode step spends its time: one row per op, and the remainder.

Every op a step calls goes through ``Pipeline.fn``, so the step is run with each call
wrapped (``Pipeline.traced_calls``) and attributed:

- on a CPU, each call is timed with ``perf_counter`` (the op's wall time as called);
- on CUDA, each call is a ``torch.profiler.record_function`` range with the device synchronised
  on entry and before exit, and an op's time is the summed duration of the device activity
  (kernels, copies, fills; CUPTI) that ran inside its ranges, summed per op. Attribution is by
  time, not by the profiler's launch correlation: that links a kernel only to the aten op that
  launched it, so kernels launched by triton, CUDA extensions or CuTe DSL (no aten op around
  the launch) fell to no op; the synchronisation closes each range on the GPU too, so whatever
  an op launched, on any stream, ran inside its range and nothing else did. The step runs
  eagerly for this: a replayed CUDA graph carries no ranges. Durations, not the range's span:
  in an eager step the span also holds the idle time between launches, which a graph replay
  does not have, so spans would sum to more than the replayed step they are a share of.

An op's ``total_us`` is its time per step, ``share`` its fraction of the measured step
(``step_us``: the prefill row's latency, or the decode row's per-token latency, under a CUDA
graph where the run used one). The ``remainder`` row is ``step_us`` less the ops' sum: on
CUDA the gaps between kernels (launch latency that a graph does not remove, host-side waits)
and glue outside the ops (views, the q/k/v split's copies, position bookkeeping); on a CPU
the Python between calls. Totals are medians over ``REPEATS`` traced steps.

In a decode step each op's row also carries the bytes one call must move by the op's own
model (``decode_call_bytes``), its GB/s at the measured µs per call and that against the run's
copy ceiling: which parts stream at the memory's speed and which are bound by their fixed
cost, what a decode step's roofline alone leaves open. Not on a rank of a tensor-parallel
step: it holds a shard, which the ops' cases (the whole model's shapes) do not describe.
"""

from __future__ import annotations

import bisect
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import NamedTuple

import torch

from kbench.errors import KbenchError
from kbench.model import random_prompts
from kbench.model.tensor_parallel import rank_count
from kbench.ops.base import dtype_name
from kbench.plan import Plan
from kbench.results.rows import BreakdownRow

REPEATS = 3
# Decode steps traced per repeat: each is one more position of the same work, so a few give the
# per-step figure, and tracing every step of a workload costs more than timing it (each eager
# aten call of a reference op is a profiler event).
TRACED_DECODE_STEPS = 4
REMAINDER = "remainder"
PROMPT_SEED = 1234


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def op_of(label: str) -> str:
    """The op of a call site (``linear[qkv]`` -> ``linear``)."""
    return label.split("[", 1)[0]


RANGE_PREFIX = "kbench::"
# The key under which ``traced_totals`` reports the device time outside every op's range (glue).
OUTSIDE = "(outside ops)"
PROFILED = "profiler-kernel-intervals"


class Activity(NamedTuple):
    """One event a profiler recorded: a ``kbench::`` range (host side), or device work (a
    kernel, copy or fill; ``annotation``: a range's GPU-side span, which is not work). Times in µs
    on the profiler's common clock."""

    name: str
    on_device: bool
    start_us: float
    end_us: float
    annotation: bool = False


# what torch's own parse drops (``profiler_util._filter_name``) that could look like device work
SKIPPED_NAMES = frozenset({"[memory]", "[OutOfMemory]"})


def recorded_activity(profiler) -> list[Activity]:
    """The ranges and device work a finished ``torch.profiler.profile`` recorded.

    Read from the profiler's raw (kineto) events, on the clock torch's own parse uses. Its parse
    (``profiler.events()``) would first build a ``FunctionEvent`` and its place in a call tree in
    Python for every event, each aten and runtime call too: a second or more for one traced decode
    step, where reading the raw events takes over an order of magnitude less; a breakdown traces
    its step four times at every point it breaks down."""
    from torch.autograd import DeviceType

    results = profiler.profiler.kineto_results
    # nanoseconds since the epoch exceed a double's integers once in µs: offset them first
    base = results.trace_start_ns()
    activity = []
    for event in results.events():
        name = event.name()
        on_device = event.device_type() == DeviceType.CUDA
        if ((not on_device and not name.startswith(RANGE_PREFIX)) or name in SKIPPED_NAMES
                or getattr(event, "is_hidden_event", lambda: False)()):  # as torch's parse asks it
            continue
        activity.append(Activity(name, on_device, (event.start_ns() - base) / 1000, (event.end_ns() - base) / 1000,
                                 on_device and event.is_user_annotation()))
    return activity


def range_kernel_us(activity: list[Activity]) -> dict[str, float]:
    """call site -> µs of the device activity that ran inside its ``kbench::`` ranges (by the
    midpoint of each kernel, copy or fill, the ranges' host-side intervals on the profiler's
    common clock), and ``OUTSIDE`` -> µs of the rest. The GPU-side annotation of a range (a span)
    is not activity."""
    ranges = sorted((a.start_us, a.end_us, a.name.removeprefix(RANGE_PREFIX))
                    for a in activity if not a.on_device and a.name.startswith(RANGE_PREFIX))
    starts = [start for start, _, _ in ranges]
    totals: dict[str, float] = defaultdict(float)
    for a in activity:
        if not a.on_device or a.annotation or a.name.startswith(RANGE_PREFIX):
            continue
        middle = (a.start_us + a.end_us) / 2
        index = bisect.bisect_right(starts, middle) - 1
        inside = index >= 0 and middle <= ranges[index][1]
        totals[ranges[index][2] if inside else OUTSIDE] += a.end_us - a.start_us
    return dict(totals)


def traced_totals(pipeline, step: Callable[[], object]) -> tuple[dict[str, float], dict[str, int], str]:
    """(call site -> µs in one run of ``step``, call site -> calls, method): every op call
    attributed to its call site (``Pipeline.fn``: the op, or ``linear[PROJ]``)."""
    device = pipeline.device
    calls: dict[str, int] = defaultdict(int)
    if device.type == "cuda":
        def wrap(op, fn):
            def traced(**inputs):
                calls[op] += 1
                _sync(device)  # work launched before the call ends before its range opens
                with torch.profiler.record_function(f"{RANGE_PREFIX}{op}"):
                    out = fn(**inputs)
                    _sync(device)  # everything the call launched, on any stream, ends inside it
                return out
            return traced

        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        _sync(device)
        with torch.profiler.profile(activities=activities) as profiler, pipeline.traced_calls(wrap):
            step()
            _sync(device)
        return range_kernel_us(recorded_activity(profiler)), dict(calls), PROFILED

    spent: dict[str, float] = defaultdict(float)

    def wrap(op, fn):
        def timed(**inputs):
            calls[op] += 1
            start = time.perf_counter()
            out = fn(**inputs)
            spent[op] += (time.perf_counter() - start) * 1e6
            return out
        return timed

    with pipeline.traced_calls(wrap):
        step()
    return dict(spent), dict(calls), "perf_counter-calls"


def breakdown_rows(plan: Plan, pipeline, phase: str, batch: int, prompt_len: int, step_us: float,
                   ceilings: dict | None = None) -> list[BreakdownRow]:
    """The rows of one step: each op the step calls (calls, µs per call, share; in a one-rank
    decode step the bytes a call moves, its GB/s and the share of ``ceilings``' copy bandwidth),
    then the remainder; one FAIL row (op: the phase) where the step raises while traced, its
    timing standing."""
    spec = plan.spec
    steps = min(spec.workload.decode_steps, TRACED_DECODE_STEPS) if phase == "decode" else 1
    common = {"case": f"phase={phase} batch={batch} prompt_len={prompt_len}", "dtype": dtype_name(spec.dtype),
              "device": spec.device, "shape": {"phase": phase, "batch": batch, "prompt_len": prompt_len},
              "phase": phase, "step_us": step_us, "backends": plan.label()}
    try:
        runs = _traced_runs(pipeline, spec, phase, batch, prompt_len, steps)
    except KbenchError:
        raise
    except Exception as error:
        return [BreakdownRow(op=phase, backend="-", status="FAIL",
                             note=f"the traced step raised {type(error).__name__}: {error}", **common)]
    method = runs[0][2]
    common |= {"status": "PASS", "method": method}
    rates = phase == "decode" and rank_count(pipeline) == 1
    copy_gbps = (ceilings or {}).get("copy_gbps")
    rows, summed = [], 0.0
    for op in runs[0][1]:  # a call site: the op, or linear[PROJ]
        total = statistics.median(run[0].get(op, 0.0) for run in runs) / steps
        op_calls = runs[0][1][op] // steps
        summed += total
        call_us = total / op_calls
        call_bytes = decode_call_bytes(plan, op, batch, prompt_len, steps) if rates else None
        gbps = call_bytes / (call_us * 1e3) if call_bytes and call_us else None
        rows.append(BreakdownRow(op=op_of(op), part=op, backend=plan.backend(op_of(op)), calls=op_calls, latency_us=call_us,
                                 total_us=total, share=total / step_us if step_us else None, reps=REPEATS,
                                 bytes=call_bytes, gbps=gbps, frac_peak_bw=gbps / copy_gbps if gbps and copy_gbps else None,
                                 note=None if total or method != PROFILED else "no device work ran inside its ranges",
                                 **common))
    remainder = step_us - summed
    rows.append(BreakdownRow(op=REMAINDER, part=REMAINDER, backend="-", calls=None, latency_us=None, total_us=remainder,
                             share=remainder / step_us if step_us else None, reps=REPEATS,
                             note=_remainder_note(step_us, summed, runs, steps), **common))
    return rows


def decode_call_bytes(plan: Plan, part: str, batch: int, prompt_len: int, traced_steps: int) -> float | None:
    """Bytes one call of ``part`` (``rope``, ``linear[o]``) moves in a decode step of ``batch``
    sequences after prompts of ``prompt_len``: its op's ``bytes`` at the op's own case of that
    shape (one token a sequence, the call site's projection), attention at the mean context of
    the ``traced_steps`` steps the breakdown traced. None where the op's cases hold no such shape."""
    spec = plan.spec
    op = plan.registry.ops[op_of(part)]
    proj = part.partition("[")[2].rstrip("]") or None
    for case in op.cases_for(spec.model, spec.workload):
        if (case.get("tokens", batch) == batch and case.get("batch", batch) == batch
                and case.get("phase", "decode") == "decode" and case.get("proj") == proj):
            if "context" in case.keys():  # the traced steps attend over prompt_len + 1 .. + traced_steps
                case = case.replace(context=round(prompt_len + (traced_steps + 1) / 2))
            return float(op.bytes(case, spec.dtype))
    return None


def _traced_runs(pipeline, spec, phase: str, batch: int, prompt_len: int, steps: int) -> list:
    """``traced_totals`` of ``REPEATS`` runs of the step (``steps`` decode steps), after one that
    warms up."""
    prompts = random_prompts(spec.model.vocab, batch, prompt_len, PROMPT_SEED)
    tokens = torch.stack([p[-1] for p in prompts]).to(pipeline.device)
    runs = []
    with torch.inference_mode():
        pipeline.reset(batch, prompt_len + spec.workload.decode_steps)
        if phase == "decode":
            pipeline.prefill(prompts)  # the cache the decode steps read; each repeat rewinds to it
        for _ in range(REPEATS + 1):  # the first one warms up
            if phase == "prefill":
                runs.append(traced_totals(pipeline, lambda: pipeline.prefill(prompts)))
            else:
                pipeline.rewind()
                runs.append(traced_totals(pipeline, lambda: [pipeline.decode_step(tokens) for _ in range(steps)]))
    return runs[1:]


def _remainder_note(step_us: float, summed: float, runs, steps: int) -> str:
    """The measured step and the ops' sum; on CUDA also the device time outside every op (glue
    such as the q/k/v split's copies), the part of the remainder that is work, not gaps."""
    note = f"measured step {step_us:.4g} µs, ops' sum {summed:.4g} µs"
    if any(OUTSIDE in run[0] for run in runs):
        outside = statistics.median(run[0].get(OUTSIDE, 0.0) for run in runs) / steps
        note += f", device work outside the ops {outside:.4g} µs"
    return note
