"""Correctness of one implementation against the reference at one case and dtype.

One check is the op's comparison on the case's inputs, on each of the op's hard input sets
(``Op.hard_inputs``: zero, tiny and huge norm rows, positions past the trained range, ...),
and the integrity of every call: no input written against ``Op.inplace``, no output sharing
memory with a read-only input (``kbench.bench.integrity``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from kbench.bench.integrity import clone_inputs, integrity_problems, reference_output
from kbench.bench.stopwatch import OP_CHECK, STOPWATCH
from kbench.errors import KbenchError
from kbench.ops.base import Case, Check
from kbench.registry import REFERENCE, Registry


def check_implementation(
    registry: Registry,
    op_name: str,
    backend: str,
    case: Case,
    dtype: torch.dtype,
    device: torch.device | str,
    seed: int = 0,
    reference: Any = None,
    inputs: dict[str, Any] | None = None,
) -> Check:
    """``backend`` against the reference on the same inputs, by the op's ``compare``, then on each
    of the op's hard input sets; a call that writes a read-only input or returns one fails too.
    An exception in the kernel is a FAIL, not a crash; a ``KbenchError`` (unsupported case)
    propagates. Its time is the run's ``op checks`` (``kbench.bench.stopwatch``)."""
    with STOPWATCH.timed(OP_CHECK):
        return _check_all(registry, op_name, backend, case, dtype, device, seed, reference, inputs)


def _check_all(registry, op_name, backend, case, dtype, device, seed, reference, inputs) -> Check:
    op = registry.op(op_name)
    impl = registry.resolve(op_name, backend, case, dtype, device)
    if inputs is None:
        inputs = op.make_inputs(case, dtype, torch.device(device), seed)
    if reference is None:
        reference = reference_output(op, inputs)
    check = _check_once(op, impl, backend, inputs, reference, dtype, device, first=True)
    if not check.ok or op.hard_inputs is None or backend == REFERENCE:
        return check
    for label, hard in op.hard_inputs(case, dtype, torch.device(device), seed).items():
        hard_check = _check_once(op, impl, backend, hard, reference_output(op, hard), dtype, device)
        if not hard_check.ok:
            return dataclasses.replace(hard_check, detail=f"on {label}: {hard_check.detail}")
    return check


def _check_once(op, impl, backend, inputs, reference, dtype, device, first: bool = False) -> Check:
    """One call on a copy of ``inputs``, compared; ``first``: the backend's first call at this case,
    whose compile, autotune or lazy init the run pays checked or not (``FIRST_CALLS``)."""
    given = clone_inputs(inputs)
    if backend == REFERENCE:
        with STOPWATCH.first_calls(first):
            out = impl(**given)
        return op.compare(out, reference, op.tolerance(dtype))
    try:
        with STOPWATCH.first_calls(first):
            out = impl(**given)
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()
    except KbenchError:
        raise
    except Exception as error:
        return Check(False, math.inf, math.inf, detail=f"raised {type(error).__name__}: {error}")
    check = op.compare(out, reference, op.tolerance(dtype))
    problems = integrity_problems(op, inputs, given, out)
    if problems:
        detail = "; ".join(problems + ([check.detail] if check.detail else []))
        return dataclasses.replace(check, ok=False, detail=detail)
    return check
