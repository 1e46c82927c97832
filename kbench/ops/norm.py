"""Norm ops: ``rmsnorm`` and ``add_rmsnorm`` (fused residual add).

Math (Hugging Face ``LlamaRMSNorm``)::

    x32 = x.float()
    y = x32 * rsqrt(mean(x32 ** 2, dim=-1) + eps)      # fp32
    out = weight * y.to(x.dtype)                          # product in x.dtype

Shapes: ``x: [tokens, hidden]``, ``weight: [hidden]``, ``out: [tokens, hidden]`` in x.dtype.

``rmsnorm(x, weight, eps) -> out``

``add_rmsnorm(x, residual, weight, eps) -> (out, new_residual)`` where
``new_residual = x + residual`` (in x.dtype, as HF's ``hidden_states = residual + hidden_states``)
and ``out = rmsnorm(new_residual, weight, eps)``. An implementation may write
``new_residual`` into ``residual`` in place and return it.
"""

from __future__ import annotations

import torch

from kbench.ops.base import FLOAT_DTYPES, Case, Op, expect_tensor, generator, randn


def rmsnorm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    input_dtype = x.dtype
    x32 = x.to(torch.float32)
    variance = x32.pow(2).mean(-1, keepdim=True)
    normed = x32 * torch.rsqrt(variance + eps)
    return weight * normed.to(input_dtype)


def add_rmsnorm_reference(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    new_residual = residual + x
    return rmsnorm_reference(new_residual, weight, eps), new_residual


def _make_rmsnorm(case: Case, dtype: torch.dtype, device, seed: int) -> dict:
    g = generator(device, seed)
    tokens, hidden = case["tokens"], case["hidden"]
    return {
        "x": randn((tokens, hidden), dtype, device, g),
        # HF initialises the weight to ones; random weights around 1 catch a dropped weight.
        "weight": (1.0 + randn((hidden,), torch.float32, "cpu", g, 0.1)).to(device=device, dtype=dtype),
        "eps": case.get("eps", 1e-5),
    }


def _make_add_rmsnorm(case: Case, dtype: torch.dtype, device, seed: int) -> dict:
    inputs = _make_rmsnorm(case, dtype, device, seed)
    g = generator(device, seed + 1)
    inputs["residual"] = randn((case["tokens"], case["hidden"]), dtype, device, g)
    return inputs


# Row scales where eps decides the output (1e-4: mean(x^2) = 1e-8, far under eps = 1e-5) and
# where squaring overflows a 16-bit accumulator (float16's largest value is 65504).
TINY_SCALE = 1e-4
LARGE_SCALE = {torch.float16: 1e3, torch.bfloat16: 1e15, torch.float32: 1e15}


def _hard_rows(x: torch.Tensor, scale_of_row) -> torch.Tensor:
    scales = torch.tensor([scale_of_row(i) for i in range(x.shape[0])], dtype=torch.float32, device=x.device)
    return (x.float() * scales[:, None]).to(x.dtype)


def _hard_inputs(make):
    """Rows the contract makes hard: all zero (out 0, not NaN), tiny (eps matters), huge
    (a 16-bit sum of squares overflows), and the three mixed with ordinary rows."""
    def hard(case: Case, dtype: torch.dtype, device, seed: int) -> dict[str, dict]:
        inputs = make(case, dtype, device, seed)
        large = LARGE_SCALE.get(dtype, 1e3)
        cycle = (0.0, TINY_SCALE, 1.0, large)
        sets = {}
        for label, scale_of_row in (("zero rows", lambda i: 0.0), ("tiny rows (eps decides)", lambda i: TINY_SCALE),
                                    ("large-magnitude rows", lambda i: large),
                                    ("mixed zero/tiny/normal/large rows", lambda i: cycle[i % 4])):
            changed = dict(inputs)
            for name in ("x", "residual"):
                if name in inputs:
                    changed[name] = _hard_rows(inputs[name], scale_of_row)
            sets[label] = changed
        return sets
    return hard


def _validate(inputs, *, op: str) -> None:
    x = inputs.get("x")
    expect_tensor("x", x, dtype=FLOAT_DTYPES, ndim=2, op=op)
    expect_tensor("weight", inputs.get("weight"), dtype=x.dtype, shape=(x.shape[1],), op=op)
    if "residual" in inputs or op == "add_rmsnorm":
        expect_tensor("residual", inputs.get("residual"), dtype=x.dtype, shape=tuple(x.shape), op=op)


def _bytes_rmsnorm(case: Case, dtype: torch.dtype) -> float:
    size = dtype.itemsize
    return (2 * case["tokens"] * case["hidden"] + case["hidden"]) * size


def _bytes_add_rmsnorm(case: Case, dtype: torch.dtype) -> float:
    # read x, residual, weight; write out, new residual
    size = dtype.itemsize
    return (4 * case["tokens"] * case["hidden"] + case["hidden"]) * size


def _flops(case: Case) -> float:
    return 4.0 * case["tokens"] * case["hidden"]


def norm_cases(model, workload) -> list[Case]:
    """Prefill token counts of the workload and the decode batch sizes, at the model's hidden."""
    tokens = sorted(set(workload.prefill_tokens) | set(workload.batch))
    return [Case("", tokens=t, hidden=model.hidden, eps=model.norm_eps) for t in tokens]


def _cases(name):
    return lambda model, workload: [Case(name, c.as_dict()) for c in norm_cases(model, workload)]


RMSNORM = Op(
    name="rmsnorm",
    role="the first layer's input norm",
    family="norm",
    doc="x: [tokens, hidden], weight: [hidden] -> [tokens, hidden]",
    make_inputs=_make_rmsnorm,
    reference=rmsnorm_reference,
    flops=_flops,
    bytes=_bytes_rmsnorm,
    cases_for=_cases("rmsnorm"),
    validate=lambda inputs: _validate(inputs, op="rmsnorm"),
    hard_inputs=_hard_inputs(_make_rmsnorm),
    test_cases=(Case("rmsnorm", tokens=1, hidden=64, eps=1e-5), Case("rmsnorm", tokens=37, hidden=320, eps=1e-6)),
)

ADD_RMSNORM = Op(
    name="add_rmsnorm",
    role="residual add and norm around attention and the MLP; the final norm",
    family="norm",
    doc="x, residual: [tokens, hidden], weight: [hidden] -> (out, new_residual)",
    make_inputs=_make_add_rmsnorm,
    reference=add_rmsnorm_reference,
    flops=lambda case: 5.0 * case["tokens"] * case["hidden"],
    bytes=_bytes_add_rmsnorm,
    cases_for=_cases("add_rmsnorm"),
    validate=lambda inputs: _validate(inputs, op="add_rmsnorm"),
    hard_inputs=_hard_inputs(_make_add_rmsnorm),
    inplace=("residual",),
    test_cases=(Case("add_rmsnorm", tokens=1, hidden=64, eps=1e-5), Case("add_rmsnorm", tokens=37, hidden=320, eps=1e-6)),
)

OPS = [RMSNORM, ADD_RMSNORM]
