"""kbench/commands/tune.py: tune chooses the faster correct backend per op, never a failing
one, writes a spec that loads with those choices, and times it end to end."""

import dataclasses
import sys
import time
from pathlib import Path

import torch.nn.functional as F
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "model"))
from rich.console import Console  # noqa: E402
from tiny_models import write_spec  # noqa: E402

import kbench.commands.tune  # noqa: E402
from kbench.cli import cli  # noqa: E402
from kbench.commands.tune import tune, tuned_spec_text  # noqa: E402
from kbench.model.pipeline import steps_per_request  # noqa: E402
from kbench.plugins import build_registry  # noqa: E402
from kbench.registry import REFERENCE, Implementation  # noqa: E402
from kbench.spec import load_spec  # noqa: E402


def slow_linear(x, weight):
    time.sleep(0.002)  # far slower than a tiny GEMM
    return F.linear(x, weight)


def slowed(fn):
    def call(**inputs):
        time.sleep(0.002)
        return fn(**inputs)
    return call


def wrong_linear(x, weight):
    return F.linear(x, weight) * 1.01  # fast and wrong


def _registry(both: bool = False):
    """The core ops on the reference only, plus a slow and a wrong linear; with ``both``, a
    correct, slow backend ``both`` of rmsnorm and linear (two families: a single-backend mix)."""
    registry = build_registry()
    for key in [k for k in registry.implementations if k[1] != REFERENCE]:
        del registry.implementations[key]
    for backend, fn in (("slow", slow_linear), ("wrong", wrong_linear)):
        registry.add_implementation(Implementation(op="linear", backend=backend, fn=fn, plugin="test"))
    if both:  # correct but slower per call than the reference, so the per-op choice differs from it
        for op in ("rmsnorm", "linear"):
            registry.add_implementation(Implementation(op=op, backend="both", fn=slowed(registry.get(op, REFERENCE).fn),
                                                       plugin="test"))
    return registry


def _spec(tmp_path, **changes):
    workload = {"batch": [1], "prompt_len": [8], "decode_steps": 2}
    return write_spec(tmp_path, workload=workload, backends={"linear": "slow"},
                      bench={"warmup_ms": 1, "rep_ms": 3, "max_op_cases": 2, "flush_l2": False}, **changes)


def test_tune_chooses_the_fast_correct_backend_and_writes_a_spec(tmp_path):
    console = Console(record=True, width=200)
    record = tune(_spec(tmp_path), None, tmp_path / "tuned.yaml", tmp_path / "results", console, registry=_registry())
    candidates = {(c["op"], c["backend"]): c for c in record["tune"]["candidates"]}
    assert record["tune"]["choices"]["linear"] == REFERENCE
    slow, fast = candidates[("linear", "slow")], candidates[("linear", REFERENCE)]
    assert slow["cost_us"] > fast["cost_us"]
    # one request: the prefill once, each of the 2 decode steps at the decode shapes
    assert slow["prefill_us"] > 0 and slow["decode_us"] > slow["prefill_us"]
    assert slow["cost_us"] == slow["prefill_us"] + slow["decode_us"]
    assert candidates[("linear", "wrong")]["cost_us"] is None
    assert candidates[("linear", "wrong")]["reason"].startswith("FAIL")
    tuned = load_spec(tmp_path / "tuned.yaml")
    assert tuned.backends["linear"] == REFERENCE and set(tuned.backends) == set(record["tune"]["choices"])
    text = (tmp_path / "tuned.yaml").read_text()
    assert "# linear: reference" in text and "runner-up slow" in text and "failed: wrong (FAIL" in text
    assert "# kbench tune at batch 1, prompt 8, 2 decode steps:" in text and "fastest end to end" in text
    winner = record["tune"]["winner"]
    kinds = {(r["kind"], r["backend"]) for r in record["rows"]}
    assert {("decode", "per-op"), ("decode", "spec"), ("prefill", "spec"), ("check", winner)} <= kinds
    assert set(record["tune"]["mixes"]) == {"per-op", "spec"}  # slow and wrong are linear only: no mix
    assert {"start", "end", "throttled"} <= set(record["machine"])  # the machine's state, as in kbench run
    wall = record["wall_s"]
    assert wall["parts"]["op checks"] > 0 and "pipeline check" in wall["parts"] and wall["checks"] < wall["total"]
    output = console.export_text()
    assert "checks took" in output and "end to end: every mix over the workload" in output and f"the written mix ({winner})" in output
    # where the tune's wall time went: each backend's setup, each op's timings, each mix end to end, the check, the breakdown
    phases = record["tune"]["phases_s"]
    assert {name.split(":")[0] for name in phases} == {"ceilings", "backend setup", "op timings", "weights",
                                                         "end to end", "check", "breakdown"}
    assert {name for name in phases if name.startswith("end to end:")} == {"end to end:per-op", "end to end:spec"}
    assert "op timings:linear" in phases and all(spent >= 0 for spent in phases.values())
    assert sum(phases.values()) <= wall["total"] and "tune took" in output and "end to end" in output


def test_single_backend_mixes_are_timed_end_to_end_and_the_fastest_is_written(tmp_path, monkeypatch):
    real = kbench.commands.tune.time_end_to_end

    def all_both_is_fastest(plan, model, label, *args, **kwargs):
        rows = real(plan, model, label, *args, **kwargs)
        if label == "all-both":
            rows = [dataclasses.replace(r, latency_us=r.latency_us / 100) if r.kind in ("prefill", "decode") else r
                    for r in rows]
        return rows

    monkeypatch.setattr(kbench.commands.tune, "time_end_to_end", all_both_is_fastest)
    console = Console(record=True, width=200)
    record = tune(_spec(tmp_path), None, tmp_path / "tuned.yaml", tmp_path / "results", console,
                  registry=_registry(both=True))
    mixes = record["tune"]["mixes"]
    assert set(mixes) == {"per-op", "spec", "all-both"}
    assert mixes["all-both"]["choices"]["rmsnorm"] == "both" and mixes["all-both"]["choices"]["linear"] == "both"
    assert record["tune"]["winner"] == "all-both"
    assert all(mixes["all-both"]["request_us"] < m["request_us"] for label, m in mixes.items() if label != "all-both")
    tuned = load_spec(tmp_path / "tuned.yaml")
    assert tuned.backends["rmsnorm"] == "both" and tuned.backends["linear"] == "both"
    assert ": all-both was fastest" in (tmp_path / "tuned.yaml").read_text()
    checks = [r for r in record["rows"] if r["kind"] == "check"]
    assert checks and all(r["backend"] == "all-both" and r["status"] == "PASS" for r in checks)
    # only the written mix's steps are broken down, each step it timed, after every mix was timed
    breakdowns = [r for r in record["rows"] if r["kind"] == "breakdown"]
    assert {r["mix"] for r in breakdowns} == {"all-both"}
    steps = {(r["kind"], r["case"]) for r in record["rows"] if r["kind"] in ("prefill", "decode") and r["backend"] == "all-both"}
    assert {(r["phase"], f"batch={r['shape']['batch']} prompt_len={r['shape']['prompt_len']}") for r in breakdowns} == \
        {(kind, case.split(" steps=")[0]) for kind, case in steps}
    assert all(r["step_us"] == next(t["latency_us"] for t in record["rows"] if t["kind"] == r["phase"] and
                                    t["backend"] == "all-both" and t["case"].startswith(r["case"].split(" ", 1)[1]))
               for r in breakdowns)


def test_mixes_naming_no_backend_of_the_pipeline_is_exit_2_before_any_work(tmp_path):
    spec = write_spec(tmp_path)
    result = CliRunner().invoke(cli, ["tune", str(spec), "--mixes", "trition", "--out", str(tmp_path / "r"),
                                      "--out-spec", str(tmp_path / "t.yaml")])
    assert result.exit_code == 2, result.output
    assert "--mixes trition" in result.output and "Choose from:" in result.output
    assert not (tmp_path / "t.yaml").exists() and not (tmp_path / "r").exists()


def test_a_mix_with_the_same_backends_as_another_is_timed_once(tmp_path, monkeypatch):
    timed_labels = []
    real = kbench.commands.tune.time_end_to_end

    def counting(plan, model, label, *args, **kwargs):
        timed_labels.append(label)
        return real(plan, model, label, *args, **kwargs)

    monkeypatch.setattr(kbench.commands.tune, "time_end_to_end", counting)
    # the spec already chooses what tune finds fastest: the reference everywhere
    spec = write_spec(tmp_path, workload={"batch": [1], "prompt_len": [8], "decode_steps": 2},
                      bench={"warmup_ms": 1, "rep_ms": 3, "max_op_cases": 2, "flush_l2": False})
    record = tune(spec, None, tmp_path / "tuned.yaml", tmp_path / "results", Console(width=200),
                  registry=_registry(), mixes=(), candidates_wanted=())
    mixes = record["tune"]["mixes"]
    assert timed_labels == ["per-op"] and mixes["spec"]["rows"] == "per-op"
    assert mixes["spec"]["request_us"] == mixes["per-op"]["request_us"] and record["tune"]["winner"] == "per-op"


def test_candidates_limit_the_backends_tried_and_the_reference_is_always_tried(tmp_path):
    record = tune(_spec(tmp_path), None, tmp_path / "tuned.yaml", tmp_path / "results", Console(width=200),
                  registry=_registry(both=True), mixes=(), candidates_wanted=("slow",))
    tried = {(c["op"], c["backend"]) for c in record["tune"]["candidates"]}
    assert ("linear", "slow") in tried and ("linear", REFERENCE) in tried
    assert not {b for _, b in tried} - {"slow", REFERENCE}
    assert set(record["tune"]["mixes"]) == {"per-op", "spec"}


def test_steps_per_request_counts_prefill_shapes_once_and_decode_shapes_per_step():
    from kbench.ops.base import Case
    from kbench.spec import Workload

    workload = Workload(batch=(1, 4), prompt_len=(8,), decode_steps=5)
    assert steps_per_request("rmsnorm", Case("rmsnorm", tokens=32), workload) == (1, 0)  # 4 x 8 prompt tokens
    assert steps_per_request("rmsnorm", Case("rmsnorm", tokens=4), workload) == (0, 5)
    assert steps_per_request("linear", Case("linear", tokens=4, proj="lm_head"), workload) == (1, 5)
    assert steps_per_request("sample", Case("sample", batch=4), workload) == (1, 5)
    assert steps_per_request("rope", Case("rope", tokens=4, phase="prefill"), workload) == (1, 0)
    assert steps_per_request("attention_decode", Case("attention_decode", batch=4), workload) == (0, 5)
    assert steps_per_request("attention_prefill", Case("attention_prefill", batch=4), workload) == (1, 0)
    one_token = Workload(batch=(1,), prompt_len=(1,), decode_steps=3)
    assert steps_per_request("ffn", Case("ffn", tokens=1), one_token) == (1, 3)


def test_tuned_text_replaces_the_backends_block_and_keeps_the_rest():
    from kbench.commands.tune import Candidate

    text = "name: x\nbackends:\n  norm: triton\n  ffn: cuda\nworkload:\n  batch: [1]\n"
    candidates = [Candidate("rmsnorm", "torch", 0.5, 1.5), Candidate("rmsnorm", REFERENCE, 1.0, 2.0)]
    out = tuned_spec_text(text, {"rmsnorm": "torch"}, candidates)
    assert out == ("name: x\nbackends:\n  # rmsnorm: torch 2 µs/request, runner-up reference 3 µs\n  rmsnorm: torch\n"
                   "workload:\n  batch: [1]\n")


def test_a_choice_made_by_a_winning_mix_names_the_backend_faster_alone():
    """Where a single-backend mix won end to end, an op's choice may not be its fastest alone:
    the comment says 'faster alone', not 'runner-up', for a backend that beat it."""
    from kbench.commands.tune import Candidate

    candidates = [Candidate("rmsnorm", "torch", 0.5, 1.5), Candidate("rmsnorm", REFERENCE, 1.0, 2.0)]
    out = tuned_spec_text("name: x\n", {"rmsnorm": REFERENCE}, candidates)
    assert "# rmsnorm: reference 3 µs/request, faster alone torch 2 µs\n  rmsnorm: reference\n" in out


def test_a_backend_that_compiles_per_shape_is_left_out_unless_named(tmp_path):
    registry = _registry()
    probed = []  # a backend's support probe may compile too: a left-out one is not probed

    def supports(case, dtype, device):
        probed.append(case.label)

    registry.add_implementation(Implementation(op="linear", backend="jit", fn=slow_linear, plugin="test",
                                               supports=supports, slow_setup="compiles each shape it meets"))
    record = tune(_spec(tmp_path), None, tmp_path / "tuned.yaml", tmp_path / "results", Console(width=200),
                  registry=registry, mixes=())
    jit = next(c for c in record["tune"]["candidates"] if c["backend"] == "jit")
    assert jit["cost_us"] is None and "compiles each shape it meets" in jit["reason"] and not probed
    assert "--candidates jit" in jit["reason"]
    assert not [r for r in record["rows"] if r["kind"] == "op" and r["backend"] == "jit"]
    named = tune(_spec(tmp_path), None, tmp_path / "tuned2.yaml", tmp_path / "results", Console(width=200),
                 registry=registry, mixes=(), candidates_wanted=("jit",))
    jit = next(c for c in named["tune"]["candidates"] if c["backend"] == "jit")
    assert jit["cost_us"] > 0 and jit["reason"] is None


def test_each_case_makes_its_inputs_and_reference_once_for_every_backend(tmp_path, monkeypatch):
    import kbench.bench.sweep as sweep

    made = []
    real = sweep.reference_output

    def counting(op, inputs):
        made.append(op.name)
        return real(op, inputs)

    monkeypatch.setattr(sweep, "reference_output", counting)
    record = tune(_spec(tmp_path), None, tmp_path / "tuned.yaml", tmp_path / "results", Console(width=200),
                  registry=_registry(), mixes=())
    linear_rows = [r for r in record["rows"] if r["kind"] == "op" and r["op"] == "linear"]
    cases = {r["case"] for r in linear_rows}
    assert {r["backend"] for r in linear_rows} == {REFERENCE, "slow", "wrong"}
    assert made.count("linear") == len(cases)  # not once per backend
    prefill = [r for r in record["rows"] if r["kind"] == "prefill"]
    assert prefill and all(r["ttft_us"] is None for r in prefill)  # the choice does not use it


def test_a_backend_that_runs_another_at_every_shape_takes_its_timing(tmp_path):
    """``runs_as``: a backend that picks another's kernel at every shape (``flash`` running one
    FlashAttention generation) is not timed a second time; one that picks per shape is timed."""
    registry = _registry()
    registry.add_implementation(Implementation(op="linear", backend="picks-slow", fn=slow_linear, plugin="test",
                                               runs_as=lambda case, dtype, device: "slow"))
    registry.add_implementation(Implementation(op="linear", backend="picks-per-shape", fn=slow_linear, plugin="test",
                                               runs_as=lambda case, dtype, device: f"slow-{case['tokens']}"))

    def broken(case, dtype, device):
        raise RuntimeError("probe failed")

    registry.add_implementation(Implementation(op="linear", backend="picks-unknown", fn=slow_linear, plugin="test",
                                               runs_as=broken))
    console = Console(record=True, width=250)
    record = tune(_spec(tmp_path), None, tmp_path / "tuned.yaml", tmp_path / "results", console,
                  registry=registry, mixes=())
    candidates = {c["backend"]: c for c in record["tune"]["candidates"] if c["op"] == "linear"}
    timed = {r["backend"] for r in record["rows"] if r["kind"] == "op" and r["op"] == "linear"}
    assert "picks-slow" not in timed and {"slow", "picks-per-shape", "picks-unknown"} <= timed
    alias, slow = candidates["picks-slow"], candidates["slow"]
    assert alias["same_as"] == "slow" and alias["cost_us"] == slow["cost_us"] and alias["reason"] is None
    assert candidates["picks-per-shape"]["same_as"] is None
    assert "runs slow at every shape: its timing" in console.export_text()


def test_the_runner_up_comment_names_another_kernel_not_the_choices_alias():
    from kbench.commands.tune import Candidate

    candidates = [Candidate("attention_decode", "flash", 1.0, 2.0, same_as="flash-fa3"),
                  Candidate("attention_decode", "flash-fa3", 1.0, 2.0),
                  Candidate("attention_decode", "triton", 2.0, 2.0)]
    out = tuned_spec_text("name: x\n", {"attention_decode": "flash"}, candidates)
    assert "# attention_decode: flash 3 µs/request, runner-up triton 4 µs\n" in out


def test_a_written_mix_whose_breakdown_crashes_keeps_its_rows_and_says_so(tmp_path, monkeypatch):
    import kbench.bench.breakdown as breakdown

    def crashing(*args, **kwargs):
        raise RuntimeError("tracing failed")

    monkeypatch.setattr(breakdown, "traced_totals", crashing)
    record = tune(_spec(tmp_path), None, tmp_path / "tuned.yaml", tmp_path / "results", Console(width=200),
                  registry=_registry(), mixes=())
    winner = record["tune"]["winner"]
    failed = [r for r in record["rows"] if r["status"] == "FAIL" and r["kind"] != "op"]  # op rows: the wrong linear
    timed = [r for r in record["rows"] if r["kind"] in ("prefill", "decode") and r["backend"] == winner]
    # one FAIL breakdown row per step of the written mix; the steps' own rows stand, once each
    assert {(r["kind"], r["phase"]) for r in failed} == {("breakdown", "prefill"), ("breakdown", "decode")}
    assert all("the traced step raised RuntimeError: tracing failed" in r["note"] for r in failed)
    assert len(timed) == 2 and all(r["status"] == "PASS" for r in timed)
    assert (tmp_path / "tuned.yaml").exists()


def test_a_backends_one_time_setup_is_its_own_phase_not_its_first_ops(tmp_path):
    registry = _registry()
    probes = []

    def build():  # a JIT build or a library import, paid once per process
        probes.append(1)
        time.sleep(0.4)

    for op in ("rmsnorm", "linear"):
        registry.add_implementation(Implementation(op=op, backend="built", fn=registry.get(op, REFERENCE).fn,
                                                   plugin="test", available=build))
    record = tune(_spec(tmp_path), None, tmp_path / "tuned.yaml", tmp_path / "results", Console(width=200),
                  registry=registry)
    phases = record["tune"]["phases_s"]
    assert phases["backend setup:built"] >= 0.8 and len(probes) == 2  # once per implementation, before the ops
    names = list(phases)
    assert names.index("backend setup:built") < min(i for i, n in enumerate(names) if n.startswith("op timings"))
    assert {c["backend"] for c in record["tune"]["candidates"] if c["op"] == "rmsnorm"} >= {"built"}
