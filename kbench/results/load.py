"""Run records (and other result files: one more entry in ``READERS``) read into one DataFrame."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from kbench.errors import KbenchError
from kbench.results.pytest_benchmark import frame_from_pytest_benchmark, is_pytest_benchmark
from kbench.results.record import ROW_KEYS, SCHEMA_VERSION
from kbench.results.rows import ROW_TYPES, STATUSES

DEFAULT_RESULTS_DIR = Path("results")
# Columns copied from the record onto every row (besides env_* and the ceilings).
RUN_COLUMNS = ("run_id", "created", "spec_name", "run_status", "source")
# Row fields that hold numbers, from the row classes' annotations ("float | None", "int | None").
NUMERIC_FIELDS = frozenset(f.name for row_type in ROW_TYPES.values() for f in dataclasses.fields(row_type)
                           if str(f.type).split(" ")[0] in ("float", "int"))


def is_run_record(data: Any) -> bool:
    return isinstance(data, dict) and "schema_version" in data and "rows" in data and "run_id" in data


def check_record(data: dict, path: Path) -> None:
    """KbenchError naming the field when a record's rows cannot be read as they are written:
    rows a list of objects, numbers numbers (or null), statuses known."""
    fix = "The record was edited or damaged: restore it, or rerun the command that wrote it."
    if not isinstance(data["schema_version"], int) or not isinstance(data["run_id"], str):
        raise KbenchError(f"{path}: schema_version must be an integer and run_id a string.", fix)
    if not isinstance(data["rows"], list):
        raise KbenchError(f"{path}: rows is {type(data['rows']).__name__}, not a list.", fix)
    for index, row in enumerate(data["rows"]):
        if not isinstance(row, dict):
            raise KbenchError(f"{path}: rows[{index}] is {type(row).__name__}, not an object.", fix)
        for key in NUMERIC_FIELDS.intersection(row):
            value = row[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise KbenchError(f"{path}: rows[{index}].{key} is {value!r}, not a number or null.", fix)
        if row.get("status") is not None and row["status"] not in STATUSES:
            raise KbenchError(f"{path}: rows[{index}].status is {row['status']!r}, not one of "
                              f"{', '.join(STATUSES)}.", fix)


def frame_from_record(data: dict, path: Path) -> pd.DataFrame:
    """One row per measurement, with the run's id, spec name, env_* and ceiling columns."""
    check_record(data, path)
    if data["schema_version"] > SCHEMA_VERSION:
        raise KbenchError(
            f"{path} has run-record schema version {data['schema_version']}; this kbench reads up to {SCHEMA_VERSION}.",
            "Upgrade kbench to read it.",
        )
    rows = []
    spec = data.get("spec") or {}
    run_fields = {
        "run_id": data["run_id"],
        "created": data.get("created"),
        "spec_name": spec.get("name") or data.get("spec_name"),
        "run_status": data.get("status"),
        "source": str(path),
    }
    env_fields = {f"env_{key}": value for key, value in (data.get("env") or {}).items()}
    ceilings = data.get("ceilings") or {}
    ceiling_fields = {"copy_gbps": ceilings.get("copy_gbps"), "matmul_bf16_tflops": ceilings.get("matmul_bf16_tflops")}
    for row in data["rows"]:
        row = dict(row)
        if isinstance(row.get("shape"), dict):
            row["shape"] = json.dumps(row["shape"], sort_keys=True)
        rows.append(run_fields | dict.fromkeys(ROW_KEYS) | row | ceiling_fields | env_fields)
    columns = list(RUN_COLUMNS) + list(ROW_KEYS)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=columns)
    return frame[columns + [c for c in frame.columns if c not in columns]]


# (name, detect(parsed json) -> bool, read(parsed json, path) -> DataFrame with ROW_KEYS + RUN_COLUMNS)
READERS: tuple[tuple[str, Callable[[Any], bool], Callable[[Any, Path], pd.DataFrame]], ...] = (
    ("kbench run record", is_run_record, frame_from_record),
    ("pytest-benchmark JSON", is_pytest_benchmark, frame_from_pytest_benchmark),
)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise KbenchError(f"No such results file: {path}.", "Check the path.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise KbenchError(f"{path} is not valid JSON ({error}).", "Pass a kbench run record.") from None
    except OSError as error:
        raise KbenchError(f"{path} cannot be read ({error.strerror or error}).", "Check its permissions.") from None


def frame_from_file(path: Path) -> pd.DataFrame:
    data = read_json(path)
    for _name, detect, read in READERS:
        if detect(data):
            return read(data, path)
    known = ", ".join(name for name, _, _ in READERS)
    raise KbenchError(f"{path} is not a result file kbench can read.", f"Readable formats: {known}.")


def record_paths(results_dir: str | os.PathLike = DEFAULT_RESULTS_DIR) -> list[Path]:
    """Run records in ``results_dir``, oldest first (by their ``created`` time)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return []
    dated = []
    for path in results_dir.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if is_run_record(data):
            dated.append((str(data.get("created") or ""), path.stat().st_mtime, path))
    return [path for *_, path in sorted(dated)]


def resolve_paths(paths_or_ids: Iterable[str | os.PathLike] | None,
                  results_dir: str | os.PathLike = DEFAULT_RESULTS_DIR) -> list[Path]:
    """Files for paths, folders (every record in them) and run ids (or unique id prefixes)."""
    if paths_or_ids is None:
        return record_paths(results_dir)
    resolved: list[Path] = []
    for item in paths_or_ids:
        path = Path(item)
        if path.is_dir():
            resolved.extend(record_paths(path))
        elif path.is_file():
            resolved.append(path)
        else:
            resolved.append(_path_for_run_id(str(item), Path(results_dir)))
    return resolved


def _path_for_run_id(run_id: str, results_dir: Path) -> Path:
    if Path(run_id).is_absolute() or os.sep in run_id or (os.altsep and os.altsep in run_id) \
            or run_id.endswith(".json"):
        raise KbenchError(f"No such results file: {run_id}.", "Check the path, or pass a run id from the results folder.")
    exact = results_dir / f"{run_id}.json"
    if exact.is_file():
        return exact
    # a prefix match by name, not a glob: an id is text, and [ or * in it are not patterns
    matches = sorted(p for p in results_dir.iterdir()
                     if p.name.startswith(run_id) and p.suffix == ".json") if results_dir.is_dir() else []
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise KbenchError(f"Run id {run_id!r} matches {len(matches)} records in {results_dir}.",
                          f"Give more of the id: {', '.join(m.stem for m in matches[:5])}.")
    raise KbenchError(f"{run_id!r} is neither a file nor a run id in {results_dir}.",
                      "Pass a path to a record, or run `kbench compare` with no arguments for the two latest runs.")


def load(paths_or_ids: Iterable[str | os.PathLike] | str | os.PathLike | None = None,
         results_dir: str | os.PathLike = DEFAULT_RESULTS_DIR) -> pd.DataFrame:
    """Every measurement of the given records (default: all in ``results_dir``) as a DataFrame."""
    if isinstance(paths_or_ids, (str, os.PathLike)):
        paths_or_ids = [paths_or_ids]
    frames = [frame_from_file(path) for path in resolve_paths(paths_or_ids, results_dir)]
    frames = [frame for frame in frames if not frame.empty]
    if not frames:
        return pd.DataFrame(columns=list(RUN_COLUMNS) + list(ROW_KEYS))
    return pd.concat(frames, ignore_index=True)
