"""Guards around a kernel under test: what it wrote, what it returned, and whether its
timed calls computed what a fresh call computes.

A wrong or cheating kernel can pass one comparison on one input: it may write an input the
contract keeps read-only, return a view of an input, keep an output keyed by the input's
buffer or by a few of its values, skip work once a buffer repeats, or change its path after
many calls. These functions are what ``kbench.bench.check`` and ``kbench.bench.sweep`` use
in every command (``kbench run``, ``kbench bench``, the pytest plugin, the benchmark fixture):

- ``written_inputs``: inputs a call changed that ``Op.inplace`` does not allow;
- ``aliased_outputs``: outputs sharing memory with an input the op may not write;
- ``refill_in_place``: new values into the same buffers, keeping each float tensor's first
  element (so a cache keyed by buffer, shape or leading value returns a stale output);
- ``check_after_timing``: after the timed repetitions, the last timed output against the
  reference, then a refill and one more call the way the timed calls were made.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from kbench.ops.base import Check, Op

# Seed offset of the values a refill writes: far from any seed a sweep uses for inputs.
REFILL_SEED = 7919


def _tensors(value: Any) -> list[torch.Tensor]:
    items = value if isinstance(value, (tuple, list)) else (value,)
    return [item for item in items if isinstance(item, torch.Tensor)]


def written_inputs(op: Op, pristine: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """Names of tensor inputs whose values differ from ``pristine`` although ``op.inplace``
    does not allow writing them."""
    return [name for name, value in pristine.items()
            if isinstance(value, torch.Tensor) and name not in op.inplace
            and not torch.equal(value, given[name])]


def aliased_outputs(op: Op, out: Any, given: dict[str, Any]) -> list[str]:
    """'output 0 is input x': outputs that share storage with a read-only input (the next
    write to the input, a layer's residual, would change the output)."""
    found = []
    for index, tensor in enumerate(_tensors(out)):
        for name, value in given.items():
            if (isinstance(value, torch.Tensor) and name not in op.inplace and value.numel() and tensor.numel()
                    and tensor.untyped_storage().data_ptr() == value.untyped_storage().data_ptr()):
                found.append(f"output {index} shares memory with input {name}")
    return found


def integrity_problems(op: Op, pristine: dict[str, Any], given: dict[str, Any], out: Any) -> list[str]:
    """What a call broke besides its values: inputs written against the contract, aliased outputs."""
    problems = []
    written = written_inputs(op, pristine, given)
    if written:
        allowed = ", ".join(op.inplace) or "none"
        problems.append(f"wrote input(s) {', '.join(written)} in place (the {op.name} contract allows: {allowed})")
    return problems + aliased_outputs(op, out, given)


def fresh_values(op: Op, case, dtype: torch.dtype, device, seed: int) -> dict[str, Any]:
    """Inputs of the same case from another seed, for ``refill_in_place``."""
    return op.make_inputs(case, dtype, torch.device(device), seed + REFILL_SEED)


def refill_in_place(targets: list[dict[str, Any]], fresh: dict[str, Any]) -> None:
    """Copy ``fresh``'s floating-point tensors into every set of ``targets`` (same buffers),
    keeping each tensor's first element; integer inputs (positions, lengths, tables) keep
    their values, as they carry the structure of the case."""
    for name, value in fresh.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            continue
        for target in targets:
            buffer = target.get(name)
            if isinstance(buffer, torch.Tensor) and buffer.shape == value.shape and buffer.numel():
                first = (0,) * buffer.ndim
                kept = buffer[first].clone()
                buffer.copy_(value)
                buffer[first] = kept


def clone_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the tensors in ``inputs`` (in-place ops must not see each other's writes)."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def reference_output(op: Op, inputs: dict[str, Any]) -> Any:
    return op.reference(**clone_inputs(inputs))


def check_after_timing(op: Op, reference: Any, last_output: Any, run_once, sets: list[dict[str, Any]],
                       fresh: dict[str, Any], tolerance) -> Check | None:
    """None when the timed path holds up, else a failing ``Check`` saying what was caught.

    ``last_output`` (what the last timed call returned, None if unknown) must match
    ``reference``; then every input set is refilled in place, ``run_once()`` calls the way
    the timing did, and its output must match the reference of the refilled values."""
    if last_output is not None:
        check = op.compare(last_output, reference, tolerance)
        if not check.ok:
            return dataclasses.replace(check, detail="the timed calls returned a different output than the checked call "
                                                     f"(path changes once called repeatedly, or deferred work): {check.detail}")
    refill_in_place(sets, fresh)
    expected = reference_output(op, sets[0])
    check = op.compare(run_once(), expected, tolerance)
    if not check.ok:
        return dataclasses.replace(check, detail="stale output after timing: on inputs refilled in place with new values the "
                                                 f"timed path returned a cached, skipped or different result: {check.detail}")
    return None
