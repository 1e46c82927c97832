"""Backends built from torch itself.

- ``torch``: torch's native fused ops where they exist (``F.rms_norm``).
- ``sdpa``, ``sdpa-flash``, ``sdpa-cudnn``, ``sdpa-efficient``, ``sdpa-math``: attention
  through ``F.scaled_dot_product_attention``, the latter four pinned to one SDPA backend.
- ``compile``: ``torch.compile`` of the references (elementwise, reduction and sampling ops).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import kbench


def rmsnorm_native(x, weight, eps):
    """F.rms_norm upcasts internally; the weight product is done in x.dtype as in HF."""
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


@kbench.hookimpl
def register_backends(register):
    version = torch.__version__
    register("rmsnorm", "torch", rmsnorm_native, version=version, description="torch.nn.functional.rms_norm")
