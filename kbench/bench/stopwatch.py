"""Where a run's wall time goes: each check's share beside the time spent measuring.

kbench's checks (the op comparisons on the case's and the hard inputs, the re-check after the
timed repetitions, the pipeline against its float32 oracle, ``--check hf``) are on by default,
so their cost is part of every run and is measured in every run: the code that checks wraps
itself in ``STOPWATCH.timed(part)``, and ``kbench run`` puts ``STOPWATCH.summary(total)`` in
the record under ``wall_s`` and prints the share.

A region counts only when no other region is open, so a check inside a check is not counted
twice. On CUDA the device is synchronised on entry and exit, so kernels launched before the
region (the timing's) are not billed to it, nor are the region's own left for whoever syncs next.
"""

from __future__ import annotations

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


class Stopwatch:
    """Seconds per named part, accumulated over non-overlapping regions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._open = 0

    def reset(self) -> None:
        self.seconds.clear()
        self._open = 0

    @contextmanager
    def timed(self, part: str) -> Iterator[None]:
        if self._open:
            self._open += 1
            try:
                yield
            finally:
                self._open -= 1
            return
        _sync()
        self._open = 1
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self.seconds[part] += time.perf_counter() - start
            self._open = 0

    def summary(self, total_s: float) -> dict:
        """``{"total": s, "checks": s, "checks_share": fraction, "parts": {part: s}}``."""
        order = [part for part in PARTS if part in self.seconds] + sorted(set(self.seconds) - set(PARTS))
        parts = {part: round(self.seconds[part], 3) for part in order}
        checks = sum(self.seconds.values())
        return {"total": round(total_s, 3), "checks": round(checks, 3),
                "checks_share": checks / total_s if total_s > 0 else None, "parts": parts}


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def describe(wall: dict) -> str:
    """'checks took 12.3 s of 95.1 s wall (12.9%): op checks 4.1 s, ...' for a ``summary``."""
    if not wall or wall.get("checks_share") is None:
        return ""
    parts = ", ".join(f"{part} {seconds:.1f} s" for part, seconds in wall["parts"].items())
    return (f"checks took {wall['checks']:.1f} s of {wall['total']:.1f} s wall "
            f"({100 * wall['checks_share']:.1f}%)" + (f": {parts}" if parts else ""))


STOPWATCH = Stopwatch()
