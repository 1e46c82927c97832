"""The conformance suite: one backend, every op it registers, every test case and dtype. A
backend conforms when its output passes ``Op.compare``, also on the op's hard inputs; it writes
no input outside ``Op.inplace`` (scribbling over ``x`` corrupts the next layer's residual
unseen) nor returns a read-only input's memory; and ``REPEATED_CALLS`` calls on the same buffers,
then one more on inputs refilled in place, still agree (no cached output, no path that changes
once called repeatedly; ``kbench.bench.integrity``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kbench.bench.check import check_implementation, clone_inputs, reference_output
from kbench.bench.integrity import check_after_timing, fresh_values
from kbench.errors import KbenchError, unknown_name
from kbench.ops.base import Case, Check, dtype_name
from kbench.plugins import get_registry
from kbench.registry import Registry


class ConformanceFailure(AssertionError):
    """An implementation broke its op's contract; the message names op, case, dtype and figures."""


@dataclass(frozen=True)
class ConformanceCase:

    op: str
    backend: str
    case: Case
    dtype: torch.dtype

    @property
    def id(self) -> str:
        """'rmsnorm-tokens=37,hidden=320,eps=1e-06-float32': a pytest id (``ids=str`` gives it)."""
        return f"{self.op}-{self.case.label.replace(' ', ',')}-{dtype_name(self.dtype)}"

    @property
    def description(self) -> str:
        """'rmsnorm/mybackend tokens=37 hidden=320 eps=1e-06 float32': for messages."""
        return f"{self.op}/{self.backend} {self.case.label} {dtype_name(self.dtype)}"

    def __str__(self) -> str:
        return self.id


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def with_plugin_errors(error: KbenchError, registry: Registry) -> KbenchError:
    """``error`` with the plugins that failed to load (and a KBENCH_PLUGINS limit) named in its fix:
    the backend may be theirs."""
    why = registry.why_backends_may_be_missing()
    if not why or why in (error.fix or ""):
        return error
    return KbenchError(error.message, f"{error.fix}{why}" if error.fix else why.strip())


def backend_ops(registry: Registry, backend: str) -> list[str]:
    """The ops ``backend`` registers; KbenchError with the closest match if it registers none."""
    ops = sorted(op for (op, name) in registry.implementations if name == backend)
    if not ops:
        raise with_plugin_errors(unknown_name("backend", backend, registry.backends()), registry)
    return ops


def conformance_cases(backend: str, registry: Registry | None = None) -> list[ConformanceCase]:
    """Every (op, test case, dtype) of the suite for ``backend``, in a stable order."""
    registry = registry or get_registry()
    items = []
    for op_name in backend_ops(registry, backend):
        op = registry.op(op_name)
        for case in op.test_cases:
            for dtype in op.dtypes:
                items.append(ConformanceCase(op_name, backend, case, dtype))
    return items


def skip_reason(registry: Registry, item: ConformanceCase, device: str) -> str | None:
    """Why ``item`` does not apply here (backend unavailable, case unsupported), or None."""
    return registry.get(item.op, item.backend).reason(item.case, item.dtype, device)


REPEATED_CALLS = 50


def repeated_calls_problem(registry: Registry, item: ConformanceCase, device: str, seed: int = 0) -> Check | None:
    """None when repeated calls and a call on refilled inputs agree with the reference."""
    op = registry.op(item.op)
    impl = registry.get(item.op, item.backend)
    inputs = op.make_inputs(item.case, item.dtype, torch.device(device), seed)
    work = clone_inputs(inputs)
    out = None
    for _ in range(REPEATED_CALLS):
        for name in op.inplace:
            if isinstance(work.get(name), torch.Tensor):
                work[name].copy_(inputs[name])
        out = impl(**work)

    def once():
        result = impl(**work)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        return result
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    fresh = fresh_values(op, item.case, item.dtype, device, seed)
    return check_after_timing(op, reference_output(op, inputs), out, once, [work], fresh, op.tolerance(item.dtype))


def run_conformance(registry: Registry, item: ConformanceCase, device: str, seed: int = 0) -> Check:
    """The passing ``Check`` of ``item``, else ConformanceFailure naming op, case, dtype, figures."""
    check = check_implementation(registry, item.op, item.backend, item.case, item.dtype, device, seed=seed)
    if not check.ok:
        raise ConformanceFailure(f"{item.description} on {device}: {check.summary()}")
    repeated = repeated_calls_problem(registry, item, device, seed)
    if repeated is not None:
        raise ConformanceFailure(f"{item.description} on {device}: {repeated.summary()}")
    return check  # inputs written against the contract failed the check (kbench.bench.integrity)


def assert_conforms(item: ConformanceCase, registry: Registry | None = None, device: str | None = None) -> Check:
    """In a pytest test: skip ``item`` with its reason if it does not apply here, else check it."""
    import pytest

    registry = registry or get_registry()
    device = device or default_device()
    reason = skip_reason(registry, item, device)
    if reason:
        pytest.skip(reason)
    return run_conformance(registry, item, device)
