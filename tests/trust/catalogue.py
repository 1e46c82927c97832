"""A catalogue of wrong and cheating RMSNorm backends, as a plugin module's source.

Each backend is one known way to fool a kernel benchmark; kbench must report each FAIL or
SUSPECT with a message naming what it caught, in ``kbench bench``, ``kbench run`` and
``pytest --kbench-backend``. ``CAUGHT`` maps a backend to words its message must contain.
"""

CATALOGUE = '''
import threading
import time

import kbench
import torch


def honest(x, weight, eps):
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def eps_ignored(x, weight, eps):
    x32 = x.float()
    return weight * (x32 / x32.pow(2).mean(-1, keepdim=True).sqrt()).to(x.dtype)


def weight_ignored(x, weight, eps):
    return honest(x, torch.ones_like(weight), eps)


def acc16(x, weight, eps):
    # the sum of squares in the input's own dtype: overflows float16 on large rows
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def low_precision(x, weight, eps):
    # a float32 op computed through bfloat16
    return honest(x.to(torch.bfloat16), weight.to(torch.bfloat16), eps).to(x.dtype)


def writes_input(x, weight, eps):
    out = honest(x, weight, eps)
    x.mul_(0.5)  # scratch space: the caller's x is not the kernel's to write
    return out


def aliases_input(x, weight, eps):
    x.copy_(honest(x, weight, eps))
    return x


_by_identity = {}


def cached_by_identity(x, weight, eps):
    key = (x.data_ptr(), tuple(x.shape), weight.data_ptr())
    if key not in _by_identity:
        _by_identity[key] = honest(x, weight, eps)
    return _by_identity[key]


_last = {}


def skips_repeated(x, weight, eps):
    key = (float(x.reshape(-1)[0]), tuple(x.shape))
    if _last.get("key") != key:
        _last["key"], _last["out"] = key, honest(x, weight, eps)
    return _last["out"]


def deferred(x, weight, eps):
    out = torch.zeros_like(x)

    def work():
        time.sleep(0.002)
        out.copy_(honest(x, weight, eps))
    threading.Thread(target=work, daemon=True).start()
    return out


_calls = [0]


def degrades(x, weight, eps):
    _calls[0] += 1
    if _calls[0] > 40:  # a different, cheaper path once called repeatedly
        return (x.float() * 1.0).to(x.dtype) * weight
    return honest(x, weight, eps)


BACKENDS = {
    "eps-ignored": eps_ignored, "weight-ignored": weight_ignored, "acc16": acc16,
    "low-precision": low_precision, "writes-input": writes_input, "aliases-input": aliases_input,
    "cached-by-identity": cached_by_identity, "skips-repeated": skips_repeated, "deferred": deferred,
    "degrades": degrades,
}


@kbench.hookimpl
def register_backends(register):
    for name, fn in BACKENDS.items():
        register("rmsnorm", name, fn, cuda_graphs=False)
'''

# backend -> (dtype it is wrong at, words its FAIL/SUSPECT message names)
CAUGHT = {
    "eps-ignored": ("float32", "rows"),
    "weight-ignored": ("float32", "out of tolerance"),
    "acc16": ("float16", "large-magnitude rows"),
    "low-precision": ("float32", "out of tolerance"),
    "writes-input": ("float32", "wrote input(s) x"),
    "aliases-input": ("float32", "shares memory with input x"),
    "cached-by-identity": ("float32", "stale output after timing"),
    "skips-repeated": ("float32", "stale output after timing"),
    "deferred": ("float32", "out of tolerance"),
    "degrades": ("float32", "timed calls returned a different output"),
}
