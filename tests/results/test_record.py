import json
import os

import pandas as pd
import pytest

from kbench.errors import KbenchError
from kbench.results import load, make_row, new_run_id, record_paths, write_record


def _record(run_id="20261123T080000Z-tiny-abc123", created="2026-11-23T08:00:00+00:00", rows=None):
    return {
        "schema_version": 1, "run_id": run_id, "created": created, "spec": {"name": "tiny"},
        "env": {"hostname": "box", "gpu": None, "torch": "2.13"}, "ceilings": {"copy_gbps": 100.0},
        "status": "PASS",
        "rows": rows if rows is not None else [
            make_row("op", "rmsnorm", "reference", case="tokens=1 hidden=64", dtype="float32", device="cpu",
                     shape={"tokens": 1, "hidden": 64}, status="PASS", latency_us=12.5, max_abs_err=0.0),
            make_row("decode", "decode", "pipeline", case="batch=1 prompt_len=8", dtype="float32", device="cpu",
                     status="PASS", latency_us=900.0, tokens_per_s=1111.1),
        ],
    }


def test_record_round_trips_through_load(tmp_path):
    path = write_record(_record(), tmp_path)
    assert path == tmp_path / "20261123T080000Z-tiny-abc123.json"
    frame = load([path])
    assert len(frame) == 2
    first = frame.iloc[0]
    assert first["run_id"] == "20261123T080000Z-tiny-abc123" and first["spec_name"] == "tiny"
    assert first["kind"] == "op" and first["latency_us"] == 12.5 and first["status"] == "PASS"
    assert json.loads(first["shape"]) == {"tokens": 1, "hidden": 64}
    assert first["env_hostname"] == "box" and first["copy_gbps"] == 100.0
    assert frame.iloc[1]["tokens_per_s"] == pytest.approx(1111.1)


def test_load_finds_records_by_folder_run_id_and_prefix(tmp_path):
    write_record(_record(), tmp_path)
    write_record(_record(run_id="20261123T090000Z-tiny-def456", created="2026-11-23T09:00:00+00:00"), tmp_path)
    assert set(load(results_dir=tmp_path)["run_id"]) == {"20261123T080000Z-tiny-abc123", "20261123T090000Z-tiny-def456"}
    assert set(load(["20261123T0900"], results_dir=tmp_path)["run_id"]) == {"20261123T090000Z-tiny-def456"}
    assert [p.stem for p in record_paths(tmp_path)] == ["20261123T080000Z-tiny-abc123", "20261123T090000Z-tiny-def456"]
    with pytest.raises(KbenchError, match="matches 2 records"):
        load(["20261123T"], results_dir=tmp_path)
    with pytest.raises(KbenchError, match="neither a file nor a run id"):
        load(["nope"], results_dir=tmp_path)


def test_non_finite_numbers_are_written_as_null(tmp_path):
    rows = [make_row("op", "rmsnorm", "broken", status="FAIL", max_abs_err=float("inf"), note="raised")]
    path = write_record(_record(rows=rows), tmp_path)
    assert json.loads(path.read_text())["rows"][0]["max_abs_err"] is None
    assert pd.isna(load([path]).iloc[0]["max_abs_err"])


def test_failed_serialisation_leaves_no_file(tmp_path):
    record = _record(rows=[make_row("op", "rmsnorm", "x", latency_us=object())])
    with pytest.raises(TypeError):
        write_record(record, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_failed_rename_leaves_no_file(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_record(_record(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_run_ids_sort_by_time_and_name_the_spec():
    from datetime import datetime, timezone

    run_id = new_run_id("llama3 8b", datetime(2026, 11, 23, 8, 1, 2, tzinfo=timezone.utc))
    stamp, name, digest = run_id.split("-", 2)[0], run_id[17:26], run_id[-6:]
    assert stamp == "20261123T080102Z" and name == "llama3-8b" and len(digest) == 6


def test_unknown_file_format_is_a_user_error(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(KbenchError, match="not a result file"):
        load([path])
