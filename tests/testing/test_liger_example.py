"""examples/kbench-liger, on a CPU: its availability reasons, and its layout adapters checked
against kbench's references through a stand-in for Liger's forward functions.

The stand-ins follow Liger's documented calling conventions (layouts, tuple returns, what
is read of cos/sin), written from its docs, so a wrong transpose or a wrong tuple index in
an adapter fails here; the kernels themselves are checked on a GPU by the example's own
tests (``pytest --kbench-backend liger``).
"""

import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from kbench.bench.check import clone_inputs
from kbench.cli import cli
from kbench.plugins import get_registry

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kbench-liger" / "src"


def fake_rms_norm_forward(X, W, eps, offset, casting_mode, row_mode):
    assert casting_mode == "llama" and offset == 0.0
    x32 = X.float()
    y = (x32 / torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(X.dtype) * (W + offset)
    return y, X, None, 0, 0, casting_mode


def fake_fused_add_rms_norm_forward(X, R, W, eps, offset, casting_mode):
    S = X + R
    return fake_rms_norm_forward(S, W, eps, offset, casting_mode, None)[0], S, None, 0, 0, 0, casting_mode


def fake_swiglu_forward(a, b):
    return a, b, F.silu(a.float()).to(b.dtype) * b


def fake_rope_forward(q, k, cos, sin):
    """q: [batch, heads, seq, head_dim]; cos/sin: [seq, head_dim], of which the first half is read."""
    assert q.shape[2] == cos.shape[0] and cos.ndim == 2

    def rotate(x):
        half = x.shape[-1] // 2
        c, s = cos[:, :half].to(x.dtype), sin[:, :half].to(x.dtype)
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)

    return rotate(q), rotate(k), cos, sin


@pytest.fixture
def adapters(monkeypatch):
    """kbench_liger.adapters with Liger's forward functions replaced by the stand-ins."""
    for name, attrs in {
        "liger_kernel": {}, "liger_kernel.ops": {},
        "liger_kernel.ops.rms_norm": {"rms_norm_forward": fake_rms_norm_forward},
        "liger_kernel.ops.fused_add_rms_norm": {"fused_add_rms_norm_forward": fake_fused_add_rms_norm_forward},
        "liger_kernel.ops.swiglu": {"swiglu_forward": fake_swiglu_forward},
        "liger_kernel.ops.rope": {"rope_forward": fake_rope_forward},
    }.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    from kbench_liger import adapters

    return adapters


def _cases(op_name, dtype):
    op = get_registry().op(op_name)
    return [pytest.param(op_name, case, dtype, id=f"{op_name}-{case.label}-{dtype}".replace(" ", ","))
            for case in op.test_cases if case.get("style", "half") == "half"]


@pytest.mark.parametrize(("op_name", "case", "dtype"), [
    p for op in ("rmsnorm", "add_rmsnorm", "swiglu", "rope") for dtype in (torch.float32, torch.bfloat16)
    for p in _cases(op, dtype)
])
def test_adapters_map_kbench_layouts_onto_liger_and_back(adapters, op_name, case, dtype):
    op = get_registry().op(op_name)
    inputs = op.make_inputs(case, dtype, torch.device("cpu"), 0)
    out = getattr(adapters, op_name)(**clone_inputs(inputs))
    check = op.compare(out, op.reference(**clone_inputs(inputs)), op.tolerance(dtype))
    assert check.ok, check.summary()


def test_liger_plugin_loads_and_says_why_it_cannot_run_here(tmp_path, monkeypatch):
    from kbench.testing.environment import write_plugin_dist

    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(tmp_path))
    # The example's own entry point, as its pyproject declares it, without installing it.
    write_plugin_dist(tmp_path, "liger", "from kbench_liger.plugin import register_backends  # noqa: F401\n")
    monkeypatch.setenv("KBENCH_PLUGINS", "liger")
    get_registry.cache_clear()
    try:
        registry = get_registry()
        assert {op for (op, b) in registry.implementations if b == "liger"} == {"rmsnorm", "add_rmsnorm", "rope", "swiglu"}
        reason = registry.get("rope", "liger").unavailable_reason()
        if torch.cuda.is_available():
            assert reason is None or "liger_kernel is not installed" in reason
        else:
            assert reason in ("liger_kernel is not installed (pip install liger-kernel)",
                              "no CUDA device (Liger-Kernel's Triton kernels run on GPUs only)")
        listed = CliRunner().invoke(cli, ["list", "--op", "swiglu"])
        assert "liger" in listed.output and "unavailable" in listed.output
    finally:
        get_registry.cache_clear()


def test_liger_declines_interleaved_rope_and_cpu_tensors(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    from kbench_liger import plugin

    rope_case = next(c for c in get_registry().op("rope").test_cases if c["style"] == "interleaved")
    assert "interleaved" in plugin.rope_supports(rope_case, torch.bfloat16, torch.device("cuda"))
    norm_case = get_registry().op("rmsnorm").test_cases[0]
    assert plugin.norm_supports(norm_case, torch.bfloat16, torch.device("cuda")) is None
    assert "CUDA tensors" in plugin.norm_supports(norm_case, torch.bfloat16, torch.device("cpu"))
    assert "65536" in plugin.norm_supports(norm_case.replace(hidden=65537), torch.bfloat16, torch.device("cuda"))
