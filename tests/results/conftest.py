"""Synthetic run records with hand-picked latencies, for compare and the CLI."""

from types import SimpleNamespace

import pytest

from kbench.results import make_row, write_record


def row(kind, op, backend, case, latency_us, status="PASS", dtype="bfloat16"):
    return make_row(kind, op, backend, case=case, dtype=dtype, device="cuda", shape={"case": case},
                    status=status, latency_us=latency_us)


def record(run_id, created, rows, spec_name="llama3-8b"):
    return {"schema_version": 1, "run_id": run_id, "created": created, "spec": {"name": spec_name},
            "env": {"gpu": "H100", "git_commit": run_id[-3:]}, "ceilings": {}, "status": "PASS", "rows": rows}


BASE_ROWS = [
    row("op", "rmsnorm", "reference", "c1", 10.0),
    row("op", "rmsnorm", "triton", "c1", 5.0),
    row("op", "rmsnorm", "triton", "c2", 8.0),
    row("op", "rope", "triton", "c1", 4.0),
    row("prefill", "prefill", "pipeline", "batch=1 prompt_len=128", 1000.0),
    row("decode", "decode", "pipeline", "batch=1 prompt_len=128 steps=8", 100.0),
    row("check", "pipeline", "pipeline", "batch=1 prompt_len=128 decode_steps=8", None),
]
NEW_ROWS = [
    row("op", "rmsnorm", "reference", "c1", 10.0),  # 1.0x
    row("op", "rmsnorm", "triton", "c1", 4.0),  # 1.25x
    row("op", "rmsnorm", "triton", "c2", 10.0),  # 0.8x: regression past 5%
    row("op", "swiglu", "triton", "c1", 3.0),  # only in the new run
    row("prefill", "prefill", "pipeline", "batch=1 prompt_len=128", 800.0),  # 1.25x
    row("decode", "decode", "pipeline", "batch=1 prompt_len=128 steps=8", 125.0),  # 0.8x: regression
    row("check", "pipeline", "pipeline", "batch=1 prompt_len=128 decode_steps=8", None),
]
BASE_ID = "20261123T080000Z-llama3-8b-aaa111"
NEW_ID = "20261123T090000Z-llama3-8b-bbb222"


@pytest.fixture
def two_runs(tmp_path):
    base = write_record(record(BASE_ID, "2026-11-23T08:00:00+00:00", BASE_ROWS), tmp_path)
    new = write_record(record(NEW_ID, "2026-11-23T09:00:00+00:00", NEW_ROWS), tmp_path)
    return base, new


@pytest.fixture
def synthetic():
    """The helpers above, for tests that build their own records."""
    return SimpleNamespace(row=row, record=record, BASE_ID=BASE_ID, NEW_ID=NEW_ID)
