"""Backends built from torch itself.

- ``torch``: torch's native fused ops where they exist (``F.rms_norm``).
- ``sdpa``, ``sdpa-flash``, ``sdpa-cudnn``, ``sdpa-efficient``, ``sdpa-math``: attention
  through ``F.scaled_dot_product_attention``, the latter four pinned to one SDPA backend.
- ``nccl``, ``symm-one-shot``, ``symm-two-shot``: ``all_reduce`` through torch.distributed.
- ``compile``: ``torch.compile`` of the references (elementwise, reduction and sampling ops).
"""

from __future__ import annotations

import kbench
from kbench_torch import compiled, distributed, native, sdpa


@kbench.hookimpl
def register_backends(register):
    native.register_all(register)
    compiled.register_all(register)
    sdpa.register_all(register)
    distributed.register_all(register)


@kbench.hookimpl
def record_details():
    configs = compiled.inductor_configs()
    return {"inductor_configs": configs} if configs else None
