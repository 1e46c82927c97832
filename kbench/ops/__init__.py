"""Op contracts and their reference implementations, one module per family.

The core registers itself with the plugin manager under the name ``kbench-core``: its
``register_ops`` hook declares every op below, and each op's ``reference`` becomes
backend ``reference``. The families are not listed here: they are whatever the registered
ops name (``Registry.families``), so a plugin's own family is chosen like a built-in one.
"""

from __future__ import annotations

import kbench
from kbench.ops import attention, ffn, norm, rope, sampling
from kbench.ops.base import Case, Check, Op, Tolerance, compare_close, dtype_name, parse_dtype

BUILTIN_OPS: list[Op] = [*norm.OPS, *rope.OPS, *attention.OPS, *ffn.OPS, *sampling.OPS]


@kbench.hookimpl
def register_ops(register):
    for op in BUILTIN_OPS:
        register(op)


__all__ = ["BUILTIN_OPS", "Case", "Check", "Op", "Tolerance", "compare_close", "dtype_name", "parse_dtype"]
