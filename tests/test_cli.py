"""`kbench run` and `kbench env` end to end on the tiny spec (CPU, a few seconds each)."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import kbench.commands.options
import kbench.commands.run
from kbench.cli import cli
from kbench.plugins import build_registry
from kbench.registry import Implementation

TINY = str(Path(__file__).resolve().parent.parent / "model_specs" / "tiny-llama.yaml")
SMALL = ["--batch", "1,2", "--prompt-len", "8", "--decode-steps", "2"]
# The tiny spec chooses torch's backends for attention and rmsnorm; a core-only registry has
# only the reference, so these flags choose it (a --norm flag outranks the file's rmsnorm entry).
CORE_ONLY = ["--attention", "reference", "--backend", "rmsnorm=reference"]


def _run(*args):
    return CliRunner().invoke(cli, ["run", TINY, *args])


def _records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def test_run_on_the_tiny_spec_writes_op_check_prefill_and_decode_rows(tmp_path):
    result = _run(*SMALL, "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    (record,) = _records(tmp_path)
    kinds = {row["kind"] for row in record["rows"]}
    assert kinds == {"op", "check", "prefill", "decode", "breakdown"}
    assert record["status"] == "PASS" and all(row["status"] != "FAIL" for row in record["rows"])
    assert record["spec"]["name"] == "tiny-llama" and record["spec"]["workload"]["batch"] == [1, 2]
    assert {op for op in ("rmsnorm", "attention_decode", "ffn")} <= {r["op"] for r in record["rows"]}
    decode = [r for r in record["rows"] if r["kind"] == "decode"]
    assert [r["shape"]["batch"] for r in decode] == [1, 2]
    assert all(r["tokens_per_s"] > 0 and r["latency_us"] > 0 for r in decode)
    assert record["env"]["torch"] and "kbench-core" in record["plugins"]
    assert "PASS" in result.stdout and record["run_id"] in result.stdout


@pytest.fixture
def registry_with_broken_norm(monkeypatch):
    """Only the core plugin, plus a norm backend that forgets to normalise."""
    monkeypatch.setenv("KBENCH_PLUGINS", "")
    registry = build_registry()

    def rmsnorm_unnormalised(x, weight, eps):
        return x * weight

    def add_rmsnorm_unnormalised(x, residual, weight, eps):
        new_residual = x + residual
        return new_residual * weight, new_residual

    for op, fn in (("rmsnorm", rmsnorm_unnormalised), ("add_rmsnorm", add_rmsnorm_unnormalised)):
        registry.add_implementation(Implementation(op, "broken", fn, plugin="test-broken"))
    monkeypatch.setattr(kbench.commands.run, "get_registry", lambda: registry)
    monkeypatch.setattr(kbench.commands.options, "get_registry", lambda: registry)
    return registry


def test_failing_backend_is_fail_in_every_table_and_exits_1(tmp_path, registry_with_broken_norm):
    result = _run(*SMALL, "--attention", "reference", "--norm", "broken", "--out", str(tmp_path))
    assert result.exit_code == 1, result.output
    (record,) = _records(tmp_path)
    assert record["status"] == "FAIL"
    by_kind = {}
    for row in record["rows"]:
        by_kind.setdefault(row["kind"], []).append(row)
    broken_ops = [r for r in by_kind["op"] if r["backend"] == "broken"]
    assert broken_ops and all(r["status"] == "FAIL" for r in broken_ops)
    assert all(r["status"] == "PASS" for r in by_kind["op"] if r["backend"] == "reference")
    for kind in ("check", "prefill", "decode"):
        assert by_kind[kind] and all(r["status"] == "FAIL" for r in by_kind[kind]), kind
    assert record["backends"]["norm"]["ops"]["rmsnorm"]["plugin"] == "test-broken"
    assert "FAIL" in result.stdout


def test_backend_that_crashes_inside_the_pipeline_gives_fail_rows_and_a_record(tmp_path, monkeypatch,
                                                                             registry_with_broken_norm):
    def explode(**inputs):
        raise RuntimeError("kernel exploded")

    for op in ("rmsnorm", "add_rmsnorm"):
        registry_with_broken_norm.add_implementation(Implementation(op, "crash", explode, plugin="test-crash"))
    result = _run(*SMALL, "--attention", "reference", "--norm", "crash", "--skip-ops", "--out", str(tmp_path))
    assert result.exit_code == 1, result.output
    (record,) = _records(tmp_path)
    e2e = [r for r in record["rows"] if r["kind"] in ("check", "prefill", "decode")]
    assert len(e2e) == 3 * 2 and all(r["status"] == "FAIL" for r in e2e)
    assert all("kernel exploded" in r["note"] or "failing part" in r["note"] for r in e2e)


def test_skip_flags_run_one_part(tmp_path):
    result = _run(*SMALL, "--skip-e2e", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    (record,) = _records(tmp_path)
    assert {row["kind"] for row in record["rows"]} == {"op"}


@pytest.mark.parametrize("args, message", [
    (["--backend", "normtriton"], "family=name"),
    (["--batch", "x"], "--batch"),
    (["--norm", "nosuch"], "nosuch"),
    (["--dtype", "float8"], "float8"),
    (["--skip-ops", "--skip-e2e"], "nothing to run"),
])
def test_bad_input_exits_2_with_a_message_and_writes_nothing(tmp_path, args, message):
    result = _run(*args, "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_spec_file_exits_2(tmp_path):
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_env_prints_versions_as_json():
    result = CliRunner().invoke(cli, ["env", "--json", "--no-ceilings"])
    assert result.exit_code == 0, result.output
    env = json.loads(result.stdout)["env"]
    assert env["kbench"] == kbench.__version__ and env["torch"] and env["hostname"]


def test_env_on_cpu_says_ceilings_are_not_measured():
    result = CliRunner().invoke(cli, ["env", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "copy_gbps" in result.stdout and "n/a" in result.stdout


def test_list_still_works():
    result = CliRunner().invoke(cli, ["list", "--json"])
    assert result.exit_code == 0
    assert any(row["op"] == "rmsnorm" for row in json.loads(result.stdout)["implementations"])


@pytest.mark.gpu
def test_env_measures_ceilings_on_cuda():
    result = CliRunner().invoke(cli, ["env", "--json", "--device", "cuda"])
    assert result.exit_code == 0, result.output
    ceilings = json.loads(result.stdout)["ceilings"]
    assert ceilings["copy_gbps"] > 100 and ceilings["matmul_bf16_tflops"] > 10


@pytest.mark.parametrize(("causal", "status"), [(True, "PASS"), (False, "FAIL")])
def test_bf16_end_to_end_check_passes_an_exact_kernel_and_fails_a_wrong_one(
        tmp_path, registry_with_broken_norm, causal, status):
    # attention in float32 (more exact than the bf16 reference) must pass; the same kernel
    # without the causal mask must fail the end-to-end check even though bf16 is noisy
    import torch
    import torch.nn.functional as F

    def prefill(q, k, v, cu_seqlens, max_seqlen, scale):
        out = torch.empty_like(q)
        bounds = cu_seqlens.tolist()
        group = q.shape[1] // k.shape[1]
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            qs, ks, vs = (t[start:end].transpose(0, 1).float() for t in (q, k, v))
            ks, vs = ks.repeat_interleave(group, 0), vs.repeat_interleave(group, 0)
            out[start:end] = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal,
                                                            scale=scale).transpose(0, 1).to(q.dtype)
        return out

    registry_with_broken_norm.add_implementation(Implementation("attention_prefill", "probe", prefill, plugin="t"))
    result = _run(*SMALL, *CORE_ONLY, "--dtype", "bf16", "--backend", "attention_prefill=probe", "--skip-ops",
                  "--out", str(tmp_path))
    (record,) = _records(tmp_path)
    checks = [r for r in record["rows"] if r["kind"] == "check"]
    assert checks and {r["status"] for r in checks} == {status}, [r["note"] for r in checks]
    assert all("raised" not in (r["note"] or "") for r in checks)
    assert result.exit_code == (0 if status == "PASS" else 1)


def test_a_plugin_family_with_a_dash_gets_its_own_flag(tmp_path, monkeypatch):
    import dataclasses

    from kbench.ops.norm import RMSNORM

    monkeypatch.setenv("KBENCH_PLUGINS", "")
    registry = build_registry()
    registry.add_op(dataclasses.replace(RMSNORM, name="rmsnorm_copy", family="layer-norm", role=None), "test-plugin")
    registry.add_implementation(Implementation("rmsnorm_copy", "copy", RMSNORM.reference, plugin="test-plugin"))
    monkeypatch.setattr(kbench.commands.run, "get_registry", lambda: registry)
    monkeypatch.setattr(kbench.commands.options, "get_registry", lambda: registry)
    assert "--layer-norm NAME" in CliRunner().invoke(cli, ["run", "--help"]).output
    result = _run(*SMALL, *CORE_ONLY, "--layer-norm", "copy", "--skip-e2e", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    (record,) = _records(tmp_path)
    choice = record["backends"]["layer-norm"]["ops"]["rmsnorm_copy"]
    assert choice["backend"] == "copy" and "--layer-norm" in choice["origin"]
    assert {r["backend"] for r in record["rows"] if r["op"] == "rmsnorm_copy"} == {"reference", "copy"}
