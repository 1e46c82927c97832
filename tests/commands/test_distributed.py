"""``kbench run --tp`` and ``kbench bench all_reduce --tp`` on the CPU with gloo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kbench.cli import cli

TINY_SPEC = str(Path(__file__).parents[2] / "model_specs" / "tiny-llama.yaml")
FAST = ["--warmup-ms", "0", "--rep-ms", "1"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("args,message", [
    (["--tp", "3"], "3 ranks do not divide the 4 attention heads"),
    (["--tp", "2", "--device", "cuda", "--dtype", "bf16"], "needs 2 GPUs, one per rank; this machine has 1"),
    (["--tp", "2", "--backend", "all_reduce=nccl"], "'nccl' cannot run here"),
    (["--tp", "2", "--baseline", "hf"], "cannot run over ranks"),
])
def test_tp_run_mistakes_exit_2_with_the_reason(args, message, tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    result = invoke("run", TINY_SPEC, "--out", tmp_path, *args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not list(tmp_path.iterdir())


def test_tp_run_writes_one_record_with_the_ranks(tmp_path):
    result = invoke("run", TINY_SPEC, "--tp", "2", "--out", tmp_path, "--batch", "2", "--prompt-len", "8",
                    "--decode-steps", "2", "--layers", "1")
    assert result.exit_code == 0, result.output
    (path,) = tmp_path.iterdir()
    record = json.loads(path.read_text())
    parallel = record["parallel"]
    assert parallel["ranks"] == 2 and parallel["group_backend"] == "gloo"
    assert len(parallel["weight_bytes_per_rank"]) == 2 and "2" in parallel["all_reduce_per_decode_step_us"]
    check = [r for r in record["rows"] if r["kind"] == "check"]
    assert check and all(r["status"] == "PASS" and r["token_agreement"] == 1.0 for r in check)
    reduce_rows = [r for r in record["rows"] if r["kind"] == "op" and r["op"] == "all_reduce"]
    assert reduce_rows and all(r["status"] == "PASS" and r["shape"]["ranks"] == 2 for r in reduce_rows)
    assert record["ceilings"]["all_reduce_bus_gbps"] > 0
    assert len(record["machine"]["ranks"]) == 2 and {"start", "end", "throttled"} <= set(record["machine"])


def test_bench_all_reduce_across_ranks_and_its_mistakes(tmp_path):
    result = invoke("bench", "all_reduce", "--tp", "4", "--backend", "reference", "--tokens", "1,3",
                    "--hidden", "64", "--out", tmp_path, *FAST)
    assert result.exit_code == 0, result.output
    (path,) = tmp_path.iterdir()
    rows = json.loads(path.read_text())["rows"]
    assert [r["shape"]["tokens"] for r in rows] == [1, 3] and all(r["status"] == "PASS" for r in rows)
    assert invoke("bench", "all_reduce", "--backend", "reference").exit_code == 2  # a collective needs --tp
    assert invoke("bench", "rmsnorm", "--tp", "2", "--backend", "reference").exit_code == 2


@pytest.mark.gpu
def test_nccl_and_symmetric_memory_all_reduce_pass_across_two_gpus(tmp_path):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    result = invoke("bench", "all_reduce", "--tp", "2", "--backend", "nccl", "--vs", "symm-one-shot",
                    "--vs", "symm-two-shot", "--tokens", "1,64,4096", "--hidden", "8192", "--dtype", "bf16",
                    "--out", tmp_path, *FAST)
    assert result.exit_code == 0, result.output
    (path,) = tmp_path.iterdir()
    rows = json.loads(path.read_text())["rows"]
    assert {r["backend"] for r in rows if r["status"] == "PASS"} >= {"nccl"}
    assert all(r["status"] in ("PASS", "SKIP") for r in rows)
