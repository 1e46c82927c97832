"""Op contracts and their reference implementations, one module per family, registered as
plugin ``kbench-core`` (each op's ``reference`` becomes backend ``reference``). Families are
whatever the registered ops name, so a plugin's own family is chosen like a built-in one."""

from __future__ import annotations

import kbench
from kbench.ops import attention, comm, embedding, ffn, kv_cache, linear, norm, rope, sampling
from kbench.ops.base import Case, Check, Op, Tolerance, compare_close, dtype_name, parse_dtype

BUILTIN_OPS: list[Op] = [*embedding.OPS, *norm.OPS, *linear.OPS, *rope.OPS, *kv_cache.OPS, *attention.OPS,
                         *ffn.OPS, *sampling.OPS, *comm.OPS]


@kbench.hookimpl
def register_ops(register):
    for op in BUILTIN_OPS:
        register(op)


__all__ = ["BUILTIN_OPS", "Case", "Check", "Op", "Tolerance", "compare_close", "dtype_name", "parse_dtype"]
