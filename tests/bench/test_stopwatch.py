"""The checks' share of a run's wall time: measured per part, nested regions counted once."""

import json
import time

from click.testing import CliRunner

import kbench.bench.pipeline_check
from kbench.bench.stopwatch import OP_CHECK, PIPELINE_CHECK, Stopwatch, describe
from kbench.cli import cli


def test_a_region_inside_a_region_is_counted_once_under_the_outer_part():
    watch = Stopwatch()
    with watch.timed("outer"):
        time.sleep(0.02)
        with watch.timed("inner"):
            time.sleep(0.02)
    assert "inner" not in watch.seconds
    assert 0.04 <= watch.seconds["outer"] < 0.5
    summary = watch.summary(total_s=0.4)
    assert abs(summary["checks"] - summary["total"] * summary["checks_share"]) < 1e-2
    assert "checks took" in describe(summary) and "outer" in describe(summary)


def test_a_run_records_how_long_each_check_took_and_prints_the_share(tmp_path, monkeypatch):
    slept = 0.3
    real = kbench.bench.pipeline_check.teacher_forced_check

    def slow_check(*args, **kwargs):
        time.sleep(slept)
        return real(*args, **kwargs)

    monkeypatch.setattr(kbench.bench.pipeline_check, "teacher_forced_check", slow_check)
    result = CliRunner().invoke(cli, ["run", "model_specs/tiny-llama.yaml", "--batch", "1", "--prompt-len", "8",
                                      "--decode-steps", "2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (path,) = tmp_path.glob("*.json")
    wall = json.loads(path.read_text())["wall_s"]
    assert wall["parts"][PIPELINE_CHECK] >= slept and wall["parts"][OP_CHECK] > 0
    assert wall["checks"] <= wall["total"] and abs(sum(wall["parts"].values()) - wall["checks"]) < 0.01
    assert f"checks took {wall['checks']:.1f} s of {wall['total']:.1f} s wall" in result.output
