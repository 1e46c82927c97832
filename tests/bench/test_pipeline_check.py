"""kbench/bench/pipeline_check.py: a point's check feeds its first CHECK_MAX_BATCH prompts, so the
points of larger batches that feed the same prompts take that check's answer instead of running it again."""

import dataclasses
import json
from pathlib import Path

from click.testing import CliRunner

import kbench.bench.pipeline_check as pipeline_check
from kbench.cli import cli
from kbench.spec import load_spec

TINY = str(Path(__file__).resolve().parent.parent.parent / "model_specs" / "tiny-llama.yaml")


def test_points_feeding_the_same_prompts_name_the_point_whose_check_stands_for_them():
    spec = load_spec(TINY)
    batches = [1, pipeline_check.CHECK_MAX_BATCH, 2 * pipeline_check.CHECK_MAX_BATCH]
    spec = dataclasses.replace(spec, workload=dataclasses.replace(spec.workload, batch=batches, prompt_len=[4, 6]))
    points = [(batch, prompt_len, len(prompts), first)
              for batch, prompt_len, prompts, first in pipeline_check.check_points(spec)]
    eight = pipeline_check.CHECK_MAX_BATCH
    assert points == [(1, 4, 1, None), (1, 6, 1, None), (eight, 4, eight, None), (eight, 6, eight, None),
                      (2 * eight, 4, eight, eight), (2 * eight, 6, eight, eight)]


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
