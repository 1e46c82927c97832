import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kbench.ops.base import Case
from kbench.ops.norm import ADD_RMSNORM, RMSNORM, add_rmsnorm_reference, rmsnorm_reference


def rmsnorm_float64(x, weight, eps):
    x64 = x.double()
    return x64 / torch.sqrt((x64 * x64).sum(-1, keepdim=True) / x.shape[-1] + eps) * weight.double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("hidden", [2048, 2560, 4096, 5120, 8192])
def test_rmsnorm_reference_matches_float64_formula(dtype, hidden):
    inputs = RMSNORM.make_inputs(Case("rmsnorm", tokens=3, hidden=hidden, eps=1e-6), dtype, "cpu", 0)
    out = rmsnorm_reference(**inputs)
    expected = rmsnorm_float64(**inputs)
    tol = RMSNORM.tolerance(dtype)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, atol=tol.atol, rtol=tol.rtol)


@given(tokens=st.integers(1, 33), hidden=st.sampled_from([64, 96, 2048, 2560]), eps=st.sampled_from([1e-5, 1e-6]))
@settings(max_examples=25, deadline=None)
def test_rmsnorm_reference_matches_torch_rms_norm(tokens, hidden, eps):
    inputs = RMSNORM.make_inputs(Case("rmsnorm", tokens=tokens, hidden=hidden, eps=eps), torch.float32, "cpu", tokens)
    expected = F.rms_norm(inputs["x"], (hidden,), weight=inputs["weight"], eps=eps)
    torch.testing.assert_close(rmsnorm_reference(**inputs), expected, atol=1e-5, rtol=1e-5)


def test_add_rmsnorm_returns_norm_of_sum_and_the_sum():
    inputs = ADD_RMSNORM.make_inputs(Case("add_rmsnorm", tokens=5, hidden=128, eps=1e-5), torch.float32, "cpu", 0)
    out, residual = add_rmsnorm_reference(**inputs)
    total = inputs["x"].double() + inputs["residual"].double()
    torch.testing.assert_close(residual.double(), total)
    torch.testing.assert_close(out.double(), rmsnorm_float64(total, inputs["weight"], 1e-5), atol=1e-5, rtol=1e-5)


def test_rmsnorm_weight_is_applied():
    inputs = RMSNORM.make_inputs(Case("rmsnorm", tokens=4, hidden=64, eps=1e-5), torch.float32, "cpu", 0)
    without_weight = rmsnorm_reference(inputs["x"], torch.ones_like(inputs["weight"]), 1e-5)
    assert not torch.allclose(rmsnorm_reference(**inputs), without_weight)
