"""How long a call takes: Triton's ``do_bench`` discipline on a GPU, perf_counter on a CPU.
``cuda-events`` times the call as a user makes it (events started on an idle GPU, so they span
the host's dispatch; L2 flushed before each); ``cuda-graph`` the kernels' GPU time in a replay.
Across the ranks of a tensor-parallel run (``across=AcrossRanks()``) a call may be a collective,
so every rank makes the same calls: the repetition counts follow the slowest rank's estimate,
each repetition starts after a barrier, and counts as its slowest rank's time."""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

ESTIMATE_CALLS = 5
# The estimate stops early once its calls add up to this: a 1 s prefill needs one call to
# know it is slow, not five.
ESTIMATE_BUDGET_US = 100_000.0
MIN_REPS = 5
MAX_REPS = 10_000
MIN_FLUSH_BYTES = 256 * 2**20
# One replay should last about this long: long enough that the event pair's own cost
# (a few µs) is noise, short enough that a 10 ms kernel is captured only once.
GRAPH_REPLAY_TARGET_US = 2_000.0
MAX_GRAPH_CALLS = 100


@dataclass(frozen=True)
class Timing:
    """Per-call latency statistics over ``reps`` repetitions, in microseconds."""

    median_us: float
    p20_us: float
    p80_us: float
    min_us: float
    mean_us: float
    reps: int
    method: str
    calls_per_rep: int = 1
    input_sets: int = 1  # input sets the calls cycle through (kbench.bench.sweep.time_op)

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}{key}": value for key, value in asdict(self).items()}


def quantile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values, interpolating linearly between ranks."""
    if not sorted_values:
        raise ValueError("quantile of no values")
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarize(samples_us: list[float], method: str, calls_per_rep: int = 1) -> Timing:
    """A ``Timing`` from per-repetition samples (already divided to per-call times)."""
    values = sorted(samples_us)
    return Timing(
        median_us=quantile(values, 0.5),
        p20_us=quantile(values, 0.2),
        p80_us=quantile(values, 0.8),
        min_us=values[0],
        mean_us=sum(values) / len(values),
        reps=len(values),
        method=method,
        calls_per_rep=calls_per_rep,
    )


def estimate(sample_us: Callable[[], float], across: AcrossRanks | None = None) -> float:
    """Mean of up to ``ESTIMATE_CALLS`` samples, fewer once they add up to ``ESTIMATE_BUDGET_US``
    (``across`` ranks: all of them, and the slowest rank's mean)."""
    samples = []
    while len(samples) < ESTIMATE_CALLS and (across is not None or sum(samples) < ESTIMATE_BUDGET_US):
        samples.append(sample_us())
    mean = sum(samples) / len(samples)
    return across.slowest([mean])[0] if across is not None else mean


class AcrossRanks:
    """Timing on every rank of torch.distributed's default group (see the module docstring)."""

    def __init__(self):
        import torch.distributed as dist

        self._dist = dist
        self._device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None

    def barrier(self) -> None:
        if self._device is not None:
            torch.cuda.synchronize(self._device)
        self._dist.barrier()

    def slowest(self, values: list[float]) -> list[float]:
        """Element by element, the largest of the ranks' ``values``."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self._device or "cpu")
        self._dist.all_reduce(tensor, op=self._dist.ReduceOp.MAX)
        return tensor.tolist()


def repetitions(budget_ms: float, estimate_us: float, minimum: int) -> int:
    """How many calls of ``estimate_us`` fit in ``budget_ms``, clamped to [minimum, MAX_REPS]."""
    if estimate_us <= 0:
        return MAX_REPS if budget_ms > 0 else minimum
    return int(min(MAX_REPS, max(minimum, budget_ms * 1000.0 / estimate_us)))


def measure(
    fn: Callable[[], object],
    *,
    device: torch.device | str,
    warmup_ms: float = 25.0,
    rep_ms: float = 100.0,
    flush_l2: bool = True,
    cuda_graph: bool = False,
    reset: Callable[[], object] | None = None,
    graph_calls: int | None = None,
    keep_outputs: int = 0,
    timer: Callable[[], float] = time.perf_counter,
    across: AcrossRanks | None = None,
) -> Timing:
    """Time ``fn()``; ``reset`` runs before every call or replay, outside the timed region;
    ``timer`` (seconds) is used on a CPU only; ``across``: every rank of a process group times
    together (not with ``cuda_graph``)."""
    device = torch.device(device)
    if device.type != "cuda":
        return _measure_host(fn, warmup_ms, rep_ms, reset, timer, across)
    if cuda_graph:
        if across is not None:
            raise ValueError("graph-replay timing runs on one rank")
        return _measure_cuda_graph(fn, device, warmup_ms, rep_ms, reset, graph_calls, keep_outputs)
    return _measure_cuda_events(fn, device, warmup_ms, rep_ms, flush_l2, reset, across)


def _call(fn, reset):
    if reset is not None:
        reset()
    return fn()


def _measure_host(fn, warmup_ms, rep_ms, reset, timer, across=None) -> Timing:
    def timed_call() -> float:
        if reset is not None:
            reset()
        if across is not None:
            across.barrier()
        start = timer()
        fn()
        return (timer() - start) * 1e6

    estimate_us = estimate(timed_call, across)
    for _ in range(repetitions(warmup_ms, estimate_us, 0)):
        timed_call()
    samples = [timed_call() for _ in range(repetitions(rep_ms, estimate_us, MIN_REPS))]
    return summarize(across.slowest(samples) if across is not None else samples, "perf_counter")


def l2_cache_bytes(device: torch.device | str) -> int:
    device = torch.device(device)
    if device.type != "cuda":
        return 0
    return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 0


def l2_flush_buffer(device: torch.device) -> torch.Tensor:
    """A byte buffer larger than the device's L2 (at least 256 MiB); ``zero_()`` evicts L2."""
    return torch.empty(max(MIN_FLUSH_BYTES, 2 * l2_cache_bytes(device)), dtype=torch.int8, device=device)


def _event_samples(run, reps: int, before=None) -> list[float]:
    """Per-repetition milliseconds of ``run()``, with ``before()`` outside each event pair."""
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends, strict=True):
        if before is not None:
            before()
        start.record()
        run()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in zip(starts, ends, strict=True)]


def _measure_cuda_events(fn, device, warmup_ms, rep_ms, flush_l2, reset, across=None) -> Timing:
    with torch.cuda.device(device):
        flush = l2_flush_buffer(device) if flush_l2 else None

        def before():
            if reset is not None:
                reset()
            if flush is not None:
                flush.zero_()
            # An idle GPU at the start event: the pair then spans the host's dispatch of the
            # call as well as its kernels. Without this the flush still running would hide
            # the launch overhead that "as called" is meant to include.
            torch.cuda.synchronize()
            if across is not None:
                across.barrier()

        _call(fn, reset)
        torch.cuda.synchronize()
        estimate_us = estimate(lambda: 1000.0 * _event_samples(fn, 1, before)[0], across)
        for _ in range(repetitions(warmup_ms, estimate_us, 0)):
            _call(fn, reset)
        samples_ms = _event_samples(fn, repetitions(rep_ms, estimate_us, MIN_REPS), before)
        if across is not None:
            samples_ms = across.slowest(samples_ms)
        return summarize([1000.0 * ms for ms in samples_ms], "cuda-events")


def capture_calls(fn: Callable[[], object], calls: int, keep: int) -> None:
    """Call ``fn`` ``calls`` times, holding each result until ``keep`` calls later: a result
    dropped at once under capture hands its buffer to the next call, whose writes stay in L2."""
    held: collections.deque = collections.deque(maxlen=max(0, keep))
    for _ in range(calls):
        held.append(fn())


def _measure_cuda_graph(fn, device, warmup_ms, rep_ms, reset, graph_calls, keep_outputs) -> Timing:
    with torch.cuda.device(device):
        # Warm up on a side stream before capture, as torch.cuda.graphs asks (lazy
        # initialisation such as cuBLAS workspaces must not happen during capture).
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                _call(fn, reset)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        if graph_calls is None:
            estimate_us = estimate(lambda: 1000.0 * _event_samples(fn, 1, reset)[0])
            graph_calls = int(min(MAX_GRAPH_CALLS, max(1, GRAPH_REPLAY_TARGET_US / max(estimate_us, 1e-3))))
        if reset is not None:
            reset()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            capture_calls(fn, graph_calls, keep_outputs)
        graph.replay()
        torch.cuda.synchronize()
        replay_us = estimate(lambda: 1000.0 * _event_samples(graph.replay, 1, reset)[0])
        for _ in range(repetitions(warmup_ms, replay_us, 0)):
            _call(graph.replay, reset)
        samples_ms = _event_samples(graph.replay, repetitions(rep_ms, replay_us, MIN_REPS), reset)
        return summarize([1000.0 * ms / graph_calls for ms in samples_ms], "cuda-graph", graph_calls)
