"""kbench/bench/pipeline_check.py: a point's check feeds its first CHECK_MAX_BATCH prompts, so the
points of larger batches that feed the same prompts take that check's answer instead of running it again."""

import dataclasses
import json
from pathlib import Path

from click.testing import CliRunner

import kbench.bench.pipeline_check as pipeline_check
from kbench.cli import cli
from kbench.results.rows import CheckRow
from kbench.spec import load_spec

TINY = str(Path(__file__).resolve().parent.parent.parent / "model_specs" / "tiny-llama.yaml")


def test_a_check_stands_for_a_later_point_only_where_it_fed_the_same_prompts():
    """Points of larger batches feed a smaller point's first CHECK_MAX_BATCH prompts and take its
    rows; a point of another length never does, though its tokens may be the same stream (a
    batch of 2 prompts of 4 tokens is the 8 tokens of one prompt of 8)."""
    eight = pipeline_check.CHECK_MAX_BATCH
    spec = load_spec(TINY)
    spec = dataclasses.replace(spec, workload=dataclasses.replace(spec.workload, batch=[1, 2, eight, 2 * eight],
                                                                  prompt_len=[4, 8]))
    ran = []

    def check_point(batch, prompt_len, prompts):
        ran.append((batch, prompt_len, len(prompts)))
        return [CheckRow(op="pipeline", backend="pipeline", case=f"batch={batch} prompt_len={prompt_len} decode_steps=2",
                         dtype="float32", device="cpu", shape={"batch": batch, "prompt_len": prompt_len},
                         status="PASS", note=f"ran at {batch}x{prompt_len}")]

    rows = pipeline_check.checked_once(spec, check_point)
    assert ran == [(1, 4, 1), (1, 8, 1), (2, 4, 2), (2, 8, 2), (eight, 4, eight), (eight, 8, eight)]
    assert [(row.shape["batch"], row.shape["prompt_len"]) for row in rows] == [
        (1, 4), (1, 8), (2, 4), (2, 8), (eight, 4), (eight, 8), (2 * eight, 4), (2 * eight, 8)]
    assert rows[6].case.startswith(f"batch={2 * eight} prompt_len=4 ")
    assert rows[6].note == f"ran at {eight}x4; the batch={eight} check's sequences, not run again"


def test_a_repeated_check_is_not_run_again_and_its_rows_say_whose_they_are(tmp_path, monkeypatch):
    ran = []
    teacher_forced = pipeline_check.teacher_forced_check

    def counted(pipeline, oracle, reference, prompts, *args, **kwargs):
        ran.append((len(prompts), int(prompts[0].numel())))
        return teacher_forced(pipeline, oracle, reference, prompts, *args, **kwargs)

    monkeypatch.setattr(pipeline_check, "teacher_forced_check", counted)
    eight = pipeline_check.CHECK_MAX_BATCH
    result = CliRunner().invoke(cli, ["run", TINY, "--batch", f"{eight},{2 * eight}", "--prompt-len", "4",
                                      "--decode-steps", "2", "--skip-ops", "--attention", "sdpa",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert ran == [(eight, 4)]
    (path,) = tmp_path.glob("*.json")
    checks = [row for row in json.loads(path.read_text())["rows"] if row["kind"] == "check"]
    assert [row["shape"]["batch"] for row in checks] == [eight, 2 * eight]
    assert checks[1]["case"].startswith(f"batch={2 * eight} ") and checks[1]["checked_batch"] == eight
    assert checks[1]["max_rel_err"] == checks[0]["max_rel_err"] and checks[1]["status"] == checks[0]["status"]
    assert f"the batch={eight} check's sequences, not run again" in checks[1]["note"]
