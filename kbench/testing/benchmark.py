"""``kbench_benchmark``: time a kbench op in pytest with ``kbench run``'s timer (pytest-benchmark's
host clock would time a GPU kernel's launch) and hand the samples to pytest-benchmark as rounds."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytest
import torch

from kbench.bench import timing as timing_module
from kbench.bench.check import check_implementation
from kbench.ops.base import Case, dtype_name, parse_dtype
from kbench.registry import Registry
from kbench.spec import BenchConfig
from kbench.testing.conformance import ConformanceFailure

SOURCE = "kbench"


def resolve_case(registry: Registry, op_name: str, case: Case | Mapping[str, Any] | None) -> Case:
    """``case`` as a Case of ``op_name``: dims given as a mapping override the op's first test case."""
    op = registry.op(op_name)
    if isinstance(case, Case):
        return case
    base = op.test_cases[0] if op.test_cases else Case(op_name)
    return base.replace(**dict(case or {}))


def time_with_samples(*args, **kwargs) -> tuple[timing_module.Timing, list[float]]:
    """``sweep.time_op(...)`` and its per-call samples in µs, read from ``summarize`` during the call."""
    from kbench.bench import sweep

    namespace = sweep.measure.__globals__
    summarize = namespace["summarize"]
    captured: list[list[float]] = []

    def keep(samples_us, method, calls_per_rep=1):
        captured.append(list(samples_us))
        return summarize(samples_us, method, calls_per_rep)

    namespace["summarize"] = keep
    try:
        result = sweep.time_op(*args, **kwargs)
    finally:
        namespace["summarize"] = summarize
    return result, captured[-1]


class KbenchBenchmark:

    def __init__(self, registry: Registry, device: str, benchmark: Any = None):
        self.registry = registry
        self.device = device
        self.benchmark = benchmark

    def __call__(
        self,
        op: str,
        backend: str,
        case: Case | Mapping[str, Any] | None = None,
        *,
        dtype: str | torch.dtype | None = None,
        warmup_ms: float = 25.0,
        rep_ms: float = 100.0,
        cuda_graph: bool = False,
        flush_l2: bool = True,
        seed: int = 0,
    ) -> timing_module.Timing:
        """Check ``backend``'s ``op`` at ``case`` against the reference (a wrong result fails the
        test, untimed), then time it, and check the timed path afterwards (``sweep.Guard``);
        ``dtype`` defaults to bfloat16 on a GPU, float32 on a CPU."""
        registry = self.registry
        case = resolve_case(registry, op, case)
        dtype = parse_dtype(dtype or ("bfloat16" if torch.device(self.device).type == "cuda" else "float32"))
        reason = registry.get(op, backend).reason(case, dtype, self.device)
        if reason:
            pytest.skip(reason)
        from kbench.bench.integrity import reference_output
        from kbench.bench.sweep import Guard

        op_def = registry.op(op)
        inputs = op_def.make_inputs(case, dtype, torch.device(self.device), seed)
        reference = reference_output(op_def, inputs)
        check = check_implementation(registry, op, backend, case, dtype, self.device, seed=seed,
                                     reference=reference, inputs=inputs)
        if not check.ok:
            raise ConformanceFailure(f"{op}/{backend} {case.label} {dtype_name(dtype)} on {self.device}: {check.summary()}")
        impl = registry.get(op, backend)
        bench = BenchConfig(warmup_ms=warmup_ms, rep_ms=rep_ms, flush_l2=flush_l2)
        guard = Guard(case, dtype, seed, reference)
        timing, samples_us = time_with_samples(impl, op_def, inputs, torch.device(self.device), bench,
                                               cuda_graph=cuda_graph, guard=guard)
        if guard.problem is not None:
            raise ConformanceFailure(f"{op}/{backend} {case.label} {dtype_name(dtype)} on {self.device}: "
                                     f"{guard.problem.summary()}")
        if self.benchmark is not None:
            self._store(op_def, backend, case, dtype, timing, samples_us, check)
        return timing

    def _store(self, op_def, backend, case, dtype, timing, samples_us, check) -> None:
        benchmark = self.benchmark
        if getattr(benchmark, "disabled", False):
            return
        benchmark.group = f"{op_def.name} {case.label} {dtype_name(dtype)}"
        seconds = timing.median_us * 1e-6
        benchmark.extra_info.update({
            "source": SOURCE,
            "op": op_def.name,
            "backend": backend,
            "case": case.as_dict(),
            "case_label": case.label,
            "dtype": dtype_name(dtype),
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if torch.device(self.device).type == "cuda" else "cpu",
            "correct": check.ok,
            "max_abs_err": check.max_abs_err,
            "max_rel_err": check.max_rel_err,
            "flops": float(op_def.flops(case)),
            "bytes": float(op_def.bytes(case, dtype)),
            "tflops": op_def.flops(case) / seconds / 1e12 if seconds else math.nan,
            "gbps": op_def.bytes(case, dtype) / seconds / 1e9 if seconds else math.nan,
            **timing.as_dict(),
        })
        # One round per repetition, one iteration per round: pytest-benchmark's statistics
        # are then statistics of kbench's samples, in seconds as it expects. _make_stats is
        # how its own fixture registers a result (pytest-benchmark 3.x to 5.x).
        if not hasattr(benchmark, "_make_stats"):
            raise RuntimeError("this pytest-benchmark has no BenchmarkFixture._make_stats; kbench_benchmark "
                               "cannot store its timings there (pytest-benchmark 3.x to 5.x can)")
        stats = benchmark._make_stats(1)
        for sample_us in samples_us:
            stats.update(sample_us * 1e-6)
        benchmark._mode = "kbench_benchmark(...)"

