"""What the op rows of two runs predict for the end-to-end change, beside what was measured.

For each prefill or decode point both runs timed, the base run's breakdown of that step
(``kind == "breakdown"``) gives each call site's time per step ``t_i``; the op rows of the two
runs give each op's speedup ``s_i`` at that point's shape (``tokens`` = the step's token
count; for ``linear`` also the projection), falling back to the op's geometric mean over its
cases. Amdahl's law then predicts::

    predicted step = t_remainder + sum_i t_i / s_i      predicted speedup = base step / predicted step

An op without op rows in both runs is assumed unchanged. A gap (measured speedup off the
prediction by more than the comparison's threshold) says the op rows do not explain the
end-to-end change: launch gaps, fusion across ops, or shapes the op rows do not cover.
"""

from __future__ import annotations

import json
import re

import pandas as pd

from kbench.results.compare import geomean

COLUMNS = ["kind", "case", "base_us", "new_us", "measured_speedup", "predicted_speedup", "explained_us", "gap"]


def _shape(value) -> dict:
    if isinstance(value, dict):
        return value
    try:
        return json.loads(value) if isinstance(value, str) else {}
    except ValueError:
        return {}


def _op_speedup(op_rows: pd.DataFrame, op: str, tokens: int, proj: str | None) -> float:
    """The op's speedup at ``tokens`` (and projection), else its geometric mean; 1 if unknown."""
    rows = op_rows[op_rows["op"] == op]
    if proj:
        rows = rows[rows["case"].str.contains(rf"\bproj={re.escape(proj)}\b", regex=True)]
    at_shape = rows[rows["case"].str.contains(rf"\btokens={tokens}\b", regex=True)]
    value = geomean((at_shape if not at_shape.empty else rows)["speedup"].tolist())
    return value if value == value else 1.0  # NaN: no op rows for it


def predict_end_to_end(base: pd.DataFrame, rows: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """One row per pipeline prefill/decode point in ``rows`` (a comparison's joined rows) whose
    step the base run broke down: measured and predicted speedup, and whether they disagree."""
    op_rows = rows[rows["kind"] == "op"]
    breakdown = base[(base["kind"] == "breakdown") & (base["status"] != "FAIL")]  # a FAIL: the step crashed traced
    records = []
    for row in rows[rows["kind"].isin(["prefill", "decode"]) & (rows["backend"] == "pipeline")].itertuples():
        batch, prompt_len = (int(v) for v in re.findall(r"(?:batch|prompt_len)=(\d+)", row.case)[:2])
        step = breakdown[breakdown["case"] == f"phase={row.kind} batch={batch} prompt_len={prompt_len}"]
        if step.empty:
            continue
        tokens = batch if row.kind == "decode" else batch * prompt_len
        base_step = float(step["step_us"].iloc[0])
        predicted = 0.0
        for part in step.itertuples():
            if part.op == "remainder":
                predicted += part.total_us
                continue
            proj = part.part[len("linear["):-1] if str(part.part).startswith("linear[") else None
            predicted += part.total_us / _op_speedup(op_rows, part.op, tokens, proj)
        measured = row.speedup
        predicted_speedup = base_step / predicted if predicted > 0 else float("nan")
        records.append({"kind": row.kind, "case": row.case, "base_us": row.base, "new_us": row.new,
                        "measured_speedup": measured, "predicted_speedup": predicted_speedup,
                        "explained_us": base_step - predicted,
                        "gap": bool(abs(measured / predicted_speedup - 1) > threshold)})
    return pd.DataFrame(records, columns=COLUMNS)
