"""kbench/commands/tune.py: tune chooses the faster correct backend per op, never a failing
one, writes a spec that loads with those choices, and times it end to end."""

import sys
import time
from pathlib import Path

import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parents[1] / "model"))
from rich.console import Console  # noqa: E402
from tiny_models import write_spec  # noqa: E402

from kbench.commands.tune import tune, tuned_spec_text  # noqa: E402
from kbench.plugins import build_registry  # noqa: E402
from kbench.registry import REFERENCE, Implementation  # noqa: E402
from kbench.spec import load_spec  # noqa: E402


def slow_linear(x, weight):
    time.sleep(0.002)  # far slower than a tiny GEMM
    return F.linear(x, weight)


def wrong_linear(x, weight):
    return F.linear(x, weight) * 1.01  # fast and wrong


def _registry():
    """The core ops on the reference only, plus a slow and a wrong linear."""
    registry = build_registry()
    for key in [k for k in registry.implementations if k[1] != REFERENCE]:
        del registry.implementations[key]
    for backend, fn in (("slow", slow_linear), ("wrong", wrong_linear)):
        registry.add_implementation(Implementation(op="linear", backend=backend, fn=fn, plugin="test"))
    return registry


def test_tune_chooses_the_fast_correct_backend_and_writes_a_spec(tmp_path):
    workload = {"batch": [1], "prompt_len": [8], "decode_steps": 2}
    spec_path = write_spec(tmp_path, workload=workload, backends={"linear": "slow"},
                           bench={"warmup_ms": 1, "rep_ms": 3, "max_op_cases": 2, "flush_l2": False})
    console = Console(record=True, width=200)
    record = tune(spec_path, None, tmp_path / "tuned.yaml", tmp_path / "results", console, registry=_registry())
    candidates = {(c["op"], c["backend"]): c for c in record["tune"]["candidates"]}
    assert record["tune"]["choices"]["linear"] == REFERENCE
    assert candidates[("linear", "slow")]["cost_us"] > candidates[("linear", REFERENCE)]["cost_us"]
    assert candidates[("linear", "wrong")]["cost_us"] is None
    assert candidates[("linear", "wrong")]["reason"].startswith("FAIL")
    tuned = load_spec(tmp_path / "tuned.yaml")
    assert tuned.backends["linear"] == REFERENCE and set(tuned.backends) == set(record["tune"]["choices"])
    text = (tmp_path / "tuned.yaml").read_text()
    assert "# linear: reference" in text and "runner-up slow" in text and "failed: wrong (FAIL" in text
    kinds = {(r["kind"], r["backend"]) for r in record["rows"]}
    assert {("decode", "pipeline"), ("decode", "spec"), ("prefill", "spec"), ("check", "pipeline")} <= kinds
    output = console.export_text()
    assert "end to end: tuned mix against the spec's own choice" in output


def test_tuned_text_replaces_the_backends_block_and_keeps_the_rest():
    from kbench.commands.tune import Candidate

    text = "name: x\nbackends:\n  norm: triton\n  ffn: cuda\nworkload:\n  batch: [1]\n"
    candidates = [Candidate("rmsnorm", "torch", 2.0), Candidate("rmsnorm", REFERENCE, 3.0)]
    out = tuned_spec_text(text, {"rmsnorm": "torch"}, candidates)
    assert out == ("name: x\nbackends:\n  # rmsnorm: torch 2 µs/step, runner-up reference 3 µs\n  rmsnorm: torch\n"
                   "workload:\n  batch: [1]\n")
