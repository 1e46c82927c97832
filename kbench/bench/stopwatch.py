"""Where a run's wall time goes: each check's share beside the time spent measuring.

kbench's checks (the op comparisons on the case's and the hard inputs, the re-check after the
timed repetitions, the pipeline against its float32 oracle, ``--check hf``) are on by default,
so their cost is part of every run and is measured in every run: the code that checks wraps
itself in ``STOPWATCH.timed(part)``, and ``kbench run`` puts ``STOPWATCH.summary(total)`` in
the record under ``wall_s`` and prints the share.

A region counts only when no other region is open, so a check inside a check is not counted
twice. The exception is ``FIRST_CALLS``: the first call of a backend at an op case, and the
pipeline's first prefill and decode step at a checked point, happen inside checks but are paid
with or without them (compile, autotune, lazy initialisation: the timing would otherwise pay
them in its warm-up), so that region pauses the check around it and is reported apart, not as
a check. On CUDA the device is synchronised at every start and stop, so kernels launched before
a region (the timing's) are not billed to it, nor are the region's own left for whoever syncs next.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# The parts of a run that check rather than measure, in the order a run meets them.
OP_CHECK = "op checks"
AFTER_TIMING = "re-check after timing"
PIPELINE_CHECK = "pipeline check"
HF_CHECK = "hf check"
PARTS = (OP_CHECK, AFTER_TIMING, PIPELINE_CHECK, HF_CHECK)
# Not a check: first calls made inside the checks, which any run pays (see above).
FIRST_CALLS = "first calls"


class Stopwatch:
    """Seconds per named part, accumulated over non-overlapping regions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list | None] = []  # an open region: [part, start] if it counts, else None

    def reset(self) -> None:
        self.seconds.clear()
        self._stack = []

    def _counting(self) -> list | None:
        return next((region for region in reversed(self._stack) if region is not None), None)

    @contextmanager
    def timed(self, part: str) -> Iterator[None]:
        outer = self._counting()
        counts = outer is None or (part == FIRST_CALLS and outer[0] != FIRST_CALLS)
        if not counts:  # inside another region: its time is that region's
            self._stack.append(None)
            try:
                yield
            finally:
                self._stack.pop()
            return
        _sync()
        now = time.perf_counter()
        if outer is not None:  # pause the check around a first call
            self.seconds[outer[0]] += now - outer[1]
        self._stack.append([part, now])
        try:
            yield
        finally:
            _sync()
            now = time.perf_counter()
            region = self._stack.pop()
            self.seconds[part] += now - region[1]
            if outer is not None:
                outer[1] = now

    def first_calls(self, when: bool = True):
        """``timed(FIRST_CALLS)`` where ``when``, else a region that bills nothing."""
        return self.timed(FIRST_CALLS) if when else contextlib.nullcontext()

    def summary(self, total_s: float) -> dict:
        """``{"total": s, "checks": s, "checks_share": fraction, "parts": {check part: s},
        "first_calls": s}``."""
        checks_seen = set(self.seconds) - {FIRST_CALLS}
        order = [part for part in PARTS if part in checks_seen] + sorted(checks_seen - set(PARTS))
        parts = {part: round(self.seconds[part], 3) for part in order}
        checks = sum(self.seconds[part] for part in order)
        return {"total": round(total_s, 3), "checks": round(checks, 3),
                "checks_share": checks / total_s if total_s > 0 else None, "parts": parts,
                "first_calls": round(self.seconds.get(FIRST_CALLS, 0.0), 3)}


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def describe(wall: dict) -> str:
    """'checks took 12.3 s of 95.1 s wall (12.9%): op checks 4.1 s, ...' for a ``summary``."""
    if not wall or wall.get("checks_share") is None:
        return ""
    parts = ", ".join(f"{part} {seconds:.1f} s" for part, seconds in wall["parts"].items())
    first = (f"; first calls inside them (compile, autotune, lazy init, paid with or without checks) "
             f"{wall['first_calls']:.1f} s, not counted" if wall.get("first_calls") else "")
    return (f"checks took {wall['checks']:.1f} s of {wall['total']:.1f} s wall "
            f"({100 * wall['checks_share']:.1f}%)" + (f": {parts}" if parts else "") + first)


STOPWATCH = Stopwatch()
