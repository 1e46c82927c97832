"""Backends for the evidence that ``kbench compare`` knows noise (benchmarks/trust-h100.yaml).

``aa`` and ``aa2`` call the ``triton`` backend unchanged: two runs of them are A/A pairs, and
no row may be called slower. ``slow5`` calls it and then copies a scratch buffer sized to 5%
of the op's own bytes (read + write), about 5% more work; it must be called slower.
"""

import torch

import kbench

OPS = ("rmsnorm", "rope", "attention_decode")
EXTRA_WORK = 0.05
_scratch: dict = {}


def _triton(op):
    from kbench.plugins import get_registry  # at call time: the registry is built by then

    return get_registry().get(op, "triton")


def _same(op):
    def call(**inputs):
        return _triton(op)(**inputs)
    return call


def _slower(op):
    def call(**inputs):
        out = _triton(op)(**inputs)
        nbytes = sum(v.numel() * v.element_size() for v in inputs.values() if isinstance(v, torch.Tensor))
        device = next(v for v in inputs.values() if isinstance(v, torch.Tensor)).device
        key = (str(device), nbytes)
        if key not in _scratch:
            size = max(1, int(EXTRA_WORK * nbytes / 2))  # read + write
            _scratch[key] = (torch.empty(size, dtype=torch.int8, device=key[0]),
                             torch.empty(size, dtype=torch.int8, device=key[0]))
        src, dst = _scratch[key]
        dst.copy_(src)
        return out
    return call


@kbench.hookimpl
def register_backends(register):
    for op in OPS:
        supports = lambda case, dtype, device, op=op: _triton(op).reason(case, dtype, device)  # noqa: E731
        register(op, "aa", _same(op), supports=supports, description="triton, unchanged")
        register(op, "aa2", _same(op), supports=supports, description="triton, unchanged (a second copy)")
        register(op, "slow5", _slower(op), supports=supports, description="triton plus 5% more bytes moved")
