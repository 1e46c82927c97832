"""The rows of a run record: one dataclass per kind, each one measurement of one
(kind, op, backend, case, dtype), and ``row_dict``, which serialises them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

# SUSPECT: the row claims more than the machine's measured ceilings allow (kbench.bench.limits);
# a failure like FAIL, never a speedup.
STATUSES = ("PASS", "FAIL", "SKIP", "SUSPECT")
FAILING = ("FAIL", "SUSPECT")
# Columns every row has (None where they do not apply), in the order tables show them.
ROW_KEYS = (
    "kind", "op", "backend", "case", "dtype", "device", "shape", "status",
    "latency_us", "p20_us", "p80_us", "min_us", "mean_us", "reps", "method",
    "graph_latency_us", "graph_p20_us", "graph_p80_us", "graph_calls", "graph_input_sets", "graph_method",
    "flops", "bytes", "tflops", "gbps", "throughput_basis", "frac_peak_flops", "frac_peak_bw",
    "max_abs_err", "max_rel_err", "note",
)


@dataclass(frozen=True, kw_only=True)
class Row:
    """What every row has. ``shape`` is the case's dimensions; latencies are µs per call (per
    token for decode), ``method`` the timer (``cuda-events``, ``perf_counter``, ...)."""

    kind: ClassVar[str]
    op: str
    backend: str
    case: str | None = None
    dtype: str | None = None
    device: str | None = None
    shape: dict[str, Any] | str | None = None
    status: str | None = None
    note: str | None = None
    latency_us: float | None = None
    p20_us: float | None = None
    p80_us: float | None = None
    min_us: float | None = None
    mean_us: float | None = None
    reps: int | None = None
    method: str | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise ValueError(f"row status {self.status!r} is not one of {STATUSES}")


@dataclass(frozen=True, kw_only=True)
class OpRow(Row):
    """One op on one case: the check, the called and the CUDA-graph (kernel) latency, throughput."""

    kind: ClassVar[str] = "op"
    graph_latency_us: float | None = None
    graph_p20_us: float | None = None
    graph_p80_us: float | None = None
    graph_calls: int | None = None
    graph_input_sets: int | None = None
    graph_method: str | None = None
    flops: float | None = None
    bytes: float | None = None
    tflops: float | None = None
    gbps: float | None = None
    throughput_basis: str | None = None
    frac_peak_flops: float | None = None
    frac_peak_bw: float | None = None
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    first_call_us: float | None = None
    samples_us: list[float] | None = None
    graph_samples_us: list[float] | None = None


@dataclass(frozen=True, kw_only=True)
class CheckRow(Row):
    """The pipeline against the oracle at one (batch, prompt_len): logit errors (relative to the
    step's largest oracle logit), the error allowed and greedy-token agreement."""

    kind: ClassVar[str] = "check"
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    backends: str | None = None
    checked_batch: int | None = None
    reference_rel_err: float | None = None
    allowed_rel_err: float | None = None
    token_agreement: float | None = None
    tokens_compared: int | None = None
    oracle: str | None = None  # None: kbench's float32 all-reference pipeline; "hf": transformers


@dataclass(frozen=True, kw_only=True)
class PrefillRow(Row):
    """One prefill of ``batch`` prompts: latency, time to first token, TFLOP/s and peak memory."""

    kind: ClassVar[str] = "prefill"
    flops: float | None = None
    tflops: float | None = None
    throughput_basis: str | None = None
    frac_peak_flops: float | None = None
    ttft_us: float | None = None
    tokens_per_s: float | None = None
    peak_memory_bytes: int | None = None
    backends: str | None = None


@dataclass(frozen=True, kw_only=True)
class DecodeRow(Row):
    """Decode steps after a prefill: per-token latency, bytes read per step, roofline, tokens/s."""

    kind: ClassVar[str] = "decode"
    bytes: float | None = None
    gbps: float | None = None
    throughput_basis: str | None = None
    frac_peak_bw: float | None = None
    tokens_per_s: float | None = None
    peak_memory_bytes: int | None = None
    cuda_graph: bool | None = None
    cuda_graph_note: str | None = None
    backends: str | None = None


@dataclass(frozen=True, kw_only=True)
class BreakdownRow(Row):
    """One op's part of a prefill or a decode step at one (batch, prompt_len): ``calls`` per
    step, ``latency_us`` per call, ``total_us`` per step and its ``share`` of ``step_us``, the
    measured step; in a decode step ``bytes`` one call moves, its ``gbps`` and ``frac_peak_bw``
    (of the run's copy ceiling). ``part`` tells calls of one op apart (``linear[qkv]``,
    ``linear[lm_head]``); ``op`` ``remainder`` is the step less the ops' sum (launch gaps, host
    work, glue); ``method`` says how the ops were timed (``kbench.bench.breakdown``); ``mix`` is
    the label of the mix the step ran (``pipeline``, or one ``kbench tune`` timed)."""

    kind: ClassVar[str] = "breakdown"
    bytes: float | None = None
    gbps: float | None = None
    frac_peak_bw: float | None = None
    part: str | None = None
    phase: str | None = None
    calls: int | None = None
    total_us: float | None = None
    share: float | None = None
    step_us: float | None = None
    backends: str | None = None
    mix: str | None = None


ROW_TYPES: dict[str, type[Row]] = {cls.kind: cls for cls in (OpRow, CheckRow, PrefillRow, DecodeRow, BreakdownRow)}
KINDS = tuple(ROW_TYPES)


def row_dict(row: Row) -> dict[str, Any]:
    """The record's dict for ``row``: ``ROW_KEYS`` in order (None where the kind has no such
    field), then the kind's own fields."""
    values = {field.name: getattr(row, field.name) for field in dataclasses.fields(row)}
    values["kind"] = row.kind
    return {key: values.pop(key, None) for key in ROW_KEYS} | values
