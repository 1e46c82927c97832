"""Feed-forward: ``swiglu`` and the whole ``ffn`` MLP.

Math (Hugging Face ``LlamaMLP``: ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``, SiLU)::

    silu(g) = g * sigmoid(g)
    swiglu(gate, up) = silu(gate) * up                       # each op in the input dtype
    ffn(x) = (silu(x @ W_gate.T) * (x @ W_up.T)) @ W_down.T   # GEMMs accumulate in fp32,
                                                              # results rounded to the dtype

``swiglu(gate, up) -> out``: ``gate, up, out: [tokens, intermediate]``. No in-place writes.

``ffn(x, w_gate_up, w_down[, b_gate_up, b_down]) -> out``:

- ``x: [tokens, hidden]``,
- ``w_gate_up: [2 * intermediate, hidden]`` (nn.Linear layout: rows ``[0, intermediate)`` are
  ``gate_proj.weight``, rows ``[intermediate, 2 * intermediate)`` are ``up_proj.weight``),
- ``w_down: [hidden, intermediate]`` (``down_proj.weight``),
- ``b_gate_up: [2 * intermediate]``, ``b_down: [hidden]``: only for a model with
  ``mlp_bias`` (HF ``LlamaMLP`` with biases; then the case has ``bias=True``). A backend
  without bias support refuses such cases in ``supports``: it is never called with them.
- ``out: [tokens, hidden]`` in x.dtype. No in-place writes, so a backend may fuse the
  gate/up GEMM with the activation and never store ``gate`` and ``up``.

Inputs: ``x`` standard normal, weights of std ``1 / sqrt(fan_in)``, so every output is O(1)
and one absolute tolerance fits all cases.

Tolerance of ``ffn``: float32 means IEEE float32 products; TF32 (Triton's ``tl.dot`` default)
is about 1e-3 off and fails, so pass ``input_precision="ieee"`` or decline float32. 16-bit
dtypes allow a few ulps of O(1) outputs.

Cases: ``tokens`` (prefill token counts and decode batch sizes), ``intermediate`` and, for
``ffn``, ``hidden`` (and ``bias=True`` with ``mlp_bias``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kbench.errors import KbenchError
from kbench.ops.base import FLOAT_DTYPES, Case, Op, Tolerance, expect_tensor, generator, randn

# silu(g) * u as g / (1 + exp(-g)) * u: exp, add, divide, multiply.
SWIGLU_FLOPS_PER_ELEMENT = 4


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def ffn_reference(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor,
                  b_gate_up: torch.Tensor | None = None, b_down: torch.Tensor | None = None) -> torch.Tensor:
    gate, up = F.linear(x, w_gate_up, b_gate_up).chunk(2, dim=-1)
    return F.linear(swiglu_reference(gate, up), w_down, b_down)


def _make_swiglu(case: Case, dtype: torch.dtype, device, seed: int) -> dict:
    g = generator(device, seed)
    shape = (case["tokens"], case["intermediate"])
    # gate spans silu's curved region and its tails (|gate| up to ~8)
    return {"gate": randn(shape, dtype, device, g, 2.0), "up": randn(shape, dtype, device, g)}


def _make_ffn(case: Case, dtype: torch.dtype, device, seed: int) -> dict:
    g = generator(device, seed)
    tokens, hidden, intermediate = case["tokens"], case["hidden"], case["intermediate"]
    inputs = {
        "x": randn((tokens, hidden), dtype, device, g),
        "w_gate_up": randn((2 * intermediate, hidden), dtype, device, g, 1 / math.sqrt(hidden)),
        "w_down": randn((hidden, intermediate), dtype, device, g, 1 / math.sqrt(intermediate)),
    }
    if case.get("bias"):
        inputs |= {"b_gate_up": randn((2 * intermediate,), dtype, device, g),
                   "b_down": randn((hidden,), dtype, device, g)}
    return inputs


def _validate_swiglu(inputs) -> None:
    gate = inputs.get("gate")
    expect_tensor("gate", gate, dtype=FLOAT_DTYPES, ndim=2, op="swiglu")
    expect_tensor("up", inputs.get("up"), dtype=gate.dtype, shape=tuple(gate.shape), op="swiglu")


def _validate_ffn(inputs) -> None:
    x = inputs.get("x")
    expect_tensor("x", x, dtype=FLOAT_DTYPES, ndim=2, op="ffn")
    hidden = x.shape[1]
    w_gate_up = inputs.get("w_gate_up")
    expect_tensor("w_gate_up", w_gate_up, dtype=x.dtype, shape=(None, hidden), op="ffn")
    if w_gate_up.shape[0] % 2:
        raise KbenchError(
            f"ffn: w_gate_up has {w_gate_up.shape[0]} rows; it must stack gate_proj and up_proj.",
            "Pass torch.cat([gate_proj.weight, up_proj.weight]) of shape [2 * intermediate, hidden].",
        )
    expect_tensor("w_down", inputs.get("w_down"), dtype=x.dtype, shape=(hidden, w_gate_up.shape[0] // 2), op="ffn")
    if (inputs.get("b_gate_up") is None) != (inputs.get("b_down") is None):
        raise KbenchError("ffn: b_gate_up and b_down come together (a model with mlp_bias has both).",
                          "Pass both biases or neither.")
    if inputs.get("b_gate_up") is not None:
        expect_tensor("b_gate_up", inputs["b_gate_up"], dtype=x.dtype, shape=(w_gate_up.shape[0],), op="ffn")
        expect_tensor("b_down", inputs["b_down"], dtype=x.dtype, shape=(hidden,), op="ffn")


def _swiglu_flops(case: Case) -> float:
    return float(SWIGLU_FLOPS_PER_ELEMENT * case["tokens"] * case["intermediate"])


def _ffn_flops(case: Case) -> float:
    tokens, hidden, intermediate = case["tokens"], case["hidden"], case["intermediate"]
    return 2.0 * tokens * hidden * 3 * intermediate + SWIGLU_FLOPS_PER_ELEMENT * tokens * intermediate


def _swiglu_bytes(case: Case, dtype: torch.dtype) -> float:
    # read gate and up, write out
    return 3 * case["tokens"] * case["intermediate"] * dtype.itemsize


def _ffn_bytes(case: Case, dtype: torch.dtype) -> float:
    # the three weight matrices, x and out (gate/up stay on chip in a fused kernel)
    tokens, hidden, intermediate = case["tokens"], case["hidden"], case["intermediate"]
    return (3 * hidden * intermediate + 2 * tokens * hidden) * dtype.itemsize


def ffn_tolerance(dtype: torch.dtype) -> Tolerance:
    """GEMM tolerance for O(1) outputs (see the module docstring: no TF32 in float32)."""
    if dtype == torch.float32:
        return Tolerance(atol=1e-4, rtol=1e-4)
    if dtype == torch.float16:
        return Tolerance(atol=4e-3, rtol=4e-3)
    return Tolerance(atol=2e-2, rtol=2e-2)


def _token_counts(workload) -> list[int]:
    return sorted(set(workload.prefill_tokens) | set(workload.batch))


def swiglu_cases(model, workload) -> list[Case]:
    """Prefill token counts and decode batch sizes, at the model's intermediate size."""
    return [Case("swiglu", tokens=t, intermediate=model.intermediate) for t in _token_counts(workload)]


def ffn_cases(model, workload) -> list[Case]:
    """Prefill token counts and decode batch sizes, at the model's hidden and intermediate."""
    bias = {"bias": True} if getattr(model, "mlp_bias", False) else {}
    return [
        Case("ffn", tokens=t, hidden=model.hidden, intermediate=model.intermediate, **bias)
        for t in _token_counts(workload)
    ]


SWIGLU = Op(
    name="swiglu",
    family="ffn",
    doc="gate, up: [tokens, intermediate] -> silu(gate) * up",
    make_inputs=_make_swiglu,
    reference=swiglu_reference,
    flops=_swiglu_flops,
    bytes=_swiglu_bytes,
    cases_for=swiglu_cases,
    validate=_validate_swiglu,
    test_cases=(Case("swiglu", tokens=1, intermediate=172), Case("swiglu", tokens=37, intermediate=688)),
)

FFN = Op(
    name="ffn",
    role="the gate/up/down MLP",
    family="ffn",
    doc="x: [tokens, hidden], w_gate_up: [2*intermediate, hidden], w_down: [hidden, intermediate] -> [tokens, hidden]",
    make_inputs=_make_ffn,
    reference=ffn_reference,
    flops=_ffn_flops,
    bytes=_ffn_bytes,
    cases_for=ffn_cases,
    validate=_validate_ffn,
    tolerance=ffn_tolerance,
    test_cases=(
        Case("ffn", tokens=1, hidden=64, intermediate=172),
        Case("ffn", tokens=37, hidden=96, intermediate=256),
        Case("ffn", tokens=5, hidden=64, intermediate=96, bias=True),
    ),
)

OPS = [SWIGLU, FFN]
