"""Command-line changes to a spec, applied after the YAML is read, each key's origin its flag."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from kbench.config import DEVICES
from kbench.errors import KbenchError
from kbench.ops.base import parse_dtype

if TYPE_CHECKING:
    from kbench.spec import Spec


@dataclass(frozen=True)
class Overrides:
    """``backends``: family or op name -> backend, ``backend_flags`` the flag each came from;
    ``layers`` keeps the model's shapes with fewer layers."""

    backends: Mapping[str, str] = field(default_factory=dict)
    dtype: str | None = None
    device: str | None = None
    batch: tuple[int, ...] | None = None
    prompt_len: tuple[int, ...] | None = None
    decode_steps: int | None = None
    layers: int | None = None
    cuda_graphs: bool | None = None
    backend_flags: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_cli(cls, *, backend: Iterable[str] = (), batch: str | None = None, prompt_len: str | None = None,
                 **options: Any) -> Overrides:
        """Overrides from raw CLI values (``batch="1,8,32"``); any keyword that is not a field is
        a family flag (``attention="flash"``, None when not given)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        backends: dict[str, str] = {}
        flags: dict[str, str] = {}
        for name in [key for key in options if key not in fields]:
            value = options.pop(name)
            if value:
                backends[name], flags[name] = value, f"--{name}"
        for assignment in backend:
            key, sep, name = assignment.partition("=")
            if not sep or not key.strip() or not name.strip():
                raise KbenchError(f"--backend {assignment!r} is not of the form family=name.",
                                  "Write e.g. --backend attention=flash or --backend attention_decode=cuda "
                                  "(`kbench list` shows the families and ops).")
            backends[key.strip()], flags[key.strip()] = name.strip(), f"--backend {key.strip()}="
        return cls(backends=backends, backend_flags=flags,
                   batch=parse_int_list(batch, "--batch") if batch else None,
                   prompt_len=parse_int_list(prompt_len, "--prompt-len") if prompt_len else None,
                   **{k: v for k, v in options.items() if v is not None})


def parse_int_list(text: str, flag: str) -> tuple[int, ...]:
    """(1, 8, 32) from '1,8,32'; KbenchError naming ``flag`` otherwise."""
    try:
        values = tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise KbenchError(f"{flag} {text!r} is not a comma-separated list of integers.",
                          f"Write e.g. {flag} 1,8,32.") from None
    if not values or any(v < 1 for v in values):
        raise KbenchError(f"{flag} {text!r} must list positive integers.", f"Write e.g. {flag} 1,8,32.")
    return values


def apply_overrides(spec: Spec, overrides: Overrides) -> Spec:
    """``spec`` with the command line's values in place of the file's, cross-section checks redone."""
    origins = dict(spec.origins)
    changes: dict[str, Any] = {}
    if overrides.backends:
        changes["backends"] = {**spec.backends, **overrides.backends}
        for key in overrides.backends:
            origins[f"backends.{key}"] = overrides.backend_flags.get(key, f"--backend {key}=")
    if overrides.dtype is not None:
        try:
            changes["dtype"], origins["dtype"] = parse_dtype(overrides.dtype), "--dtype"
        except KbenchError as error:
            raise KbenchError(f"{spec.path} (--dtype): {error.message}", error.fix) from None
    if overrides.device is not None:
        if overrides.device not in DEVICES:
            raise KbenchError(f"--device {overrides.device!r} is not one of {', '.join(DEVICES)}.",
                              f"Use one of: {', '.join(DEVICES)}.")
        changes["device"], origins["device"] = overrides.device, "--device"
    workload = {key: getattr(overrides, key) for key in ("batch", "prompt_len", "decode_steps")
                if getattr(overrides, key) is not None}
    if workload:
        changes["workload"] = dataclasses.replace(spec.workload, **workload)
        origins.update({f"workload.{key}": f"--{key.replace('_', '-')}" for key in workload})
    if overrides.cuda_graphs is not None:
        changes["bench"] = dataclasses.replace(spec.bench, cuda_graphs=overrides.cuda_graphs)
        origins["bench.cuda_graphs"] = "--cuda-graphs"
    if overrides.layers is not None:
        if overrides.layers < 1 or overrides.layers > spec.model.layers:
            raise KbenchError(f"{spec.path} (--layers): --layers {overrides.layers} is outside 1..{spec.model.layers}.",
                              f"--layers keeps the model's shapes with fewer layers: use 1 to {spec.model.layers}.")
        changes["model"] = dataclasses.replace(spec.model, layers=overrides.layers)
        origins["model.layers"] = "--layers"
    spec = dataclasses.replace(spec, **changes, origins=origins)
    check_spans(spec)
    return spec


def check_spans(spec: Spec) -> None:
    """The checks that span sections: the dtype on the device. (A workload may run past
    model.max_seq_len, as transformers allows; the run says so.)"""
    if spec.device == "cpu" and spec.dtype == torch.float16:
        raise KbenchError(f"{spec.where('dtype')}: float16 matmuls are not supported well on the CPU.",
                          "Use float32 (or bfloat16) with device: cpu.")
