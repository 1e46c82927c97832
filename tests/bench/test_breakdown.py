"""kbench/bench/breakdown.py: a step's breakdown counts every op call the model makes, and
its rows add up to the measured step."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "model"))
from tiny_models import build_pipeline, write_spec  # noqa: E402

from kbench.bench.breakdown import REMAINDER, breakdown_rows, op_of  # noqa: E402
from kbench.model import load_weights  # noqa: E402
from kbench.model.pipeline import calls_per_step  # noqa: E402
from kbench.plan import resolve_plan  # noqa: E402
from kbench.spec import Overrides, apply_overrides, load_spec  # noqa: E402

LAYERS = 2


def expected_calls(phase: str, tokens: int) -> dict[str, int]:
    """Calls per step, counted from the model's definition (one decoder layer, repeated)."""
    qkv_calls = 1 if tokens <= 64 else 3  # one fused GEMM, or one per q/k/v row block
    # add_rmsnorm: before attention in layers 1.., before every ffn, and the final norm
    return {"embedding": 1, "rmsnorm": 1, "add_rmsnorm": 2 * LAYERS, "linear[qkv]": qkv_calls * LAYERS,
            "rope": LAYERS, "kv_write": LAYERS, "linear[o]": LAYERS, "ffn": LAYERS, "linear[lm_head]": 1,
            f"attention_{phase}": LAYERS}


@pytest.mark.parametrize(("phase", "batch", "prompt_len"), [("decode", 2, 8), ("prefill", 2, 40)])
def test_breakdown_counts_every_call_and_adds_up_to_the_step(tmp_path, registry, phase, batch, prompt_len):
    spec = load_spec(write_spec(tmp_path, workload={"batch": [batch], "prompt_len": [prompt_len], "decode_steps": 3}))
    plan = resolve_plan(spec, registry)
    pipeline = build_pipeline(spec, registry, load_weights(spec))
    step_us = 1e6  # any measured step: the remainder is what the ops leave of it
    rows = breakdown_rows(plan, pipeline, phase, batch, prompt_len, step_us)
    parts = {row.part: row for row in rows}
    tokens = batch if phase == "decode" else batch * prompt_len
    assert {part: row.calls for part, row in parts.items() if part != REMAINDER} == expected_calls(phase, tokens)
    assert rows[-1].op == REMAINDER
    if phase == "decode":  # what kbench tune weights op timings by
        assert {part: calls_per_step(spec.model, op_of(part), part[7:-1] if part.startswith("linear[") else None)
                for part in parts if part != REMAINDER} == expected_calls(phase, tokens)
    assert sum(row.total_us for row in rows) == pytest.approx(step_us)
    assert sum(row.share for row in rows) == pytest.approx(1.0)
    for row in rows[:-1]:
        assert row.latency_us * row.calls == pytest.approx(row.total_us) and row.total_us > 0
        assert row.backend == plan.backend(row.op) and row.method == "perf_counter-calls"


def test_a_decode_part_says_the_bytes_a_call_moves_and_its_rate_against_the_copy_ceiling(tmp_path, registry):
    """Bytes per call from the model's dimensions, written out here apart from the ops' own
    models: a weight read once with the activations in and out, attention over K and V of the
    traced steps' mean context (prompt 8, steps 1..3: 10 tokens) with q and the output."""
    batch, prompt_len, copy_gbps = 2, 8, 50.0
    spec = load_spec(write_spec(tmp_path, workload={"batch": [batch], "prompt_len": [prompt_len], "decode_steps": 3}))
    plan = resolve_plan(spec, registry)
    pipeline = build_pipeline(spec, registry, load_weights(spec))
    rows = breakdown_rows(plan, pipeline, "decode", batch, prompt_len, 1e6, {"copy_gbps": copy_gbps})
    m, size = spec.model, 4  # float32
    q_width, kv_width = m.heads * m.head_dim, m.kv_heads * m.head_dim

    def weight_read(n, k):
        return (n * k + batch * (n + k)) * size

    expected = {
        "linear[qkv]": weight_read(q_width + 2 * kv_width, m.hidden),
        "linear[o]": weight_read(m.hidden, q_width),
        "linear[lm_head]": weight_read(m.vocab, m.hidden),
        "attention_decode": 2 * kv_width * batch * 10 * size + 2 * batch * q_width * size + 4 * batch,
        "add_rmsnorm": (4 * batch * m.hidden + m.hidden) * size,
    }
    parts = {row.part: row for row in rows}
    assert {part: parts[part].bytes for part in expected} == expected
    for row in rows[:-1]:
        assert row.bytes > 0, row.part
        assert row.gbps == pytest.approx(row.bytes / (row.latency_us * 1e3))
        assert row.frac_peak_bw == pytest.approx(row.gbps / copy_gbps)
    assert rows[-1].op == REMAINDER and rows[-1].bytes is None
    prefill = breakdown_rows(plan, pipeline, "prefill", batch, prompt_len, 1e6, {"copy_gbps": copy_gbps})
    assert all(row.bytes is None and row.gbps is None for row in prefill)  # compute-bound: no copy rate

    class OneOfTwoRanks:  # a rank of a tensor-parallel step holds a shard, which the cases do not describe
        ranks = 2

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

    pipeline.parallel = OneOfTwoRanks(pipeline.parallel)
    sharded = breakdown_rows(plan, pipeline, "decode", batch, prompt_len, 1e6, {"copy_gbps": copy_gbps})
    assert len(sharded) == len(rows) and all(row.bytes is None and row.gbps is None for row in sharded)


def test_an_op_is_the_device_work_inside_its_ranges_however_it_was_launched():
    """CUDA attribution is by time on the profiler's common clock: each kernel, copy or fill whose
    midpoint lies inside a ``kbench::`` range counts for that range's op, by duration, whether or
    not the profiler linked it to an aten op (triton's and extensions' launches are not); the
    GPU-side annotation (a span) is not work, and work outside every range is reported apart."""
    from kbench.bench.breakdown import OUTSIDE, Activity, range_kernel_us

    def event(name, start, end, on_device=True, annotation=False):
        return Activity(name, on_device, start, end, annotation)

    events = [
        event("kbench::rope", 10.0, 30.0, on_device=False),
        event("kbench::rope", 12.0, 29.0, annotation=True),  # its GPU span: not work
        event("triton_rope_kernel", 14.0, 18.0),  # launched by triton: no aten parent, still rope's
        event("aten::mul", 15.0, 16.0, on_device=False),  # a CPU op: not device work
        event("void at::native::elementwise_kernel", 20.0, 22.5),
        event("Memcpy DtoD", 40.0, 41.0),  # glue between ranges
        event("kbench::rope", 50.0, 60.0, on_device=False),
        event("rope_kernel_2", 51.0, 52.0),
        event("kbench::ffn", 70.0, 90.0, on_device=False),
        event("ffn_kernel", 72.0, 89.0),
    ]
    assert range_kernel_us(events) == pytest.approx({"rope": 7.5, "ffn": 17.0, OUTSIDE: 1.0})


def test_the_raw_profiler_events_give_the_ranges_torchs_parse_gives():
    """``recorded_activity`` reads the profiler's raw events instead of torch's slow parse into
    FunctionEvents: the same ``kbench::`` ranges, with the same durations, on the same clock, in
    the same order, and none of the aten calls around them."""
    from kbench.bench.breakdown import RANGE_PREFIX, recorded_activity

    x = torch.ones(16, 16)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for index in range(30):
            with torch.profiler.record_function(f"{RANGE_PREFIX}op{index % 3}"):
                (x * index).sum()
    raw = recorded_activity(profiler)
    parsed = [event for event in profiler.events() if event.name.startswith(RANGE_PREFIX)]
    assert [a.name for a in raw] == [e.name for e in parsed] == [f"{RANGE_PREFIX}op{i % 3}" for i in range(30)]
    assert not any(a.on_device for a in raw)
    assert [a.start_us for a in raw] == pytest.approx([e.time_range.start for e in parsed], abs=1e-3)
    assert [a.end_us for a in raw] == pytest.approx([e.time_range.end for e in parsed], abs=1e-3)


def test_an_op_with_no_device_work_in_its_ranges_says_so(tmp_path, registry, monkeypatch):
    """A traced op that ran nothing on the device (its work was misattributed, or ran elsewhere)
    is not silently a 0 µs row: its row says so, and the remainder names the work outside ops."""
    import kbench.bench.breakdown as breakdown

    spec = load_spec(write_spec(tmp_path, workload={"batch": [1], "prompt_len": [4], "decode_steps": 2}))
    plan = resolve_plan(spec, registry)
    pipeline = build_pipeline(spec, registry, load_weights(spec))
    totals = {"embedding": 4.0, breakdown.OUTSIDE: 3.0}
    monkeypatch.setattr(breakdown, "traced_totals",
                        lambda model, step: (totals, {"embedding": 1, "rmsnorm": 1}, breakdown.PROFILED))
    rows = breakdown.breakdown_rows(plan, pipeline, "prefill", 1, 4, step_us=10.0)
    by_part = {row.part: row for row in rows}
    assert by_part["rmsnorm"].total_us == 0 and "no device work" in by_part["rmsnorm"].note
    assert by_part["embedding"].note is None
    assert "device work outside the ops 3 µs" in by_part[breakdown.REMAINDER].note


@pytest.mark.gpu
@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_on_cuda_every_op_of_a_triton_mix_has_its_kernels(tmp_path, registry, phase):
    """On the GPU, the ops whose kernels triton launches (no aten op around them) are attributed
    their device work like the reference's aten kernels, and the ops' sum stays inside the
    eager step's device time."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    spec = load_spec(write_spec(tmp_path, device="cuda", dtype="bfloat16",
                                workload={"batch": [2], "prompt_len": [16], "decode_steps": 4}))
    backends = {"norm": "triton", "rope": "triton", "ffn": "triton", "sampling": "triton"}
    plan = resolve_plan(apply_overrides(spec, Overrides(backends=backends)), registry)
    pipeline = build_pipeline(spec, registry, load_weights(spec), backends)
    rows = breakdown_rows(plan, pipeline, phase, 2, 16, step_us=1e6)
    ops = [row for row in rows if row.op != REMAINDER]
    assert {row.method for row in rows} == {"profiler-kernel-intervals"}
    assert all(row.total_us > 0 for row in ops), {row.part: row.total_us for row in ops}
    assert {row.backend for row in ops if row.op in ("rmsnorm", "add_rmsnorm", "rope", "ffn")} == {"triton"}


def test_decode_timing_rewinds_to_the_prefill_instead_of_prefilling_before_each_run(tmp_path, registry):
    # a prefill of batch 64 x 512 costs more than the decode steps timed after it: one prefill,
    # then every timed run (and the breakdown's repeats) starts from it by rewinding
    from kbench.bench.end_to_end import decode_row

    spec = load_spec(write_spec(tmp_path, workload={"batch": [2], "prompt_len": [8], "decode_steps": 3},
                                bench={"warmup_ms": 1, "rep_ms": 5, "flush_l2": False}))
    plan = resolve_plan(spec, registry)
    weights = load_weights(spec)
    pipeline = build_pipeline(spec, registry, weights)
    calls = {"prefill": 0, "rewind": 0}
    for name in calls:
        real = getattr(pipeline, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        setattr(pipeline, name, counted)
    row = decode_row(plan, pipeline, "pipeline", weights, {}, 2, 8)
    assert row.reps >= 5 and calls["prefill"] == 1 and calls["rewind"] >= row.reps
    breakdown_rows(plan, pipeline, "decode", 2, 8, row.latency_us)
    assert calls["prefill"] == 2  # the breakdown's own, once for its repeats
