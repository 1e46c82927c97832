import json

from click.testing import CliRunner

from kbench.cli import cli

BASE_ID = "20261123T080000Z-llama3-8b-aaa111"
NEW_ID = "20261123T090000Z-llama3-8b-bbb222"


def _compare(*args):
    return CliRunner().invoke(cli, ["compare", *args])


def test_no_argument_compares_the_two_latest_runs_and_a_regression_exits_1(two_runs, tmp_path):
    result = _compare("--results-dir", str(tmp_path), "--format", "json")
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert (data["base"], data["new"]) == (BASE_ID, NEW_ID) and data["regressions"] == 2


def test_no_regression_past_the_threshold_exits_0(two_runs, tmp_path):
    result = _compare(str(two_runs[0]), str(two_runs[1]), "--threshold", "0.3")
    assert result.exit_code == 0, result.output
    assert "geometric mean speedup" in result.stdout


def test_run_ids_and_output_file_and_plot(two_runs, tmp_path):
    out, png = tmp_path / "cmp.md", tmp_path / "plots" / "speedup.png"
    result = _compare(BASE_ID, NEW_ID[:20], "--results-dir", str(tmp_path), "--format", "markdown",
                      "--output", str(out), "--plot", str(png))
    assert result.exit_code == 1
    assert out.read_text().startswith(f"# {NEW_ID} vs {BASE_ID}")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baseline_backend_inside_the_latest_run(two_runs, tmp_path):
    result = _compare("--results-dir", str(tmp_path), "--baseline", "reference", "--format", "csv",
                      "--threshold", "0.5")
    assert result.exit_code == 0, result.output
    assert "rmsnorm,triton,reference,c1" in result.stdout


def test_unjoinable_runs_are_listed_and_exit_1(two_runs, tmp_path, synthetic):
    from kbench.results import write_record

    other = synthetic.record("20261123T100000Z-tiny-ccc333", "2026-11-23T10:00:00+00:00",
                             [synthetic.row("op", "rmsnorm", "triton", "tokens=7", 1.0)], "tiny")
    path = write_record(other, tmp_path / "other")
    result = _compare(str(two_runs[0]), str(path))
    assert result.exit_code == 1
    assert "nothing could be joined" in result.stdout and "could not be joined" in result.stdout
    assert "tokens=7" in result.stdout


def test_too_few_runs_is_a_user_error(tmp_path):
    result = _compare("--results-dir", str(tmp_path))
    assert result.exit_code == 2 and "comparing needs 2" in result.stderr
