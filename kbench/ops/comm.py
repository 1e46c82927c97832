"""Collective ops across the ranks of a torch.distributed process group: ``all_reduce``.

Math, over the ``ranks`` processes of the default group, rank ``r`` holding ``x_r``::

    out = sum_r x_r                        # on every rank, in x's dtype

Shapes: ``x: [tokens, hidden]``, the partial output of a row-parallel projection (o, down)
in a tensor-parallel step; ``out`` like ``x``.

``all_reduce(x, inplace) -> out``: with ``inplace=True`` an implementation may write the sum
into ``x`` and return it; with ``inplace=False`` ``x`` is left as it was.

The reference is ``torch.distributed.all_reduce`` on whatever group is initialised (gloo on
CPUs, NCCL on GPUs); with no group initialised it is a world of one rank and ``out = x``.
Every rank must call an implementation with the same shape at the same time.

Bytes are the bus bytes of a ring all-reduce, ``2 (ranks - 1) / ranks`` times the tensor
(NCCL's ``busBw``), so a row's GB/s is comparable with the link's bandwidth at any rank
count; flops are the ``(ranks - 1)`` additions per element.
"""

from __future__ import annotations

import torch

from kbench.errors import KbenchError
from kbench.ops.base import FLOAT_DTYPES, Case, Op, Tolerance, expect_tensor, generator, randn


def world() -> tuple[int, int]:
    """(rank, ranks) of the default process group; (0, 1) when none is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_reference(x: torch.Tensor, inplace: bool) -> torch.Tensor:
    import torch.distributed as dist

    out = x if inplace else x.clone()
    if world()[1] > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def rank_inputs(case: Case, dtype: torch.dtype, device, seed: int, rank: int) -> dict:
    """The inputs rank ``rank`` holds: each rank draws its own ``x`` (seed + rank), so a
    sum that drops or repeats a rank's share is caught."""
    g = generator(device, seed + 7919 * rank)
    return {"x": randn((case["tokens"], case["hidden"]), dtype, device, g), "inplace": case.get("inplace", False)}


def _make_inputs(case: Case, dtype: torch.dtype, device, seed: int) -> dict:
    return rank_inputs(case, dtype, device, seed, world()[0])


def _validate(inputs) -> None:
    expect_tensor("x", inputs.get("x"), dtype=FLOAT_DTYPES, ndim=2, op="all_reduce")


def check_ranks(case: Case) -> str | None:
    """Why ``case`` cannot run in this process group (its ``ranks`` is not the group's size)."""
    ranks = world()[1]
    if case.get("ranks", 1) != ranks:
        return f"the case is for {case.get('ranks', 1)} ranks, this process group has {ranks}"
    return None


def _bus_bytes(case: Case, dtype: torch.dtype) -> float:
    ranks = case.get("ranks", 1)
    return 2.0 * (ranks - 1) / ranks * case["tokens"] * case["hidden"] * dtype.itemsize


def _tolerance(dtype: torch.dtype) -> Tolerance:
    # the ranks' shares are summed in an order each implementation picks: a few roundings apart
    if dtype == torch.float32:
        return Tolerance(atol=1e-5, rtol=1e-5)
    if dtype == torch.float16:
        return Tolerance(atol=8e-3, rtol=8e-3)
    return Tolerance(atol=6e-2, rtol=3e-2)


def step_cases(model, workload, ranks: int) -> list[Case]:
    """The all-reduces of a tensor-parallel step: ``[tokens, hidden]`` for every prefill token
    count and decode batch of the workload (two per layer: after o and after down)."""
    tokens = sorted(set(workload.prefill_tokens) | set(workload.batch))
    return [Case("all_reduce", tokens=t, hidden=model.hidden, ranks=ranks, inplace=True) for t in tokens]


ALL_REDUCE = Op(
    name="all_reduce",
    role="sums the row-parallel o and down outputs over the ranks of a tensor-parallel run",
    family="comm",
    doc="x: [tokens, hidden] on every rank -> sum over ranks, [tokens, hidden]",
    make_inputs=_make_inputs,
    reference=all_reduce_reference,
    flops=lambda case: float((case.get("ranks", 1) - 1) * case["tokens"] * case["hidden"]),
    bytes=_bus_bytes,
    # a single-rank run has no collectives; tensor-parallel runs and `kbench bench all_reduce
    # --tp N` make their cases with ``step_cases``
    cases_for=lambda model, workload: [],
    validate=_validate,
    tolerance=_tolerance,
    inplace=("x",),
    test_cases=(Case("all_reduce", tokens=1, hidden=64, ranks=1, inplace=True),
                Case("all_reduce", tokens=37, hidden=320, ranks=1, inplace=False)),
)

OPS = [ALL_REDUCE]


def require_world(ranks: int) -> None:
    """KbenchError unless this process is one of ``ranks`` ranks of an initialised group."""
    if world()[1] != ranks:
        raise KbenchError(f"all_reduce at {ranks} ranks needs a process group of {ranks} ranks; this one has "
                          f"{world()[1]}.", f"Run it as `kbench bench all_reduce --tp {ranks}`.")
