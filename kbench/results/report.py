"""A run's results and a comparison as tables: terminal, Markdown, CSV, JSON or HTML."""

from __future__ import annotations

import html
import io
import json
import math
from typing import Any

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kbench.results.compare import Comparison
from kbench.results.record import json_safe
from kbench.results.rows import FAILING

FORMATS = ("markdown", "csv", "json", "html")


def fmt(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, '-' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
    return str(value)


def _status(status: Any) -> str:
    return {"PASS": "[green]PASS[/]", "FAIL": "[bold red]FAIL[/]", "SKIP": "[yellow]SKIP[/]",
            "SUSPECT": "[bold magenta]SUSPECT[/]"}.get(status, fmt(status))


def _pct(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.0f}%"


# -- a run --------------------------------------------------------------------------------

def print_run(record: dict, console: Console) -> None:
    """The op table, the pipeline check, prefill and decode tables, then the verdict."""
    rows = record["rows"]
    spec = record.get("spec") or {}
    where = f"{spec.get('dtype', '')} on {spec.get('device', '')}"
    backends = next((row["backends"] for row in record["rows"] if row["kind"] == "check" and row.get("backends")),
                    " ".join(f"{family}={choice['backend']}" for family, choice in (record.get("backends") or {}).items()))
    ops = [r for r in rows if r["kind"] == "op"]
    if ops:
        console.print(_op_table(ops, where))
    checks = [r for r in rows if r["kind"] == "check" and not r.get("oracle")]
    if checks:
        console.print(_check_table(checks, backends))
    hf_checks = [r for r in rows if r["kind"] == "check" and r.get("oracle") == "hf"]
    if hf_checks:
        console.print(_hf_check_table(hf_checks))
    prefill = [r for r in rows if r["kind"] == "prefill"]
    if prefill:
        console.print(_prefill_table(prefill, where))
    decode = [r for r in rows if r["kind"] == "decode"]
    if decode:
        console.print(_decode_table(decode, where))
    if record.get("parallel"):
        console.print(parallel_line(record["parallel"]), highlight=False)
    for table in breakdown_tables([r for r in rows if r["kind"] == "breakdown"]):
        console.print(table)
    failed = [r for r in rows if r.get("status") in FAILING]
    for row in failed:
        console.print(f"{_status(row['status'])} {row['kind']} {row['op']} [{row['backend']}] {row.get('case') or ''}: "
                      f"{row.get('note') or ''}", highlight=False)
    if (record.get("machine") or {}).get("throttled"):
        reasons = sorted({r for state in ("start", "end")
                          for r in record["machine"].get(state, {}).get("throttle_reasons") or []})
        console.print(f"[bold yellow]THROTTLED[/] the GPU reported: {', '.join(reasons)}", highlight=False)
    verdict = "[bold red]FAIL[/]" if failed else "[bold green]PASS[/]"
    console.print(f"{verdict}  run {record['run_id']}", highlight=False)


def parallel_line(parallel: dict) -> str:
    """One line on a tensor-parallel run: ranks, per-rank memory, all-reduce time per decode step."""
    def mib(values):
        return "/".join(f"{v / 2**20:.0f}" if v else "-" for v in values or [])

    text = f"tensor parallel: {parallel['ranks']} ranks over {parallel.get('group_backend')}"
    if parallel.get("all_reduce"):
        text += f", all_reduce={parallel['all_reduce']}"
    if parallel.get("weight_bytes_per_rank"):
        text += f"; weights per rank {mib(parallel['weight_bytes_per_rank'])} MiB"
    if any(parallel.get("peak_memory_bytes_per_rank") or []):
        text += f"; peak memory per rank {mib(parallel['peak_memory_bytes_per_rank'])} MiB"
    per_step = parallel.get("all_reduce_per_decode_step_us") or {}
    if per_step:
        text += "; all-reduce per decode step " + ", ".join(f"batch {b}: {us:.1f} µs" for b, us in per_step.items())
    return text


def _shape(row: dict) -> dict:
    shape = row.get("shape")
    if isinstance(shape, str):
        shape = json.loads(shape)
    return shape if isinstance(shape, dict) else {}


# Float settings worth a column inch; others (eps, theta, scale factors) stay in the record.
SHOWN_FLOATS = ("temperature", "top_p")


def short_case(row: dict) -> str:
    """The sizes and named settings of a case ('tokens=4 hidden=128 style=half')."""
    shape = _shape(row)
    if not shape:
        return str(row.get("case") or "")

    def shown(key, value):
        if isinstance(value, bool):
            return False
        return isinstance(value, (int, str)) or (isinstance(value, float) and key in SHOWN_FLOATS)

    return " ".join(f"{k}={v}" for k, v in shape.items() if shown(k, v))


def _batch_prompt(row: dict) -> tuple[str, str]:
    shape = _shape(row)
    return str(shape.get("batch", "-")), str(shape.get("prompt_len", "-"))


def _op_table(rows: list[dict], where: str) -> Table:
    table = Table(title=f"ops at the model's shapes, {where}: µs as called (kernel µs: CUDA-graph replay)")
    for column in ("op", "case", "backend", "status", "µs", "kernel µs", "TFLOP/s", "GB/s", "peak", "speedup"):
        table.add_column(column, justify="left" if column in ("op", "case", "backend") else "right")
    reference = {(r["op"], r["case"], r["dtype"]): r for r in rows if r["backend"] == "reference"}
    for row in rows:
        ref = reference.get((row["op"], row["case"], row["dtype"]))
        speedup = "-"
        if ref is not None and row["backend"] != "reference" and row.get("latency_us") and ref.get("latency_us"):
            speedup = f"{ref['latency_us'] / row['latency_us']:.2f}x"
        peak = max((v for v in (row.get("frac_peak_bw"), row.get("frac_peak_flops")) if v is not None), default=None)
        table.add_row(row["op"], short_case(row), row["backend"], _status(row["status"]),
                      fmt(row.get("latency_us")), fmt(row.get("graph_latency_us")), fmt(row.get("tflops")),
                      fmt(row.get("gbps")), _pct(peak), speedup)
    return table


def _check_table(rows: list[dict], backends: str) -> Table:
    table = Table(title=f"pipeline vs the float32 all-reference pipeline, teacher-forced ({backends}); "
                        "in 16 bits allowed = max(floor, 2x the 16-bit reference's own error)")
    for column in ("batch", "prompt", "steps", "status", "max logit err", "rel err", "16-bit ref err", "allowed",
                   "greedy agree"):
        table.add_column(column)
    for row in rows:
        table.add_row(*_batch_prompt(row), str(_shape(row).get("decode_steps", "-")), _status(row["status"]),
                      fmt(row.get("max_abs_err")), fmt(row.get("max_rel_err")), fmt(row.get("reference_rel_err")),
                      fmt(row.get("allowed_rel_err")), _pct(row.get("token_agreement")))
    return table


def _hf_check_table(rows: list[dict]) -> Table:
    table = Table(title="vs transformers' LlamaForCausalLM in float32 on the same weights, teacher-forced")
    for column in ("compared", "dtype", "batch", "prompt", "steps", "status", "rel err", "allowed", "greedy agree",
                   "note"):
        table.add_column(column)
    for row in rows:
        note = row.get("note") or ""
        table.add_row(row["backend"], row["dtype"], *_batch_prompt(row), str(_shape(row).get("decode_steps", "-")),
                      _status(row["status"]), fmt(row.get("max_rel_err")), fmt(row.get("allowed_rel_err")),
                      _pct(row.get("token_agreement")), escape(note if row["status"] == "FAIL" else note.split(";")[0]))
    return table


def _memory(row: dict) -> str:
    value = row.get("peak_memory_bytes")
    return "n/a" if value is None else f"{value / 2**30:.2f} GiB"


def _prefill_table(rows: list[dict], where: str) -> Table:
    table = Table(title=f"prefill, {where}: peak = fraction of measured bf16 matmul TFLOP/s")
    for column in ("backend", "batch", "prompt", "status", "ms", "TTFT ms", "tok/s", "TFLOP/s", "peak", "mem"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["backend"], *_batch_prompt(row), _status(row["status"]), fmt(_ms(row.get("latency_us"))),
                      fmt(_ms(row.get("ttft_us"))), fmt(row.get("tokens_per_s")), fmt(row.get("tflops")),
                      _pct(row.get("frac_peak_flops")), _memory(row))
    return table


def _decode_table(rows: list[dict], where: str) -> Table:
    steps = _shape(rows[0]).get("decode_steps", "?")
    table = Table(title=f"decode, {where}, {steps} steps: per token; roofline = (weights + KV bytes) per step / copy GB/s")
    for column in ("backend", "batch", "prompt", "status", "ms/tok", "tok/s", "GB/s", "roofline", "graph", "mem"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["backend"], *_batch_prompt(row), _status(row["status"]), fmt(_ms(row.get("latency_us"))),
                      fmt(row.get("tokens_per_s")), fmt(row.get("gbps")), _pct(row.get("frac_peak_bw")),
                      "yes" if row.get("cuda_graph") else "no", _memory(row))
    return table


def breakdown_tables(rows: list[dict]) -> list[Table]:
    """One table per step (phase, batch, prompt_len): each op's calls, µs per call, µs per
    step and share (a decode step's also its GB/s and share of the copy ceiling), the ops' sum
    and the remainder beside the measured step."""
    steps: dict[str, list[dict]] = {}
    for row in rows:
        steps.setdefault(row["case"], []).append(row)
    tables = []
    for case, part in steps.items():
        step_us, method = part[0].get("step_us"), part[0].get("method")
        rates = any(r.get("gbps") is not None for r in part)
        table = Table(title=f"{case}: breakdown of a step of {fmt(step_us)} µs (ops timed by {method})")
        for column in ("op", "backend", "calls", "µs/call", "µs/step", "share", *(("GB/s", "of copy") if rates else ())):
            table.add_column(column, justify="left" if column in ("op", "backend") else "right")
        blank = ("", "") if rates else ()
        ops = [r for r in part if r["op"] != "remainder"]
        for row in sorted(ops, key=lambda r: -(r.get("total_us") or 0)):
            table.add_row(escape(row.get("part") or row["op"]), row["backend"], fmt(row.get("calls")), fmt(row.get("latency_us")),
                          fmt(row.get("total_us")), _pct(row.get("share")),
                          *((fmt(row.get("gbps")), _pct(row.get("frac_peak_bw"))) if rates else ()))
        summed = sum(r.get("total_us") or 0 for r in ops)
        table.add_row("ops' sum", "", "", "", fmt(summed), _pct(summed / step_us if step_us else None), *blank)
        for row in part:
            if row["op"] == "remainder":
                table.add_row("remainder", "", "", "", fmt(row.get("total_us")), _pct(row.get("share")), *blank)
        table.add_row("measured step", "", "", "", fmt(step_us), "100%", *blank)
        tables.append(table)
    return tables


def _ms(us: Any) -> float | None:
    return None if us is None else us / 1000.0


# -- a comparison --------------------------------------------------------------------------

def _rows_for_output(comparison: Comparison) -> pd.DataFrame:
    rows = comparison.rows.rename(columns={"base": f"base_{comparison.metric}", "new": f"new_{comparison.metric}"})
    return rows


def _verdict(row) -> str:
    """'slower (+4.1..+6.0%)': the verdict and the 95% interval of the change, new against base."""
    word = getattr(row, "verdict", None)
    if not isinstance(word, str):
        return "-"
    if word == "suspect" or not math.isfinite(getattr(row, "ratio_low", math.nan)):
        return word
    return f"{word} ({100 * (row.ratio_low - 1):+.1f}..{100 * (row.ratio_high - 1):+.1f}%)"


def print_comparison(comparison: Comparison, console: Console) -> None:
    table = Table(title=f"{comparison.new_label} vs {comparison.base_label} ({comparison.metric}; speedup = base / new)")
    for column in ("kind", "op", "backend", "case", "dtype", "base", "new", "speedup", "verdict", "status"):
        table.add_column(column)
    for row in comparison.rows.itertuples():
        label = f"{row.speedup:.3f}x" if isinstance(row.speedup, float) and math.isfinite(row.speedup) else "-"
        if row.regression:
            label = f"[bold red]{label} REGRESSION[/]"
        backend = row.backend if row.base_backend == row.backend else f"{row.backend} vs {row.base_backend}"
        table.add_row(row.kind, row.op, backend, row.case, row.dtype, fmt(row.base), fmt(row.new), label,
                      _verdict(row), _status(row.new_status))
    console.print(table)
    means = Table(title="geometric mean speedup")
    for column in ("kind", "op", "backend", "rows", "geomean", "regressions"):
        means.add_column(column)
    for row in comparison.geomeans.itertuples():
        means.add_row(row.kind, row.op, row.backend, str(row.rows), f"{fmt(row.geomean_speedup)}x", str(row.regressions))
    console.print(means)
    if not comparison.amdahl.empty:
        console.print(_amdahl_table(comparison.amdahl))
    for note in comparison.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if not comparison.unmatched.empty:
        console.print(f"[yellow]{len(comparison.unmatched)} rows could not be joined:[/]")
        for row in comparison.unmatched.itertuples():
            console.print(f"  {row.side}: {row.kind} {row.op} [{row.backend}] {row.case} {row.dtype}", highlight=False)
    for row in comparison.failures.itertuples():
        console.print(f"[bold red]FAIL[/] {row.kind} {row.op} [{row.backend}] {row.case}: {row.note or ''}", highlight=False)
    if not comparison.regressions.empty:
        console.print(f"[bold red]{len(comparison.regressions)} regression(s) past {comparison.threshold:.1%}[/]")


def _amdahl_table(frame: pd.DataFrame) -> Table:
    table = Table(title="end to end: measured speedup against what the op rows predict (Amdahl, over the "
                        "base run's step breakdown)")
    for column in ("kind", "case", "base µs", "new µs", "measured", "predicted", "gap"):
        table.add_column(column)
    for row in frame.itertuples():
        gap = "[bold yellow]GAP[/]" if row.gap else "-"
        table.add_row(row.kind, row.case, fmt(row.base_us), fmt(row.new_us), f"{fmt(row.measured_speedup)}x",
                      f"{fmt(row.predicted_speedup)}x", gap)
    return table


def comparison_dict(comparison: Comparison) -> dict:
    return json_safe({
        "base": comparison.base_label,
        "new": comparison.new_label,
        "metric": comparison.metric,
        "threshold": comparison.threshold,
        "ok": comparison.ok,
        "regressions": len(comparison.regressions),
        "notes": comparison.notes,
        "rows": comparison.rows.to_dict(orient="records"),
        "geomeans": comparison.geomeans.to_dict(orient="records"),
        "unmatched": comparison.unmatched.to_dict(orient="records"),
        "failures": comparison.failures.to_dict(orient="records"),
        "amdahl": comparison.amdahl.to_dict(orient="records"),
    })


def _markdown_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(none)\n"
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    lines = [header, rule]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v, 4).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


def render(comparison: Comparison, output_format: str) -> str:
    """The comparison as ``markdown``, ``csv`` (one table, ``section`` column), ``json`` or ``html``."""
    rows = _rows_for_output(comparison)
    title = f"{comparison.new_label} vs {comparison.base_label}"
    if output_format == "json":
        return json.dumps(comparison_dict(comparison), indent=1, allow_nan=False) + "\n"
    if output_format == "csv":
        sections = [rows.assign(section="row"), comparison.geomeans.assign(section="geomean"),
                    comparison.unmatched.assign(section="unmatched"), comparison.failures.assign(section="failure")]
        frame = pd.concat([s for s in sections if not s.empty], ignore_index=True)
        if frame.empty:
            frame = pd.DataFrame(columns=["section"])
        frame = frame[["section"] + [c for c in frame.columns if c != "section"]]
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False)
        return buffer.getvalue()
    if output_format == "markdown":
        parts = [f"# {title}\n", f"Metric `{comparison.metric}`, speedup = base / new, regression threshold "
                                 f"{comparison.threshold:.1%}.\n", "## Rows\n", _markdown_table(rows),
                 "## Geometric means\n", _markdown_table(comparison.geomeans)]
        parts += [f"> note: {note}\n" for note in comparison.notes]
        if not comparison.unmatched.empty:
            parts += ["## Unmatched rows\n", _markdown_table(comparison.unmatched)]
        if not comparison.failures.empty:
            parts += ["## FAIL rows\n", _markdown_table(comparison.failures)]
        return "\n".join(parts)
    if output_format == "html":
        parts = [f"<h1>{html.escape(title)}</h1>",
                 f"<p>Metric <code>{html.escape(comparison.metric)}</code>, speedup = base / new, "
                 f"regression threshold {comparison.threshold:.1%}.</p>",
                 "<h2>Rows</h2>", rows.to_html(index=False, na_rep="-"),
                 "<h2>Geometric means</h2>", comparison.geomeans.to_html(index=False, na_rep="-")]
        parts += [f"<p>note: {html.escape(note)}</p>" for note in comparison.notes]
        if not comparison.unmatched.empty:
            parts += ["<h2>Unmatched rows</h2>", comparison.unmatched.to_html(index=False, na_rep="-")]
        if not comparison.failures.empty:
            parts += ["<h2>FAIL rows</h2>", comparison.failures.to_html(index=False, na_rep="-")]
        return "<!DOCTYPE html>\n<html><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    raise ValueError(f"unknown format {output_format!r}; one of {FORMATS}")
