"""Bad input as a new user types it: every case exits 2 with a message that says what was
wrong and how to fix it, shows no traceback, and leaves the results folder as it was.

``BATTERY`` holds the cases per command; a new command's cases are one more entry there.
Each case runs in-process (one torch import for all of them) in a fresh working folder, so
the default ``results/`` is that folder's and any file a case writes is seen.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from kbench.cli import cli
from kbench.plugins import get_registry

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "model_specs" / "tiny-llama.yaml")
TINY_MODEL = {"vocab": 96, "hidden": 64, "intermediate": 80, "layers": 2, "heads": 4, "kv_heads": 2, "head_dim": 16,
              "max_seq_len": 64, "norm_eps": 1.0e-6}
HUGE_MODEL = {"vocab": 1_000_000, "hidden": 131072, "intermediate": 400_000, "layers": 128, "heads": 1024,
              "kv_heads": 8, "head_dim": 128, "max_seq_len": 4096, "norm_eps": 1.0e-6}
BENCH = ["bench", "rmsnorm", "--backend", "torch", "--device", "cpu"]

# (arguments, text the message must hold); {dir} is the case's working folder, where the
# fixtures below are: afile (a regular file), spec files, a checkpoint, records, suites.
BATTERY = {
    "run": [
        (["run", "{dir}/missing.yaml"], "does not exist"),
        (["run", "{dir}/afile"], "must be a YAML mapping"),
        (["run", "{dir}/unknown_key.yaml"], "unknown"),
        (["run", "{dir}/bad_heads.yaml"], "heads"),
        (["run", TINY, "--attention", "nosuch"], "unknown attention backend 'nosuch'"),
        (["run", TINY, "--dtype", "bf17"], "Did you mean 'bf16'"),
        (["run", TINY, "--device", "tpu"], "--device 'tpu'"),
        (["run", TINY, "--batch", "0"], "--batch '0' must list positive integers"),
        (["run", TINY, "--batch", "a,b"], "--batch 'a,b'"),
        (["run", TINY, "--prompt-len", "0"], "--prompt-len '0' must list positive integers"),
        (["run", TINY, "--decode-steps", "0"], "--decode-steps"),
        (["run", TINY, "--layers", "0"], "--layers"),
        (["run", TINY, "--baseline", "nosuch"], "--baseline"),
        (["run", TINY, "--skip-ops", "--skip-e2e"], "leave nothing to run"),
        (["run", TINY, "--out", "{dir}/afile/sub"], "which is a file"),
        (["run", TINY, "--out", "{dir}/afile"], "is a file"),
        (["run", TINY, "--backend", "nosuchfamily=torch"], "backends.nosuchfamily: unknown key"),
        (["run", TINY, "--backend", "rmsnorm"], "family=name"),
        (["run", "{dir}/corrupt_ckpt.yaml"], "cannot be read as a checkpoint file"),
        (["run", "{dir}/mismatched_ckpt.yaml"], "has shape"),
        (["run", "{dir}/huge.yaml"], "needs at least"),
        (["run", "{dir}/huge.yaml", "--skip-ops"], "the model (128 layers"),
        (["run", TINY, "--norm", "torch", "--env", "KBENCH_PLUGINS=nosuchplugin"], "KBENCH_PLUGINS"),
    ],
    "bench": [
        (["bench", "nosuchop", "--backend", "torch"], "Unknown op 'nosuchop'"),
        (["bench", "rmsnorm", "--backend", "nosuch"], "Unknown backend for rmsnorm 'nosuch'"),
        ([*BENCH, "--rep-ms", "0"], "--rep-ms"),
        ([*BENCH, "--rep-ms", "-1"], "--rep-ms"),
        ([*BENCH, "--rep-ms", "nan"], "not a finite number"),
        ([*BENCH, "--warmup-ms", "-1"], "--warmup-ms"),
        ([*BENCH, "--tokens", "0", "--hidden", "0"], "--tokens 0: rmsnorm's tokens must be at least 1"),
        ([*BENCH, "--hidden", "-5"], "cannot be negative"),
        ([*BENCH, "--tokens", "abc"], "is not an integer"),
        ([*BENCH, "--eps", "nan"], "must be a finite number"),
        ([*BENCH, "--foo", "3"], "Unknown rmsnorm dimension 'foo'"),
        ([*BENCH, "--tokens", "1000000000", "--hidden", "100000"], "needs at least"),
        ([*BENCH, "--out", "{dir}/afile"], "is a file"),
        ([*BENCH, "--out", "{dir}/afile/sub"], "which is a file"),
        ([*BENCH, "--spec", TINY, "--tokens", "4"], "not both"),
        ([*BENCH, "--dtype", "bf17"], "Did you mean 'bf16'"),
        (["bench", "topk", "--backend", "reference", "--k", "100000"], "for a vocab of 1000"),
        (["bench", "rmsnorm", "--backend", "torch", "--env", "KBENCH_PLUGINS=nosuchplugin"], "KBENCH_PLUGINS"),
    ],
    "compare": [
        (["compare", "/absolute/path/missing.json", "OTHER"], "No such results file"),
        (["compare", "nosuchid", "otherid"], "is neither a file nor a run id"),
        (["compare", "abc[", "x*"], "is neither a file nor a run id"),
        (["compare"], "comparing needs 2"),
        (["compare", "{dir}/afile", "{dir}/afile"], "is not valid JSON"),
        (["compare", "{dir}/string_latency.json", "{dir}/record.json"], "rows[0].latency_us is '12'"),
        (["compare", "{dir}/bad_status.json", "{dir}/record.json"], "rows[0].status"),
        (["compare", "--format", "markdown", "--output", "{dir}/afile/x.md", "{dir}/record.json",
          "{dir}/record.json"], "is a file"),
        (["compare", "--output", "{dir}/x.md", "{dir}/record.json", "{dir}/other.json"], "--output needs --format"),
        (["compare", "--threshold", "-1"], "--threshold"),
        (["compare", "--baseline", "reference", "{dir}/record.json", "{dir}/other.json"], "inside one run"),
    ],
    "report": [
        (["report", "{dir}/record.json"], "Missing option '--html'"),
        (["report", "{dir}/record.json", "--html", "{dir}/afile/x.html"], "is a file"),
        (["report", "{dir}/string_latency.json", "--html", "{dir}/x.html"], "rows[0].latency_us is '12'"),
        (["report", "{dir}/afile", "--html", "{dir}/x.html"], "is not valid JSON"),
        (["report", "/absolute/missing.json", "--html", "{dir}/x.html"], "No such results file"),
    ],
    "list": [
        (["list", "--op", "nosuch"], "Unknown op 'nosuch'"),
        (["list", "--nosuch"], "No such option"),
    ],
    "suite": [
        (["suite", "{dir}/missing.yaml"], "does not exist"),
        (["suite", "{dir}/afile"], "must be a mapping"),
        (["suite", "{dir}/suite_unknown_key.yaml"], "colour"),
        (["suite", "{dir}/suite_sets_out.yaml"], "sets --out"),
        (["suite", "{dir}/suite_bad_rep_ms.yaml"], "--rep-ms"),
        (["suite", "{dir}/suite.yaml", "--only", "nosuch"], "nosuch"),
        (["suite", "{dir}/suite.yaml", "--out", "{dir}/afile/sub"], "which is a file"),
    ],
    "tune": [
        (["tune", "{dir}/missing.yaml"], "does not exist"),
        (["tune", TINY, "--attention", "nosuch"], "unknown attention backend 'nosuch'"),
        (["tune", TINY, "--decode-steps", "0"], "--decode-steps"),
        (["tune", TINY, "--candidates", "tritn"], "Did you mean 'triton'?"),
        (["tune", TINY, "--out", "{dir}/afile/sub"], "which is a file"),
        (["tune", TINY, "--out-spec", "{dir}/afile/tuned.yaml"], "--out-spec"),
        (["tune", TINY, "--out-spec", "{dir}"], "is a directory"),
        (["tune", "{dir}/corrupt_ckpt.yaml"], "cannot be read as a checkpoint file"),
        (["tune", "{dir}/huge.yaml"], "needs at least"),
    ],
}
CASES = [pytest.param(command, args, message, id=f"{command}-{index}")
         for command, cases in BATTERY.items() for index, (args, message) in enumerate(cases)]


def test_the_battery_has_at_least_forty_cases_over_the_commands():
    assert len(CASES) >= 40 and {"run", "bench", "compare", "list", "tune", "suite"} <= set(BATTERY)


def _write_checkpoint(folder: Path, corrupt: bool) -> None:
    from safetensors.torch import save_file

    from kbench.config import ModelConfig
    from kbench.model.weights import random_weights

    folder.mkdir()
    config = {"model_type": "llama", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 80,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
              "max_position_embeddings": 64, "rms_norm_eps": 1e-6}
    (folder / "config.json").write_text(json.dumps(config))
    if corrupt:
        (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
        return
    weights = random_weights(ModelConfig(name="tiny", **TINY_MODEL), torch.float32, "cpu", 0)
    save_file({k: v.contiguous().clone() for k, v in weights.to_hf_state_dict().items()}, folder / "model.safetensors")


def _record(path: Path, run_id: str, **row) -> None:
    row = {"kind": "op", "op": "rmsnorm", "backend": "torch", "case": "tokens=1", "dtype": "float32",
           "status": "PASS", "latency_us": 12.0} | row
    path.write_text(json.dumps({"schema_version": 1, "run_id": run_id, "created": run_id, "rows": [row]}))


def _spec(path: Path, **sections) -> None:
    """A tiny CPU spec with ``sections`` replacing the defaults (None drops one)."""
    data = {"name": "bad", "model": TINY_MODEL, "weights": {"kind": "random", "seed": 0},
            "dtype": "float32", "device": "cpu", "workload": {"batch": [1], "prompt_len": [8], "decode_steps": 2}}
    for key, value in sections.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data))


def _suite(path: Path, command: str, extra: str = "") -> None:
    path.write_text(f"name: s\n{extra}runs:\n  - name: one\n    command: {command}\n")


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    """The files the cases name, in a folder each case gets a copy of."""
    folder = tmp_path_factory.mktemp("bad-input-fixtures")
    (folder / "afile").write_text("a regular file\n")
    _spec(folder / "unknown_key.yaml", colour="blue")
    _spec(folder / "bad_heads.yaml", model={**TINY_MODEL, "heads": 5})
    _write_checkpoint(folder / "corrupt", corrupt=True)
    _write_checkpoint(folder / "good", corrupt=False)
    _spec(folder / "corrupt_ckpt.yaml", model=None, weights={"kind": "hf", "path": str(folder / "corrupt")})
    # a config.json that disagrees with the tensors beside it
    shutil.copytree(folder / "good", folder / "lying")
    config = json.loads((folder / "lying" / "config.json").read_text())
    (folder / "lying" / "config.json").write_text(json.dumps(config | {"intermediate_size": 96}))
    _spec(folder / "mismatched_ckpt.yaml", model=None, weights={"kind": "hf", "path": str(folder / "lying")})
    _spec(folder / "huge.yaml", model=HUGE_MODEL, dtype="bfloat16")
    _record(folder / "record.json", "20260101T000000Z-a")
    _record(folder / "other.json", "20260101T000001Z-b")
    _record(folder / "string_latency.json", "20260101T000002Z-c", latency_us="12")
    _record(folder / "bad_status.json", "20260101T000003Z-d", status="GREAT")
    bench = "kbench bench rmsnorm --backend reference --device cpu --tokens 1"
    _suite(folder / "suite.yaml", bench)
    _suite(folder / "suite_unknown_key.yaml", bench, extra="colour: blue\n")
    _suite(folder / "suite_sets_out.yaml", bench + " --out elsewhere")
    _suite(folder / "suite_bad_rep_ms.yaml", bench + " --rep-ms 0")
    return folder


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.parametrize(("command", "args", "message"), CASES)
def test_bad_input_exits_2_naming_the_fix_with_no_traceback_and_nothing_written(
        fixtures, tmp_path, monkeypatch, command, args, message):
    work = tmp_path / "work"
    shutil.copytree(fixtures, work)
    (work / "results").mkdir()
    env = {}
    if "--env" in args:
        at = args.index("--env")
        key, value = args[at + 1].split("=", 1)
        env, args = {key: value}, args[:at] + args[at + 2:]
        get_registry.cache_clear()
        monkeypatch.setattr("kbench.plugins.get_registry", get_registry)
    args = [a.replace("{dir}", str(work)) for a in args]
    before = _snapshot(work)
    monkeypatch.chdir(work)
    try:
        result = CliRunner().invoke(cli, args, env=env)
    finally:
        if env:
            get_registry.cache_clear()
    output = result.output
    assert result.exit_code == 2, output
    assert message in output
    assert "Traceback" not in output and isinstance(result.exception, SystemExit)
    # a fix: KbenchError's second line, or click's pointer to the help
    assert "\n  " in output.strip() or "--help' for help" in output, output
    assert _snapshot(work) == before
    assert os.getcwd() == str(work)
