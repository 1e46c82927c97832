"""The guards one by one: the settling of one-time costs, the physical-limit gate, the
bootstrap verdict, paired rounds, the machine state, and (on a GPU) work the events miss."""

import math

import numpy as np
import pytest
import torch

from kbench.bench.limits import MARGIN, rate_problem
from kbench.bench.sweep import op_rows
from kbench.bench.timing import measure
from kbench.env import machine_record, machine_state
from kbench.ops.norm import RMSNORM, rmsnorm_reference
from kbench.registry import Implementation, Registry
from kbench.results.noise import verdict
from kbench.spec import BenchConfig

BENCH = BenchConfig(warmup_ms=1.0, rep_ms=5.0)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_one_time_costs_stay_out_of_the_kept_repetitions():
    # a compile-like backend: a 15 s first call, then a few tens-of-ms calls, then 93 µs
    clock = FakeClock()
    durations = iter([15e6, 48e3, 72e3, 52e3, 52e3, 36e3, 64e3] + [93.0] * 100_000)

    def call():
        clock.now += next(durations) * 1e-6

    timing = measure(call, device="cpu", warmup_ms=1.0, rep_ms=10.0, timer=clock)
    assert timing.first_call_us == pytest.approx(15e6)
    assert timing.median_us == pytest.approx(93.0) and timing.p80_us == pytest.approx(93.0)
    assert timing.reps >= 100  # counts set by the steady time, not by a slow settling call


def test_the_gate_holds_rates_against_the_measured_ceilings():
    ceilings = {"copy_gbps_by_bytes": {"65536": 50.0, "67108864": 10.0}, "matmul_tflops": 0.1}
    assert rate_problem(1e6, 1e9, 1e6, ceilings) is None  # 1 GB/s, 1 MFLOP/s
    fast = rate_problem(0.0, 1e9, 1e9 / (MARGIN * 50.0 * 1e9) * 1e6 * 0.5, ceilings)  # 2 x the limit
    assert fast.startswith("SUSPECT") and "GB/s" in fast
    flops = rate_problem(1e12, 0.0, 1e6, ceilings)  # 1 TFLOP/s against 0.1
    assert flops.startswith("SUSPECT") and "TFLOP/s" in flops


def test_an_op_row_past_the_ceilings_is_suspect_and_fails_the_run():
    registry = Registry()
    registry.add_op(RMSNORM, "test")
    registry.add_implementation(Implementation("rmsnorm", "honest", rmsnorm_reference, plugin="test"))
    tiny = {"copy_gbps_by_bytes": {"1": 1e-6}, "matmul_tflops": 1e-12}  # a machine that cannot move a byte
    (row,) = op_rows(registry, "rmsnorm", ["honest"], [RMSNORM.test_cases[1]], torch.float32, "cpu", BENCH,
                     ceilings=tiny)
    assert row["status"] == "SUSPECT" and row["note"].startswith("SUSPECT")


def test_verdicts_tell_a_change_from_noise():
    rng = np.random.default_rng(1)
    base = 100.0 + rng.normal(0, 1, 400)
    assert verdict(base, 100.0 + rng.normal(0, 1, 400)).verdict == "same"
    assert verdict(base, 105.0 + rng.normal(0, 1, 400)).verdict == "slower"
    assert verdict(base, 95.0 + rng.normal(0, 1, 400)).verdict == "faster"
    assert verdict(base[:6], 101.0 + rng.normal(0, 30, 6)).verdict == "unsure"
    assert verdict(base[:3], base[:3]) is None  # too few samples: no verdict
    result = verdict(base, 105.0 + rng.normal(0, 1, 400))
    assert result.ratio_low < 1.05 < result.ratio_high and result.resolution < 0.01


def test_paired_rounds_keep_every_rounds_samples():
    registry = Registry()
    registry.add_op(RMSNORM, "test")
    registry.add_implementation(Implementation("rmsnorm", "honest", rmsnorm_reference, plugin="test"))
    rows = op_rows(registry, "rmsnorm", ["reference", "honest"], [RMSNORM.test_cases[0]], torch.float32, "cpu",
                   BENCH, rounds=3)
    assert [r["backend"] for r in rows] == ["reference", "honest"]
    for row in rows:
        assert row["status"] == "PASS" and row["reps"] >= 3 * 5
        assert row["latency_us"] == pytest.approx(float(np.median(row["samples_us"])), rel=0.2)


def test_paired_rounds_check_each_backend_once_and_guard_every_round(monkeypatch):
    import kbench.bench.sweep as sweep

    checked, guarded = [], []
    check, recheck = sweep.check_implementation, sweep.check_after_timing
    monkeypatch.setattr(sweep, "check_implementation", lambda *a, **k: checked.append(a[2]) or check(*a, **k))
    monkeypatch.setattr(sweep, "check_after_timing", lambda *a, **k: guarded.append(1) or recheck(*a, **k))
    registry = Registry()
    registry.add_op(RMSNORM, "test")
    registry.add_implementation(Implementation("rmsnorm", "honest", rmsnorm_reference, plugin="test"))
    rows = op_rows(registry, "rmsnorm", ["reference", "honest"], [RMSNORM.test_cases[0]], torch.float32, "cpu",
                   BENCH, rounds=3)
    assert all(row["status"] == "PASS" for row in rows)
    assert sorted(checked) == ["honest", "reference"] and len(guarded) == 2 * 3


def test_the_machine_state_is_recorded():
    start = machine_state("cpu")
    assert start["load_avg"] is None or len(start["load_avg"]) == 3
    record = machine_record(start, machine_state("cpu"))
    assert record["throttled"] is None  # a CPU has no throttle reasons to report
    throttled = machine_record({"throttle_reasons": []}, {"throttle_reasons": ["hardware thermal slowdown"]})
    assert throttled["throttled"] is True


@pytest.mark.gpu
def test_work_on_an_unjoined_stream_is_timed_by_the_wall_clock():
    side = torch.cuda.Stream()
    a = torch.randn(4096, 4096, device="cuda")

    def sneaky():
        with torch.cuda.stream(side):  # 8 matmuls the current stream never waits for
            for _ in range(8):
                a @ a
        return a

    honest = measure(lambda: [a @ a for _ in range(8)], device="cuda", warmup_ms=5, rep_ms=50)
    timing = measure(sneaky, device="cuda", warmup_ms=5, rep_ms=50)
    assert timing.note and "another stream" in timing.note
    assert timing.median_us > 0.5 * honest.median_us, (timing, honest)


@pytest.mark.gpu
def test_an_honest_call_has_no_escaped_work():
    a = torch.randn(4096, 4096, device="cuda")
    timing = measure(lambda: a @ a, device="cuda", warmup_ms=5, rep_ms=50)
    assert timing.note is None and not math.isnan(timing.median_us)
