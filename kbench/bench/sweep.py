"""Op sweeps: check, then time, each (backend, case) of one op; one run-record row each.

A row (``kbench.results.rows.OpRow``) holds the correctness check against the reference (``status``,
``max_abs_err``, ``max_rel_err``) and two latencies:

- ``latency_us`` (``method`` ``cuda-events`` or ``perf_counter``): the call as a user makes
  it, Python and launch included, L2 flushed before each repetition;
- ``graph_latency_us`` (``graph_method`` ``cuda-graph``): the kernel's GPU time, replayed
  from a CUDA graph holding ``graph_calls`` calls; measured on CUDA for every implementation
  registered with ``cuda_graphs=True`` (``note`` says why it is missing otherwise).

At decode shapes the two differ by launch overhead; at large shapes they agree. TFLOP/s and
GB/s (``op.flops``, ``op.bytes``) use the kernel time where there is one
(``throughput_basis`` says which), and ``frac_peak_*`` divide by the measured ceilings.

Inputs an op may overwrite (``op.inplace``) are restored from a pristine copy before every
repetition, outside the timed region; inside one graph each captured call gets its own copy
(up to a memory budget), so no timed call sees data an earlier call rewrote. Inputs a model
step reads from HBM (``op.cold``: attention_decode's KV cache) get copies too where L2 could
hold them (``graph_input_sets``). The graph holds enough calls for the copies to span twice the
L2 where the budget allows (``graph_call_count``), so they are read from HBM whichever backend
runs: how many calls fill a replay depends on the backend's launch overhead, and fewer copies
would leave a slow launcher's in L2. Where the calls have their own input sets, they have their
own outputs too (``measure(keep_outputs=...)``): a backend that writes new tensors (torch.compile
of rope or add_rmsnorm) then writes as many buffers as one writing in place writes copies, where
one reused output buffer kept its writes in L2 and off HBM.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import torch

from kbench.bench.check import check_implementation, clone_inputs, reference_output
from kbench.bench.timing import GRAPH_REPLAY_TARGET_US, MAX_GRAPH_CALLS, Timing, l2_cache_bytes, measure
from kbench.ops.base import Case, Op, dtype_name
from kbench.registry import Registry
from kbench.results.rows import OpRow, row_dict

INPLACE_COPY_BUDGET_BYTES = 256 * 2**20
# The most calls a graph takes so that the per-call input copies span twice the L2.
MAX_COPIED_GRAPH_CALLS = 1000


def op_rows(
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
) -> list[dict]:
    """``op_results`` as the record stores them (``row_dict``)."""
    return [row_dict(row) for row in op_results(registry, op_name, backends, cases, dtype, device, bench, progress,
                                                ceilings=ceilings, seed=seed)]


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
) -> list[OpRow]:
    """Check and time every backend on every case; rows in (case, backend) order.

    ``bench`` is a ``kbench.spec.BenchConfig`` (``warmup_ms``, ``rep_ms``, ``flush_l2``).
    A backend that cannot run a case gives a ``SKIP`` row with the reason; one whose output
    is wrong gives a ``FAIL`` row (still timed, unless it raised).
    """
    op = registry.op(op_name)
    device = torch.device(device)
    rows = []
    for case in cases:
        inputs = op.make_inputs(case, dtype, device, seed)
        op.validate(inputs)  # an impossible case (k past the vocab, ...) is the caller's mistake: KbenchError
        reference = reference_output(op, inputs)
        for backend in backends:
            if progress is not None:
                progress(f"{op_name} [{backend}] {case.label}")
            rows.append(_case_row(registry, op, backend, case, dtype, device, bench, inputs, reference,
                                  ceilings or {}, seed))
        del inputs, reference
    return rows


def _case_row(registry, op: Op, backend, case, dtype, device, bench, inputs, reference, ceilings, seed) -> OpRow:
    row = OpRow(op=op.name, backend=backend, case=case.label, dtype=dtype_name(dtype), device=str(device),
                shape=case.as_dict(), flops=float(op.flops(case)), bytes=float(op.bytes(case, dtype)))
    impl = registry.get(op.name, backend)
    reason = impl.reason(case, dtype, device)
    if reason:
        return dataclasses.replace(row, status="SKIP", note=reason)
    check = check_implementation(registry, op.name, backend, case, dtype, device, seed=seed,
                                 reference=reference, inputs=inputs)
    row = dataclasses.replace(row, status="PASS" if check.ok else "FAIL", max_abs_err=check.max_abs_err,
                              max_rel_err=check.max_rel_err, note=check.detail or None)
    if not check.ok and check.detail.startswith("raised"):
        return row
    notes = [row.note] if row.note else []
    called = time_op(impl, op, inputs, device, bench)
    row = dataclasses.replace(row, latency_us=called.median_us, p20_us=called.p20_us, p80_us=called.p80_us,
                              min_us=called.min_us, mean_us=called.mean_us, reps=called.reps, method=called.method)
    kernel = called
    graph_note = graph_unavailable(impl, device)
    if graph_note is None:
        try:
            kernel = time_op(impl, op, inputs, device, bench, cuda_graph=True, estimate_us=called.median_us)
            row = dataclasses.replace(row, graph_latency_us=kernel.median_us, graph_p20_us=kernel.p20_us,
                                      graph_p80_us=kernel.p80_us, graph_calls=kernel.calls_per_rep,
                                      graph_input_sets=kernel.input_sets, graph_method=kernel.method)
        except Exception as error:  # a capture failure is a fact about the backend, not a crash
            graph_note = f"CUDA-graph capture failed: {type(error).__name__}: {error}"
            torch.cuda.synchronize(device)
    if graph_note and device.type == "cuda":
        notes.append(graph_note)
    return dataclasses.replace(row, **throughput(row.flops, row.bytes, kernel, ceilings), note="; ".join(notes) or None)


def graph_unavailable(impl, device: torch.device) -> str | None:
    """Why ``impl`` gets no CUDA-graph timing on ``device``, or None."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if not impl.cuda_graphs:
        return f"no CUDA-graph timing: backend {impl.backend!r} registered cuda_graphs=False"
    return None


def throughput(flops: float, bytes_moved: float, timing: Timing, ceilings: dict) -> dict:
    """TFLOP/s, GB/s and their fractions of the measured ceilings at ``timing.median_us``."""
    seconds = timing.median_us * 1e-6
    tflops = flops / seconds / 1e12 if seconds > 0 else math.nan
    gbps = bytes_moved / seconds / 1e9 if seconds > 0 else math.nan
    copy_gbps, matmul_tflops = ceilings.get("copy_gbps"), ceilings.get("matmul_bf16_tflops")
    return {
        "tflops": tflops,
        "gbps": gbps,
        "throughput_basis": "graph" if timing.method == "cuda-graph" else timing.method,
        "frac_peak_bw": gbps / copy_gbps if copy_gbps else None,
        "frac_peak_flops": tflops / matmul_tflops if matmul_tflops else None,
    }


def time_op(impl, op: Op, inputs: dict, device: torch.device, bench: Any, *, cuda_graph: bool = False,
            estimate_us: float | None = None) -> Timing:
    """Time ``impl(**inputs)``, restoring in-place inputs before each call outside the timing."""
    graph_calls = None
    l2_bytes = l2_cache_bytes(device) if cuda_graph else 0
    if cuda_graph:
        graph_calls = graph_call_count(op, inputs, estimate_us, l2_bytes)
    fn, reset, sets = cycled_calls(impl, op, inputs, copies=graph_calls or 1, l2_bytes=l2_bytes)
    timing = measure(fn, device=device, warmup_ms=bench.warmup_ms, rep_ms=bench.rep_ms,
                     flush_l2=bench.flush_l2, cuda_graph=cuda_graph, reset=reset, graph_calls=graph_calls,
                     keep_outputs=sets if sets > 1 else 0)
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
    """Copies of ``nbytes`` each that span twice ``l2_bytes``."""
    return -(-2 * l2_bytes // nbytes)


def graph_call_count(op: Op, inputs: dict, estimate_us: float | None, l2_bytes: int) -> int:
    """Calls one graph holds: enough to last about ``GRAPH_REPLAY_TARGET_US`` at the eager
    estimate (at most ``MAX_GRAPH_CALLS``) and, where calls get their own input copies
    (``copied_inputs``), at least enough for the copies to span twice ``l2_bytes`` (within the
    copy budget and ``MAX_COPIED_GRAPH_CALLS``). The estimate is the eager call, launch overhead
    included, so alone it gave a backend with a slower launch fewer copies, which stayed in L2:
    37 of triton's add_rmsnorm residual at 64 x 4096 (18 MB, in the H100's 50 MB L2) against 99
    of cuda's; 9 of triton's 2 MB KV cache at batch 1 x 512 (GQA-8) against 50 of cuda's."""
    estimate = estimate_us if estimate_us and estimate_us > 0 else 1.0
    calls = int(min(MAX_GRAPH_CALLS, max(1, GRAPH_REPLAY_TARGET_US / estimate)))
    inplace, cold = copied_inputs(op, inputs, l2_bytes)
    per_call = tensor_bytes(inputs, inplace + cold)
    if per_call and l2_bytes:
        affordable = max(1, INPLACE_COPY_BUDGET_BYTES // per_call)
        calls = max(calls, min(copies_spanning(per_call, l2_bytes), affordable, MAX_COPIED_GRAPH_CALLS))
    return calls


def cycled_calls(impl, op: Op, inputs: dict, copies: int, l2_bytes: int = 0):
    """(fn, reset, sets): ``fn`` calls ``impl`` on the next of ``sets`` input sets; ``reset``
    restores every set's in-place inputs (None without any). A set has its own copy of the
    in-place inputs and, where ``copies`` > 1 calls share a graph and the op's ``cold`` inputs
    are under twice ``l2_bytes``, of those too: enough sets that a call's cold inputs were last
    read over 2 x L2 of other data ago (all sets within INPLACE_COPY_BUDGET_BYTES).
    """
    inplace, cold = copied_inputs(op, inputs, l2_bytes)
    cold = cold if copies > 1 else []  # one call a replay: nothing to rotate
    cloned = inplace + cold
    if not cloned:
        work = clone_inputs(inputs)
        return (lambda: impl(**work)), None, 1
    wanted = max(copies if inplace else 1,
                 min(copies, copies_spanning(tensor_bytes(inputs, cold), l2_bytes)) if cold else 1)
    sets_count = max(1, min(wanted, INPLACE_COPY_BUDGET_BYTES // max(tensor_bytes(inputs, cloned), 1)))
    sets = [inputs | {name: inputs[name].clone() for name in cloned} for _ in range(sets_count)]
    order = itertools.cycle(sets)

    def fn():
        return impl(**next(order))

    def reset():
        for work in sets:
            for name in inplace:
                work[name].copy_(inputs[name])

    return fn, (reset if inplace else None), sets_count
