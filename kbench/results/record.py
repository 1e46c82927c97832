"""Run records: one JSON file per ``kbench run``, written atomically.

A record is a plain dict::

    {
      "schema_version": 1,
      "run_id": "20261123T081500Z-tiny-llama-3f2a1c",
      "created": "2026-11-23T08:15:00+00:00",
      "command": ["kbench", "run", ...],
      "spec": {...},                 # Spec.to_dict(): the resolved spec
      "backends": {family: {"backend": name, "ops": {op: {"plugin": ..., "version": ...}}}},
      "plugins": {name: version}, "plugin_errors": {name: error},
      "env": {...},                  # kbench.env.environment()
      "ceilings": {"copy_gbps": ..., "matmul_bf16_tflops": ...},
      "status": "PASS" | "FAIL",
      "rows": [row, ...],
    }

Each row is one measurement: ``kind`` (``op``, ``check``, ``prefill``, ``decode``), ``op``,
``backend``, ``case`` (label), ``dtype``, ``device``, ``shape`` (the case's dimensions),
``status`` (``PASS``, ``FAIL``, ``SKIP``), the latency statistics (``latency_us`` ... as
called; ``graph_latency_us`` from CUDA-graph replay where measured), derived ``tflops``,
``gbps`` and fractions of the measured ceilings, correctness fields (``max_abs_err``,
``max_rel_err``) and a free-text ``note``. Floats that are not finite are stored as null
(``note`` says why), so every record is standard JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
KINDS = ("op", "check", "prefill", "decode")
STATUSES = ("PASS", "FAIL", "SKIP")
# Columns every row has (None where they do not apply), in the order tables show them.
ROW_KEYS = (
    "kind", "op", "backend", "case", "dtype", "device", "shape", "status",
    "latency_us", "p20_us", "p80_us", "min_us", "mean_us", "reps", "method",
    "graph_latency_us", "graph_p20_us", "graph_p80_us", "graph_calls", "graph_input_sets", "graph_method",
    "flops", "bytes", "tflops", "gbps", "throughput_basis", "frac_peak_flops", "frac_peak_bw",
    "max_abs_err", "max_rel_err", "note",
)


def new_run_id(spec_name: str, now: datetime | None = None, salt: str = "") -> str:
    """``<UTC timestamp>-<spec name>-<6 hex>``: sortable by time, unique per run."""
    now = now or datetime.now(timezone.utc)
    digest = hashlib.sha1(f"{now.isoformat()}{spec_name}{salt}{os.getpid()}".encode()).hexdigest()[:6]
    safe_name = "".join(c if c.isalnum() or c in "-_." else "-" for c in spec_name) or "run"
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{safe_name}-{digest}"


def make_row(kind: str, op: str, backend: str, **fields: Any) -> dict:
    """A row with every ``ROW_KEYS`` key (None unless given) plus any extra fields."""
    if kind not in KINDS:
        raise ValueError(f"row kind {kind!r} is not one of {KINDS}")
    row = dict.fromkeys(ROW_KEYS)
    row.update(kind=kind, op=op, backend=backend)
    row.update(fields)
    if row["status"] is not None and row["status"] not in STATUSES:
        raise ValueError(f"row status {row['status']!r} is not one of {STATUSES}")
    return row


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None and tuples as lists (standard JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return json_safe(value.item())
    return value


def write_record(record: dict, out_dir: str | os.PathLike) -> Path:
    """Write ``record`` to ``out_dir/<run_id>.json`` atomically and return the path.

    The JSON is written to a temporary file in the same folder and renamed over the final
    name (``os.replace``), so a reader never sees half a record, and an error while
    serialising leaves no file behind.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{record['run_id']}.json"
    text = json.dumps(json_safe(record), indent=1, allow_nan=False) + "\n"
    handle, temp_name = tempfile.mkstemp(prefix=f".{record['run_id']}.", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def record_status(rows: list[dict]) -> str:
    """FAIL if any row failed, else PASS."""
    return "FAIL" if any(row.get("status") == "FAIL" for row in rows) else "PASS"
