"""`kbench suite`: entries run as fresh processes, the summary, exit statuses, README figures."""

import json
import os
import shutil
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from kbench.cli import cli
from kbench.results.figures import figure_table

REPO = Path(__file__).resolve().parents[2]
CPU_SUITE = REPO / "benchmarks" / "cpu.yaml"
README = """\
# a README

Before.

<!-- suite:tiny-llama -->
stale figures
<!-- /suite:tiny-llama -->

Between.

<!-- suite:rmsnorm-reference -->
<!-- /suite:rmsnorm-reference -->

After.
"""


@contextmanager
def in_repo():
    """The suites' commands name spec paths relative to the repository root."""
    here = os.getcwd()
    os.chdir(REPO)
    try:
        yield
    finally:
        os.chdir(here)


def suite(*args):
    with in_repo():
        return CliRunner().invoke(cli, ["suite", *map(str, args)])


def text(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


# One entry that passes and one that fails (an unknown backend), on the CPU in a second.
FINE_AND_BROKEN = """\
    name: mixed
    runs:
      - name: fine
        command: kbench bench rmsnorm --backend reference --device cpu --tokens 1 --hidden 64 --rep-ms 1 --warmup-ms 1
      - name: broken
        command: kbench bench rmsnorm --backend nosuch --device cpu --tokens 1 --hidden 64
"""


def write_suite(folder: Path, body: str) -> Path:
    path = folder / "suite.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def between_markers(readme: str, name: str) -> str:
    return readme.split(f"<!-- suite:{name} -->")[1].split(f"<!-- /suite:{name} -->")[0]


def tables(block: str) -> list[str]:
    """The Markdown tables of ``block``, in order, each as its lines."""
    found, current = [], []
    for line in block.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append("\n".join(current))
            current = []
    return found


def parse_table(block: str) -> list[dict[str, str]]:
    """The first Markdown table of ``block`` as one dict per body row."""
    lines = tables(block)[0].splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
            for line in lines[2:]]


def close(shown: str, value: float) -> bool:
    """A table cell shows ``value`` to the 3-4 significant digits it prints."""
    return float(shown.rstrip("%")) == pytest.approx(value, rel=6e-3, abs=0.051)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """benchmarks/cpu.yaml run once with --readme: (folder of records, README path, result)."""
    folder = tmp_path_factory.mktemp("cpu-suite")
    readme = folder / "README.md"
    readme.write_text(README)
    result = suite(CPU_SUITE, "--out", folder / "out", "--readme", readme)
    return folder / "out", readme, result


def records(out: Path) -> dict[str, dict]:
    """Records by the command that made them ('run' or 'bench')."""
    found = [json.loads(path.read_text()) for path in sorted(out.glob("*.json"))]
    return {record["command"][1]: record for record in found}


def test_cpu_suite_writes_one_record_per_entry_and_a_summary(cpu_run):
    out, _, result = cpu_run
    assert result.exit_code == 0, result.output
    written = records(out)
    assert sorted(written) == ["bench", "run"]
    summary = (out / "cpu-summary.md").read_text()
    for record in written.values():
        assert f"{record['run_id']}.json | PASS |" in summary
    assert "| tiny-llama | 0 |" in summary and "| rmsnorm-reference | 0 |" in summary
    assert "1/2 tiny-llama" in result.output and "2/2 rmsnorm-reference" in result.output  # progress lines
    assert "record: " in result.output  # each entry's own output reaches the console


def test_readme_figures_are_the_records_numbers(cpu_run):
    out, readme, result = cpu_run
    assert result.exit_code == 0, result.output
    text_after = readme.read_text()
    assert "stale figures" not in text_after
    assert text_after.startswith("# a README\n\nBefore.\n") and text_after.endswith("\nAfter.\n")
    written = records(out)

    run_rows = written["run"]["rows"]
    shown = parse_table(between_markers(text_after, "tiny-llama"))
    assert [(row["batch"], row["prompt"]) for row in shown] == [("1", "8"), ("2", "8")]
    for row in shown:
        shape = {"batch": int(row["batch"]), "prompt_len": int(row["prompt"])}

        def pipeline(kind, shape=shape):
            return next(r for r in run_rows if r["kind"] == kind and r["backend"] == "pipeline"
                        and all(r["shape"][k] == v for k, v in shape.items()))

        assert close(row["decode tok/s"], pipeline("decode")["tokens_per_s"])
        assert close(row["prefill ms"], pipeline("prefill")["latency_us"] / 1e3)
        assert row["roofline"].endswith("%") and row["peak memory"] == "-"  # CPU ceilings are measured; no peak memory
    assert "kbench run model_specs/tiny-llama.yaml --batch 1,2" in between_markers(text_after, "tiny-llama")
    # the decode step's breakdown at batch 1: a row per call site and the remainder, as recorded
    breakdown = parse_table(tables(between_markers(text_after, "tiny-llama"))[1])
    recorded = {r["part"]: r for r in run_rows if r["kind"] == "breakdown" and r["phase"] == "decode"
                and r["shape"]["batch"] == 1}
    assert {row["part"] for row in breakdown} == set(recorded) and "remainder" in recorded
    for row in breakdown:
        assert close(row["µs/step"], recorded[row["part"]]["total_us"])
        if row["part"] != "remainder":  # each part's rate, and that against the run's copy ceiling
            assert close(row["GB/s"], recorded[row["part"]]["gbps"])
            assert row["of copy"] == f"{100 * recorded[row['part']]['frac_peak_bw']:.0f}%"

    bench_rows = {(r["backend"], r["case"]): r for r in written["bench"]["rows"] if r["kind"] == "op"}
    shown = parse_table(between_markers(text_after, "rmsnorm-reference"))
    assert {(row["backend"], row["case"]) for row in shown} == set(bench_rows)
    for row in shown:
        record_row = bench_rows[row["backend"], row["case"]]
        assert close(row["µs"], record_row["latency_us"]) and row["status"] == record_row["status"]


def test_dry_run_remakes_the_readme_from_the_last_summary_and_runs_nothing(cpu_run, tmp_path):
    out, readme, _ = cpu_run
    stale = tmp_path / "README.md"
    stale.write_text(README)
    before = sorted(out.iterdir())
    result = suite(CPU_SUITE, "--out", out, "--dry-run", "--readme", stale)
    assert result.exit_code == 0, result.output
    assert sorted(out.iterdir()) == before
    assert stale.read_text() == readme.read_text()


def test_a_failing_entry_exits_1_and_the_summary_names_it(tmp_path):
    path = write_suite(tmp_path, FINE_AND_BROKEN)
    result = suite(path, "--out", tmp_path / "out")
    assert result.exit_code == 1, result.output
    summary = (tmp_path / "out" / "mixed-summary.md").read_text()
    assert "| broken | 2 | - | FAIL |" in summary and "FAIL: broken" in summary
    assert "| fine | 0 |" in summary and len(list((tmp_path / "out").glob("*.json"))) == 1


VALID = """\
name: bad
runs:
  - name: one
    command: kbench bench rmsnorm --backend reference --tokens 1
"""


@pytest.mark.parametrize(("body", "args", "message"), [
    (None, (), "does not exist. Pass the path of a suite YAML"),
    ("name: bad\nruns: [\n", (), "suite.yaml:3: invalid YAML"),
    (VALID + "outt: x\n", (), "suite.yaml:5: outt: unknown key. Did you mean 'out'?"),
    (VALID + "    timeout: 3\n", (), "runs[0].timeout: unknown key. Keys allowed here: name, command"),
    (VALID.replace("kbench bench", "python bench.py"), (), "is not a kbench run, bench or tune command"),
    (VALID.replace("kbench bench", "kbench compare"), (), "is not a kbench run, bench or tune command"),
    (VALID + VALID.split("runs:\n")[1], (), "suite.yaml:5: runs[1].name: entry name 'one' is used twice"),
    (VALID, ("--only", "onee"), "--only 'onee'"),
    (VALID.replace("rmsnorm --backend", "rmsnorm --out x --backend"), (), "sets --out. Drop it"),
    (VALID.replace("bench rmsnorm --backend reference --tokens 1", "run model_specs/tiny-llama.yaml --batchh 1"), (),
     "runs[0].command: kbench run: No such option"),
    (VALID.replace("name: one", "name: one two"), (), "is not a usable name"),
    (VALID.replace("runs:", "runs: []\nx:"), (), "unknown key"),
    ("name: bad\nruns: []\n", (), "runs: must be a non-empty list"),
])
def test_bad_input_exits_2_with_the_fix_and_writes_nothing(tmp_path, body, args, message):
    path = tmp_path / "suite.yaml"
    if body is not None:
        path.write_text(body)
    out = tmp_path / "out"
    result = suite(path, "--out", out, *args)
    assert result.exit_code == 2, result.output
    assert message in text(result)
    assert not out.exists()


def test_unknown_only_names_the_closest_entry(tmp_path):
    result = suite(write_suite(tmp_path, VALID), "--only", "onee", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "Did you mean 'one'? Entries: one" in text(result)


def test_a_readme_without_the_marker_is_an_error_naming_it(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README.replace("<!-- suite:tiny-llama -->\nstale figures\n<!-- /suite:tiny-llama -->\n", ""))
    result = suite(CPU_SUITE, "--out", tmp_path / "out", "--readme", readme)
    assert result.exit_code == 2, result.output
    assert "no marker pair for 'tiny-llama'" in text(result)
    assert "'<!-- suite:tiny-llama -->' ... '<!-- /suite:tiny-llama -->'" in text(result)
    assert not (tmp_path / "out").exists()


def test_dry_run_without_an_earlier_run_says_to_run_it_first(tmp_path):
    readme = tmp_path / "README.md"
    shutil.copy(CPU_SUITE, tmp_path / "cpu.yaml")
    readme.write_text(README)
    result = suite(tmp_path / "cpu.yaml", "--out", tmp_path / "out", "--dry-run", "--readme", readme)
    assert result.exit_code == 2 and "Run the suite without --dry-run first" in text(result)
    assert readme.read_text() == README


def _end_to_end_row(kind: str, backend: str, batch: int, tokens_per_s: float, latency_us: float, **fields) -> dict:
    return {"kind": kind, "op": kind, "backend": backend, "status": "PASS", "shape": {"batch": batch, "prompt_len": 512},
            "tokens_per_s": tokens_per_s, "latency_us": latency_us, "frac_peak_bw": None, "peak_memory_bytes": None,
            **fields}


def test_a_run_with_the_hf_baseline_gets_its_columns_beside_ours():
    record = {"command": ["kbench", "run", "model_specs/llama2-7b.yaml", "--baseline", "hf", "--out", "results/x"],
              "run_id": "r1", "spec": {"dtype": "bfloat16"}, "env": {"gpu": "NVIDIA H100 80GB HBM3"}, "rows": [
                  _end_to_end_row("decode", "pipeline", 8, 1178.4, 6789.0, frac_peak_bw=0.774),
                  _end_to_end_row("prefill", "pipeline", 8, 42000.0, 95400.0, peak_memory_bytes=int(15.6 * 2**30)),
                  _end_to_end_row("decode", "hf", 8, 173.2, 46000.0),
                  _end_to_end_row("prefill", "hf", 8, 33000.0, 123500.0),
                  _end_to_end_row("decode", "reference", 8, 10.0, 1e6)]}
    figure = figure_table(record)
    assert parse_table(figure) == [{"batch": "8", "prompt": "512", "decode tok/s": "1178", "roofline": "77%",
                                    "hf tok/s": "173.2", "prefill ms": "95.4", "hf prefill ms": "123.5",
                                    "peak memory": "15.6 GiB"}]
    assert "`kbench run model_specs/llama2-7b.yaml --baseline hf` on NVIDIA H100 80GB HBM3, bfloat16" in figure


def test_runs_of_parts_of_a_suite_add_up_in_its_summary(tmp_path):
    path = write_suite(tmp_path, """\
        name: parts
        runs:
          - name: first
            command: kbench bench rmsnorm --backend reference --device cpu --tokens 1 --hidden 64 --rep-ms 1 --warmup-ms 1
          - name: second
            command: kbench bench rmsnorm --backend reference --device cpu --tokens 2 --hidden 64 --rep-ms 1 --warmup-ms 1
    """)
    out = tmp_path / "out"
    assert suite(path, "--out", out, "--only", "second").exit_code == 0
    assert suite(path, "--out", out, "--only", "first").exit_code == 0
    summary = (out / "parts-summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith(("| first |", "| second |"))]
    assert [row.split("|")[1].strip() for row in rows] == ["first", "second"]  # the suite's order, both kept
    assert "rows of second: from an earlier run" in summary and "- second: `kbench bench" in summary
    readme = tmp_path / "README.md"
    readme.write_text("<!-- suite:first -->\nold\n<!-- /suite:first -->\n<!-- suite:second -->\nold\n<!-- /suite:second -->\n")
    (out / "parts-summary.md").write_text("\n".join(line for line in summary.splitlines() if "| second |" not in line))
    result = suite(path, "--out", out, "--dry-run", "--readme", readme)
    assert result.exit_code == 0, result.output
    assert "second's figure kept as it was" in text(result)
    remade = readme.read_text()
    assert between_markers(remade, "second") == "\nold\n" and "| op | backend |" in between_markers(remade, "first")


def test_an_entry_with_html_gets_its_records_page_and_a_bad_html_path_is_exit_2(tmp_path):
    page = tmp_path / "pages" / "one.html"
    body = f"""\
        name: paged
        runs:
          - name: one
            command: kbench bench rmsnorm --backend reference --device cpu --tokens 1 --hidden 64 --rep-ms 1 --warmup-ms 1
            html: {page}
    """
    out = tmp_path / "out"
    result = suite(write_suite(tmp_path, body), "--out", out)
    assert result.exit_code == 0, result.output
    (record,) = out.glob("*.json")
    run_id = json.loads(record.read_text())["run_id"]
    assert f"<h2>run {run_id} (PASS)</h2>" in page.read_text() and "one's page remade" in text(result)
    (tmp_path / "folder.html").mkdir()
    bad = write_suite(tmp_path, body.replace(str(page), str(tmp_path / "folder.html")))
    result = suite(bad, "--out", tmp_path / "out2")
    assert result.exit_code == 2 and "runs[0].html: html:" in text(result) and "is a folder" in text(result)
    assert not (tmp_path / "out2").exists()


def test_a_failed_row_kept_from_an_earlier_run_keeps_the_summary_failing(tmp_path):
    path = write_suite(tmp_path, FINE_AND_BROKEN)
    out = tmp_path / "out"
    assert suite(path, "--out", out, "--only", "broken").exit_code == 1
    assert suite(path, "--out", out, "--only", "fine").exit_code == 0
    summary = (out / "mixed-summary.md").read_text()
    assert "`: FAIL: broken (rows of broken: from an earlier run)." in summary
