import csv
import io
import json
import math
from html.parser import HTMLParser

import pytest

from kbench.results import compare_backends, compare_runs, geomean, load, write_record
from kbench.results.report import render

BASE_ID = "20261123T080000Z-llama3-8b-aaa111"
NEW_ID = "20261123T090000Z-llama3-8b-bbb222"


def _speedups(comparison):
    return {(r.kind, r.op, r.backend, r.case): r.speedup for r in comparison.rows.itertuples()}


def test_speedups_regressions_and_geomeans_between_runs(two_runs):
    comparison = compare_runs(load(list(two_runs)), BASE_ID, NEW_ID, threshold=0.05)
    assert _speedups(comparison) == pytest.approx({
        ("op", "rmsnorm", "reference", "c1"): 1.0,
        ("op", "rmsnorm", "triton", "c1"): 1.25,
        ("op", "rmsnorm", "triton", "c2"): 0.8,
        ("prefill", "prefill", "pipeline", "batch=1 prompt_len=128"): 1.25,
        ("decode", "decode", "pipeline", "batch=1 prompt_len=128 steps=8"): 0.8,
    })
    assert sorted(comparison.regressions["op"]) == ["decode", "rmsnorm"]
    means = {(r.op, r.backend): r.geomean_speedup for r in comparison.geomeans.itertuples()}
    assert means == pytest.approx({("rmsnorm", "reference"): 1.0, ("rmsnorm", "triton"): 1.0,  # sqrt(1.25 * 0.8)
                                   ("prefill", "pipeline"): 1.25, ("decode", "pipeline"): 0.8})
    assert not comparison.ok


def test_rows_on_one_side_are_listed_not_dropped(two_runs):
    comparison = compare_runs(load(list(two_runs)), BASE_ID, NEW_ID)
    unmatched = {(r.side, r.op, r.backend) for r in comparison.unmatched.itertuples()}
    assert unmatched == {("base only", "rope", "triton"), ("new only", "swiglu", "triton")}


def test_threshold_decides_what_is_a_regression(two_runs):
    comparison = compare_runs(load(list(two_runs)), BASE_ID, NEW_ID, threshold=0.3)
    assert comparison.regressions.empty  # 0.8x is 25% slower


def test_backends_inside_one_run_against_a_baseline(two_runs):
    comparison = compare_backends(load([two_runs[1]]), NEW_ID, "reference")
    assert _speedups(comparison) == pytest.approx({("op", "rmsnorm", "triton", "c1"): 2.5})
    lonely = {(r.side, r.op, r.backend, r.case) for r in comparison.unmatched.itertuples()}
    assert ("new only", "rmsnorm", "triton", "c2") in lonely
    assert ("new only", "prefill", "pipeline", "batch=1 prompt_len=128") in lonely


def test_runs_of_different_specs_are_reported_unjoinable(tmp_path, two_runs, synthetic):
    row, record = synthetic.row, synthetic.record
    other = [row("op", "rmsnorm", "triton", "tokens=7", 1.0)]
    write_record(record("20261123T100000Z-tiny-ccc333", "2026-11-23T10:00:00+00:00", other, "tiny"), tmp_path)
    frame = load([two_runs[0], tmp_path / "20261123T100000Z-tiny-ccc333.json"])
    comparison = compare_runs(frame, BASE_ID, "20261123T100000Z-tiny-ccc333")
    assert comparison.rows.empty and not comparison.ok
    assert any("nothing could be joined" in note for note in comparison.notes)
    assert any("different specs" in note for note in comparison.notes)
    assert len(comparison.unmatched) == 6 + 1  # every timed row of both runs


def test_fail_rows_make_the_comparison_fail(tmp_path, synthetic):
    row, record = synthetic.row, synthetic.record
    rows_ok = [row("op", "rmsnorm", "triton", "c1", 5.0)]
    rows_fail = [row("op", "rmsnorm", "triton", "c1", 5.0, status="FAIL")]
    write_record(record("20261123T080000Z-a-000001", "2026-11-23T08:00:00+00:00", rows_ok), tmp_path)
    write_record(record("20261123T090000Z-a-000002", "2026-11-23T09:00:00+00:00", rows_fail), tmp_path)
    comparison = compare_runs(load(results_dir=tmp_path), "20261123T080000Z-a-000001", "20261123T090000Z-a-000002")
    assert comparison.regressions.empty and len(comparison.failures) == 1 and not comparison.ok


def test_geomean_ignores_missing_values():
    assert geomean([2.0, 8.0, float("nan"), None]) == pytest.approx(4.0)
    assert math.isnan(geomean([]))


class _TableCounter(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables = self.rows = 0

    def handle_starttag(self, tag, attrs):
        self.tables += tag == "table"
        self.rows += tag == "tr"


@pytest.mark.parametrize("output_format", ["json", "csv", "markdown", "html"])
def test_every_format_parses_back_with_every_compared_row(two_runs, output_format):
    comparison = compare_runs(load(list(two_runs)), BASE_ID, NEW_ID)
    text = render(comparison, output_format)
    if output_format == "json":
        data = json.loads(text)
        assert len(data["rows"]) == 5 and data["regressions"] == 2 and len(data["unmatched"]) == 2
        assert {r["op"] for r in data["geomeans"]} == {"rmsnorm", "prefill", "decode"}
    elif output_format == "csv":
        records = list(csv.DictReader(io.StringIO(text)))
        sections = [r["section"] for r in records]
        assert sections.count("row") == 5 and sections.count("geomean") == 4 and sections.count("unmatched") == 2
        speedups = sorted(float(r["speedup"]) for r in records if r["section"] == "row")
        assert speedups == pytest.approx([0.8, 0.8, 1.0, 1.25, 1.25])
    elif output_format == "markdown":
        rows_section = text.split("## Rows")[1].split("## Geometric means")[0]
        table_lines = [line for line in rows_section.splitlines() if line.startswith("|")]
        assert len(table_lines) == 2 + 5  # header, rule, rows
        assert "| kind | op | backend |" in table_lines[0]
    else:
        counter = _TableCounter()
        counter.feed(text)
        assert counter.tables == 3  # rows, geomeans, unmatched
        assert counter.rows == (1 + 5) + (1 + 4) + (1 + 2)


def test_pipelines_with_different_backends_are_joined_and_the_difference_noted(tmp_path, synthetic):
    def prefill(backends, latency_us):
        return dict(synthetic.row("prefill", "prefill", "pipeline", "batch=1 prompt_len=8", latency_us),
                    backends=backends)

    write_record(synthetic.record("20261123T080000Z-t-000001", "2026-11-23T08:00:00+00:00",
                                  [prefill("norm=reference", 100.0)]), tmp_path)
    write_record(synthetic.record("20261123T090000Z-t-000002", "2026-11-23T09:00:00+00:00",
                                  [prefill("norm=triton", 50.0)]), tmp_path)
    comparison = compare_runs(load(results_dir=tmp_path), "20261123T080000Z-t-000001", "20261123T090000Z-t-000002")
    assert comparison.rows["speedup"].tolist() == [2.0]
    assert any("norm=reference (base) vs norm=triton (new)" in note for note in comparison.notes)


def test_runs_of_different_mixes_pair_their_chosen_backends_op_by_op(tmp_path, synthetic):
    row = synthetic.row
    base_rows = [row("op", "rmsnorm", "reference", "c1", 10.0), row("op", "rmsnorm", "triton", "c1", 4.0),
                 row("op", "rmsnorm", "triton", "c2", 6.0), row("op", "rope", "triton", "c1", 3.0)]
    new_rows = [row("op", "rmsnorm", "reference", "c1", 10.0), row("op", "rmsnorm", "cuda", "c1", 2.0),
                row("op", "rmsnorm", "cuda", "c2", 6.0), row("op", "rmsnorm", "liger", "c2", 5.0)]
    write_record(synthetic.record("20261123T080000Z-t-000001", "2026-11-23T08:00:00+00:00", base_rows), tmp_path)
    write_record(synthetic.record("20261123T090000Z-t-000002", "2026-11-23T09:00:00+00:00", new_rows), tmp_path)
    comparison = compare_runs(load(results_dir=tmp_path), "20261123T080000Z-t-000001", "20261123T090000Z-t-000002")
    rows = {(r.op, r.base_backend, r.backend, r.case): r.speedup for r in comparison.rows.itertuples()}
    assert rows == pytest.approx({("rmsnorm", "reference", "reference", "c1"): 1.0,
                                  ("rmsnorm", "triton", "cuda", "c1"): 2.0})
    # c2 has two candidates on the new side: ambiguous, so nothing is paired and all are listed
    unmatched = {(r.side, r.op, r.backend, r.case) for r in comparison.unmatched.itertuples()}
    assert unmatched == {("base only", "rmsnorm", "triton", "c2"), ("new only", "rmsnorm", "cuda", "c2"),
                         ("new only", "rmsnorm", "liger", "c2"), ("base only", "rope", "triton", "c1")}
