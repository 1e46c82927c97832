"""What every kernel module shares: interpreter detection, autotuned launches, chosen configs.

``TunedKernel`` wraps a ``@triton.jit`` kernel: on a GPU it launches through ``triton.autotune``
(keyed on the shape arguments named in ``key``), each config benchmarked for
``TUNING_WARMUP_MS`` + ``TUNING_REP_MS`` (triton's default is 25 + 100 ms: at a model's dozen
shapes and a few dozen configs per kernel, that alone is minutes of a ``kbench tune``); under
``TRITON_INTERPRET=1`` it launches the plain kernel with one small fixed config, since
benchmarking configs on the CPU interpreter would only cost time. Kernels whose config is a
heuristic of the shape record it with ``launch_config``. ``chosen_configs()`` returns both, so a
run record can store which config produced each timing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
import triton
import triton.language as tl
import triton.testing

# kernel name -> shape key -> config description; filled as kernels launch.
_HEURISTIC_CONFIGS: dict[str, dict[tuple, dict]] = {}
_TUNED_KERNELS: dict[str, TunedKernel] = {}
# Per config of an autotuned launch (triton's do_bench, each call after an L2 flush). Read at
# each tuning, so a script can set them before a kernel's first call.
TUNING_WARMUP_MS = 5.0
TUNING_REP_MS = 25.0


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def describe(config: triton.Config) -> str:
    parts = [f"{name}={value}" for name, value in config.kwargs.items()]
    parts += [f"num_warps={config.num_warps}", f"num_stages={config.num_stages}"]
    return " ".join(parts)


def launch_config(kernel: str, key: Sequence, **config) -> None:
    """Record the heuristic config ``kernel`` launches with for shape ``key`` (on every call, so
    only stored here: ``chosen_configs`` formats it)."""
    _HEURISTIC_CONFIGS.setdefault(kernel, {})[tuple(key)] = config


def _key_text(key: Sequence) -> str:
    return ",".join(str(part).removeprefix("torch.") for part in key)


def _tuning_bench(kernel_call: Callable[[], object], quantiles) -> list[float]:
    return triton.testing.do_bench(kernel_call, warmup=TUNING_WARMUP_MS, rep=TUNING_REP_MS, quantiles=quantiles)


class TunedKernel:
    """An autotuned launch on a GPU, a fixed-config launch on the interpreter.

    ``kernel[grid](*args, **kwargs)`` as with a jit kernel; ``grid`` is a function of the
    config's meta-parameters.
    """

    def __init__(self, name: str, kernel, configs: list[triton.Config], key: list[str],
                 interpreter_config: triton.Config, prune: Callable | None = None):
        self.name = name
        self.kernel = kernel
        prune_by = {"early_config_prune": prune} if prune else {}
        self.tuner = triton.autotune(configs=configs, key=key, prune_configs_by=prune_by or None,
                                     do_bench=_tuning_bench)(kernel)
        self.interpreter_config = interpreter_config
        _TUNED_KERNELS[name] = self

    def __getitem__(self, grid: Callable):
        if not interpreting():
            return self.tuner[grid]
        config = self.interpreter_config
        meta = dict(config.kwargs)

        def launch(*args, **kwargs):
            return self.kernel[grid(meta | kwargs)](*args, **kwargs, **meta)

        return launch

    def chosen(self) -> dict[str, str]:
        cache = getattr(self.tuner, "cache", {}) or {}
        return {_key_text(key): describe(config) for key, config in cache.items()}


def chosen_configs() -> dict[str, dict[str, str]]:
    """kernel name -> shape key -> the config it ran with (autotuned or heuristic)."""
    configs = {name: {_key_text(key): " ".join(f"{k}={v}" for k, v in config.items()) for key, config in by_key.items()}
               for name, by_key in _HEURISTIC_CONFIGS.items()}
    for name, tuned in _TUNED_KERNELS.items():
        chosen = tuned.chosen()
        if chosen:
            configs.setdefault(name, {}).update(chosen)
    return configs


@triton.jit
def dot(a, b, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b with float32 accumulation; IEEE for float32 inputs, UPCAST on the interpreter for
    bfloat16 (whose tl.dot there returns garbage in triton 3.9)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


# Counters for kernels whose last program of a group finishes the group's work (the split-K
# reduction of the skinny GEMM). Every launch leaves them at zero, so one zeroed buffer per
# device and kernel serves every call and every CUDA-graph replay (kernels of one stream never
# overlap, so two calls cannot share a counter at the same time).
_SEMAPHORES: dict[tuple[str, torch.device], torch.Tensor] = {}
MIN_SEMAPHORES = 4096


def semaphores(name: str, count: int, device: torch.device) -> torch.Tensor:
    """A zeroed int32 buffer of at least ``count`` counters for kernel ``name`` on ``device``.

    A kernel that takes it must reset every counter it increments before it returns.
    """
    key = (name, torch.device(device))
    buffer = _SEMAPHORES.get(key)
    if buffer is None or buffer.numel() < count:
        buffer = torch.zeros(max(count, MIN_SEMAPHORES), dtype=torch.int32, device=device)
        _SEMAPHORES[key] = buffer
    return buffer


def dot_flags(dtype: torch.dtype) -> dict:
    """The IEEE / UPCAST constexprs of ``dot`` for inputs of ``dtype``."""
    return {"IEEE": dtype == torch.float32, "UPCAST": dtype == torch.bfloat16 and interpreting()}
