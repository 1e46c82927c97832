"""The ranks of a multi-process run, on torch.distributed: NCCL on GPUs, gloo on CPUs.

``launch(fn, ranks, device, *args)`` runs ``fn(rank, ranks, *args)`` on every rank and returns
rank 0's result. Under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` set) this process is one rank
and the group comes from the environment::

    torchrun --nproc-per-node 4 -m kbench.cli run model_specs/llama2-70b.yaml --tp 4

otherwise ``launch`` starts the ranks itself through ``torch.multiprocessing`` (forked on a CPU,
where it is cheap and nothing holds a device; spawned on GPUs, one per rank) and joins them.
A rank that raises ``KbenchError`` ends the run with that error (exit 2); the others stop.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch

from kbench.errors import KbenchError


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def group_backend(device: str) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def check_ranks_fit(ranks: int, device: str) -> None:
    """KbenchError when ``ranks`` ranks cannot each have their own device here."""
    if torch.device(device).type == "cuda":
        count = torch.cuda.device_count()
        if ranks > count:
            raise KbenchError(f"--tp {ranks} needs {ranks} GPUs, one per rank; this machine has {count}.",
                              f"Use --tp {max(1, count)} or fewer, or run on a machine with {ranks} GPUs.")
    if under_torchrun() and int(os.environ["WORLD_SIZE"]) != ranks:
        raise KbenchError(f"--tp {ranks}, but torchrun started {os.environ['WORLD_SIZE']} ranks.",
                          f"Run torchrun with --nproc-per-node {ranks}, or pass --tp {os.environ['WORLD_SIZE']}.")


def launch(fn: Callable[..., Any], ranks: int, device: str, *args: Any) -> Any:
    """``fn(rank, ranks, *args)`` on every rank; rank 0's return value (see the module docstring)."""
    check_ranks_fit(ranks, device)
    if under_torchrun():
        rank = int(os.environ["RANK"])
        init_group(rank, ranks, device, "env://")
        try:
            result = fn(rank, ranks, *args)
            shared = [result]
            torch.distributed.broadcast_object_list(shared, src=0)
            return shared[0]
        finally:
            torch.distributed.destroy_process_group()
    import torch.multiprocessing as mp

    method = "spawn" if torch.device(device).type == "cuda" else "fork"
    outcome = mp.get_context(method).SimpleQueue()
    address = f"tcp://127.0.0.1:{_free_port()}"
    try:
        mp.start_processes(_rank_main, args=(ranks, device, address, outcome, fn, args), nprocs=ranks,
                           start_method=method)
    except mp.ProcessRaisedException:
        failure = _first_error(outcome)
        if failure is not None:
            raise failure from None
        raise
    while not outcome.empty():
        kind, value = outcome.get()
        if kind == "result":
            return value
    return None


def init_group(rank: int, ranks: int, device: str, address: str) -> None:
    import torch.distributed as dist

    if torch.device(device).type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
    else:  # the ranks share the host's cores: more threads than cores only contend
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks))
    dist.init_process_group(group_backend(device), init_method=address, rank=rank, world_size=ranks)


def _rank_main(rank: int, ranks: int, device: str, address: str, outcome, fn, args) -> None:
    init_group(rank, ranks, device, address)
    try:
        result = fn(rank, ranks, *args)
        if rank == 0:
            outcome.put(("result", result))
    except KbenchError as error:
        outcome.put(("error", (error.message, error.fix)))
        raise
    finally:
        torch.distributed.destroy_process_group()


def _first_error(outcome) -> KbenchError | None:
    while not outcome.empty():
        kind, value = outcome.get()
        if kind == "error":
            return KbenchError(*value)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
