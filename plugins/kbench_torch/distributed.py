"""``all_reduce`` backends through torch.distributed.

- ``nccl``: ``torch.distributed.all_reduce`` on a process group whose backend is NCCL.
- ``symm-one-shot`` / ``symm-two-shot``: torch's symmetric-memory all-reduces
  (``torch.ops.symm_mem.one_shot_all_reduce`` / ``two_shot_all_reduce_``). Every rank reads
  its peers' buffers over NVLink directly: one-shot reads all of them (lowest latency at the
  small tensors of a decode step), two-shot reduces a slice per rank and then gathers
  (less traffic at large ones). The input is copied into a symmetric buffer kept per
  (shape, dtype), as a serving engine does with its activations.
"""

from __future__ import annotations

import torch

from kbench.ops.comm import check_ranks, world


def _group_backend() -> str | None:
    import torch.distributed as dist

    return dist.get_backend() if dist.is_available() and dist.is_initialized() else None


def nccl_available() -> str | None:
    import torch.distributed as dist

    if not torch.cuda.is_available():
        return "no CUDA device"
    if not dist.is_available() or not dist.is_nccl_available():
        return f"torch {torch.__version__} was built without NCCL"
    return None


def nccl_supports(case, dtype, device) -> str | None:
    if device.type != "cuda":
        return "NCCL all-reduces CUDA tensors"
    if _group_backend() not in (None, "nccl") and world()[1] > 1:
        return f"the process group runs {_group_backend()}, not NCCL"
    return check_ranks(case)


def nccl_all_reduce(x: torch.Tensor, inplace: bool) -> torch.Tensor:
    import torch.distributed as dist

    out = x if inplace else x.clone()
    if world()[1] > 1:
        dist.all_reduce(out)
    return out


def symm_available() -> str | None:
    reason = nccl_available()
    if reason:
        return reason
    if not hasattr(torch.ops, "symm_mem") or not hasattr(torch.ops.symm_mem, "one_shot_all_reduce"):
        return f"torch {torch.__version__} has no symmetric-memory all-reduce"
    return None


def symm_supports(case, dtype, device) -> str | None:
    if device.type != "cuda":
        return "symmetric memory maps CUDA buffers of peer GPUs"
    if world()[1] > 1 and _group_backend() != "nccl":
        return f"symmetric memory rendezvous over a {_group_backend()} group; it needs NCCL"
    if world()[1] > 1 and not _peers_connected():
        return "the GPUs of this group cannot map each other's memory (no NVLink/P2P between them)"
    return check_ranks(case)


def _peers_connected() -> bool:
    device = torch.cuda.current_device()
    return all(torch.cuda.can_device_access_peer(device, other)
               for other in range(torch.cuda.device_count()) if other != device)


_buffers: dict[tuple, torch.Tensor] = {}


def _symmetric_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A buffer of ``shape`` in symmetric memory, allocated and rendezvoused once per key
    (a collective: every rank asks for the same key at the same call)."""
    import torch.distributed as dist
    import torch.distributed._symmetric_memory as symm_mem

    key = (shape, dtype, device)
    if key not in _buffers:
        buffer = symm_mem.empty(shape, dtype=dtype, device=device)
        symm_mem.rendezvous(buffer, dist.group.WORLD.group_name)
        _buffers[key] = buffer
    return _buffers[key]


def _symm_all_reduce(x: torch.Tensor, inplace: bool, two_shot: bool) -> torch.Tensor:
    import torch.distributed as dist

    if world()[1] == 1:
        return x if inplace else x.clone()
    buffer = _symmetric_buffer(tuple(x.shape), x.dtype, x.device)
    buffer.copy_(x)
    group = dist.group.WORLD.group_name
    if two_shot:
        out = torch.ops.symm_mem.two_shot_all_reduce_(buffer, "sum", group)
    else:
        out = torch.ops.symm_mem.one_shot_all_reduce(buffer, "sum", group)
    if inplace:
        return x.copy_(out)
    return out.clone() if out.data_ptr() == buffer.data_ptr() else out


def symm_one_shot(x: torch.Tensor, inplace: bool) -> torch.Tensor:
    return _symm_all_reduce(x, inplace, two_shot=False)


def symm_two_shot(x: torch.Tensor, inplace: bool) -> torch.Tensor:
    return _symm_all_reduce(x, inplace, two_shot=True)


def register_all(register):
    version = torch.__version__
    register("all_reduce", "nccl", nccl_all_reduce, supports=nccl_supports, available=nccl_available,
             version=version, description="torch.distributed.all_reduce on an NCCL group")
    register("all_reduce", "symm-one-shot", symm_one_shot, supports=symm_supports, available=symm_available,
             version=version, description="torch symmetric memory, one-shot all-reduce")
    register("all_reduce", "symm-two-shot", symm_two_shot, supports=symm_supports, available=symm_available,
             version=version, description="torch symmetric memory, two-shot all-reduce")
