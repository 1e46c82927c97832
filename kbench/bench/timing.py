"""How long a call takes: Triton's ``do_bench`` discipline on a GPU, perf_counter on a CPU.
``cuda-events`` times the call as a user makes it (events started on an idle GPU, so they span
the host's dispatch; L2 flushed before each); ``cuda-graph`` the kernels' GPU time in a replay.

One-time costs (compile, autotune, lazy init) stay out of the kept repetitions: the first call
is timed apart (``first_call_us``) and calls go on until steady (``settle``) before the estimate
that sets the counts; the kept samples travel with the ``Timing`` (``samples_us``).

All of the work is timed: CUDA events time only their own stream, so each event repetition also
takes a device-synchronised wall clock (``torch.cuda.synchronize()`` waits for every stream);
the wall time less its own cost on an empty call is the floor of each sample, and where it
exceeds the events by ``ESCAPE_MARGIN`` the ``Timing``'s ``note`` says so. The profiler's kernel
intervals would see the same work but cost far more per repetition.

Across the ranks of a tensor-parallel run (``across=AcrossRanks()``) a call may be a collective,
so every rank makes the same calls: a fixed number of estimating calls (not ``settle``, whose
stopping point differs per rank), counts from the slowest rank's estimate, a barrier before each
repetition, which counts as its slowest rank's time."""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

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
# Steady: the last 3 calls (2 once a second is spent) within 20% (torch.compile's first few are slow).
STEADY_SPREAD = 0.2
SETTLE_BUDGET_US = 1_000_000.0
MAX_SETTLE_CALLS = 50
KEPT_SAMPLES = 500
# Work outside the events: flagged when the wall clock exceeds them by 20% and 5 µs.
ESCAPE_MARGIN = (0.2, 5.0)


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
    first_call_us: float | None = None
    settle_calls: int = 0
    escaped_us: float | None = None  # device-synchronised wall clock minus events (GPU)
    note: str | None = None
    samples_us: tuple[float, ...] = field(default=(), repr=False)

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


def kept_samples(samples_us: list[float]) -> tuple[float, ...]:
    """At most ``KEPT_SAMPLES`` of the samples, evenly spaced in time order."""
    step = max(1, math.ceil(len(samples_us) / KEPT_SAMPLES))
    return tuple(float(v) for v in samples_us[::step])


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
        samples_us=kept_samples(samples_us),
    )


def steady(samples: list[float], spent_us: float) -> bool:
    """The last calls agree within ``STEADY_SPREAD``: 3 of at least ``ESTIMATE_CALLS`` - 1, or 2
    once the calls have spent ``SETTLE_BUDGET_US`` (a slow call needs no five)."""
    window, need = (2, 2) if spent_us >= SETTLE_BUDGET_US else (3, ESTIMATE_CALLS - 1)
    last = samples[-window:]
    return len(samples) >= need and max(last) <= (1.0 + STEADY_SPREAD) * min(last)


def still_settling(samples: list[float], estimate_us: float) -> bool:
    """The kept calls ran under half the estimate (the settling calls still paid a one-time
    cost, so the counts were set too low): the caller measures again at their speed."""
    return len(samples) < MAX_REPS and 2.0 * quantile(sorted(samples), 0.5) < estimate_us


def settle(sample_us: Callable[[], float]) -> tuple[float, float, int]:
    """(first call µs, steady estimate µs, calls made): the first call apart, then calls until
    ``steady`` (at most ``MAX_SETTLE_CALLS``); the estimate is the median of the last three."""
    first = sample_us()
    samples: list[float] = []
    while len(samples) < MAX_SETTLE_CALLS:
        samples.append(sample_us())
        if steady(samples, first + sum(samples)):
            break
    last = sorted(samples[-3:])
    return first, last[len(last) // 2], 1 + len(samples)


def estimate(sample_us: Callable[[], float], across: AcrossRanks | None = None) -> float:
    """Mean of up to ``ESTIMATE_CALLS`` samples, fewer once they add up to ``ESTIMATE_BUDGET_US``
    (``across`` ranks: all of them, and the slowest rank's mean)."""
    samples = []
    while len(samples) < ESTIMATE_CALLS and (across is not None or sum(samples) < ESTIMATE_BUDGET_US):
        samples.append(sample_us())
    mean = sum(samples) / len(samples)
    return across.slowest([mean])[0] if across is not None else mean


def settle_across(sample_us: Callable[[], float], across: AcrossRanks | None) -> tuple[float, float, int]:
    """``settle``, or on ranks that time together the first call and then ``estimate``."""
    if across is None:
        return settle(sample_us)
    first = sample_us()
    return across.slowest([first])[0], estimate(sample_us, across), 1 + ESTIMATE_CALLS


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
    verify: Callable[[Callable[[], object], object], object] | None = None,
    across: AcrossRanks | None = None,
) -> Timing:
    """Time ``fn()``; ``reset`` runs before every call or replay, outside the timed region;
    ``graph_calls`` and ``keep_outputs`` shape the captured graph (``capture_calls``); ``timer``
    (seconds) is used on a CPU only. ``verify(run_once, last)`` runs after the kept repetitions:
    ``last`` is what the last kept call returned (None under ``cuda_graph``, whose replays return
    nothing), and ``run_once()`` makes one more call as the timed ones were made (a replay under
    ``cuda_graph``) and returns its output, so the caller can refill the inputs and check it.
    ``across``: every rank of a process group times together (not with ``cuda_graph``)."""
    device = torch.device(device)
    last: list = []  # the last kept call's output, put there outside the timed region
    if device.type != "cuda":
        timing = _measure_host(fn, warmup_ms, rep_ms, reset, timer, across, last)
    elif cuda_graph:
        if across is not None:
            raise ValueError("graph-replay timing runs on one rank")
        return _measure_cuda_graph(fn, device, warmup_ms, rep_ms, reset, graph_calls, keep_outputs, verify)
    else:
        timing = _measure_cuda_events(fn, device, warmup_ms, rep_ms, flush_l2, reset, across, last)
    if verify is not None:
        verify(lambda: _synchronized(fn, device), last[0] if last else None)
    return timing


def _synchronized(fn, device: torch.device):
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out


def _call(fn, reset):
    if reset is not None:
        reset()
    return fn()


def _measure_host(fn, warmup_ms, rep_ms, reset, timer, across=None, last: list | None = None) -> Timing:
    def timed_call() -> float:
        if reset is not None:
            reset()
        if across is not None:
            across.barrier()
        start = timer()
        out = fn()
        elapsed = (timer() - start) * 1e6
        if last is not None:
            last[:] = [out]
        return elapsed

    first_us, estimate_us, settle_calls = settle_across(timed_call, across)
    for _ in range(2):  # once more where the kept calls ran far faster than the estimate said
        for _ in range(repetitions(warmup_ms, estimate_us, 0)):
            timed_call()
        samples = [timed_call() for _ in range(repetitions(rep_ms, estimate_us, MIN_REPS))]
        if across is not None:
            samples = across.slowest(samples)
            break  # the ranks agreed on the counts: no second measurement one rank alone decides
        if not still_settling(samples, estimate_us):
            break
        estimate_us = quantile(sorted(samples), 0.5)
    return dataclasses.replace(summarize(samples, "perf_counter"), first_call_us=first_us, settle_calls=settle_calls)


def l2_cache_bytes(device: torch.device | str) -> int:
    """The L2 cache size of a CUDA device in bytes; 0 elsewhere."""
    device = torch.device(device)
    if device.type != "cuda":
        return 0
    return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 0


def l2_flush_buffer(device: torch.device) -> torch.Tensor:
    """A byte buffer larger than the device's L2 (at least 256 MiB); ``zero_()`` evicts L2."""
    return torch.empty(max(MIN_FLUSH_BYTES, 2 * l2_cache_bytes(device)), dtype=torch.int8, device=device)


def _event_samples(run, reps: int, before=None) -> list[float]:
    """Per-repetition milliseconds of ``run()``, with ``before()`` outside each event pair."""
    return [events for events, _ in _event_wall_samples(run, reps, before, wall=False)]


def _event_wall_samples(run, reps: int, before=None, wall: bool = True,
                        last: list | None = None) -> list[tuple[float, float]]:
    """Per repetition (events ms, device-synchronised wall ms) of ``run()``. The wall clock
    starts on an idle device and stops after ``torch.cuda.synchronize()``, which waits for all
    streams; without ``wall`` no synchronisation is added and its value is 0. ``last`` gets the
    last repetition's output."""
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    walls = []
    for start, end in zip(starts, ends, strict=True):
        if before is not None:
            before()
        if wall:
            torch.cuda.synchronize()
            began = time.perf_counter()
        start.record()
        out = run()
        end.record()
        if wall:
            torch.cuda.synchronize()
            walls.append(1000.0 * (time.perf_counter() - began))
    torch.cuda.synchronize()
    if last is not None and reps:
        last[:] = [out]
    walls = walls or [0.0] * reps
    return [(start.elapsed_time(end), w) for start, end, w in zip(starts, ends, walls, strict=True)]


def wall_floor_ms(before=None) -> float:
    """The wall clock's own cost above the events on an empty call (median of 21)."""
    pairs = _event_wall_samples(lambda: None, 21, before)
    return sorted(w - e for e, w in pairs)[10]


def all_work_samples(pairs: list[tuple[float, float]], floor_ms: float) -> tuple[list[float], float]:
    """(per-repetition ms, escaped ms): each sample is the larger of its events and its wall
    clock less ``floor_ms``, so work the events did not see still counts; ``escaped`` is the
    median excess of the wall clock over the events."""
    excess = sorted(w - floor_ms - e for e, w in pairs)
    samples = [max(e, w - floor_ms) for e, w in pairs]
    return samples, max(0.0, excess[len(excess) // 2])


def escape_note(escaped_us: float, median_us: float) -> str | None:
    """A note when work escaped the events by more than ``ESCAPE_MARGIN``."""
    frac, floor_us = ESCAPE_MARGIN
    if escaped_us > max(frac * median_us, floor_us):
        return (f"work outside the timed stream: the synchronised wall clock exceeds the CUDA events by "
                f"{escaped_us:.1f} µs per call (work on another stream or still running at return); timed by the wall clock")
    return None


def _measure_cuda_events(fn, device, warmup_ms, rep_ms, flush_l2, reset, across=None,
                         last: list | None = None) -> Timing:
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

        floor_ms = wall_floor_ms(before)
        overheads_us = []  # per settling repetition: its wall time less its sample

        def settling_sample() -> float:
            began = time.perf_counter()
            sample_us = 1000.0 * all_work_samples(_event_wall_samples(fn, 1, before), floor_ms)[0][0]
            overheads_us.append(max(0.0, 1e6 * (time.perf_counter() - began) - sample_us))
            return sample_us

        first_us, estimate_us, settle_calls = settle_across(settling_sample, across)
        # ``rep_ms`` is the wall time of the kept repetitions, each one's flush and
        # synchronisations included (as triton's do_bench counts its estimate with the flush):
        # counted by the call alone, a kernel of a few µs would take MAX_REPS repetitions, each
        # paying a flush many times its own length
        overhead_us = quantile(sorted(overheads_us[1:] or overheads_us), 0.5)
        if across is not None:
            overhead_us = across.slowest([overhead_us])[0]  # every rank makes the same count of calls
        for _ in range(2):  # once more where the kept calls ran far faster than the estimate said
            for _ in range(repetitions(warmup_ms, estimate_us, 0)):
                _call(fn, reset)
            pairs = _event_wall_samples(fn, repetitions(rep_ms, estimate_us + overhead_us, MIN_REPS), before,
                                        last=last)
            samples_ms, escaped_ms = all_work_samples(pairs, floor_ms)
            if across is not None:
                samples_ms = across.slowest(samples_ms)
                break  # the ranks agreed on the counts: no second measurement one rank alone decides
            if not still_settling([1000.0 * ms for ms in samples_ms], estimate_us):
                break
            estimate_us = 1000.0 * quantile(sorted(samples_ms), 0.5)
        timing = summarize([1000.0 * ms for ms in samples_ms], "cuda-events")
        return dataclasses.replace(timing, first_call_us=first_us, settle_calls=settle_calls,
                                   escaped_us=1000.0 * escaped_ms,
                                   note=escape_note(1000.0 * escaped_ms, timing.median_us))


def capture_calls(fn: Callable[[], object], calls: int, keep: int) -> object:
    """Call ``fn`` ``calls`` times, holding each result until ``keep`` calls later (a result dropped
    at once under capture hands its buffer to the next call, whose writes stay in L2); returns
    the last call's result, the buffer a replay writes it to."""
    held: collections.deque = collections.deque(maxlen=max(0, keep))
    for index in range(calls):
        out = fn()
        if index == calls - 1:
            return out
        held.append(out)
        del out  # dropped before the next call, unless held
    return None


def _measure_cuda_graph(fn, device, warmup_ms, rep_ms, reset, graph_calls, keep_outputs, verify) -> Timing:
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
            last_output = capture_calls(fn, graph_calls, keep_outputs)
        graph.replay()
        torch.cuda.synchronize()
        replay_us = estimate(lambda: 1000.0 * _event_samples(graph.replay, 1, reset)[0])
        for _ in range(repetitions(warmup_ms, replay_us, 0)):
            _call(graph.replay, reset)
        samples_ms = _event_samples(graph.replay, repetitions(rep_ms, replay_us, MIN_REPS), reset)
        if verify is not None:
            def replay_once():
                graph.replay()
                torch.cuda.synchronize()
                return last_output
            verify(replay_once, None)
        return summarize([1000.0 * ms / graph_calls for ms in samples_ms], "cuda-graph", graph_calls)
