"""The pipeline against an oracle, teacher-forced (both fed the oracle's greedy tokens, so one
early difference cannot snowball), at every workload point."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from kbench.bench.end_to_end import PIPELINE, PROMPT_SEED, crash_row, workload_pairs
from kbench.bench.stopwatch import STOPWATCH
from kbench.errors import KbenchError
from kbench.model import build_pipeline, random_prompts
from kbench.ops.base import dtype_name
from kbench.plan import Plan
from kbench.results.rows import CheckRow, Row

# Max |logit error| allowed, relative to the largest reference logit of the step: in float32
# the tolerance; in 16 bits only the floor under ERROR_FACTOR x the 16-bit reference's own
# measured error, one unit of the dtype's rounding (a fixed 5% floor let a dropped eps pass).
LOGIT_RTOL = {torch.float32: 1e-3, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-8}
# In 16 bits a pipeline may be this many times further from the float32 oracle than the
# 16-bit reference pipeline is (kernels round differently, not necessarily worse).
ERROR_FACTOR = 2.0
# A point's check feeds its first CHECK_MAX_BATCH sequences; where those are a smaller point's
# (the prompts of a seed begin alike), that point's check stands for it (``checked_once``).
CHECK_MAX_BATCH = 8


def check_pipeline(plan: Plan, weights, pipeline, progress) -> list[Row]:
    """Teacher-forced comparison with an oracle at every (batch, prompt_len). In 16 bits the
    reference itself rounds, so the oracle is the float32 all-reference pipeline and the pipeline
    may be ``ERROR_FACTOR`` times as far from it as the 16-bit reference (at least ``LOGIT_RTOL``)."""
    spec, steps = plan.spec, plan.spec.workload.decode_steps
    if plan.all_reference:
        return [check_row(plan, batch, prompt_len, status="PASS", max_abs_err=0.0, max_rel_err=0.0,
                          token_agreement=1.0, note="every backend is the reference: nothing to compare")
                for batch, prompt_len in workload_pairs(spec)]
    low_precision = spec.dtype != torch.float32
    parallel = pipeline.parallel  # one rank of a tensor-parallel run: its oracles span the ranks too
    reference = build_pipeline(plan.with_reference(), weights, parallel) if low_precision else None
    oracle_plan = plan.with_reference().with_spec(dataclasses.replace(spec, dtype=torch.float32))
    oracle_weights = weights.to(torch.float32) if low_precision else weights
    oracle = build_pipeline(oracle_plan, oracle_weights, parallel)

    def check_point(batch: int, prompt_len: int, prompts: list[torch.Tensor]) -> list[Row]:
        progress(f"checking pipeline: batch={batch} prompt_len={prompt_len}")
        try:
            for model in (pipeline, oracle, reference):
                if model is not None:  # room for this point's prompts and every decode step
                    model.reset(len(prompts), prompt_len + steps)
            fields = teacher_forced_check(pipeline, oracle, reference, prompts, steps, spec.dtype)
        except KbenchError:
            raise
        except Exception as error:
            return [crash_row("check", plan, PIPELINE, batch, prompt_len, error)]
        return [check_row(plan, batch, prompt_len, checked_batch=len(prompts), **fields)]

    return checked_once(spec, check_point)  # the models go with this frame


def checked_once(spec, check_point: Callable[[int, int, list[torch.Tensor]], list[Row]]) -> list[Row]:
    """``check_point(batch, prompt_len, prompts)``'s rows at every workload point, fed its first
    ``CHECK_MAX_BATCH`` prompts; a point whose prompts an earlier point already fed (same length,
    same tokens) takes that point's rows, restated for its batch, instead of running again."""
    rows, ran = [], {}  # (prompt_len, the prompts' bytes) -> (batch that ran, its rows)
    for batch, prompt_len in workload_pairs(spec):
        prompts = random_prompts(spec.model.vocab, batch, prompt_len, PROMPT_SEED)[:CHECK_MAX_BATCH]
        key = (prompt_len, torch.stack(prompts).numpy().tobytes())
        if key in ran:
            first, first_rows = ran[key]
            rows += [dataclasses.replace(row, case=row.case.replace(f"batch={first} ", f"batch={batch} ", 1),
                                         shape=dict(row.shape, batch=batch),
                                         note=f"{row.note}; the batch={first} check's sequences, not run again")
                     for row in first_rows]
            continue
        ran[key] = batch, check_point(batch, prompt_len, prompts)
        rows += ran[key][1]
    return rows


def check_row(plan: Plan, batch: int, prompt_len: int, **fields) -> CheckRow:
    spec, steps = plan.spec, plan.spec.workload.decode_steps
    return CheckRow(op=PIPELINE, backend=PIPELINE, case=f"batch={batch} prompt_len={prompt_len} decode_steps={steps}",
                    dtype=dtype_name(spec.dtype), device=spec.device,
                    shape={"batch": batch, "prompt_len": prompt_len, "decode_steps": steps},
                    backends=plan.label(), **fields)


def _step_errors(logits: torch.Tensor, oracle64: torch.Tensor, scale: torch.Tensor) -> tuple[float, float]:
    error = (logits.double() - oracle64).abs()
    return error.max().item(), (error.amax(dim=-1) / scale).max().item()


@torch.inference_mode()
def teacher_forced_check(pipeline, oracle, reference, prompts, steps: int, dtype: torch.dtype,
                         floor: float | None = None, oracle_name: str = "float32 oracle",
                         first_calls: bool = True) -> dict:
    """Feed every pipeline the prompts, then the oracle's greedy token for ``steps`` steps; allowed
    ``max(floor or LOGIT_RTOL, ERROR_FACTOR * the 16-bit reference's error)``. A differing greedy
    token is an error only where the oracle's margin exceeds the allowance; a FAIL's note names
    the first step, position and sequence where they part. ``first_calls``: ``pipeline`` is the
    run's own, whose first prefill and decode step at these shapes are ``FIRST_CALLS``, not check."""
    floor = LOGIT_RTOL.get(dtype, 2.0**-8) if floor is None else floor
    max_abs = max_rel = reference_rel = 0.0
    step_rel, step_margin = [], []  # per step: [batch] relative error; [batch] margin (0 where tokens agree)
    agree = total = 0
    with STOPWATCH.first_calls(first_calls):
        logits = pipeline.prefill(prompts)
    oracle_logits = oracle.prefill(prompts)
    reference_logits = reference.prefill(prompts) if reference is not None else None
    for step in range(steps + 1):
        oracle64 = oracle_logits.double()
        scale = oracle64.abs().amax(dim=-1).clamp_min(1e-6)
        if not torch.isfinite(logits).all():
            return {"status": "FAIL", "max_abs_err": math.inf, "max_rel_err": math.inf,
                    "token_agreement": agree / max(total, 1), "note": f"non-finite logits at step {step}"}
        error = (logits.double() - oracle64).abs()
        max_abs = max(max_abs, error.max().item())
        step_rel.append((error.amax(dim=-1) / scale).cpu())
        max_rel = max(max_rel, step_rel[-1].max().item())
        if reference_logits is not None:
            reference_rel = max(reference_rel, _step_errors(reference_logits, oracle64, scale)[1])
        oracle_tokens, tokens = oracle64.argmax(-1), logits.argmax(-1)
        same = oracle_tokens == tokens
        agree += int(same.sum())
        total += same.numel()
        gap = oracle64.gather(-1, oracle_tokens[:, None])[:, 0] - oracle64.gather(-1, tokens[:, None])[:, 0]
        step_margin.append((gap / scale).cpu())
        if step < steps:
            with STOPWATCH.first_calls(first_calls and step == 0):
                logits = pipeline.decode_step(oracle_tokens)
            oracle_logits = oracle.decode_step(oracle_tokens)
            if reference is not None:
                reference_logits = reference.decode_step(oracle_tokens)
    allowed = max(floor, ERROR_FACTOR * reference_rel)
    margins = torch.stack(step_margin)
    real_mismatches = int((margins > allowed).sum())
    ok = max_rel <= allowed and real_mismatches == 0
    basis = (f"{ERROR_FACTOR:g}x the {dtype_name(dtype)} reference's own error {reference_rel:.3g}"
             if reference is not None else "float32 tolerance")
    note = (f"max logit error {max_rel:.3g} of the largest logit, allowed {allowed:.3g} ({basis}); "
            f"{real_mismatches} greedy tokens differ from the {oracle_name} beyond a near-tie")
    if not ok:
        note += "; " + _first_parting(torch.stack(step_rel), margins, allowed, [int(p.numel()) for p in prompts or ()])
    return {"status": "PASS" if ok else "FAIL", "max_abs_err": max_abs, "max_rel_err": max_rel,
            "reference_rel_err": reference_rel if reference is not None else None, "allowed_rel_err": allowed,
            "token_agreement": agree / total, "tokens_compared": total, "note": note}


def _first_parting(rel: torch.Tensor, margins: torch.Tensor, allowed: float, lengths: list[int]) -> str:
    """Where the first step ``[steps + 1, batch]`` past ``allowed`` is, in words."""
    bad = (rel > allowed) | (margins > allowed)
    step, sequence = (int(i) for i in bad.nonzero()[0])
    what = (f"logit error {rel[step, sequence].item():.3g}" if rel[step, sequence] > allowed
            else "greedy token differs")
    where = f" (logits at position {lengths[sequence] - 1 + step})" if sequence < len(lengths) else ""
    return f"they first part at step {step}{where} of sequence {sequence}: {what}"
