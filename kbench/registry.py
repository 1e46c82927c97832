"""Ops -> backends -> implementations, each with the reason it cannot run here, if any."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from kbench.errors import KbenchError, unknown_name
from kbench.ops.base import Case, Op, dtype_name

REFERENCE = "reference"


@dataclass(eq=False)
class Implementation:

    op: str
    backend: str
    fn: Callable[..., Any]
    plugin: str
    supports: Callable[[Case, torch.dtype, torch.device], str | None] | None = None
    available: Callable[[], str | None] | None = None
    cuda_graphs: bool = True
    version: str | None = None
    description: str = ""
    # why the first call at each new shape is slow (a compiler per shape), or None: kbench tune,
    # which meets every shape of a workload, leaves such a backend out unless asked for it
    slow_setup: str | None = None
    # runs_as(case, dtype, device): the other backend of the op whose kernel this one runs at the
    # case (a backend that picks among others), or None: kbench tune times that one in its place
    runs_as: Callable[[Case, torch.dtype, torch.device], str | None] | None = None
    _unavailable: Any = field(default=..., repr=False)

    def __call__(self, **inputs: Any) -> Any:
        return self.fn(**inputs)

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run in this process at all (checked once), or None."""
        if self._unavailable is ...:
            try:
                self._unavailable = self.available() if self.available else None
            except Exception as error:  # an availability probe must never crash a run
                self._unavailable = f"availability check raised {type(error).__name__}: {error}"
        return self._unavailable

    def reason(self, case: Case, dtype: torch.dtype, device: torch.device | str) -> str | None:
        """Why this implementation cannot run ``case`` in ``dtype`` on ``device``, or None."""
        reason = self.unavailable_reason()
        if reason:
            return reason
        if self.supports is None:
            return None
        try:
            return self.supports(case, dtype, torch.device(device))
        except Exception as error:
            return f"supports() raised {type(error).__name__}: {error}"


class Registry:

    def __init__(self) -> None:
        self.ops: dict[str, Op] = {}
        self.implementations: dict[tuple[str, str], Implementation] = {}
        self.plugin_errors: dict[str, str] = {}
        self.plugins: dict[str, str | None] = {}
        self.detail_hooks: dict[str, Callable[[], Any]] = {}
        self.plugin_filter: str | None = None  # KBENCH_PLUGINS as it was when the plugins loaded

    # -- registration (called by kbench.plugins while loading) --
    def add_op(self, op: Op, plugin: str) -> None:
        if op.name in self.ops:
            raise KbenchError(f"Plugin {plugin!r} declares op {op.name!r}, which already exists.")
        self.ops[op.name] = op
        self.implementations[(op.name, REFERENCE)] = Implementation(
            op.name, REFERENCE, op.reference, plugin, cuda_graphs=op.reference_cuda_graphs,
            description="plain PyTorch, HF LLaMA numerics",
        )

    def add_implementation(self, impl: Implementation) -> None:
        if impl.op not in self.ops:
            raise KbenchError(
                f"Plugin {impl.plugin!r} registers backend {impl.backend!r} for unknown op {impl.op!r}.",
                f"Known ops: {', '.join(sorted(self.ops))}.",
            )
        key = (impl.op, impl.backend)
        if key in self.implementations:
            other = self.implementations[key].plugin
            raise KbenchError(
                f"Plugin {impl.plugin!r} registers {impl.op}/{impl.backend}, already registered by {other!r}."
            )
        self.implementations[key] = impl

    def plugin_details(self) -> dict[str, Any]:
        """plugin name -> what its ``record_details`` hook returned (errors as a string)."""
        details = {}
        for name, hook in self.detail_hooks.items():
            try:
                value = hook()
            except Exception as error:  # a reporting hook must never lose a run
                value = f"record_details raised {type(error).__name__}: {error}"
            if value is not None:
                details[name] = value
        return details

    # -- lookup --
    def op(self, name: str) -> Op:
        if name not in self.ops:
            raise unknown_name("op", name, self.ops)
        return self.ops[name]

    def ops_of_family(self, family: str) -> list[Op]:
        return [op for op in self.ops.values() if op.family == family]

    @property
    def families(self) -> list[str]:
        """The op families, in the order their first op was registered (the core's first)."""
        return list(dict.fromkeys(op.family for op in self.ops.values()))

    def backends(self, op: str | None = None) -> list[str]:
        """Backend names registered for ``op`` (or for any op), reference first."""
        names = {b for (o, b) in self.implementations if op is None or o == op}
        return sorted(names, key=lambda b: (b != REFERENCE, b))

    def get(self, op: str, backend: str) -> Implementation:
        self.op(op)
        if (op, backend) not in self.implementations:
            error = unknown_name(f"backend for {op}", backend, self.backends(op))
            raise KbenchError(error.message, f"{error.fix}{self.why_backends_may_be_missing()}")
        return self.implementations[(op, backend)]

    def why_backends_may_be_missing(self) -> str:
        """Text for an unknown-backend error: the KBENCH_PLUGINS limit and plugins that failed to
        load (the backend asked for may be one of theirs); empty when neither applies."""
        parts = []
        if self.plugin_filter is not None:
            parts.append(f"KBENCH_PLUGINS={self.plugin_filter!r} limits which plugins load; unset it to load "
                         "every installed plugin")
        parts += [f"plugin {name!r} failed to load: {reason}" for name, reason in self.plugin_errors.items()]
        return f" ({'; '.join(parts)})" if parts else ""

    def require(self, op: str, backend: str) -> Implementation:
        """The implementation if ``backend`` can run ``op`` here; else KbenchError naming who can."""
        impl = self.get(op, backend)
        reason = impl.unavailable_reason()
        if reason:
            usable = [b for b in self.backends(op) if self.implementations[(op, b)].unavailable_reason() is None]
            raise KbenchError(f"{op}: backend {backend!r} cannot run here: {reason}.",
                              f"Choose another backend for {op}; these can: {', '.join(usable) or '(none)'}.")
        return impl

    def resolve(self, op: str, backend: str, case: Case, dtype: torch.dtype, device: torch.device | str) -> Implementation:
        """The implementation to run ``case``; KbenchError naming the reason and the alternatives."""
        impl = self.get(op, backend)
        reason = impl.reason(case, dtype, device)
        if reason:
            usable = [
                b for b in self.backends(op)
                if self.implementations[(op, b)].reason(case, dtype, device) is None
            ]
            raise KbenchError(
                f"Backend {backend!r} cannot run {op} ({case.label}, {dtype_name(dtype)}, {device}): {reason}.",
                f"Backends that can: {', '.join(usable) or '(none)'}.",
            )
        return impl

    def call(self, op: str, backend: str, **inputs: Any) -> Any:
        self.op(op).validate(inputs)
        return self.get(op, backend)(**inputs)
