"""The pipeline against transformers' ``LlamaForCausalLM`` on the same weights (``--check hf``).

The all-reference check (``kbench.bench.pipeline_check``) shows a backend computes what
kbench's reference does; this one shows the reference is the model the checkpoint describes.
transformers runs in float32 on the pipeline's weights cast once (the float32 copy is shared
by transformers and kbench's float32 reference, both built without copying it again), and
at every workload point, teacher-forced with transformers' greedy tokens:

- ``reference`` vs hf: kbench's all-reference pipeline in float32, allowed
  ``HF_LOGIT_RTOL`` of the largest logit (float32 rounding across the layers);
- ``pipeline`` vs hf: the pipeline as run, allowed ``HF_LOGIT_RTOL`` in float32 and, in 16
  bits, ``ERROR_FACTOR`` times the 16-bit reference pipeline's own error against transformers.
"""

from __future__ import annotations

import dataclasses

import torch

from kbench.bench.end_to_end import PIPELINE, crash_row
from kbench.bench.pipeline_check import check_row, checked_once, teacher_forced_check
from kbench.errors import KbenchError
from kbench.model import build_pipeline
from kbench.ops.base import dtype_name
from kbench.plan import Plan
from kbench.registry import REFERENCE
from kbench.results.rows import Row

HF = "hf"
HF_LOGIT_RTOL = 2e-4


def check_against_hf(plan: Plan, weights, pipeline, progress) -> list[Row]:
    """One row per (compared, batch, prompt_len): ``reference`` and ``pipeline`` vs transformers."""
    try:
        import transformers  # noqa: F401

        from kbench.model.hf_baseline import HFBaseline
    except ImportError:
        raise KbenchError("--check hf needs transformers.", "pip install 'kbench[hf]'.") from None
    spec, steps = plan.spec, plan.spec.workload.decode_steps
    low_precision = spec.dtype != torch.float32
    progress("check hf: building transformers' LlamaForCausalLM in float32")
    weights32 = weights.to(torch.float32) if low_precision else weights
    spec32 = dataclasses.replace(spec, dtype=torch.float32)
    hf = HFBaseline(spec32, weights32)
    reference32 = build_pipeline(plan.with_reference().with_spec(spec32), weights32)
    reference16 = build_pipeline(plan.with_reference(), weights) if low_precision else None
    compared = [(REFERENCE, reference32, None, torch.float32), (PIPELINE, pipeline, reference16, spec.dtype)]

    def check_point(batch: int, prompt_len: int, prompts: list[torch.Tensor]) -> list[Row]:
        rows = []
        for name, model, reference, dtype in compared:
            progress(f"check hf: {name} vs transformers, batch={batch} prompt_len={prompt_len}")
            try:
                # float32: HF_LOGIT_RTOL; 16 bits: the all-reference check's floor, or the 16-bit reference's error
                fields = teacher_forced_check(model, hf, reference, prompts, steps, dtype,
                                              floor=HF_LOGIT_RTOL if dtype == torch.float32 else None,
                                              oracle_name="transformers (float32)", first_calls=name == PIPELINE)
            except KbenchError:
                raise
            except Exception as error:
                rows.append(dataclasses.replace(crash_row("check", plan, name, batch, prompt_len, error), oracle=HF))
                continue
            fields["note"] = past_trained_range(spec.model, prompt_len + steps) + fields["note"]
            row = check_row(plan, batch, prompt_len, checked_batch=len(prompts), **fields)
            rows.append(dataclasses.replace(row, backend=name, oracle=HF, dtype=dtype_name(dtype),
                                            backends=row.backends if name == PIPELINE else REFERENCE))
        return rows

    return checked_once(spec, check_point)  # the models go with this frame


def past_trained_range(model, length: int) -> str:
    """'positions up to N pass the trained range M (rope S); ' or ''."""
    if length <= model.max_seq_len:
        return ""
    return (f"positions up to {length - 1} pass the trained range of {model.max_seq_len} "
            f"(rope scaling {model.rope.scaling}); ")
