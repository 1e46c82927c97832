"""``compile`` backend: ``torch.compile`` of each op's reference.

This is the baseline a hand-written kernel must beat: the reference's exact math, fused
by Inductor. Compiled once per op on first call (Dynamo then specialises per shape and dtype).
"""

from __future__ import annotations

import functools
import gc

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


@functools.cache
def _scan_failure(device_type: str, rows: int, length: int) -> str | None:
    """Why Inductor cannot compile a cumsum of this shape here, or None if it can.

    The sampling reference takes a cumsum over the vocabulary. Seen on the H100 with torch
    2.11: Inductor's split-scan code generation raised for [64, 32000] float32. Rather than
    guess which versions are affected, compile the scan once per shape and report the error.
    """
    if device_type != "cuda":
        return None
    try:
        x = torch.rand(rows, length, device=device_type)
        torch.compile(lambda t: t.cumsum(-1), dynamic=False)(x)
        torch.cuda.synchronize()
    except Exception as error:
        return f"torch.compile cannot compile the vocabulary cumsum on this torch/GPU ({type(error).__name__}: {str(error)[:120]})"
    return None


def _supports_scan(case, dtype, device) -> str | None:
    return _scan_failure(device.type, case["batch"], case["vocab"])


# Ops whose reference takes a cumsum over the vocabulary.
SCAN_OPS = ("sample",)


# One compiled graph per shape: a sweep over more shapes than dynamo's default recompile limit
# (8 per function) had the later shapes silently run the reference eagerly, and be reported as
# torch.compile's figures. Past this many, the call fails instead of falling back.
RECOMPILE_LIMIT = 128


def compiled(reference):
    """A callable that compiles ``reference`` on its first call, and again for each new shape."""

    @functools.cache
    def compiled_fn():
        dynamo_config = torch._dynamo.config
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 8 * RECOMPILE_LIMIT)
        dynamo_config.fail_on_recompile_limit_hit = True
        return torch.compile(reference, dynamic=False)

    def call(**inputs):
        return compiled_fn()(**inputs)

    call.__name__ = f"compiled_{reference.__name__}"
    return call


def register_all(register):
    for op in BUILTIN_OPS:
        if op.family in COMPILED_FAMILIES and op.name not in SKIPPED_OPS:
            supports = _supports_scan if op.name in SCAN_OPS else None
            register(op.name, "compile", compiled(op.reference), available=_unavailable, supports=supports,
                     version=torch.__version__, description="torch.compile of the reference",
                     slow_setup="torch.compile compiles each shape it meets, tens of seconds to minutes each")


def describe_config(config) -> str:
    """A Triton config as Inductor's autotuner holds it: its block sizes and warps."""
    sizes = ", ".join(f"{name}={value}" for name, value in config.kwargs.items())
    return f"{sizes} num_warps={config.num_warps}"


def inductor_tuners() -> list:
    """Every live ``CachingAutotuner``: Inductor's autotuned Triton kernels of this process.

    Found by scanning the live objects (Inductor keeps no registry); empty without triton or
    without that class. type(), not isinstance: isinstance asks an object for __class__, which a
    dead weak proxy answers with ReferenceError (and a deprecated torch alias with a warning)."""
    try:
        from torch._inductor.runtime.triton_heuristics import CachingAutotuner
    except Exception:  # no triton, or an Inductor without this module
        return []
    return [obj for obj in gc.get_objects() if issubclass(type(obj), CachingAutotuner)]


def inductor_configs() -> dict[str, str]:
    """The config each of Inductor's autotuned Triton kernels in this process launches with, by
    kernel name and size hints. (How many candidates it chose from is gone by then: Inductor
    prunes them to the winner.)

    Inductor picks a pointwise or reduction kernel's config by timing its candidates once, on the
    first call, and caches the winner on disk for later processes; at a few µs that one timing
    decides which of two configs a process runs, and the two can differ by a quarter. The record
    keeps the choice, so a compile figure can be read with it."""
    configs = {}
    for tuner in inductor_tuners():
        launchers = getattr(tuner, "launchers", None) or []
        if len(launchers) != 1 or not hasattr(launchers[0], "config"):
            continue  # not launched yet
        sizes = ", ".join(f"{axis}={value}" for axis, value in dict(getattr(tuner, "size_hints", None) or {}).items())
        configs[f"{getattr(tuner.fn, '__name__', '?')} [{sizes}]"] = describe_config(launchers[0].config)
    return dict(sorted(configs.items()))
