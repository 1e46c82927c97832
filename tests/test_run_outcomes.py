"""What a command's end looks like: work is never lost, exit statuses CI can tell apart,
records the team can read, and output that survives a CI log."""

import io
import json
import os
import stat
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

import kbench.commands.run
import kbench.results.record
from kbench.cli import cli
from kbench.commands.run import progress_display
from kbench.commands.suite import suite_progress
from kbench.errors import EXIT_STATUSES, KbenchError
from kbench.plugins import get_registry
from kbench.results.record import write_record

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "model_specs" / "tiny-llama.yaml")
SMALL = ["--batch", "1", "--prompt-len", "8", "--decode-steps", "2"]


def _run(*args, env=None):
    return CliRunner().invoke(cli, ["run", TINY, *args], env=env)


def _records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def test_a_longer_second_prompt_gets_a_kv_cache_with_room_for_every_decode_step(tmp_path):
    # the first prompt's cache holds 8 + 12 tokens; the second needs 16 + 12
    result = _run("--prompt-len", "8,16", "--decode-steps", "12", "--batch", "1", "--skip-ops", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    (record,) = _records(tmp_path)
    checks = [row for row in record["rows"] if row["kind"] == "check"]
    assert [row["shape"]["prompt_len"] for row in checks] == [8, 16]
    assert all(row["status"] == "PASS" and row["tokens_compared"] == 13 for row in checks)


def test_a_mistake_found_after_the_op_phase_still_prints_the_tables_and_writes_the_record(tmp_path, monkeypatch):
    def weights_that_fail(spec):
        raise KbenchError("the checkpoint vanished.", "Put it back.")

    monkeypatch.setattr(kbench.commands.run, "load_weights", weights_that_fail)
    result = _run(*SMALL, "--out", str(tmp_path))
    assert result.exit_code == 2, result.output
    (record,) = _records(tmp_path)
    assert record["status"] == "FAIL" and "the checkpoint vanished" in record["error"]
    assert {row["kind"] for row in record["rows"]} == {"op"}
    assert "rmsnorm" in result.stdout and f"record: {tmp_path}" in result.stdout
    assert "the rows measured before it are in" in result.output and "Put it back." in result.output


def test_a_results_folder_that_fails_at_the_end_gets_the_record_saved_elsewhere(tmp_path, monkeypatch):
    out, fallback = tmp_path / "out", tmp_path / "tmp"
    fallback.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(fallback))

    def write_refused_in_out(record, folder):
        if Path(folder) == out:
            raise PermissionError(13, "Permission denied", str(folder))
        return write_record(record, folder)

    monkeypatch.setattr(kbench.results.record, "write_record", write_refused_in_out)
    result = _run(*SMALL, "--skip-e2e", "--out", str(out))
    assert result.exit_code == 2, result.output
    (saved,) = (fallback / "kbench-results").glob("*.json")
    assert str(saved) in result.output and "Permission denied" in result.output
    assert "rmsnorm" in result.stdout and "Traceback" not in result.output


def test_running_out_of_memory_mid_run_is_exit_2_and_keeps_the_rows_so_far(tmp_path, monkeypatch):
    def too_big(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 4000000000000 bytes.")

    monkeypatch.setattr(kbench.commands.run, "check_pipeline", too_big)
    result = _run(*SMALL, "--out", str(tmp_path))
    assert result.exit_code == 2, result.output
    (record,) = _records(tmp_path)
    assert record["status"] == "FAIL" and "can't allocate memory" in record["error"]
    assert "Ran out of memory" in result.output and "Use smaller shapes" in result.output
    assert "Traceback" not in result.output


def test_a_bug_exits_3_with_its_traceback_and_a_request_for_a_report(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in kbench")

    monkeypatch.setattr(kbench.commands.run, "check_and_time_ops", broken)
    result = _run(*SMALL, "--skip-e2e", "--out", str(tmp_path))
    assert result.exit_code == 3, result.output
    assert "Traceback" in result.output and "ZeroDivisionError: a bug in kbench" in result.output
    assert "This is a bug in kbench" in result.output and "report it" in result.output


def test_ctrl_c_exits_130_and_writes_no_partial_record(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(kbench.commands.run, "check_pipeline", interrupted)
    result = _run(*SMALL, "--out", str(tmp_path))
    assert result.exit_code == 130, result.output
    assert not list(tmp_path.glob("*")) and "interrupted" in result.output


def test_exit_statuses_are_documented_in_help_and_readme():
    help_text = CliRunner().invoke(cli, ["--help"]).output
    readme = (REPO / "README.md").read_text()
    for status, text in EXIT_STATUSES.items():
        assert f"{status}  {text}" in help_text
        assert f"| {status} | {text} |" in readme


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_records_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = write_record({"run_id": "r"}, tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_tables_are_as_wide_as_their_content_off_a_terminal_or_as_width_says():
    natural = CliRunner().invoke(cli, ["list"], env={"KBENCH_WIDTH": None, "COLUMNS": None})
    narrow = CliRunner().invoke(cli, ["--width", "60", "list"], env={"KBENCH_WIDTH": None, "COLUMNS": None})
    assert natural.exit_code == narrow.exit_code == 0
    natural_width = max(len(line) for line in natural.stdout.splitlines())
    assert natural_width > 80 and "…" not in natural.stdout
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 60
    assert "KBENCH_WIDTH" not in os.environ


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_text_keeps_its_brackets(terminal):
    file = io.StringIO()
    console = Console(file=file, force_terminal=terminal, width=200)
    with progress_display(console) as progress:
        progress("ops: rmsnorm [reference] tokens=1 [/]")
    if not terminal:
        with suite_progress(console, 2) as advance:
            advance(1, "bench [torch] [/] tokens=1")
        assert "bench [torch] [/] tokens=1" in file.getvalue()
    assert "rmsnorm [reference] tokens=1 [/]" in file.getvalue()


def test_kbench_plugins_names_that_match_no_plugin_are_reported(monkeypatch):
    get_registry.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["list", "--json"], env={"KBENCH_PLUGINS": "torch,nosuchplugin"})
    finally:
        get_registry.cache_clear()
    assert result.exit_code == 0, result.output
    errors = json.loads(result.stdout)["plugin_errors"]
    assert "no installed plugin has that name" in errors["nosuchplugin"] and "torch" not in errors


@pytest.mark.gpu
@pytest.mark.parametrize(("args", "shape"), [
    (["run", str(REPO / "model_specs" / "llama2-7b.yaml"), "--batch", "1000", "--prompt-len", "4000", "--skip-ops"],
     "batch 1000 x 4032 tokens"),
    (["bench", "rmsnorm", "--backend", "reference", "--device", "cuda", "--tokens", "1000000000", "--hidden", "100000"],
     "rmsnorm at tokens=1000000000 hidden=100000"),
])
def test_shapes_past_the_gpus_free_memory_are_refused_before_anything_runs(tmp_path, args, shape):
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert shape in result.output and "free on the GPU" in result.output
    assert not list(tmp_path.iterdir())
