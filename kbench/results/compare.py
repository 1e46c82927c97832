"""Speedups, geometric means and regressions between two runs or between backends of one run.
``speedup = base / new`` (> 1 is faster); rows on one side only go to ``unmatched``, never dropped.
Each row gets a verdict from the two sides' kept samples (``kbench.results.noise``: faster,
slower, same, unsure; ``suspect`` where either side is SUSPECT, never a speedup) and a row
regresses only on a confident slowdown past the threshold; records without samples fall back
to ``new > base * (1 + threshold)``, with no verdict.
``Comparison.amdahl``: the end-to-end change the op rows predict (``kbench.results.amdahl``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from kbench.errors import KbenchError
from kbench.results.noise import verdict
from kbench.results.rows import FAILING

RUN_KEYS = ("kind", "op", "backend", "case", "dtype")
BACKEND_KEYS = ("kind", "op", "case", "dtype")
METRICS = ("latency_us", "graph_latency_us", "min_us", "kernel_us")
# Rows without a latency (correctness checks) are not compared, but their failures are listed.
TIMED_KINDS = ("op", "prefill", "decode")


@dataclass
class Comparison:
    """The result of one comparison; ``report.py`` renders it."""

    base_label: str
    new_label: str
    metric: str
    threshold: float
    rows: pd.DataFrame
    geomeans: pd.DataFrame
    unmatched: pd.DataFrame
    failures: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    # per prefill/decode point: measured against op-row-predicted speedup (``kbench.results.amdahl``)
    amdahl: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def regressions(self) -> pd.DataFrame:
        return self.rows[self.rows["regression"]]

    @property
    def ok(self) -> bool:
        """No regression, no FAIL row, and something was compared."""
        return self.regressions.empty and self.failures.empty and not self.rows.empty


def geomean(values) -> float:
    """exp(mean(log v)) over the finite positive values; NaN if there are none."""
    logs = [math.log(v) for v in values if v is not None and math.isfinite(v) and v > 0]
    return math.exp(sum(logs) / len(logs)) if logs else math.nan


def metric_values(frame: pd.DataFrame, metric: str) -> pd.Series:
    """The metric per row; ``kernel_us`` is the graph-replay time where measured, else as called."""
    if metric == "kernel_us":
        graph = pd.to_numeric(frame.get("graph_latency_us"), errors="coerce")
        return graph.fillna(pd.to_numeric(frame["latency_us"], errors="coerce"))
    if metric not in frame.columns:
        raise KbenchError(f"Results have no column {metric!r} to compare.", f"Use one of: {', '.join(METRICS)}.")
    return pd.to_numeric(frame[metric], errors="coerce")


def metric_samples(frame: pd.DataFrame, metric: str) -> pd.Series:
    """The per-repetition samples behind the metric (None where the record kept none)."""
    calls = frame["samples_us"] if "samples_us" in frame.columns else pd.Series([None] * len(frame), index=frame.index)
    if metric in ("graph_latency_us", "kernel_us") and "graph_samples_us" in frame.columns:
        graph = frame["graph_samples_us"]
        if metric == "graph_latency_us":
            return graph
        return graph.where(graph.map(lambda v: isinstance(v, list) and len(v) > 0), calls)
    return calls


def _timed(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    frame = frame[frame["kind"].isin(TIMED_KINDS)].copy()
    frame["value"] = metric_values(frame, metric)
    frame["samples"] = metric_samples(frame, metric)
    return frame


def _verdicts(both: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """verdict, ratio bounds and resolution per row from the samples (``kbench.results.noise``);
    a SUSPECT row on either side is ``suspect`` and no speedup. A regression is a confident
    slowdown past ``threshold``; without samples, a median past it (``verdict`` empty)."""
    words, lows, highs, resolutions = [], [], [], []
    for row in both.itertuples():
        result = verdict(row.base_samples, row.new_samples)
        words.append(result.verdict if result else None)
        lows.append(result.ratio_low if result else math.nan)
        highs.append(result.ratio_high if result else math.nan)
        resolutions.append(result.resolution if result else math.nan)
    both["verdict"], both["ratio_low"], both["ratio_high"], both["resolution"] = words, lows, highs, resolutions
    suspect = both["base_status"].eq("SUSPECT") | both["new_status"].eq("SUSPECT")
    both.loc[suspect, "verdict"] = "suspect"
    both.loc[suspect, "speedup"] = math.nan
    by_median = (both["new"] > both["base"] * (1 + threshold)).fillna(False).astype(bool)
    confident = (both["verdict"] == "slower") & (both["ratio_low"] > 1 + threshold)
    both["regression"] = (confident | (both["verdict"].isna() & by_median)) & ~suspect
    return both


def _join(base: pd.DataFrame, new: pd.DataFrame, keys: tuple[str, ...], metric: str, threshold: float):
    base = _timed(base, metric).drop_duplicates(list(keys), keep="last")
    new = _timed(new, metric).drop_duplicates(list(keys), keep="last")
    keep = [*keys, "value", "status", "backend", "note", "samples"]
    base_part = base[list(dict.fromkeys(keep))].rename(columns={"value": "base", "status": "base_status",
                                                                 "backend": "base_backend", "note": "base_note",
                                                                 "samples": "base_samples"})
    new_part = new[list(dict.fromkeys(keep))].rename(columns={"value": "new", "status": "new_status",
                                                               "backend": "new_backend", "note": "new_note",
                                                               "samples": "new_samples"})
    if "backend" in keys:
        base_part["backend"] = base_part["base_backend"]
        new_part["backend"] = new_part["new_backend"]
    merged = base_part.merge(new_part, on=list(keys), how="outer", indicator=True)
    both = merged[merged["_merge"] == "both"].copy()
    both["backend"] = both["new_backend"]
    both["speedup"] = both["base"] / both["new"]
    both = _verdicts(both, threshold)
    rows = both[["kind", "op", "backend", "base_backend", "case", "dtype", "base", "new", "speedup", "verdict",
                 "ratio_low", "ratio_high", "resolution", "regression", "base_status",
                 "new_status"]].reset_index(drop=True)
    one_side = merged[merged["_merge"] != "both"].copy()
    one_side["side"] = one_side["_merge"].map({"left_only": "base only", "right_only": "new only"})
    one_side["backend"] = one_side["new_backend"].fillna(one_side["base_backend"])
    unmatched = one_side[["side", "kind", "op", "backend", "case", "dtype"]].reset_index(drop=True)
    return rows, unmatched


def _geomeans(rows: pd.DataFrame) -> pd.DataFrame:
    records = []
    for (kind, op, backend), group in rows.groupby(["kind", "op", "backend"], sort=False):
        records.append({"kind": kind, "op": op, "backend": backend, "rows": len(group),
                        "geomean_speedup": geomean(group["speedup"].tolist()),
                        "regressions": int(group["regression"].sum())})
    return pd.DataFrame(records, columns=["kind", "op", "backend", "rows", "geomean_speedup", "regressions"])


def _failures(frame: pd.DataFrame) -> pd.DataFrame:
    failed = frame[frame["status"].isin(FAILING)]
    return failed[["run_id", "kind", "op", "backend", "case", "dtype", "note"]].reset_index(drop=True)


def _run(frame: pd.DataFrame, run_id: str) -> pd.DataFrame:
    part = frame[frame["run_id"] == run_id]
    if part.empty:
        known = ", ".join(sorted(frame["run_id"].unique()))
        raise KbenchError(f"No rows of run {run_id!r} in the loaded results.", f"Loaded runs: {known or '(none)'}.")
    return part


def _spec_notes(base: pd.DataFrame, new: pd.DataFrame) -> list[str]:
    notes = []
    for column, what in (("spec_name", "specs"), ("env_gpu", "GPUs"), ("env_git_commit", "commits")):
        if column in base and column in new:
            a, b = base[column].iloc[0], new[column].iloc[0]
            if a != b and not (pd.isna(a) and pd.isna(b)):
                notes.append(f"different {what}: {a} (base) vs {b} (new)")
    if "backends" in base and "backends" in new:
        a, b = (set(side.loc[side["backend"] == "pipeline", "backends"].dropna()) for side in (base, new))
        if a and b and a != b:
            notes.append(f"the pipelines use different backends: {', '.join(sorted(a))} (base) vs "
                         f"{', '.join(sorted(b))} (new)")
    return notes


def _unjoinable_note(unmatched: pd.DataFrame, rows: pd.DataFrame) -> list[str]:
    if rows.empty and not unmatched.empty:
        return ["nothing could be joined: the runs have no (kind, op, backend, case, dtype) in common "
                "(different specs, shapes or dtypes); every row is listed as unmatched"]
    return []


def _pair_chosen_backends(base: pd.DataFrame, new: pd.DataFrame, unmatched: pd.DataFrame, metric: str,
                          threshold: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pair unmatched rows across backends (``--norm triton`` against ``--norm cuda``) where each
    side has exactly one unmatched non-reference backend at a ``(kind, op, case, dtype)``."""
    def candidates(frame: pd.DataFrame, side: str) -> pd.DataFrame:
        lonely = unmatched[(unmatched["side"] == side) & (unmatched["backend"] != "reference")]
        keys = set(map(tuple, lonely[list(RUN_KEYS)].to_numpy().tolist()))
        timed = _timed(frame, metric)
        part = timed[[tuple(r) in keys for r in timed[list(RUN_KEYS)].to_numpy().tolist()]]
        return part[~part.duplicated(list(BACKEND_KEYS), keep=False)]

    base_part, new_part = candidates(base, "base only"), candidates(new, "new only")
    if base_part.empty or new_part.empty:
        return pd.DataFrame(), unmatched
    paired, _ = _join(base_part, new_part, BACKEND_KEYS, metric, threshold)
    used = set()
    for row in paired.itertuples():
        used.add(("base only", row.kind, row.op, row.base_backend, row.case, row.dtype))
        used.add(("new only", row.kind, row.op, row.backend, row.case, row.dtype))
    rest = unmatched[[tuple(r) not in used for r in
                      unmatched[["side", *RUN_KEYS]].to_numpy().tolist()]].reset_index(drop=True)
    return paired, rest


def compare_runs(frame: pd.DataFrame, base_run: str, new_run: str, *, metric: str = "latency_us",
                 threshold: float = 0.05) -> Comparison:
    base, new = _run(frame, base_run), _run(frame, new_run)
    rows, unmatched = _join(base, new, RUN_KEYS, metric, threshold)
    paired, unmatched = _pair_chosen_backends(base, new, unmatched, metric, threshold)
    if not paired.empty:
        rows = pd.concat([rows, paired], ignore_index=True)
    notes = _spec_notes(base, new) + _unjoinable_note(unmatched, rows)
    from kbench.results.amdahl import predict_end_to_end  # it uses geomean from here

    return Comparison(base_run, new_run, metric, threshold, rows, _geomeans(rows), unmatched,
                      _failures(new), notes, predict_end_to_end(base, rows, threshold))


def compare_backends(frame: pd.DataFrame, run_id: str, baseline: str, *, metric: str = "latency_us",
                     threshold: float = 0.05) -> Comparison:
    """Every other backend of ``run_id`` against ``baseline`` at the same (kind, op, case, dtype)."""
    run = _run(frame, run_id)
    if baseline not in set(run["backend"]):
        raise KbenchError(f"Run {run_id} has no rows for backend {baseline!r}.",
                          f"Backends in it: {', '.join(sorted(set(run['backend'].dropna())))}.")
    base = run[run["backend"] == baseline]
    new = run[run["backend"] != baseline]
    pieces = [_join(base, group, BACKEND_KEYS, metric, threshold) for _, group in new.groupby("backend")]
    rows = pd.concat([p[0] for p in pieces], ignore_index=True) if pieces else _join(base, new, BACKEND_KEYS, metric, threshold)[0]
    # Baseline rows with no counterpart in any backend, and other backends' rows with no baseline.
    matched_keys = set(map(tuple, rows[list(BACKEND_KEYS)].to_numpy().tolist()))
    timed = _timed(run, metric)
    lonely = timed[[tuple(r) not in matched_keys for r in timed[list(BACKEND_KEYS)].to_numpy().tolist()]]
    unmatched = lonely.assign(side=lonely["backend"].map(lambda b: "base only" if b == baseline else "new only"))
    unmatched = unmatched[["side", "kind", "op", "backend", "case", "dtype"]].reset_index(drop=True)
    notes = _unjoinable_note(unmatched, rows)
    return Comparison(f"{run_id} [{baseline}]", f"{run_id} [other backends]", metric, threshold, rows,
                      _geomeans(rows), unmatched, _failures(run), notes)
