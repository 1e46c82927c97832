"""Token embedding: the rows of the embedding table for a step's token ids.

``embedding(ids, weight) -> out``:

- ``ids: [tokens]`` int64 in ``[0, vocab)``,
- ``weight: [vocab, hidden]``,
- ``out: [tokens, hidden]`` in weight.dtype, ``out[t] = weight[ids[t]]`` exactly (a copy,
  compared bit for bit). No in-place writes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kbench.errors import KbenchError
from kbench.ops.base import FLOAT_DTYPES, Case, Op, Tolerance, expect_tensor, generator, randn


def embedding_reference(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.embedding(ids, weight)


def _make_inputs(case: Case, dtype: torch.dtype, device, seed: int) -> dict:
    g = generator(device, seed)
    ids = torch.randint(0, case["vocab"], (case["tokens"],), generator=g, dtype=torch.int64)
    return {"ids": ids.to(device), "weight": randn((case["vocab"], case["hidden"]), dtype, device, g)}


def _validate(inputs) -> None:
    expect_tensor("ids", inputs.get("ids"), dtype=torch.int64, ndim=1, op="embedding")
    expect_tensor("weight", inputs.get("weight"), dtype=FLOAT_DTYPES, ndim=2, op="embedding")
    ids, vocab = inputs["ids"], inputs["weight"].shape[0]
    if ids.numel() and ids.device.type == "cpu" and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise KbenchError(f"embedding: token ids must lie in [0, {vocab}).", "Pass ids below the vocabulary size.")


def _bytes(case: Case, dtype: torch.dtype) -> float:
    # read one row per token and write it, plus the ids
    return 2 * case["tokens"] * case["hidden"] * dtype.itemsize + 8 * case["tokens"]


def embedding_cases(model, workload) -> list[Case]:
    """Prefill token counts and decode batch sizes, at the model's vocab and hidden."""
    tokens = sorted(set(workload.prefill_tokens) | set(workload.batch))
    return [Case("embedding", tokens=t, vocab=model.vocab, hidden=model.hidden) for t in tokens]


EMBEDDING = Op(
    name="embedding",
    role="the token embedding",
    family="embedding",
    doc="ids: [tokens] int64, weight: [vocab, hidden] -> [tokens, hidden]",
    make_inputs=_make_inputs,
    reference=embedding_reference,
    flops=lambda case: 0.0,
    bytes=_bytes,
    cases_for=embedding_cases,
    validate=_validate,
    tolerance=lambda dtype: Tolerance(exact=True),
    test_cases=(Case("embedding", tokens=1, vocab=100, hidden=64), Case("embedding", tokens=37, vocab=1000, hidden=96)),
)

OPS = [EMBEDDING]
