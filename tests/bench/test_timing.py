import time
import weakref

import numpy as np
import pytest
import torch

from kbench.bench.timing import MAX_REPS, MIN_REPS, capture_calls, measure, quantile, repetitions, summarize


class FakeClock:
    """A clock that only moves when a fake call says how long it took."""

    def __init__(self):
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s

    def advance_us(self, us: float) -> None:
        self.now_s += us * 1e-6


def test_summary_statistics_match_numpy_linear_percentiles():
    samples = [7.0, 1.0, 4.0, 10.0, 2.0, 9.0, 3.0, 8.0, 6.0, 5.0]
    timing = summarize(samples, "perf_counter")
    assert timing.median_us == pytest.approx(np.percentile(samples, 50))
    assert timing.p20_us == pytest.approx(2.8)  # rank 0.2 * 9 = 1.8 -> 2 + 0.8 * (3 - 2)
    assert timing.p80_us == pytest.approx(8.2)
    assert timing.p20_us == pytest.approx(np.percentile(samples, 20))
    assert timing.min_us == 1.0
    assert timing.mean_us == pytest.approx(5.5)
    assert timing.reps == 10


def test_quantile_of_one_value_is_that_value():
    assert quantile([3.0], 0.2) == 3.0 == quantile([3.0], 0.8)


def test_repetitions_follow_the_time_budget_within_bounds():
    assert repetitions(100.0, 1000.0, MIN_REPS) == 100
    assert repetitions(1.0, 1000.0, MIN_REPS) == MIN_REPS
    assert repetitions(1e9, 1.0, MIN_REPS) == MAX_REPS


def test_host_timing_on_a_fake_clock_counts_reps_by_time():
    clock = FakeClock()
    calls = []

    def call():
        calls.append(1)
        clock.advance_us(2000.0)

    timing = measure(call, device="cpu", warmup_ms=10.0, rep_ms=40.0, timer=clock)
    # 5 estimating calls, 10 ms / 2 ms = 5 warm-up calls, 40 ms / 2 ms = 20 timed calls
    assert len(calls) == 5 + 5 + 20
    assert timing.reps == 20
    assert timing.median_us == pytest.approx(2000.0)
    assert timing.min_us == pytest.approx(2000.0)
    assert timing.method == "perf_counter"


def test_host_timing_statistics_over_varying_call_times():
    clock = FakeClock()
    durations = iter([100.0] * 5 + [100.0, 200.0, 300.0, 400.0, 500.0] * 100)

    def call():
        clock.advance_us(next(durations))

    timing = measure(call, device="cpu", warmup_ms=0.0, rep_ms=1.0, timer=clock)
    # estimate 100 us -> 10 reps: 100..500 twice
    assert timing.reps == 10
    assert timing.median_us == pytest.approx(300.0)
    assert timing.mean_us == pytest.approx(300.0)
    assert timing.min_us == pytest.approx(100.0)
    assert timing.p80_us == pytest.approx(np.percentile([100, 200, 300, 400, 500] * 2, 80))


def test_reset_runs_before_every_call_outside_the_timed_region():
    clock = FakeClock()
    order = []

    def reset():
        order.append("reset")
        clock.advance_us(1e6)  # an expensive restore must not show up in the timing

    def call():
        order.append("call")
        clock.advance_us(50.0)

    timing = measure(call, device="cpu", warmup_ms=0.0, rep_ms=0.5, reset=reset, timer=clock)
    assert timing.median_us == pytest.approx(50.0)
    assert order[:4] == ["reset", "call", "reset", "call"]
    assert order.count("reset") == order.count("call")


def test_sleeping_call_is_timed_at_least_as_long_as_it_sleeps():
    timing = measure(lambda: time.sleep(0.002), device="cpu", warmup_ms=0.0, rep_ms=10.0)
    assert 2000.0 <= timing.min_us <= timing.p20_us <= timing.median_us <= timing.p80_us
    assert timing.median_us < 100_000.0
    assert timing.reps >= MIN_REPS


@pytest.mark.parametrize("keep", [0, 1, 3])
def test_captured_calls_hold_each_result_until_keep_calls_later(keep):
    results = []
    alive_at_call = []

    def call():
        alive_at_call.append(sum(ref() is not None for ref in results))
        out = torch.empty(4)
        results.append(weakref.ref(out))
        return out

    capture_calls(call, 8, keep)
    assert alive_at_call == [min(i, keep) for i in range(8)]
    assert sum(ref() is not None for ref in results) == 0, "nothing held once the capture is over"


@pytest.mark.gpu
@pytest.mark.parametrize(("keep", "buffers"), [(0, 1), (3, 4)])
def test_kept_outputs_take_their_own_buffers_in_a_graph(keep, buffers):
    """Captured calls whose results are dropped reuse one buffer from the graph's pool; held
    until ``keep`` calls later, ``keep`` + 1 buffers in turn."""
    x = torch.randn(1 << 16, device="cuda")
    pointers = []

    def double():
        out = x * 2
        pointers.append(out.data_ptr())
        return out

    measure(double, device="cuda", warmup_ms=1, rep_ms=2, cuda_graph=True, graph_calls=12, keep_outputs=keep)
    captured = pointers[-12:]
    assert len(set(captured)) == buffers
    assert all(len(set(captured[i:i + buffers])) == buffers for i in range(12 - buffers))


@pytest.mark.gpu
def test_cuda_events_time_a_large_copy_at_a_plausible_bandwidth():
    import torch

    src = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    dst = torch.empty_like(src)
    timing = measure(lambda: dst.copy_(src), device="cuda", warmup_ms=5, rep_ms=20)
    gbps = 2 * src.numel() / (timing.median_us * 1e-6) / 1e9
    assert timing.method == "cuda-events" and timing.reps >= MIN_REPS
    assert 50 < gbps < 20_000


@pytest.mark.gpu
def test_as_called_budget_counts_each_repetitions_flush_and_synchronisation():
    """``rep_ms`` is the repetitions' wall time: a tiny kernel after a 256 MiB flush each time gets
    as many repetitions as fit the budget at the flush's cost, not MAX_REPS at the kernel's."""
    import torch

    x = torch.zeros(1, device="cuda")
    began = time.perf_counter()
    timing = measure(lambda: x.add_(1.0), device="cuda", warmup_ms=1, rep_ms=20, flush_l2=True)
    elapsed_s = time.perf_counter() - began
    assert timing.method == "cuda-events" and MIN_REPS <= timing.reps < MAX_REPS // 10
    assert elapsed_s < 1.0, f"20 ms of repetitions took {elapsed_s:.2f} s"


@pytest.mark.gpu
def test_graph_replay_takes_launch_overhead_out_of_a_tiny_kernel():
    import torch

    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    weight = torch.ones(4096, device="cuda", dtype=torch.bfloat16)

    def rmsnorm():
        return torch.nn.functional.rms_norm(x, (4096,), weight, 1e-5)

    called = measure(rmsnorm, device="cuda", warmup_ms=5, rep_ms=20)
    kernel = measure(rmsnorm, device="cuda", warmup_ms=5, rep_ms=20, cuda_graph=True)
    assert kernel.method == "cuda-graph" and kernel.calls_per_rep > 1
    assert kernel.median_us < called.median_us


@pytest.mark.gpu
def test_reset_restores_in_place_inputs_before_each_graph_replay():
    import torch

    pristine = torch.zeros(1024, device="cuda")
    work = pristine.clone()
    seen = torch.zeros(1, device="cuda")

    def accumulate():
        work.add_(1.0)
        seen.copy_(work.max())

    measure(accumulate, device="cuda", warmup_ms=1, rep_ms=2, cuda_graph=True, graph_calls=3,
            reset=lambda: work.copy_(pristine))
    torch.cuda.synchronize()
    assert seen.item() == 3.0  # three calls per replay, each replay starting from zeros
