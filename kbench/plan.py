"""Spec + registry -> Plan: for every op, the implementation that runs, why, and at which shapes.

The plan is resolved once, before any kernel runs, and every later step reads it: the op
checks and timings, the pipeline, the run record and the tables. It is the one place where a
spec's ``backends:`` (a family, or an op name that overrides its family) becomes a backend per
op::

    spec.backends = {"attention": "flash", "attention_decode": "triton"}   # from YAML and flags
    plan = resolve_plan(spec, registry)
    plan.ops["attention_decode"].backend      # "triton"  (origin: "--backend attention_decode=")
    plan.ops["attention_prefill"].backend     # "flash"   (origin: "llama2-7b.yaml:30: backends.attention")
    plan.ops["rmsnorm"].backend               # "reference" (origin: "default")
    plan.implementation("attention_prefill")  # the registered callable, loaded

Families and op names come from the registry, so an op family that a plugin declares through
``register_ops`` is chosen, checked and timed exactly like a built-in one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from kbench.errors import KbenchError, did_you_mean
from kbench.ops.base import Case, Op, dtype_name
from kbench.registry import REFERENCE, Implementation, Registry
from kbench.results.record import implementation_provenance
from kbench.spec import Spec

DEFAULT = "default"


@dataclass(frozen=True)
class OpPlan:
    """One op of the run: the backend chosen, where the choice came from, the cases it runs.

    ``origin`` is ``"FILE:LINE: backends.KEY"``, ``"FILE (--flag): backends.KEY"`` or
    ``"default"``; ``fallback`` says why a non-pipeline op runs on the reference although its
    family's backend was chosen (that backend does not implement it).
    """

    op: Op
    backend: str
    origin: str
    implementation: Implementation
    cases: tuple[Case, ...]
    fallback: str | None = None

    @property
    def name(self) -> str:
        return self.op.name

    @property
    def family(self) -> str:
        return self.op.family


@dataclass(frozen=True)
class Plan:
    """Every op the run covers, keyed by op name, in registry order."""

    spec: Spec
    registry: Registry
    ops: dict[str, OpPlan]

    def backend(self, op: str) -> str:
        return self.ops[op].backend

    def implementation(self, op: str) -> Implementation:
        return self.ops[op].implementation

    @property
    def pipeline_ops(self) -> dict[str, OpPlan]:
        """The ops the LLaMA pipeline calls (those with a role)."""
        return {name: op for name, op in self.ops.items() if op.op.role}

    @property
    def families(self) -> dict[str, str]:
        """family -> the backend chosen for the family as a whole."""
        return {family: self.spec.backends.get(family, REFERENCE)
                for family in dict.fromkeys(op.family for op in self.ops.values())}

    @property
    def all_reference(self) -> bool:
        return all(op.backend == REFERENCE for op in self.pipeline_ops.values())

    def label(self) -> str:
        """'norm=triton rope=reference attention=flash attention_decode=triton ...'."""
        parts = [f"{family}={backend}" for family, backend in self.families.items()]
        parts += [f"{name}={op.backend}" for name, op in self.ops.items() if name in self.spec.backends]
        return " ".join(parts)

    def with_reference(self) -> Plan:
        """The same ops and cases, every one on the reference: what a pipeline is checked against."""
        ops = {name: dataclasses.replace(op, backend=REFERENCE, origin=DEFAULT, fallback=None,
                                         implementation=self.registry.get(name, REFERENCE))
               for name, op in self.ops.items()}
        return dataclasses.replace(self, ops=ops)

    def with_backends(self, choices: dict[str, str], origin: str) -> Plan:
        """The same cases with ``choices`` (op -> backend) in place of the spec's, each said to
        come from ``origin`` (a mix ``kbench tune`` times), the spec's ``backends`` to match."""
        ops = {name: dataclasses.replace(op, backend=choices[name], origin=origin, fallback=None,
                                         implementation=self.registry.get(name, choices[name]))
               if name in choices else op for name, op in self.ops.items()}
        spec = dataclasses.replace(self.spec, backends={**self.spec.backends, **choices},
                                   origins={**self.spec.origins, **{f"backends.{op}": origin for op in choices}})
        return dataclasses.replace(self, spec=spec, ops=ops)

    def with_spec(self, spec: Spec) -> Plan:
        """The same choices over another spec of the same model (the float32 oracle's dtype)."""
        return dataclasses.replace(self, spec=spec)

    def record(self) -> dict:
        """The run record's ``backends``: family -> {backend, ops: {op: {backend, origin, plugin, version}}}."""
        families: dict[str, dict] = {family: {"backend": backend, "ops": {}} for family, backend in self.families.items()}
        for name, op in self.ops.items():
            families[op.family]["ops"][name] = {"backend": op.backend, "origin": op.origin,
                                                **implementation_provenance(self.registry, name, op.backend)}
        return families


def resolve_plan(spec: Spec, registry: Registry, check_here: bool = True) -> Plan:
    """The plan for ``spec``; KbenchError naming the spec's key (file:line or flag) and the fix
    for an unknown family, op or backend, or a backend that cannot run the spec's shapes here.

    ``check_here=False`` resolves the names only, without asking whether the device exists and
    the backends can run the spec's shapes on this machine (a GPU spec read on a CPU).
    """
    if check_here:
        check_device(spec)
    check_backend_keys(spec, registry)
    ops = {}
    for op in registry.ops.values():
        if spec.dtype not in op.dtypes:
            raise KbenchError(f"{spec.where('dtype')}: {op.name} does not support {dtype_name(spec.dtype)}.",
                              f"Use one of: {', '.join(dtype_name(d) for d in op.dtypes)}.")
        ops[op.name] = plan_op(spec, registry, op, check_here)
    return Plan(spec, registry, ops)


def check_device(spec: Spec) -> None:
    """KbenchError unless the spec's device exists in this process."""
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise KbenchError(f"{spec.where('device')}: 'cuda', but no CUDA device is available here "
                          f"(torch {torch.__version__}).",
                          "Run on a GPU machine, or pass --device cpu --dtype float32.")


def check_backend_keys(spec: Spec, registry: Registry) -> None:
    """Every key of ``backends:`` is a family or an op, and a family's backend exists in it."""
    families = registry.families
    allowed = [*families, *registry.ops]
    for key, backend in spec.backends.items():
        if key not in allowed:
            hint = did_you_mean(key, allowed)
            raise KbenchError(f"{spec.where(f'backends.{key}')}: unknown key.",
                              f"{hint}Keys allowed here: the families {', '.join(families)} or an op "
                              f"({', '.join(registry.ops)}).")
        if key in families:
            family_backends = sorted({b for (o, b) in registry.implementations if registry.ops[o].family == key})
            if backend not in family_backends:
                hint = did_you_mean(backend, family_backends)
                raise KbenchError(f"{spec.where(f'backends.{key}')}: unknown {key} backend {backend!r}.",
                                  f"{hint}{key} backends: {', '.join(family_backends)} "
                                  f"(`kbench list` shows why some cannot run).{registry.why_backends_may_be_missing()}")


def plan_op(spec: Spec, registry: Registry, op: Op, check_here: bool = True) -> OpPlan:
    """The backend for ``op``: its own ``backends:`` entry, else its family's, else the reference.

    A family flag on the command line (``--norm triton``) outranks an op's entry in the file
    (``rmsnorm: torch``): the flag is the newer, more deliberate choice.
    """
    own, family = spec.backends.get(op.name), spec.backends.get(op.family)
    flagged = spec.origins.get(f"backends.{op.family}", "").startswith("--") \
        and not spec.origins.get(f"backends.{op.name}", "").startswith("--")
    key = op.name if own and not (family and flagged) else op.family if family else None
    backend = spec.backends[key] if key else REFERENCE
    origin = spec.where(f"backends.{key}") if key else DEFAULT
    fallback = None
    if (op.name, backend) not in registry.implementations:
        if key == op.name or op.role:
            have = registry.backends(op.name)
            raise KbenchError(f"{origin}: backend {backend!r} has no {op.name}, which the pipeline needs.",
                              f"Backends with {op.name}: {', '.join(have)}; choose one for this op alone with "
                              f"'backends: {{{op.name}: NAME}}' or --backend {op.name}=NAME.")
        fallback = f"{backend} has no {op.name}"
        backend = REFERENCE
    if not check_here:
        return OpPlan(op, backend, origin, registry.get(op.name, backend), tuple(model_cases(spec, op)), fallback)
    reason = registry.get(op.name, backend).unavailable_reason()  # asking loads it (cuda builds its kernels)
    if reason:
        usable = [b for b in registry.backends(op.name) if registry.get(op.name, b).unavailable_reason() is None]
        raise KbenchError(f"{origin}: {op.name}: backend {backend!r} cannot run here: {reason}.",
                          f"Backends that can: {', '.join(usable) or '(none)'}.")
    try:
        for case in op.cases_for(spec.model, spec.workload):
            registry.resolve(op.name, backend, case, spec.dtype, spec.device)
    except KbenchError as error:
        raise KbenchError(f"{origin}: {error.message}", error.fix) from None
    implementation = registry.get(op.name, backend)
    return OpPlan(op, backend, origin, implementation, tuple(model_cases(spec, op)), fallback)


def model_cases(spec: Spec, op: Op) -> list[Case]:
    """The shapes the spec's model runs ``op`` at (``Op.cases_for``), at most ``bench.max_op_cases``."""
    return spread(op.cases_for(spec.model, spec.workload), spec.bench.max_op_cases)


def spread(cases: list[Case], limit: int | None) -> list[Case]:
    """At most ``limit`` of ``cases``, evenly spaced, the smallest and largest kept."""
    if limit is None or len(cases) <= limit:
        return cases
    if limit == 1:
        return [cases[-1]]
    picks = sorted({round(i * (len(cases) - 1) / (limit - 1)) for i in range(limit)})
    return [cases[i] for i in picks]
