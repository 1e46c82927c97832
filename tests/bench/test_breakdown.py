"""kbench/bench/breakdown.py: a step's breakdown counts every op call the model makes, and
its rows add up to the measured step."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "model"))
from tiny_models import build_pipeline, write_spec  # noqa: E402

from kbench.bench.breakdown import REMAINDER, breakdown_rows, op_of  # noqa: E402
from kbench.model import load_weights  # noqa: E402
from kbench.model.pipeline import calls_per_step  # noqa: E402
from kbench.plan import resolve_plan  # noqa: E402
from kbench.spec import load_spec  # noqa: E402

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


def test_an_op_is_the_sum_of_its_kernels_durations_not_the_span_of_its_range():
    """CUDA attribution: the CPU-side range's kernels and its descendants', summed; the GPU-side
    annotation of the same name (a span that, in an eager step, holds the idle time between
    launches) is not counted."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import Kernel

    from kbench.bench.breakdown import range_kernel_us

    def event(name, kernels=(), children=(), device=DeviceType.CPU):
        return SimpleNamespace(name=name, device_type=device, cpu_children=list(children),
                               kernels=[Kernel(f"k{i}", 0, us) for i, us in enumerate(kernels)])

    launch = event("cudaLaunchKernel", kernels=[4.0])
    rope = event("kbench::rope", children=[event("aten::mul", children=[launch]), event("aten::cat", kernels=[2.5])])
    span = event("kbench::rope", kernels=[], device=DeviceType.CUDA)  # the GPU annotation: ignored
    second = event("kbench::rope", kernels=[1.0])
    assert range_kernel_us([rope, span, launch, second, event("aten::add", kernels=[9.0])]) == {"rope": 7.5}
