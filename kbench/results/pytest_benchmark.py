"""pytest-benchmark's JSON as run-record rows, one file a run: a ``kbench_benchmark`` entry's
``extra_info`` makes it join kbench's records; any other is a row named after its test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from kbench.results.record import record_status
from kbench.results.rows import ROW_KEYS, OpRow, row_dict

RUN_COLUMNS = ("run_id", "created", "spec_name", "run_status", "source")
PLAIN_BACKEND = "pytest"


def is_pytest_benchmark(data: Any) -> bool:
    """True for the JSON pytest-benchmark saves (``machine_info`` and a ``benchmarks`` list)."""
    return isinstance(data, dict) and isinstance(data.get("benchmarks"), list) and "machine_info" in data


def benchmark_row(benchmark: dict) -> dict:
    info = benchmark.get("extra_info") or {}
    stats = benchmark.get("stats") or {}
    per_call_us = 1e6 / max(int(stats.get("iterations") or 1), 1)
    samples = pd.Series(stats.get("data") or [], dtype=float)
    correct = info.get("correct")
    method = info.get("method") or "pytest-benchmark"
    median_us = stats["median"] * per_call_us if stats.get("median") is not None else None
    return row_dict(OpRow(
        op=info.get("op") or benchmark.get("name"),
        backend=info.get("backend") or PLAIN_BACKEND,
        case=info.get("case_label") or benchmark.get("param") or "",
        dtype=info.get("dtype"),
        device=info.get("device"),
        shape=json.dumps(info["case"], sort_keys=True) if isinstance(info.get("case"), dict) else None,
        status=None if correct is None else ("PASS" if correct else "FAIL"),
        latency_us=median_us,
        p20_us=samples.quantile(0.2) * per_call_us if len(samples) else None,
        p80_us=samples.quantile(0.8) * per_call_us if len(samples) else None,
        min_us=stats["min"] * per_call_us if stats.get("min") is not None else None,
        mean_us=stats["mean"] * per_call_us if stats.get("mean") is not None else None,
        reps=stats.get("rounds"),
        method=method,
        graph_latency_us=median_us if method == "cuda-graph" else None,
        graph_method=method if method == "cuda-graph" else None,
        flops=info.get("flops"),
        bytes=info.get("bytes"),
        tflops=info.get("tflops"),
        gbps=info.get("gbps"),
        throughput_basis=method if "tflops" in info else None,
        max_abs_err=info.get("max_abs_err"),
        max_rel_err=info.get("max_rel_err"),
        note=f"pytest-benchmark: {benchmark.get('fullname') or benchmark.get('name')}",
    ))


def frame_from_pytest_benchmark(data: dict, path: Path) -> pd.DataFrame:
    """The rows of one pytest-benchmark file, with the same columns as a kbench record's."""
    rows = [benchmark_row(b) for b in data["benchmarks"]]
    machine = data.get("machine_info") or {}
    commit = data.get("commit_info") or {}
    gpus = {b.get("extra_info", {}).get("device_name") for b in data["benchmarks"]} - {None, "cpu"}
    run_fields = {
        "run_id": Path(path).stem,
        "created": data.get("datetime"),
        "spec_name": "pytest-benchmark",
        "run_status": record_status(rows),
        "source": str(path),
    }
    env_fields = {
        "env_hostname": machine.get("node"),
        "env_python": machine.get("python_version"),
        "env_cpu": (machine.get("cpu") or {}).get("brand_raw"),
        "env_gpu": ", ".join(sorted(gpus)) or None,
        "env_git_commit": commit.get("id"),
        "env_git_dirty": commit.get("dirty"),
    }
    columns = list(RUN_COLUMNS) + list(ROW_KEYS)
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame([run_fields | row | env_fields for row in rows])
    return frame[columns + [c for c in frame.columns if c not in columns]]
