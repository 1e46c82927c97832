"""The projections of a decoder step: ``linear``, as ``nn.Linear``.

Math: ``out = x @ weight.T (+ bias)``, accumulated in fp32, rounded once to the dtype (cuBLAS
and ``F.linear`` in bf16/fp16, the bias added in the GEMM's epilogue).

``linear(x, weight, bias=None) -> out``:

- ``x: [tokens, in_features]``,
- ``weight: [out_features, in_features]`` (nn.Linear layout),
- ``bias: [out_features]`` or absent: a model with ``attention_bias`` (HF's q/k/v and o
  biases) passes it, and its cases have ``bias=True``. A backend without bias support refuses
  such cases in ``supports``: it is never called with one, and never drops it silently,
- ``out: [tokens, out_features]`` in x.dtype. No in-place writes.

The pipeline calls it for the q/k/v projection (``wqkv``: ``out_features = (heads + 2 *
kv_heads) * head_dim``), the attention output ``wo`` and the LM head (``out_features =
vocab``); a case's ``proj`` names which. At decode shapes (a few tokens) the product is bound
by reading ``weight`` once, so a skinny-batch kernel is where a backend can gain.

Inputs: ``x`` standard normal, ``weight`` with std ``1 / sqrt(in_features)``, so ``out`` is
O(1) at every size and the tolerance of ``kbench.ops.ffn`` (no TF32 in float32) fits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kbench.ops.base import FLOAT_DTYPES, Case, Op, expect_tensor, generator, randn
from kbench.ops.ffn import ffn_tolerance


def linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def _make_inputs(case: Case, dtype: torch.dtype, device, seed: int) -> dict:
    g = generator(device, seed)
    tokens, n, k = case["tokens"], case["out_features"], case["in_features"]
    inputs = {"x": randn((tokens, k), dtype, device, g), "weight": randn((n, k), dtype, device, g, 1 / math.sqrt(k))}
    if case.get("bias"):
        inputs["bias"] = randn((n,), dtype, device, g)
    return inputs


def _validate(inputs) -> None:
    x, weight = inputs.get("x"), inputs.get("weight")
    expect_tensor("x", x, dtype=FLOAT_DTYPES, ndim=2, op="linear")
    expect_tensor("weight", weight, dtype=x.dtype, shape=(None, x.shape[1]), op="linear")
    if inputs.get("bias") is not None:
        expect_tensor("bias", inputs["bias"], dtype=x.dtype, shape=(weight.shape[0],), op="linear")


def _flops(case: Case) -> float:
    return 2.0 * case["tokens"] * case["in_features"] * case["out_features"]


def _bytes(case: Case, dtype: torch.dtype) -> float:
    tokens, n, k = case["tokens"], case["out_features"], case["in_features"]
    return (n * k + tokens * (n + k) + (n if case.get("bias") else 0)) * dtype.itemsize


def projections(model) -> dict[str, tuple[int, int]]:
    """proj -> (in_features, out_features) of every projection a step makes outside the MLP."""
    q_and_kv = (model.heads + 2 * model.kv_heads) * model.head_dim
    return {"qkv": (model.hidden, q_and_kv), "o": (model.heads * model.head_dim, model.hidden),
            "lm_head": (model.hidden, model.vocab)}


def linear_cases(model, workload) -> list[Case]:
    """Every projection at every prefill token count and decode batch size. The LM head runs
    on one row per sequence, so its token counts are the batch sizes only; q/k/v and o have
    ``bias=True`` in a model with ``attention_bias``."""
    tokens_all = sorted(set(workload.prefill_tokens) | set(workload.batch))
    cases = []
    for proj, (k, n) in projections(model).items():
        counts = sorted(set(workload.batch)) if proj == "lm_head" else tokens_all
        bias = {"bias": True} if proj != "lm_head" and getattr(model, "attention_bias", False) else {}
        cases += [Case("linear", tokens=t, in_features=k, out_features=n, proj=proj, **bias) for t in counts]
    return cases


LINEAR = Op(
    name="linear",
    role="the q/k/v, o and LM-head projections",
    family="linear",
    doc="x: [tokens, in_features], weight: [out_features, in_features] -> [tokens, out_features]",
    make_inputs=_make_inputs,
    reference=linear_reference,
    flops=_flops,
    bytes=_bytes,
    cases_for=linear_cases,
    validate=_validate,
    tolerance=ffn_tolerance,
    test_cases=(
        Case("linear", tokens=1, in_features=64, out_features=200, proj="qkv"),
        Case("linear", tokens=5, in_features=96, out_features=130, proj="o"),
        Case("linear", tokens=37, in_features=64, out_features=333, proj="lm_head"),
        Case("linear", tokens=3, in_features=64, out_features=96, proj="qkv", bias=True),
    ),
)

OPS = [LINEAR]
