"""``flash`` backends: FlashAttention for ``attention_prefill`` and ``attention_decode``.

- ``flash-fa2``, ``flash-fa3``, ``flash-fa4``: one FlashAttention generation each
  (see ``kernels.py`` for packages, APIs and limits);
- ``flash``: the best generation present for each call (on Hopper FA3, then FA4, then FA2;
  on Blackwell FA4, then FA2; on Ampere FA2), chosen from the call's dtype, head_dim, device
  and page size, so a case one generation cannot run falls to the next.

Nothing is imported until first needed: a missing or broken flash-attn build is a reason in
``kbench list``, never a failed plugin.
"""

from __future__ import annotations

import torch

import kbench
from kbench.errors import KbenchError
from kbench_flash.kernels import KERNELS, FlashKernel, choose


def _block_size(case) -> int | None:
    if case.op == "attention_decode" and case.get("layout", "contiguous") == "paged":
        return int(case["block_size"])
    return None


def _call_block_size(op: str, inputs: dict) -> int | None:
    if op == "attention_decode" and inputs.get("block_table") is not None:
        return int(inputs["k_cache"].shape[1])
    return None


def supports_fn(kernel: FlashKernel):
    def supports(case, dtype, device):
        return kernel.reason(case.op, dtype, int(case["head_dim"]), device, _block_size(case))

    return supports


def _best_choice(case, dtype, device) -> tuple[FlashKernel | None, str | None]:
    return choose(case.op, dtype, int(case["head_dim"]), device, _block_size(case))


def _best_supports(case, dtype, device):
    return _best_choice(case, dtype, device)[1]


def _best_runs_as(case, dtype, device) -> str | None:
    """The generation's backend ``flash`` calls at ``case`` (``flash-fa3``, ...), or None."""
    kernel = _best_choice(case, dtype, device)[0]
    return kernel.backend if kernel is not None else None


def _best_available() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device is visible (FlashAttention runs on NVIDIA GPUs only)"
    unavailable = [kernel.unavailable() for kernel in KERNELS]
    if all(unavailable):
        return "no FlashAttention generation can run here: " + "; ".join(unavailable)
    return None


def best_fn(op: str):
    """The ``flash`` callable: picks the generation per call from what the inputs are."""

    chosen = {}  # the choice per call signature: no Python work beyond a lookup on the hot path

    def call(**inputs):
        q = inputs["q"]
        key = (q.dtype, q.shape[-1], q.device, _call_block_size(op, inputs))
        if key not in chosen:
            chosen[key] = choose(op, *key)
        kernel, reason = chosen[key]
        if kernel is None:
            raise KbenchError(f"flash cannot run {op} here: {reason}.")
        return getattr(kernel, op.removeprefix("attention_"))(**inputs)

    call.__name__ = f"flash_{op}"
    return call


def _best_version() -> str | None:
    installed = [version for version in (kernel.version() for kernel in reversed(KERNELS)) if version]
    return "best of: " + ", ".join(installed) if installed else None


@kbench.hookimpl
def register_backends(register):
    for op in ("attention_prefill", "attention_decode"):
        for kernel in KERNELS:
            register(op, kernel.backend, getattr(kernel, op.removeprefix("attention_")),
                     supports=supports_fn(kernel), available=kernel.unavailable, version=kernel.version(),
                     description=f"FlashAttention {kernel.label[-1]} ({kernel.module})")
        register(op, "flash", best_fn(op), supports=_best_supports, available=_best_available,
                 version=_best_version(), description="the best FlashAttention generation present for each call",
                 runs_as=_best_runs_as)
