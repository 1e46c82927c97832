"""kbench/results/amdahl.py: the end-to-end speedup the op rows predict, from the base run's
step breakdown, and a gap flagged where the measured one differs."""

from pathlib import Path

import pandas as pd
import pytest

from kbench.results.compare import compare_runs
from kbench.results.load import frame_from_record
from kbench.results.record import SCHEMA_VERSION
from kbench.results.rows import BreakdownRow, DecodeRow, OpRow, row_dict

CASE = "batch=1 prompt_len=16 steps=4"
STEP = "phase=decode batch=1 prompt_len=16"


def _record(run_id: str, qkv_us: float, ffn_us: float, decode_us: float) -> dict:
    rows = [OpRow(op="linear", backend="reference", case="tokens=1 in_features=8 out_features=16 proj=qkv",
                  dtype="float32", status="PASS", latency_us=qkv_us),
            OpRow(op="linear", backend="reference", case="tokens=64 in_features=8 out_features=16 proj=qkv",
                  dtype="float32", status="PASS", latency_us=1000.0),  # another shape: not this step's
            OpRow(op="ffn", backend="reference", case="tokens=1 hidden=8 intermediate=16", dtype="float32",
                  status="PASS", latency_us=ffn_us),
            DecodeRow(op="decode", backend="pipeline", case=CASE, dtype="float32", status="PASS", latency_us=decode_us)]
    # the base step: 60 µs of qkv projections, 30 µs of ffn, 10 µs left over
    for part, op, total in (("linear[qkv]", "linear", 60.0), ("ffn", "ffn", 30.0), ("remainder", "remainder", 10.0)):
        rows.append(BreakdownRow(op=op, part=part, backend="reference", case=STEP, dtype="float32", status="PASS",
                                 phase="decode", calls=2, total_us=total, share=total / 100, step_us=100.0))
    return {"schema_version": SCHEMA_VERSION, "run_id": run_id, "rows": [row_dict(r) for r in rows]}


def _compare(new_decode_us: float):
    base = frame_from_record(_record("base", 10.0, 10.0, 100.0), Path("base.json"))
    new = frame_from_record(_record("new", 5.0, 10.0, new_decode_us), Path("new.json"))  # qkv twice as fast
    return compare_runs(pd.concat([base, new], ignore_index=True), "base", "new", threshold=0.05).amdahl


def test_prediction_is_amdahls_law_over_the_base_breakdown():
    amdahl = _compare(new_decode_us=70.0)
    # qkv halves: 60 -> 30 µs; ffn and the remainder stay: 30 + 30 + 10 = 70 µs of a 100 µs step
    assert len(amdahl) == 1
    row = amdahl.iloc[0]
    assert row["predicted_speedup"] == pytest.approx(100 / 70)
    assert row["measured_speedup"] == pytest.approx(100 / 70)
    assert row["explained_us"] == pytest.approx(30.0)
    assert not row["gap"]


def test_a_measured_change_the_op_rows_do_not_explain_is_flagged():
    row = _compare(new_decode_us=95.0).iloc[0]
    assert row["measured_speedup"] == pytest.approx(100 / 95)
    assert row["predicted_speedup"] == pytest.approx(100 / 70)
    assert row["gap"]


def test_a_step_that_crashed_while_traced_predicts_nothing():
    """A FAIL breakdown row (the step raised under the profiler) has no parts to weigh."""
    crashed = _record("base", 10.0, 10.0, 100.0)
    crashed["rows"] = [r for r in crashed["rows"] if r["kind"] != "breakdown"] + [row_dict(BreakdownRow(
        op="decode", backend="-", case=STEP, dtype="float32", status="FAIL", phase="decode", step_us=100.0,
        note="the traced step raised RuntimeError: boom"))]
    base = frame_from_record(crashed, Path("base.json"))
    new = frame_from_record(_record("new", 5.0, 10.0, 70.0), Path("new.json"))
    assert compare_runs(pd.concat([base, new], ignore_index=True), "base", "new", threshold=0.05).amdahl.empty
