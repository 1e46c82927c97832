"""One self-contained HTML page for a run or a comparison of two: ``kbench report --html``.

The page holds the machine and its measured ceilings, a tune's mixes, candidates and phases, the op
rows (with the speedup over the reference), prefill and decode, each step's breakdown as a table and
as a stacked bar per backend mix, and for two runs the comparison with its Amdahl prediction. Tables
are pandas' ``to_html`` with an ``id`` per table (``ops-RUN``, ``e2e-RUN``, ``breakdown-RUN``,
``comparison``, ``amdahl``; a tune's ``mixes-RUN``, ``candidates-RUN``, ``phases-RUN``), figures are
matplotlib PNGs inlined as base64, so the file opens anywhere with nothing beside it.
"""

from __future__ import annotations

import base64
import html
import io

import pandas as pd

from kbench.results.compare import Comparison
from kbench.results.figures import SUPERSEDED_METHODS, ranked_mixes

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}
.FAIL{color:#b00;font-weight:bold}h2{border-bottom:1px solid #999}"""

OP_COLUMNS = ["op", "case", "backend", "status", "latency_us", "graph_latency_us", "gbps", "tflops", "speedup"]
E2E_COLUMNS = ["kind", "backend", "case", "status", "latency_us", "tokens_per_s", "frac_peak_bw", "frac_peak_flops"]
RATE_COLUMNS = ["gbps", "frac_peak_bw"]
BREAKDOWN_COLUMNS = ["mix", "case", "part", "backend", "calls", "latency_us", "total_us", "share", *RATE_COLUMNS,
                     "step_us", "method"]


def _table(frame: pd.DataFrame, table_id: str) -> str:
    if frame.empty:
        return "<p>(none)</p>"
    return frame.to_html(table_id=table_id, index=False, na_rep="-", float_format=lambda v: f"{v:.6g}",
                         escape=True, border=0)


def _figure_png(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return f'<img alt="step breakdown" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def breakdown_figure(records: list[dict]) -> str:
    """A stacked bar per (run's backend mix, step): µs per step of each op and the remainder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars: dict[str, dict[str, float]] = {}
    for record in records:
        for row in record["rows"]:
            if row["kind"] == "breakdown":
                mix = row.get("mix")
                key = (f"{record['run_id'][-6:]}" + (f" {mix}" if mix and mix != "pipeline" else "")
                       + f" {row['case'].replace('phase=', '')}")
                bars.setdefault(key, {})[row.get("part") or row["op"]] = row.get("total_us") or 0.0
    if not bars:
        return "<p>(no breakdown rows)</p>"
    parts = list(dict.fromkeys(part for bar in bars.values() for part in bar))
    figure, axis = plt.subplots(figsize=(10, 0.45 * len(bars) + 1.5))
    left = [0.0] * len(bars)
    for part in parts:
        widths = [max(bar.get(part, 0.0), 0.0) for bar in bars.values()]
        axis.barh(list(bars), widths, left=left, label=part)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    axis.set_xlabel("µs per step")
    axis.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    return _figure_png(figure)


def _op_frame(rows: list[dict]) -> pd.DataFrame:
    ops = pd.DataFrame([r for r in rows if r["kind"] == "op"])
    if ops.empty:
        return ops
    reference = ops[ops["backend"] == "reference"].set_index(["op", "case", "dtype"])["latency_us"]
    keys = list(zip(ops["op"], ops["case"], ops["dtype"], strict=True))
    ops["speedup"] = [reference.get(key, float("nan")) / value if value else float("nan")
                      for key, value in zip(keys, ops["latency_us"], strict=True)]
    return ops.reindex(columns=OP_COLUMNS)


def run_section(record: dict) -> str:
    run_id, rows = record["run_id"], record["rows"]
    env, ceilings = record.get("env") or {}, record.get("ceilings") or {}
    machine = pd.DataFrame([{"key": k, "value": str(v)} for k, v in
                            [*((f"ceiling {k}", v) for k, v in ceilings.items()),
                             *((k, env.get(k)) for k in ("gpu", "driver", "cuda", "torch", "triton", "git_commit"))]
                            if v is not None])
    e2e = pd.DataFrame([r for r in rows if r["kind"] in ("prefill", "decode")]).reindex(columns=E2E_COLUMNS)
    breakdown = pd.DataFrame([r for r in rows if r["kind"] == "breakdown"]).reindex(columns=BREAKDOWN_COLUMNS)
    # a record from before the parts' rates were kept has none: no empty columns for it
    breakdown = breakdown.drop(columns=[c for c in RATE_COLUMNS if breakdown[c].isna().all()])
    return "\n".join([
        f"<h2>run {html.escape(run_id)} ({html.escape(str(record.get('status')))})</h2>",
        "<h3>machine and ceilings</h3>", _table(machine, f"machine-{run_id}"),
        *(tune_section(record) if record.get("tune") else []),
        "<h3>ops at the model's shapes</h3>", _table(_op_frame(rows), f"ops-{run_id}"),
        "<h3>prefill and decode</h3>", _table(e2e, f"e2e-{run_id}"),
        "<h3>step breakdown</h3>", *_superseded(breakdown), _table(breakdown, f"breakdown-{run_id}"),
    ])


def tune_section(record: dict) -> list[str]:
    """A ``kbench tune`` record's choice: every mix it timed end to end (the written one marked),
    every op's candidates with their cost per request or why they are out, and where its wall
    time went (``tune.phases_s``)."""
    run_id, tune = record["run_id"], record["tune"]
    mixes = pd.DataFrame([{"mix": label, "workload_ms": mix["request_us"] / 1e3 if mix.get("request_us") else None,
                           "speedup_vs_spec": vs_spec, "written": "yes" if label == tune.get("winner") else "",
                           "backends": ", ".join(f"{op}={b}" for op, b in mix.get("choices", {}).items())}
                          for label, mix, vs_spec in ranked_mixes(tune)])
    chosen = tune.get("choices", {})
    candidates = pd.DataFrame([{"op": c["op"], "backend": c["backend"], "prefill_us": c.get("prefill_us"),
                                "decode_us": c.get("decode_us"), "cost_us": c.get("cost_us"),
                                "written": "yes" if chosen.get(c["op"]) == c["backend"] else "",
                                "timed_as": c.get("same_as"), "why_out": c.get("reason")}
                               for c in tune.get("candidates", [])])
    phases = pd.DataFrame([{"phase": name, "seconds": spent} for name, spent in tune.get("phases_s", {}).items()])
    return ["<h3>tune: every mix end to end (ms over the workload)</h3>", _table(mixes, f"mixes-{run_id}"),
            "<h3>tune: each op's candidates (µs per request)</h3>", _table(candidates, f"candidates-{run_id}"),
            "<h3>tune: wall time by phase</h3>", _table(phases, f"phases-{run_id}")]


def _superseded(breakdown: pd.DataFrame) -> list[str]:
    """A warning above a breakdown measured by a method later found wrong."""
    methods = set(breakdown["method"].dropna()) & set(SUPERSEDED_METHODS) if not breakdown.empty else set()
    return [f'<p class="FAIL">method {html.escape(m)}: {html.escape(SUPERSEDED_METHODS[m])}</p>' for m in sorted(methods)]


def report_html(records: list[dict], comparison: Comparison | None = None) -> str:
    """The page for ``records`` (one run, or base and new of ``comparison``)."""
    title = " vs ".join(r["run_id"] for r in reversed(records)) if comparison else records[0]["run_id"]
    body = [f"<h1>kbench: {html.escape(title)}</h1>", "<h2>step breakdown per backend mix</h2>",
            breakdown_figure(records)]
    if comparison is not None:
        body += ["<h2>comparison (speedup = base / new)</h2>", _table(comparison.rows, "comparison"),
                 "<h3>end to end: measured against the op rows' Amdahl prediction</h3>",
                 _table(comparison.amdahl, "amdahl")]
    body += [run_section(record) for record in records]
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
