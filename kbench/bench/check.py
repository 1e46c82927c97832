"""Correctness of one implementation against the reference at one case and dtype."""

from __future__ import annotations

import math
from typing import Any

import torch

from kbench.errors import KbenchError
from kbench.ops.base import Case, Check
from kbench.registry import REFERENCE, Registry


def clone_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the tensors in ``inputs`` (in-place ops must not see each other's writes)."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def reference_output(op, inputs: dict[str, Any]) -> Any:
    return op.reference(**clone_inputs(inputs))


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
    """``backend`` against the reference on the same inputs, by the op's ``compare``. An exception
    in the kernel is a FAIL, not a crash; a ``KbenchError`` (unsupported case) propagates."""
    op = registry.op(op_name)
    impl = registry.resolve(op_name, backend, case, dtype, device)
    if inputs is None:
        inputs = op.make_inputs(case, dtype, torch.device(device), seed)
    if reference is None:
        reference = reference_output(op, inputs)
    if backend == REFERENCE:
        out = impl(**clone_inputs(inputs))
    else:
        try:
            out = impl(**clone_inputs(inputs))
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()
        except KbenchError:
            raise
        except Exception as error:
            return Check(False, math.inf, math.inf, detail=f"raised {type(error).__name__}: {error}")
    return op.compare(out, reference, op.tolerance(dtype))
