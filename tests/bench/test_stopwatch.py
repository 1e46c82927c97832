"""The checks' share of a run's wall time: measured per part, nested regions counted once."""

import json
import time

from click.testing import CliRunner

import kbench.bench.pipeline_check
from kbench.bench.stopwatch import FIRST_CALLS, OP_CHECK, PIPELINE_CHECK, Stopwatch, describe
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


def test_a_first_call_inside_a_check_is_billed_apart_and_not_as_a_check():
    """Compile and autotune on a backend's first call are paid checked or not: the region pauses
    the check around it, and the summary gives it apart from the checks."""
    watch = Stopwatch()
    with watch.timed("check"):
        time.sleep(0.02)
        with watch.timed(FIRST_CALLS):
            time.sleep(0.06)
            with watch.timed(FIRST_CALLS):  # nested: counted once
                time.sleep(0.01)
        time.sleep(0.02)
    assert 0.04 <= watch.seconds["check"] < 0.07
    assert 0.07 <= watch.seconds[FIRST_CALLS] < 0.2
    summary = watch.summary(total_s=1.0)
    assert summary["parts"] == {"check": round(watch.seconds["check"], 3)} and summary["checks"] < 0.07
    assert summary["first_calls"] >= 0.07
    assert "first calls inside them" in describe(summary) and "not counted" in describe(summary)


def test_the_pipelines_first_calls_in_its_check_are_not_the_checks_cost(tmp_path, monkeypatch):
    """A pipeline whose first prefill is slow (a compile) makes the run's first_calls, not its
    pipeline check, longer: the run's timing would pay that call without the check."""
    from kbench.model.pipeline import Pipeline

    slept, prefill, calls = 1.0, Pipeline.prefill, []

    def first_slow(self, prompts):
        calls.append(self)
        if len(calls) == 1:  # the run's pipeline, first in its check
            time.sleep(slept)
        return prefill(self, prompts)

    monkeypatch.setattr(Pipeline, "prefill", first_slow)
    result = CliRunner().invoke(cli, ["run", "model_specs/tiny-llama.yaml", "--batch", "1", "--prompt-len", "8",
                                      "--decode-steps", "2", "--attention", "sdpa", "--skip-ops",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (path,) = tmp_path.glob("*.json")
    wall = json.loads(path.read_text())["wall_s"]
    assert wall["first_calls"] >= slept and wall["parts"][PIPELINE_CHECK] < slept
    assert "first calls inside them" in result.output


def test_a_backends_first_call_in_its_op_check_is_not_the_checks_cost():
    """The op check's first call of a backend at a case (its compile) is first_calls; the calls
    that follow on the hard inputs, and the comparisons, are the check's."""
    import torch

    from kbench.bench.check import check_implementation
    from kbench.bench.stopwatch import STOPWATCH
    from kbench.ops.norm import RMSNORM, rmsnorm_reference
    from kbench.registry import Implementation, Registry

    calls = []

    def compiles_first(x, weight, eps):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.5)
        return rmsnorm_reference(x, weight, eps)

    registry = Registry()
    registry.add_op(RMSNORM, "test")
    registry.add_implementation(Implementation("rmsnorm", "jit", compiles_first, plugin="test"))
    STOPWATCH.reset()
    check = check_implementation(registry, "rmsnorm", "jit", RMSNORM.test_cases[1], torch.float32, "cpu")
    assert check.ok and len(calls) > 1  # the hard inputs were called too
    summary = STOPWATCH.summary(total_s=10.0)
    assert summary["first_calls"] >= 0.5 and summary["parts"][OP_CHECK] < 0.5
    STOPWATCH.reset()
