"""Run records: one JSON file per ``kbench run`` or ``kbench bench``, written atomically. A
record is a dict: ``schema_version``, ``run_id``, ``created``, ``command``, ``spec``, ``backends``,
``plugins``, ``plugin_errors``, ``env``, ``ceilings``, ``status``, ``rows`` (``row_dict`` of
``kbench.results.rows``) and ``plugin_details``; non-finite floats are null (standard JSON)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kbench.errors import KbenchError
from kbench.results.rows import FAILING, KINDS, ROW_KEYS, ROW_TYPES, STATUSES, Row, row_dict

__all__ = [
    "KINDS", "ROW_KEYS", "SCHEMA_VERSION", "STATUSES", "build_record", "implementation_provenance", "json_safe",
    "make_row", "new_run_id", "record_status", "write_record", "write_record_or_keep",
]

SCHEMA_VERSION = 1


def new_run_id(spec_name: str, now: datetime | None = None, salt: str = "") -> str:
    """``<UTC timestamp>-<spec name>-<6 hex>``: sortable by time, unique per run."""
    now = now or datetime.now(timezone.utc)
    digest = hashlib.sha1(f"{now.isoformat()}{spec_name}{salt}{os.getpid()}".encode()).hexdigest()[:6]
    safe_name = "".join(c if c.isalnum() or c in "-_." else "-" for c in spec_name) or "run"
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{safe_name}-{digest}"


def make_row(kind: str, op: str, backend: str, **fields: Any) -> dict:
    """``row_dict`` of the ``kind``'s row class built from ``fields``, for callers building dicts."""
    if kind not in KINDS:
        raise ValueError(f"row kind {kind!r} is not one of {KINDS}")
    return row_dict(ROW_TYPES[kind](op=op, backend=backend, **fields))


def implementation_provenance(registry, op: str, backend: str) -> dict:
    """``{"plugin": ..., "version": ...}`` of ``op`` by ``backend``: its own version, else its plugin's."""
    import kbench

    impl = registry.get(op, backend)
    version = impl.version or registry.plugins.get(impl.plugin)
    if impl.plugin == "kbench-core":
        version = version or kbench.__version__
    return {"plugin": impl.plugin, "version": version}


def build_record(*, name: str, command: Sequence[str], spec: dict, backends: dict, registry, device: str,
                 ceilings: dict | None, rows: list[Row | dict], created: datetime | None = None,
                 machine: dict | None = None) -> dict:
    """The run record (module docstring) of ``rows`` measured on ``device``; ``name`` prefixes its
    id; ``machine`` is the machine's state at start and end (``kbench.env.machine_record``)."""
    from kbench.env import environment  # imports torch: only a run that measured needs it

    created = created or datetime.now(timezone.utc)
    rows = [row_dict(row) if is_dataclass(row) else row for row in rows]
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": new_run_id(name, created),
        "created": created.isoformat(),
        "command": list(command),
        "spec": spec,
        "backends": backends,
        "plugins": dict(registry.plugins),
        "plugin_errors": dict(registry.plugin_errors),
        "env": environment(device),
        "ceilings": ceilings or {},
        "machine": machine or {},
        "status": record_status(rows),
        "rows": rows,
        "plugin_details": registry.plugin_details(),
    }


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
    """Write ``out_dir/<run_id>.json`` by a rename over it, so no reader sees half a record;
    with the mode ``open`` would give it (the umask's), not mkstemp's 0600."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{record['run_id']}.json"
    text = json.dumps(json_safe(record), indent=1, allow_nan=False) + "\n"
    handle, temp_name = tempfile.mkstemp(prefix=f".{record['run_id']}.", suffix=".tmp", dir=out_dir)
    try:
        os.chmod(temp_name, 0o666 & ~current_umask())  # mkstemp's 0600 would hide it from the team
        with os.fdopen(handle, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def write_record_or_keep(record: dict, out_dir: str | os.PathLike) -> Path:
    """``write_record``; if ``out_dir`` refuses it, the record is written to a temporary folder
    and a KbenchError says where, so the work it holds is not lost."""
    try:
        return write_record(record, out_dir)
    except OSError as error:
        path = write_record(record, Path(tempfile.gettempdir()) / "kbench-results")
        raise KbenchError(f"The record could not be written to {str(out_dir)!r} ({error.strerror or error}); "
                          f"it was saved to {path} instead.", "Move it where you want it; check --out.") from None


def current_umask() -> int:
    """The process's umask, read without changing it where /proc allows."""
    try:
        with open("/proc/self/status") as file:
            for line in file:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def record_status(rows: list[dict]) -> str:
    return "FAIL" if any(row.get("status") in FAILING for row in rows) else "PASS"
