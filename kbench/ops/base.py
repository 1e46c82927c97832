"""The op contract: what every op family module defines, and how outputs are compared.

An op is a contract, not a kernel. ``Op`` bundles, for one op:

- ``make_inputs(case, dtype, device, seed) -> dict``: deterministic inputs; every
  implementation is called as ``impl(**inputs)``;
- ``reference(**inputs)``: plain PyTorch, faithful to Hugging Face's LLaMA numerics;
- ``flops(case)``, ``bytes(case, dtype)``: the work of one call (each input read once, each
  output written once), for TFLOP/s and GB/s;
- ``tolerance(dtype) -> Tolerance``, ``compare(out, ref, tolerance) -> Check``;
- ``cases_for(model, workload) -> list[Case]``: the shapes a model spec runs;
- ``validate(inputs)``: ``KbenchError`` for wrong dtypes or shapes;
- ``inplace``: inputs an implementation may overwrite;
- ``cold``: inputs a model step reads from HBM, not L2 (a KV cache): graph timings rotate
  through copies of them that together exceed L2;
- ``reference_cuda_graphs``: False when the reference syncs with the host;
- ``hard_inputs(case, dtype, device, seed) -> {label: inputs}``: input sets of the case the
  contract makes hard (zero and tiny norm rows, where eps decides); every check runs them;
- ``test_cases``: small cases (odd sizes included) every backend's conformance test runs;
- ``family``: what a spec's ``backends:`` and ``--FAMILY NAME`` choose a backend for;
- ``role``: where the LLaMA pipeline calls the op (None for ops it does not call).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from kbench.errors import KbenchError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def dtype_name(dtype: torch.dtype) -> str:
    """'bfloat16' for torch.bfloat16: the name used in specs, records and tables."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """torch dtype from 'bfloat16', 'bf16', 'fp16', 'float32', ... ; KbenchError otherwise."""
    if isinstance(name, torch.dtype):
        return name
    key = DTYPE_ALIASES.get(str(name).lower(), str(name).lower())
    if key not in DTYPES:
        from kbench.errors import unknown_name

        raise unknown_name("dtype", name, list(DTYPES) + list(DTYPE_ALIASES))
    return DTYPES[key]


@dataclass(frozen=True)
class Case:
    """One shape case of one op: named dimensions and settings (``case["tokens"]``), hashable."""

    op: str
    dims: tuple[tuple[str, Any], ...] = ()

    def __init__(self, op: str, dims: Mapping[str, Any] | None = None, **kwargs: Any):
        merged = dict(dims or {}) | kwargs
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "dims", tuple(merged.items()))

    def __getitem__(self, key: str) -> Any:
        for name, value in self.dims:
            if name == key:
                return value
        raise KeyError(f"case of {self.op} has no dimension {key!r} (has {self.keys()})")

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def keys(self) -> list[str]:
        return [name for name, _ in self.dims]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.dims)

    def replace(self, **changes: Any) -> Case:
        return Case(self.op, self.as_dict() | changes)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self.dims)

    @property
    def label(self) -> str:
        """'tokens=4096 hidden=4096': the dimensions that are shapes (lists shortened)."""
        parts = []
        for name, value in self.dims:
            if isinstance(value, (list, tuple)):
                value = f"[{len(value)}]" if len(value) > 4 else "/".join(map(str, value))
            parts.append(f"{name}={value}")
        return " ".join(parts)

    def __str__(self) -> str:
        return f"{self.op}({self.label})"


@dataclass(frozen=True)
class Tolerance:
    """Allowed error: |out - ref| <= atol + rtol * |ref| elementwise. ``exact``: outputs must agree
    exactly, but for ``max_mismatch_frac`` of them (float ties can flip a token)."""

    atol: float = 0.0
    rtol: float = 0.0
    exact: bool = False
    max_mismatch_frac: float = 0.0


@dataclass(frozen=True)
class Check:
    """The outcome of comparing one implementation's output with the reference."""

    ok: bool
    max_abs_err: float
    max_rel_err: float
    mismatch_frac: float = 0.0
    detail: str = ""

    def summary(self) -> str:
        status = "PASS" if self.ok else "FAIL"
        text = f"{status} max_abs={self.max_abs_err:.3g} max_rel={self.max_rel_err:.3g}"
        if self.mismatch_frac:
            text += f" mismatch={self.mismatch_frac:.3%}"
        return text + (f" ({self.detail})" if self.detail else "")


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def compare_close(out: Any, ref: Any, tol: Tolerance) -> Check:
    """Elementwise comparison of outputs (a tensor or a tuple), in float64; non-finite values
    where the reference is finite fail."""
    outs, refs = _as_tuple(out), _as_tuple(ref)
    if len(outs) != len(refs):
        return Check(False, math.inf, math.inf, detail=f"returned {len(outs)} outputs, expected {len(refs)}")
    max_abs = max_rel = 0.0
    ok = True
    details = []
    for index, (o, r) in enumerate(zip(outs, refs, strict=True)):
        if not isinstance(o, torch.Tensor):
            return Check(False, math.inf, math.inf, detail=f"output {index} is {type(o).__name__}, not a tensor")
        if o.shape != r.shape:
            return Check(False, math.inf, math.inf, detail=f"output {index} has shape {tuple(o.shape)}, expected {tuple(r.shape)}")
        if o.dtype != r.dtype:
            return Check(False, math.inf, math.inf, detail=f"output {index} has dtype {o.dtype}, expected {r.dtype}")
        o = o.detach().to(r.device)  # compare where the tensors live: a GPU does this in milliseconds
        if tol.exact or not r.is_floating_point():
            mismatch = (o != r).double().mean().item() if r.numel() else 0.0
            if mismatch > tol.max_mismatch_frac:
                ok = False
                details.append(f"output {index}: {mismatch:.3%} of elements differ")
            max_abs = max(max_abs, (o.double() - r.double()).abs().max().item() if r.numel() else 0.0)
            continue
        o64, r64 = o.double(), r.detach().double()
        finite_ref = torch.isfinite(r64)
        if not torch.equal(torch.isfinite(o64), finite_ref):
            ok = False
            details.append(f"output {index}: non-finite values where the reference is finite")
        diff = (o64 - r64).abs_().nan_to_num_(nan=0.0, posinf=0.0).mul_(finite_ref)
        del o64
        if diff.numel():
            abs_ref = r64.abs_()
            abs_err = diff.max().item()
            rel_err = (diff / abs_ref.clamp_min(1e-6)).max().item()
            bad_frac = (diff > tol.atol + tol.rtol * abs_ref).double().mean().item()
            if bad_frac > 0:
                ok = False
                details.append(f"output {index}: {bad_frac:.3%} of elements out of tolerance ({round(bad_frac * diff.numel())} of {diff.numel()})")
            max_abs, max_rel = max(max_abs, abs_err), max(max_rel, rel_err)
    return Check(ok, max_abs, max_rel, detail="; ".join(details))


def expect_tensor(name: str, value: Any, *, dtype: torch.dtype | tuple[torch.dtype, ...] | None = None,
                  ndim: int | None = None, shape: tuple | None = None, op: str = "") -> None:
    """KbenchError unless ``value`` is a tensor of the given dtype, rank and shape (None: any size)."""
    where = f"{op}: " if op else ""
    if not isinstance(value, torch.Tensor):
        raise KbenchError(f"{where}{name} must be a torch.Tensor, got {type(value).__name__}.")
    dtypes = _as_tuple(dtype) if dtype is not None else ()
    if dtypes and value.dtype not in dtypes:
        names = ", ".join(dtype_name(d) for d in dtypes)
        raise KbenchError(f"{where}{name} has dtype {dtype_name(value.dtype)}.", f"Pass one of: {names}.")
    if ndim is not None and value.ndim != ndim:
        raise KbenchError(f"{where}{name} must have {ndim} dimensions, got shape {tuple(value.shape)}.")
    if shape is not None:
        if value.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape, strict=True)):
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise KbenchError(f"{where}{name} has shape {list(value.shape)}, expected {want}.")


FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def elementwise_tolerance(dtype: torch.dtype) -> Tolerance:
    """Default tolerance for elementwise and reduction ops (norm, rope, swiglu)."""
    if dtype == torch.float32:
        return Tolerance(atol=1e-5, rtol=1e-5)
    if dtype == torch.float16:
        return Tolerance(atol=2e-3, rtol=2e-3)
    return Tolerance(atol=2e-2, rtol=1.6e-2)


@dataclass(frozen=True)
class Op:
    """One op's contract. See the module docstring for what each field means."""

    name: str
    family: str
    doc: str
    make_inputs: Callable[[Case, torch.dtype, torch.device, int], dict[str, Any]]
    reference: Callable[..., Any]
    flops: Callable[[Case], float]
    bytes: Callable[[Case, torch.dtype], float]
    cases_for: Callable[[Any, Any], list[Case]]
    validate: Callable[[Mapping[str, Any]], None]
    tolerance: Callable[[torch.dtype], Tolerance] = elementwise_tolerance
    compare: Callable[[Any, Any, Tolerance], Check] = compare_close
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
    inplace: tuple[str, ...] = ()
    cold: tuple[str, ...] = ()
    test_cases: tuple[Case, ...] = ()
    reference_cuda_graphs: bool = True
    hard_inputs: Callable[[Case, torch.dtype, torch.device, int], dict[str, dict[str, Any]]] | None = None
    role: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A seeded generator on ``device`` (inputs are drawn on the CPU for determinism)."""
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def randn(shape, dtype: torch.dtype, device, seed_gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Normal samples in float32, scaled, then cast: deterministic for a seed on each device type.
    On CUDA a device generator seeded from ``seed_gen`` draws them, far faster than the host."""
    device = torch.device(device)
    if device.type == "cuda":
        device_gen = torch.Generator(device=device)
        device_gen.manual_seed(int(torch.randint(0, 2**62, (1,), generator=seed_gen)))
        return (torch.randn(shape, generator=device_gen, dtype=torch.float32, device=device) * scale).to(dtype)
    return (torch.randn(shape, generator=seed_gen, dtype=torch.float32) * scale).to(device=device, dtype=dtype)
