"""Op contracts and their reference implementations, one module per family.

The core registers itself with the plugin manager under the name ``kbench-core``: its
``register_ops`` hook declares every op below, and each op's ``reference`` becomes
backend ``reference``.
"""

from __future__ import annotations

import kbench
from kbench.ops import attention, ffn, norm, rope, sampling
from kbench.ops.base import Case, Check, Op, Tolerance, compare_close, dtype_name, parse_dtype

FAMILIES = ("norm", "rope", "attention", "ffn", "sampling")
BUILTIN_OPS: list[Op] = [*norm.OPS, *rope.OPS, *attention.OPS, *ffn.OPS, *sampling.OPS]


@kbench.hookimpl
def register_ops(register):
    for op in BUILTIN_OPS:
        register(op)


__all__ = ["BUILTIN_OPS", "FAMILIES", "Case", "Check", "Op", "Tolerance", "compare_close", "dtype_name", "parse_dtype"]
