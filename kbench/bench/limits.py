"""The physical-limit gate: no row may claim more than the machine can do.

A row's bytes/s and FLOP/s follow from the op's byte and FLOP model (``Op.bytes``,
``Op.flops``) and its median time. ``kbench.env.measure_ceilings`` measures, on the machine
at hand, copy bandwidth at several working-set sizes (``copy_gbps_by_bytes``: bytes moved per
call -> GB/s, from the fastest repetition; a small set is served from cache, faster than
memory) and matmul throughput (``matmul_tflops``). A row past ``MARGIN`` times the ceiling that applies is ``SUSPECT``:
an output that was cached, work that was skipped or that ran outside the timed region, or a
byte or FLOP model that counts work the op does not do. The margin leaves room for what a
copy does not show (a fused kernel that keeps a row in registers, the noise of one ceiling
measurement); the cheats it is for are off by orders of magnitude.
"""

from __future__ import annotations

import math

MARGIN = 3.0


def bandwidth_ceiling_gbps(ceilings: dict) -> float | None:
    """The fastest copy measured at any working-set size (a cache's bandwidth, where a set fit
    in one); None when nothing was measured. The fastest, not the size-matched one: on a
    shared machine one size's measurement may fall in a busy moment."""
    ladder = [gbps for gbps in (ceilings.get("copy_gbps_by_bytes") or {}).values() if gbps]
    return max(ladder) if ladder else ceilings.get("copy_gbps")


def flops_ceiling_tflops(ceilings: dict) -> float | None:
    return ceilings.get("matmul_tflops") or ceilings.get("matmul_bf16_tflops")


def rate_problem(flops: float | None, nbytes: float | None, median_us: float | None, ceilings: dict,
                 what: str = "") -> str | None:
    """'SUSPECT: ...' when ``flops`` or ``nbytes`` in ``median_us`` exceed ``MARGIN`` x the ceiling."""
    if not median_us or median_us <= 0 or not math.isfinite(median_us):
        return None
    seconds = median_us * 1e-6
    bandwidth = bandwidth_ceiling_gbps(ceilings)
    if nbytes and bandwidth:
        gbps = nbytes / seconds / 1e9
        if gbps > MARGIN * bandwidth:
            return (f"SUSPECT{what}: {gbps:,.0f} GB/s is {gbps / bandwidth:,.1f}x the measured copy bandwidth "
                    f"({bandwidth:,.0f} GB/s; the limit is {MARGIN:g}x): cached output, skipped or unseen work, "
                    "or a byte model that overcounts")
    peak = flops_ceiling_tflops(ceilings)
    if flops and peak:
        tflops = flops / seconds / 1e12
        if tflops > MARGIN * peak:
            return (f"SUSPECT{what}: {tflops:,.2f} TFLOP/s is {tflops / peak:,.1f}x the measured matmul throughput "
                    f"({peak:,.2f} TFLOP/s; the limit is {MARGIN:g}x): cached output, skipped or unseen work")
    return None


def limit_problem(flops: float | None, nbytes: float | None, timings, ceilings: dict) -> str | None:
    """``rate_problem`` of the first of ``timings`` (as called, graph replay) past the limit."""
    for timing in timings:
        problem = rate_problem(flops, nbytes, timing.median_us, ceilings,
                               f" ({timing.method})" if timing.method else "")
        if problem:
            return problem
    return None
