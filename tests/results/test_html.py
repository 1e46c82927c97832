"""kbench/results/html.py: the report page parsed back holds the record's numbers, for one
run and for two compared."""

import base64
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parents[1] / "model"))
from tiny_models import write_spec  # noqa: E402

from kbench.cli import cli  # noqa: E402
from kbench.commands.run import RunOptions, run  # noqa: E402
from kbench.spec import Overrides  # noqa: E402


class Tables(HTMLParser):
    """table id -> rows of cell texts (header first), and the inline images."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self._table, self._row, self._cell = {}, [], None, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""
        elif tag == "img":
            self.images.append(attrs["src"])

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "table":
            self._table = None


def _parse(path: Path) -> Tables:
    parser = Tables()
    parser.feed(path.read_text())
    return parser


def _records(parsed: Tables, table_id: str) -> list[dict]:
    header, *rows = parsed.tables[table_id]
    return [dict(zip(header, row, strict=True)) for row in rows]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    spec = write_spec(folder, workload={"batch": [1], "prompt_len": [8], "decode_steps": 2},
                      bench={"warmup_ms": 1, "rep_ms": 2, "max_op_cases": 1, "flush_l2": False})
    console = Console(file=open(folder / "log.txt", "w"), width=200)
    base = run(spec, None, RunOptions(out_dir=folder / "results"), console)
    new = run(spec, Overrides(backends={"attention": "sdpa"}), RunOptions(out_dir=folder / "results"), console)
    return folder, base, new


def test_one_run_page_holds_the_records_tables(two_runs):
    from click.testing import CliRunner

    folder, base, _ = two_runs
    out = folder / "one.html"
    result = CliRunner().invoke(cli, ["report", str(base.path), "--html", str(out)])
    assert result.exit_code == 0, result.output
    parsed = _parse(out)
    run_id, rows = base.record["run_id"], base.record["rows"]
    ops = _records(parsed, f"ops-{run_id}")
    op_rows = [r for r in rows if r["kind"] == "op"]
    assert len(ops) == len(op_rows)
    for shown, row in zip(ops, op_rows, strict=True):
        assert (shown["op"], shown["backend"], shown["status"]) == (row["op"], row["backend"], row["status"])
        assert float(shown["latency_us"]) == pytest.approx(row["latency_us"], rel=1e-5)
    breakdown = _records(parsed, f"breakdown-{run_id}")
    parts = [r for r in rows if r["kind"] == "breakdown"]
    assert [b["part"] for b in breakdown] == [r["part"] for r in parts]
    assert [float(b["total_us"]) for b in breakdown] == pytest.approx([r["total_us"] for r in parts], rel=1e-5)
    rates = [(b["gbps"], r["gbps"]) for b, r in zip(breakdown, parts, strict=True) if r["gbps"] is not None]
    assert rates and all(float(shown) == pytest.approx(recorded, rel=1e-5) for shown, recorded in rates)
    decode = [r for r in _records(parsed, f"e2e-{run_id}") if r["kind"] == "decode"]
    assert float(decode[0]["latency_us"]) == pytest.approx(
        next(r["latency_us"] for r in rows if r["kind"] == "decode"), rel=1e-5)
    assert parsed.images and base64.b64decode(parsed.images[0].split(",", 1)[1])[:4] == b"\x89PNG"


def test_two_runs_page_holds_the_comparison_and_its_amdahl_rows(two_runs):
    from click.testing import CliRunner

    folder, base, new = two_runs
    out = folder / "two.html"
    result = CliRunner().invoke(cli, ["report", str(base.path), str(new.path), "--html", str(out)])
    assert result.exit_code == 0, result.output
    parsed = _parse(out)
    amdahl = _records(parsed, "amdahl")
    base_decode = next(r for r in base.record["rows"] if r["kind"] == "decode")
    new_decode = next(r for r in new.record["rows"] if r["kind"] == "decode")
    decode = next(r for r in amdahl if r["kind"] == "decode")
    assert float(decode["measured_speedup"]) == pytest.approx(base_decode["latency_us"] / new_decode["latency_us"],
                                                              rel=1e-4)
    attention = next(r for r in _records(parsed, "comparison") if r["op"] == "attention_decode")
    base_row = next(r for r in base.record["rows"] if r["op"] == "attention_decode" and r["kind"] == "op")
    assert float(attention["base"]) == pytest.approx(base_row["latency_us"], rel=1e-5)
    assert f"ops-{new.record['run_id']}" in parsed.tables


def test_a_tune_page_holds_its_mixes_candidates_and_phases(tmp_path):
    from click.testing import CliRunner

    from kbench.results.load import read_json

    spec = write_spec(tmp_path, workload={"batch": [1], "prompt_len": [8], "decode_steps": 2},
                      bench={"warmup_ms": 1, "rep_ms": 2, "max_op_cases": 1, "flush_l2": False})
    result = CliRunner().invoke(cli, ["tune", str(spec), "--candidates", "torch,cuda", "--mixes", "torch",
                                      "--out-spec", str(tmp_path / "tuned.yaml"), "--out", str(tmp_path / "results")])
    assert result.exit_code == 0, result.output
    path = next((tmp_path / "results").glob("*.json"))
    record = read_json(path)
    out = tmp_path / "tune.html"
    assert CliRunner().invoke(cli, ["report", str(path), "--html", str(out)]).exit_code == 0
    parsed, run_id, tune = _parse(out), record["run_id"], record["tune"]
    mixes = {m["mix"]: m for m in _records(parsed, f"mixes-{run_id}")}
    assert set(mixes) == set(tune["mixes"])
    for label, mix in tune["mixes"].items():
        assert float(mixes[label]["workload_ms"]) == pytest.approx(mix["request_us"] / 1e3, rel=1e-5)
        assert mixes[label]["written"] == ("yes" if label == tune["winner"] else "")
    candidates = _records(parsed, f"candidates-{run_id}")
    assert any(c["cost_us"] is None for c in tune["candidates"])  # cuda, which cannot run here, is listed with why
    assert [(c["op"], c["backend"]) for c in candidates] == [(c["op"], c["backend"]) for c in tune["candidates"]]
    for shown, candidate in zip(candidates, tune["candidates"], strict=True):
        if candidate["cost_us"] is None:
            assert shown["cost_us"] == "-" and shown["why_out"] == candidate["reason"]
        else:
            assert float(shown["cost_us"]) == pytest.approx(candidate["cost_us"], rel=1e-5)
        assert shown["written"] == ("yes" if tune["choices"].get(candidate["op"]) == candidate["backend"] else "")
    phases = _records(parsed, f"phases-{run_id}")
    assert [p["phase"] for p in phases] == list(tune["phases_s"])
    assert [float(p["seconds"]) for p in phases] == pytest.approx(list(tune["phases_s"].values()), rel=1e-5, abs=1e-6)
