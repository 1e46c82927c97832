"""README figures from run records, written between ``<!-- suite:ENTRY -->`` and ``<!-- /suite:ENTRY -->``."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from kbench.errors import KbenchError


def _marker(name: str, closing: bool = False) -> re.Pattern:
    return re.compile(rf"<!--\s*{'/' if closing else ''}suite:{re.escape(name)}\s*-->")


def marker_spans(text: str, readme: Path, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """entry name -> (start, end) of the text between its two markers; KbenchError if one is missing."""
    spans, missing = {}, []
    for name in names:
        opening = list(_marker(name).finditer(text))
        closing = list(_marker(name, closing=True).finditer(text))
        if not opening or not closing:
            missing.append(name)
            continue
        if len(opening) > 1 or len(closing) > 1 or closing[0].start() < opening[0].end():
            raise KbenchError(f"{readme}: the markers of {name!r} are repeated or out of order.",
                              f"Keep exactly one '<!-- suite:{name} -->' followed by one '<!-- /suite:{name} -->'.")
        spans[name] = (opening[0].end(), closing[0].start())
    if missing:
        pairs = "; ".join(f"'<!-- suite:{n} -->' ... '<!-- /suite:{n} -->'" for n in missing)
        raise KbenchError(f"{readme} has no marker pair for {', '.join(repr(n) for n in missing)}.",
                          f"Add {pairs} around the figure it makes, or leave the entry out with --only.")
    return spans


def replace_figures(text: str, readme: Path, figures: dict[str, str]) -> str:
    spans = marker_spans(text, readme, list(figures))
    for name in sorted(figures, key=lambda n: spans[n][0], reverse=True):
        start, end = spans[name]
        text = f"{text[:start]}\n\n{figures[name]}\n\n{text[end:]}"
    return text


def update_readme(readme: Path, records: dict[str, Path], console: Console) -> None:
    import json

    figures = {name: figure_table(json.loads(path.read_text())) for name, path in records.items()}
    text = readme.read_text()
    updated = replace_figures(text, readme, figures)
    if updated != text:
        readme.write_text(updated)
    console.print(f"{readme}: figures of {', '.join(figures) or 'no entry'} remade", highlight=False)


# Breakdown methods of older records whose figures are wrong, and why.
SUPERSEDED_METHODS = {"profiler-kernels": "it was measured as profiler range spans, which in an eager step also "
                                          "hold the gaps between launches (kbench.bench.breakdown)",
                      "profiler-kernel-sum": "it summed the kernels the profiler linked to each range, which leaves "
                                             "out kernels launched outside aten ops (triton, CUDA extensions): "
                                             "those ops read 0 (kbench.bench.breakdown)"}


def figure_table(record: dict) -> str:
    """A Markdown table of a record's figures (µs: the CUDA-graph kernel time where measured), then
    the command and device that made them."""
    rows = record.get("rows", [])
    if record.get("tune"):
        tables = [_tune_table(record)]
    elif any(row["kind"] in ("prefill", "decode") for row in rows):
        tables = [_model_table(rows), _hf_check_table(rows), _breakdown_table(rows)]
    else:
        tables = [_op_table(rows)]
    return "\n\n".join([*filter(None, tables), _provenance(record)])


def ranked_mixes(tune: dict) -> list[tuple[str, dict, float | None]]:
    """A tune record's mixes fastest first: (label, mix, speedup over the spec's own mix or None)."""
    spec_us = tune["mixes"].get("spec", {}).get("request_us")
    ranked = sorted(tune["mixes"].items(), key=lambda item: item[1].get("request_us") or float("inf"))
    return [(label, mix, spec_us / mix["request_us"] if spec_us and mix.get("request_us") else None)
            for label, mix in ranked]


def _tune_table(record: dict) -> str:
    """Per mix ``kbench tune`` timed: the workload's time, the speedup over the spec's own choice,
    and decode tok/s with its share of the roofline at each point; the written one marked."""
    tune, rows = record["tune"], record["rows"]
    decode = {(r["backend"], r["shape"]["batch"], r["shape"]["prompt_len"]): r for r in rows if r["kind"] == "decode"}
    points = sorted({(batch, prompt) for _, batch, prompt in decode})
    header = ["mix", "workload ms", "vs spec", *(f"decode tok/s b={b} p={p} (roofline)" for b, p in points)]
    body = []
    for label, mix, vs_spec in ranked_mixes(tune):
        cells = [f"**{label}** (written)" if label == tune.get("winner") else label, _ms(mix.get("request_us")),
                 f"{vs_spec:.3f}x" if vs_spec else "-"]
        for batch, prompt in points:
            row = decode.get((mix.get("rows", label), batch, prompt), {})
            cells.append(f"{_number(row.get('tokens_per_s'))} ({_percent(row.get('frac_peak_bw'))})")
        body.append(cells)
    phases = tune.get("phases_s")
    return _markdown_table(header, body) + (f"\n\n{describe_phases(phases)}" if phases else "")


def describe_phases(seconds: dict[str, float]) -> str:
    """One line: the tune's wall time by phase, the backends' setup, the op timings and the mixes
    each by their parts (``group:part``), largest first; a part under half a second goes unnamed."""
    groups: dict[str, dict[str, float]] = {}
    for name, spent in seconds.items():
        group, _, part = name.partition(":")
        groups.setdefault(group, {})[part] = spent
    parts = []
    for group, by_part in groups.items():
        total = sum(by_part.values())
        inner = ", ".join(f"{part} {spent:.0f} s" for part, spent in sorted(by_part.items(), key=lambda item: -item[1])
                          if part and spent >= 0.5)  # a part under half a second says nothing here
        parts.append(f"{group} {total:.0f} s" + (f" ({inner})" if inner else ""))
    return f"tune took {sum(seconds.values()):.0f} s: " + "; ".join(parts)


def _hf_check_table(rows: list[dict]) -> str:
    """The ``--check hf`` rows: what was compared with transformers, how far apart, what was allowed."""
    checks = [r for r in rows if r["kind"] == "check" and r.get("oracle") == "hf"]
    if not checks:
        return ""
    body = [[r["backend"], str(r["shape"]["batch"]), str(r["shape"]["prompt_len"]), r["dtype"],
             f"{r['max_rel_err']:.2e}" if r.get("max_rel_err") is not None else "-",
             f"{r['allowed_rel_err']:.2e}" if r.get("allowed_rel_err") is not None else "-",
             _percent(r.get("token_agreement")), r["status"]] for r in checks]
    return _markdown_table(["against transformers", "batch", "prompt", "dtype", "max logit error", "allowed",
                            "greedy tokens agree", "status"], body)


def _breakdown_table(rows: list[dict]) -> str:
    """The decode step's breakdown at the smallest batch: µs per step of each call site (and,
    where the record has them, its GB/s and share of the copy ceiling), the ops' sum and the
    remainder against the measured step."""
    parts = [r for r in rows if r["kind"] == "breakdown" and r.get("phase") == "decode"]
    if not parts:
        return ""
    if parts[0].get("method") in SUPERSEDED_METHODS:
        return f"(decode breakdown not shown: {SUPERSEDED_METHODS[parts[0]['method']]})"
    first = min(parts, key=lambda r: (r["shape"]["batch"], r["shape"]["prompt_len"]))
    step = [r for r in parts if r["case"] == first["case"] and r.get("mix") == first.get("mix")]
    rates = any(r.get("gbps") is not None for r in step)  # records before rates were kept have none
    body = [[r.get("part") or r["op"], r["backend"], str(r["calls"]) if r.get("calls") else "-",
             _number(r.get("latency_us")), _number(r.get("total_us")), _percent(r.get("share")),
             *([_number(r.get("gbps")), _percent(r.get("frac_peak_bw"))] if rates else [])] for r in step]
    header = ["part", "backend", "calls", "µs/call", "µs/step", "share", *(["GB/s", "of copy"] if rates else [])]
    return (f"Decode step at {first['case'].replace('phase=decode ', '')}: measured "
            f"{_number(first.get('step_us'))} µs\n\n" + _markdown_table(header, body))


def _model_table(rows: list[dict]) -> str:
    def by_shape(backend: str) -> dict[tuple[str, int, int], dict]:
        return {(r["kind"], r["shape"]["batch"], r["shape"]["prompt_len"]): r for r in rows
                if r["backend"] == backend and r["kind"] in ("prefill", "decode")}

    ours, hf = by_shape("pipeline"), by_shape("hf")
    shapes = sorted({(batch, prompt) for _, batch, prompt in ours})
    header = ["batch", "prompt", "decode tok/s", "roofline", *(["hf tok/s"] if hf else []), "prefill ms",
              *(["hf prefill ms"] if hf else []), "peak memory"]
    body = []
    for batch, prompt in shapes:
        decode, prefill = ours.get(("decode", batch, prompt), {}), ours.get(("prefill", batch, prompt), {})
        hf_decode, hf_prefill = hf.get(("decode", batch, prompt), {}), hf.get(("prefill", batch, prompt), {})
        peaks = [r.get("peak_memory_bytes") for r in (decode, prefill) if r.get("peak_memory_bytes")]
        body.append([str(batch), str(prompt), _number(decode.get("tokens_per_s")), _percent(decode.get("frac_peak_bw")),
                     *([_number(hf_decode.get("tokens_per_s"))] if hf else []), _ms(prefill.get("latency_us")),
                     *([_ms(hf_prefill.get("latency_us"))] if hf else []),
                     f"{max(peaks) / 2**30:.1f} GiB" if peaks else "-"])
    return _markdown_table(header, body)


def _op_table(rows: list[dict]) -> str:
    body = []
    for row in rows:
        if row["kind"] != "op":
            continue
        latency_us = _kernel_us(row)
        gbps = row["bytes"] / (latency_us * 1e3) if row.get("bytes") and latency_us else row.get("gbps")
        body.append([row["op"], row["backend"], row["case"], _number(latency_us), _number(gbps), row["status"]])
    return _markdown_table(["op", "backend", "case", "µs", "GB/s", "status"], body)


def _kernel_us(row: dict) -> float | None:
    return row["graph_latency_us"] if row.get("graph_latency_us") is not None else row.get("latency_us")


def _provenance(record: dict) -> str:
    env, spec = record.get("env", {}), record.get("spec", {})
    device = env.get("gpu") or f"{env.get('cpu') or 'a CPU'} (CPU)"
    # A dirty checkout's commit does not name what ran; the tree of the files that ran does.
    source = f"tree {env['git_tree'][:10]}" if env.get("git_dirty") and env.get("git_tree") \
        else (env.get("git_commit") or "")[:7]
    version = " ".join(filter(None, [env.get("kbench"), source]))
    parts = [device, spec.get("dtype"), f"kbench {version or '?'}", f"record {record.get('run_id')}"]
    graph = any(row.get("graph_latency_us") is not None for row in record.get("rows", []) if row["kind"] == "op")
    note = "; µs is the kernel time under CUDA-graph replay" if graph and not _has_model_rows(record) else ""
    return f"`{_command_text(record.get('command') or [])}` on {', '.join(p for p in parts if p)}{note}."


def _has_model_rows(record: dict) -> bool:
    return any(row["kind"] in ("prefill", "decode") for row in record.get("rows", []))


def _command_text(command: list[str]) -> str:
    """The record's command without the ``--out`` the suite added."""
    words, skip = [], False
    for word in command:
        if skip:
            skip = False
        elif word == "--out":
            skip = True
        elif not word.startswith("--out="):
            words.append(word)
    return shlex.join(words) if words else "?"


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def _ms(latency_us: float | None) -> str:
    return "-" if latency_us is None else _number(latency_us / 1e3)


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.0f}%"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(str(cell).replace("|", "\\|") for cell in line) + " |" for line in lines)
