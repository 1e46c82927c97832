"""Is a change real? A verdict on two runs' latency samples of one row.

``verdict(base, new)`` bootstraps the ratio of medians (new / base): both sample sets are
resampled with replacement ``RESAMPLES`` times (seeded, so a comparison repeats exactly) and
the 2.5th and 97.5th percentiles of the ratio bound it at 95%. A percentile bootstrap of the
median rather than a rank test: it gives the size of a change with its interval, which is
what a threshold is held against, and it needs no assumption about the shape of the
distributions (latencies are skewed, with a tail of slow repetitions).

- ``slower``: the whole interval is above ``1 + same_band``; ``faster``: below ``1 / (1 +
  same_band)``; ``same``: inside the band both ways; ``unsure``: anything else (the data
  cannot tell a change of ``same_band`` from noise).
- ``resolution``: the interval's half-width, the smallest change the data could show.

``same_band`` absorbs what samples within one process cannot see: drift between two runs
(clocks, placement) of about a percent on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
SAME_BAND = 0.02
MIN_SAMPLES = 5


@dataclass(frozen=True)
class Verdict:
    verdict: str
    ratio: float  # median(new) / median(base)
    ratio_low: float
    ratio_high: float

    @property
    def resolution(self) -> float:
        return (self.ratio_high - self.ratio_low) / 2.0


def _clean(samples) -> np.ndarray:
    if samples is None or (isinstance(samples, float) and math.isnan(samples)):
        return np.empty(0)
    values = np.asarray(list(samples), dtype=float)
    return values[np.isfinite(values) & (values > 0)]


def verdict(base_samples, new_samples, same_band: float = SAME_BAND, seed: int = 0) -> Verdict | None:
    """The verdict of ``new`` against ``base`` (see the module docstring); None with fewer than
    ``MIN_SAMPLES`` samples on a side (records without samples)."""
    base, new = _clean(base_samples), _clean(new_samples)
    if len(base) < MIN_SAMPLES or len(new) < MIN_SAMPLES:
        return None
    rng = np.random.default_rng(seed)
    base_medians = np.median(rng.choice(base, (RESAMPLES, len(base))), axis=1)
    new_medians = np.median(rng.choice(new, (RESAMPLES, len(new))), axis=1)
    ratios = new_medians / base_medians
    low, high = np.percentile(ratios, [2.5, 97.5])
    ratio = float(np.median(new) / np.median(base))
    if low > 1.0 + same_band:
        word = "slower"
    elif high < 1.0 / (1.0 + same_band):
        word = "faster"
    elif low >= 1.0 / (1.0 + same_band) and high <= 1.0 + same_band:
        word = "same"
    else:
        word = "unsure"
    return Verdict(word, ratio, float(low), float(high))
