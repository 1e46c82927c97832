"""Op sweeps: check, then time, each (backend, case) of one op; one ``OpRow`` each, with the
latency as called and the kernel's under CUDA-graph replay. In a graph each call gets its own
output and copies of the ``inplace`` inputs and (where L2 could hold them) the ``cold`` ones,
spanning twice the L2 within a budget, so no call finds them in L2 whatever the backend.

The timed path is checked too (``Guard``, ``kbench.bench.integrity``): the last timed output,
then, after the repetitions (eager and graph replay), one more call on inputs refilled in place
with new values; a stale, cached, skipped or different-path output is a FAIL. Each row's
throughput is held against the measured ceilings (``kbench.bench.limits``): past them, SUSPECT."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import torch

from kbench.bench.check import check_implementation, clone_inputs, reference_output
from kbench.bench.integrity import check_after_timing, fresh_values, refill_in_place
from kbench.bench.limits import flops_ceiling_tflops, limit_problem
from kbench.bench.stopwatch import AFTER_TIMING, OP_CHECK, STOPWATCH
from kbench.bench.timing import GRAPH_REPLAY_TARGET_US, MAX_GRAPH_CALLS, Timing, l2_cache_bytes, measure, summarize
from kbench.ops.base import Case, Check, Op, dtype_name
from kbench.registry import Registry
from kbench.results.rows import OpRow, row_dict

INPLACE_COPY_BUDGET_BYTES = 256 * 2**20
# The most calls a graph takes so that the per-call input copies span twice the L2.
MAX_COPIED_GRAPH_CALLS = 1000


def op_rows(*args: Any, **kwargs: Any) -> list[dict]:
    """``op_results`` serialised, for callers that want the record's dict rows."""
    return [row_dict(row) for row in op_results(*args, **kwargs)]


def op_results(
    registry: Registry,
    op_name: str,
    backends: list[str],
    cases: list[Case],
    dtype: torch.dtype,
    device: str | torch.device,
    bench: Any,
    progress: Callable[[str], None] | None = None,
    *,
    ceilings: dict | None = None,
    seed: int = 0,
    rounds: int = 1,
    called_share: float = 1.0,
) -> list[OpRow]:
    """Check and time every backend on every case, in (case, backend) order; ``bench`` is a
    ``BenchConfig``. A case a backend declines is SKIP; a wrong output FAIL, still timed. With
    ``rounds`` > 1 the backends take turns, round after round, each with ``rep_ms / rounds``, and
    a row holds all its rounds' samples, so drift falls on every backend alike. ``called_share``:
    the fraction of ``warmup_ms`` and ``rep_ms`` the as-called timing gets where a CUDA-graph
    replay times the kernel too (a caller that uses only the kernel time needs less of it)."""
    op = registry.op(op_name)
    device = torch.device(device)
    rows = []
    for case in cases:
        inputs = op.make_inputs(case, dtype, device, seed)
        op.validate(inputs)  # an impossible case (k past the vocab, ...) is the caller's mistake: KbenchError
        with STOPWATCH.timed(OP_CHECK):
            reference = reference_output(op, inputs)
        if rounds > 1:
            rows += paired_rows(registry, op, backends, case, dtype, device, bench, inputs, reference,
                                ceilings or {}, seed, rounds)
            continue
        for backend in backends:
            if progress is not None:
                progress(f"{op_name} [{backend}] {case.label}")
            rows.append(_case_row(registry, op, backend, case, dtype, device, bench, inputs, reference,
                                  ceilings or {}, seed, called_share=called_share))
        del inputs, reference
    return rows


def _case_row(registry, op: Op, backend, case, dtype, device, bench, inputs, reference, ceilings, seed,
              check: Check | None = None, called_share: float = 1.0) -> OpRow:
    """Check ``backend`` at ``case`` (unless ``check`` is that check's result already), then time it
    as called (``called_share`` of the budget where a graph replay times it too) and replayed."""
    row = OpRow(op=op.name, backend=backend, case=case.label, dtype=dtype_name(dtype), device=str(device),
                shape=case.as_dict(), flops=float(op.flops(case)), bytes=float(op.bytes(case, dtype)))
    impl = registry.get(op.name, backend)
    reason = impl.reason(case, dtype, device)
    if reason:
        return dataclasses.replace(row, status="SKIP", note=reason)
    if check is None:
        check = check_implementation(registry, op.name, backend, case, dtype, device, seed=seed,
                                     reference=reference, inputs=inputs)
    row = dataclasses.replace(row, status="PASS" if check.ok else "FAIL", max_abs_err=check.max_abs_err,
                              max_rel_err=check.max_rel_err, note=check.detail or None)
    if not check.ok and check.detail.startswith("raised"):
        return row
    notes = [row.note] if row.note else []
    guard = Guard(case, dtype, seed, reference)
    graph_note = graph_unavailable(impl, device)
    called_bench = bench
    if graph_note is None and called_share != 1.0:
        called_bench = dataclasses.replace(bench, warmup_ms=bench.warmup_ms * called_share,
                                           rep_ms=bench.rep_ms * called_share)
    called = time_op(impl, op, inputs, device, called_bench, guard=guard)
    row = dataclasses.replace(row, latency_us=called.median_us, p20_us=called.p20_us, p80_us=called.p80_us,
                              min_us=called.min_us, mean_us=called.mean_us, reps=called.reps, method=called.method,
                              first_call_us=called.first_call_us, samples_us=list(called.samples_us))
    notes += [called.note] if called.note else []
    kernel = called
    if graph_note is None:
        try:
            kernel = time_op(impl, op, inputs, device, bench, cuda_graph=True, estimate_us=called.median_us,
                             guard=guard)
            row = dataclasses.replace(row, graph_latency_us=kernel.median_us, graph_p20_us=kernel.p20_us,
                                      graph_p80_us=kernel.p80_us, graph_calls=kernel.calls_per_rep,
                                      graph_input_sets=kernel.input_sets, graph_method=kernel.method,
                                      graph_samples_us=list(kernel.samples_us))
        except Exception as error:  # a capture failure is a fact about the backend, not a crash
            graph_note = f"CUDA-graph capture failed: {type(error).__name__}: {error}"
            torch.cuda.synchronize(device)
    if graph_note and device.type == "cuda":
        notes.append(graph_note)
    row = dataclasses.replace(row, **throughput(row.flops, row.bytes, kernel, ceilings))
    if guard.problem is not None:
        notes.insert(0, guard.problem.detail)
        row = dataclasses.replace(row, status="FAIL", max_abs_err=max(row.max_abs_err or 0.0, guard.problem.max_abs_err))
    if row.status == "PASS":
        suspect = limit_problem(row.flops, row.bytes, [called, kernel], ceilings)
        if suspect:
            notes.insert(0, suspect)
            row = dataclasses.replace(row, status="SUSPECT")
    return dataclasses.replace(row, note="; ".join(notes) or None)


@dataclasses.dataclass
class Guard:
    """What ``time_op`` checks the timed path against: the case's reference output; ``problem``
    is set to the failing ``Check`` when the timed calls or a call after a refill disagree."""

    case: Case
    dtype: torch.dtype
    seed: int
    reference: Any
    problem: Any = None


def paired_rows(registry, op: Op, backends, case, dtype, device, bench, inputs, reference, ceilings, seed,
                rounds: int) -> list[OpRow]:
    """One row per backend from ``rounds`` rounds that time the backends in turn; each backend is
    checked once (the same answer every round), its timed path in every round."""
    share = dataclasses.replace(bench, rep_ms=bench.rep_ms / rounds) if dataclasses.is_dataclass(bench) else bench
    per_backend: dict[str, list[OpRow]] = {backend: [] for backend in backends}
    checks = {backend: check_implementation(registry, op.name, backend, case, dtype, device, seed=seed,
                                            reference=reference, inputs=inputs)
              for backend in backends if not registry.get(op.name, backend).reason(case, dtype, device)}
    for _ in range(rounds):
        for backend in backends:
            per_backend[backend].append(_case_row(registry, op, backend, case, dtype, device, share, inputs,
                                                  reference, ceilings, seed, check=checks.get(backend)))
    return [merged_row(parts, ceilings) for parts in per_backend.values()]


def merged_row(parts: list[OpRow], ceilings: dict) -> OpRow:
    """The rounds of one backend as one row: statistics over all their samples, the worst status."""
    first = parts[0]
    order = ("SKIP", "PASS", "SUSPECT", "FAIL")
    status = max((p.status for p in parts), key=lambda s: order.index(s) if s in order else 0)
    notes = list(dict.fromkeys(p.note for p in parts if p.note))
    samples = [v for p in parts for v in (p.samples_us or [])]
    if not samples:
        return dataclasses.replace(first, status=status, note="; ".join(notes) or None)
    called = dataclasses.replace(summarize(samples, first.method), first_call_us=first.first_call_us)
    row = dataclasses.replace(first, status=status, note="; ".join(notes) or None, latency_us=called.median_us,
                              p20_us=called.p20_us, p80_us=called.p80_us, min_us=called.min_us,
                              mean_us=called.mean_us, reps=sum(p.reps or 0 for p in parts),
                              samples_us=list(called.samples_us))
    kernel = called
    graph_samples = [v for p in parts for v in (p.graph_samples_us or [])]
    if graph_samples:
        kernel = summarize(graph_samples, first.graph_method, first.graph_calls or 1)
        row = dataclasses.replace(row, graph_latency_us=kernel.median_us, graph_p20_us=kernel.p20_us,
                                  graph_p80_us=kernel.p80_us, graph_samples_us=list(kernel.samples_us))
    return dataclasses.replace(row, **throughput(row.flops, row.bytes, kernel, ceilings))


def graph_unavailable(impl, device: torch.device) -> str | None:
    """Why ``impl`` gets no CUDA-graph timing on ``device``, or None."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if not impl.cuda_graphs:
        return f"no CUDA-graph timing: backend {impl.backend!r} registered cuda_graphs=False"
    return None


def throughput(flops: float, bytes_moved: float, timing: Timing, ceilings: dict) -> dict:
    seconds = timing.median_us * 1e-6
    tflops = flops / seconds / 1e12 if seconds > 0 else math.nan
    gbps = bytes_moved / seconds / 1e9 if seconds > 0 else math.nan
    copy_gbps, matmul_tflops = ceilings.get("copy_gbps"), flops_ceiling_tflops(ceilings)
    return {
        "tflops": tflops,
        "gbps": gbps,
        "throughput_basis": "graph" if timing.method == "cuda-graph" else timing.method,
        "frac_peak_bw": gbps / copy_gbps if copy_gbps else None,
        "frac_peak_flops": tflops / matmul_tflops if matmul_tflops else None,
    }


def time_op(impl, op: Op, inputs: dict, device: torch.device, bench: Any, *, cuda_graph: bool = False,
            estimate_us: float | None = None, guard: Guard | None = None) -> Timing:
    """Time ``impl(**inputs)``, restoring in-place inputs before each call outside the timing;
    with a ``guard``, check the timed path afterwards (see the module docstring)."""
    graph_calls = None
    l2_bytes = l2_cache_bytes(device) if cuda_graph else 0
    if cuda_graph:
        graph_calls = graph_call_count(op, inputs, estimate_us, l2_bytes)
    fn, reset, sets = cycled_calls(impl, op, inputs, copies=graph_calls or 1, l2_bytes=l2_bytes)
    verify = None
    if guard is not None and guard.problem is None:
        def recheck(run_once, last):
            fresh = fresh_values(op, guard.case, guard.dtype, device, guard.seed)
            guard.problem = check_after_timing(op, guard.reference, last, run_once,
                                               fn.input_sets, fresh, op.tolerance(guard.dtype))
            # the refill reached tensors the sets share with ``inputs``: the values they had
            refill_in_place(fn.input_sets, op.make_inputs(guard.case, guard.dtype, device, guard.seed))

        def verify(run_once, last):
            if cuda_graph and sets < (graph_calls or 1) and op.inplace:
                return  # a replay calls some set twice: its in-place inputs change within the replay
            with STOPWATCH.timed(AFTER_TIMING):
                recheck(run_once, last)
    timing = measure(fn, device=device,
                     warmup_ms=bench.warmup_ms, rep_ms=bench.rep_ms, flush_l2=bench.flush_l2,
                     cuda_graph=cuda_graph, reset=reset, graph_calls=graph_calls,
                     keep_outputs=sets if sets > 1 else 0, verify=verify)
    return dataclasses.replace(timing, input_sets=sets)


def tensor_bytes(inputs: dict, names: list[str]) -> int:
    return sum(inputs[name].numel() * inputs[name].element_size() for name in names)


def copied_inputs(op: Op, inputs: dict, l2_bytes: int) -> tuple[list[str], list[str]]:
    """(in-place names, cold names): the inputs each call in a graph gets its own copy of. Every
    in-place tensor; the cold ones only where L2 could hold them (under twice ``l2_bytes``)."""
    inplace = [name for name in op.inplace if isinstance(inputs.get(name), torch.Tensor)]
    cold = [name for name in op.cold if isinstance(inputs.get(name), torch.Tensor) and name not in inplace]
    return inplace, (cold if 0 < tensor_bytes(inputs, cold) < 2 * l2_bytes else [])


def copies_spanning(nbytes: int, l2_bytes: int) -> int:
    return -(-2 * l2_bytes // nbytes)


def graph_call_count(op: Op, inputs: dict, estimate_us: float | None, l2_bytes: int) -> int:
    """Calls one graph holds: about ``GRAPH_REPLAY_TARGET_US`` at the eager estimate and, where
    calls get input copies, at least enough for them to span twice ``l2_bytes``. The estimate
    includes launch overhead, so alone it would leave a slow launcher's fewer copies in L2."""
    estimate = estimate_us if estimate_us and estimate_us > 0 else 1.0
    calls = int(min(MAX_GRAPH_CALLS, max(1, GRAPH_REPLAY_TARGET_US / estimate)))
    inplace, cold = copied_inputs(op, inputs, l2_bytes)
    per_call = tensor_bytes(inputs, inplace + cold)
    if per_call and l2_bytes:
        affordable = max(1, INPLACE_COPY_BUDGET_BYTES // per_call)
        calls = max(calls, min(copies_spanning(per_call, l2_bytes), affordable, MAX_COPIED_GRAPH_CALLS))
    return calls


def cycled_calls(impl, op: Op, inputs: dict, copies: int, l2_bytes: int = 0):
    """(fn, reset, sets): ``fn`` calls ``impl`` on the next of ``sets`` input sets (``copied_inputs``
    copied in each; the dicts are ``fn.input_sets``, sharing the other tensors with ``inputs``);
    ``reset`` restores their in-place inputs (None without any)."""
    inplace, cold = copied_inputs(op, inputs, l2_bytes)
    cold = cold if copies > 1 else []  # one call a replay: nothing to rotate
    cloned = inplace + cold
    if not cloned:
        work = clone_inputs(inputs)

        def call():
            return impl(**work)
        call.input_sets = [work]
        return call, None, 1
    wanted = max(copies if inplace else 1,
                 min(copies, copies_spanning(tensor_bytes(inputs, cold), l2_bytes)) if cold else 1)
    sets_count = max(1, min(wanted, INPLACE_COPY_BUDGET_BYTES // max(tensor_bytes(inputs, cloned), 1)))
    sets = [inputs | {name: inputs[name].clone() for name in cloned} for _ in range(sets_count)]
    order = itertools.cycle(sets)

    def fn():
        return impl(**next(order))
    fn.input_sets = sets  # for the check after timing

    def reset():
        for work in sets:
            for name in inplace:
                work[name].copy_(inputs[name])

    return fn, (reset if inplace else None), sets_count
