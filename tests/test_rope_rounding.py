"""rope's kernels round each product and sum as Hugging Face does (GPU).

HF rotates in the input dtype: cos and sin rounded to it, each product rounded, then the sum. A
kernel that lets the compiler fuse a product and the sum after it into one fma skips the
product's rounding, which the tolerance of the conformance checks cannot see (23% of random
bf16 outputs move by an ulp). Here at most 0.1% of outputs may differ from the reference's:
room for a cos or sin a few fp32 ulp away from torch's (cuda's slices compute theirs without
sincosf, within 1.56 ulp of float64), which a rounding to 16 bits rarely shows.
"""

import pytest
import torch

from kbench.bench.check import clone_inputs
from kbench.config import RopeConfig
from kbench.ops.base import Case
from kbench.ops.rope import rope_case_dims
from kbench.plugins import get_registry

SHAPES = [(32, 8, 128), (6, 3, 72)]  # llama3-8b's heads; one element an access in the 16-bit dtypes


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("style", ["half", "interleaved"])
@pytest.mark.parametrize("tokens", [1, 8, 31, 64, 2048])  # every launch path of both backends
@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "x".join(map(str, shape)))
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_rope_rounds_each_product_as_the_reference(backend, shape, tokens, style, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    registry = get_registry()
    implementation = registry.get("rope", backend)
    if implementation.unavailable_reason():
        pytest.skip(implementation.unavailable_reason())
    heads, kv_heads, head_dim = shape
    case = Case("rope", tokens=tokens, heads=heads, kv_heads=kv_heads, head_dim=head_dim, phase="decode",
                seq_len=4096, **rope_case_dims(RopeConfig(style=style)))
    op = registry.op("rope")
    inputs = op.make_inputs(case, dtype, torch.device("cuda"), 3)
    expected = op.reference(**clone_inputs(inputs))
    got = implementation.fn(**inputs)
    for name, out, ref in zip(("q", "k"), got, expected, strict=True):
        differ = (out != ref).float().mean().item()
        assert differ <= 1e-3, f"{backend} {name}: {differ:.2%} of outputs differ from the reference's"
