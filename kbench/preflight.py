"""What a command needs from outside, checked before the first kernel runs so that a run never
fails after its work: a folder it can write, and shapes whose bytes (the op's byte model, or
the model's weights and KV cache) fit the device's free memory. Each check raises KbenchError."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from kbench.errors import KbenchError


def check_out_dir(path: str | os.PathLike, option: str = "--out") -> None:
    """``path`` is a folder that can be written, or one that can be created (nothing is created)."""
    problem = folder_problem(Path(path))
    if problem:
        raise KbenchError(f"{option} {str(path)!r} {problem}.", f"Give {option} a folder (it is created if missing).")


def check_out_file(path: str | os.PathLike, option: str) -> None:
    """``path`` is not a folder, and its folder can be written or created (nothing is created)."""
    path = Path(path)
    problem = "is a folder" if path.is_dir() else folder_problem(path.parent)
    if problem is None and path.exists() and not os.access(path, os.W_OK):
        problem = "cannot be written"
    elif problem and not path.is_dir():
        problem = f"cannot be written: its folder {str(path.parent)!r} {problem}"
    if problem:
        raise KbenchError(f"{option} {str(path)!r} {problem}.",
                          f"Give {option} a file in a folder you can write to (it is created if missing).")


def folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used (or created) as a folder to write in, or None."""
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return "is a file, not a folder" if existing == path else f"lies under {str(existing)!r}, which is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return "cannot be written" if existing == path else f"cannot be created: {str(existing)!r} is not writable"
    return None


def write_text_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (its folder created); KbenchError if the system refuses."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as error:
        raise KbenchError(f"{str(path)!r} cannot be written ({error.strerror or error}).",
                          "Give a path in a folder you can write to.") from None


def available_memory_bytes(device) -> int | None:
    """Free memory of a CUDA device, or the host's available RAM for a CPU; None if unknown."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] if torch.cuda.is_available() else None
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(what: str, needed_bytes: float, device, fix: str) -> None:
    """KbenchError when ``needed_bytes`` (a lower bound) exceed the device's free memory."""
    import torch

    free = available_memory_bytes(device)
    if free is not None and needed_bytes > free:
        where = "free on the GPU" if torch.device(device).type == "cuda" else "of RAM available"
        raise KbenchError(f"{what} needs at least {_gib(needed_bytes)}; {_gib(free)} {where}.", fix)


def check_op_cases_fit(op, cases: Iterable, dtype, device) -> None:
    """Every case's inputs and outputs (the op's byte model) fit the device's free memory."""
    case = max(cases, key=lambda c: op.bytes(c, dtype), default=None)
    if case is not None:
        check_fits(f"{op.name} at {case.label}", op.bytes(case, dtype), device,
                   "Use smaller dimensions (or another device).")


def model_bytes(spec) -> tuple[float, float]:
    """(weights, largest KV cache) bytes of the spec's model and workload."""
    from kbench.model.arithmetic import kv_bytes_per_token
    from kbench.model.tensor_parallel import model_weight_bytes

    workload = spec.workload
    tokens = max(workload.batch) * (max(workload.prompt_len) + workload.decode_steps)
    return model_weight_bytes(spec.model, spec.dtype), kv_bytes_per_token(spec.model, spec.dtype) * tokens


def check_model_fits(spec) -> None:
    """The model's weights plus the KV cache of the largest workload point fit the device."""
    weights, kv_cache = model_bytes(spec)
    m, workload = spec.model, spec.workload
    check_fits(f"{spec.path}: the model ({m.layers} layers, hidden {m.hidden}, vocab {m.vocab}) with the KV cache "
               f"of batch {max(workload.batch)} x {max(workload.prompt_len) + workload.decode_steps} tokens",
               weights + kv_cache, spec.device,
               "Use fewer layers (--layers), smaller batches or prompts, a 16-bit dtype, or --skip-e2e.")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the device or the host running out of memory (torch's OOM, a failed
    host allocation): shapes too large for the machine, not a bug."""
    import torch

    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(error, RuntimeError) and ("can't allocate memory" in str(error) or "out of memory" in str(error)))


def out_of_memory_error(error: BaseException) -> KbenchError:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return KbenchError(f"Ran out of memory: {first_line}",
                       "Use smaller shapes (batch, prompt lengths, --DIM values), fewer layers, or a larger device.")


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB ({nbytes:.3g} bytes)"
