"""``compile`` backend: ``torch.compile`` of each op's reference.

This is the baseline a hand-written kernel must beat: the reference's exact math, fused
by Inductor. Compiled once per op on first call (Dynamo then specialises per shape and dtype).
"""

from __future__ import annotations

import functools

import torch

from kbench.ops import BUILTIN_OPS

# Elementwise, reduction and sampling ops: where Inductor's fusion is the fair baseline.
# Attention and the GEMM-bound ffn have their own torch backends (SDPA, cuBLAS).
COMPILED_FAMILIES = ("norm", "rope", "ffn", "sampling")
SKIPPED_OPS = ("ffn",)


def _unavailable() -> str | None:
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    return None


def compiled(reference):
    """A callable that compiles ``reference`` on its first call."""

    @functools.cache
    def compiled_fn():
        return torch.compile(reference, dynamic=False)

    def call(**inputs):
        return compiled_fn()(**inputs)

    call.__name__ = f"compiled_{reference.__name__}"
    return call


def register_all(register):
    for op in BUILTIN_OPS:
        if op.family in COMPILED_FAMILIES and op.name not in SKIPPED_OPS:
            register(op.name, "compile", compiled(op.reference), available=_unavailable,
                     version=torch.__version__, description="torch.compile of the reference")
