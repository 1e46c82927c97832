"""Prefill and decode of a whole model (the pipeline or a baseline) over the workload: one row per
point, and for the pipeline each step's per-op breakdown (``kbench.bench.breakdown``)."""

from __future__ import annotations

import dataclasses

import torch

from kbench.bench.breakdown import breakdown_rows
from kbench.bench.limits import flops_ceiling_tflops, rate_problem
from kbench.bench.timing import AcrossRanks, Timing, measure
from kbench.errors import KbenchError
from kbench.model import random_prompts
from kbench.model.arithmetic import decode_bytes_per_step, prefill_flops
from kbench.model.tensor_parallel import rank_count
from kbench.ops.base import dtype_name
from kbench.plan import Plan
from kbench.results.rows import ROW_TYPES, DecodeRow, PrefillRow, Row
from kbench.spec import Spec

PROMPT_SEED = 1234
PIPELINE = "pipeline"
# Labels of the models timed beside a pipeline whose ops are not the plan's choices (``kbench run --baseline``).
BASELINES = ("hf", "reference")


def time_end_to_end(plan: Plan, model, label: str, weights, ceilings: dict, progress, ttft: bool = True,
                    breakdown: bool = True) -> list[Row]:
    """Prefill then decode rows of one model, and its device memory released afterwards;
    ``ttft``: also time each prefill's time to first token (a second timing of the prefill);
    ``breakdown``: each step's per-op breakdown after its timing (``step_breakdown``)."""
    rows = time_prefill(plan, model, label, ceilings, progress, ttft, breakdown)
    rows += time_decode(plan, model, label, weights, ceilings, progress, breakdown)
    model.reset(1, 1)  # drop the workload's KV cache before the next model allocates its own
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


def workload_pairs(spec: Spec) -> list[tuple[int, int]]:
    return [(batch, prompt_len) for batch in spec.workload.batch for prompt_len in spec.workload.prompt_len]


def _peak_memory_start(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_memory_bytes(device: str) -> int | None:
    """Peak bytes torch allocated on CUDA since ``_peak_memory_start``; None (n/a) on a CPU."""
    return torch.cuda.max_memory_allocated() if torch.device(device).type == "cuda" else None


def _timing_fields(timing: Timing, per: int = 1) -> dict:
    return {"latency_us": timing.median_us / per, "p20_us": timing.p20_us / per, "p80_us": timing.p80_us / per,
            "min_us": timing.min_us / per, "mean_us": timing.mean_us / per, "reps": timing.reps,
            "method": timing.method}


def time_prefill(plan: Plan, model, label: str, ceilings: dict, progress, ttft: bool = True,
                 breakdown: bool = True) -> list[Row]:
    spec, rows = plan.spec, []
    for batch, prompt_len in workload_pairs(spec):
        progress(f"prefill [{label}]: batch={batch} prompt_len={prompt_len}")
        try:
            rows.append(prefill_row(plan, model, label, ceilings, batch, prompt_len, ttft))
            if breakdown:
                rows += step_breakdown(plan, model, label, "prefill", batch, prompt_len, rows[-1].latency_us, ceilings)
        except KbenchError:
            raise
        except Exception as error:  # a crashing backend is a FAIL row, not a lost run
            rows.append(crash_row("prefill", plan, label, batch, prompt_len, error))
    return rows


def step_breakdown(plan: Plan, model, label: str, phase: str, batch: int, prompt_len: int,
                   step_us: float, ceilings: dict) -> list[Row]:
    """The per-op breakdown of the pipeline's step just timed (``kbench.bench.breakdown``);
    none for a baseline (``BASELINES``), whose ops are not the plan's."""
    if label in BASELINES or not hasattr(model, "traced_calls"):
        return []
    return [dataclasses.replace(row, mix=label)
            for row in breakdown_rows(plan, model, phase, batch, prompt_len, step_us, ceilings)]


def breakdowns_of(plan: Plan, model, label: str, timed: list[Row], progress, ceilings: dict) -> list[Row]:
    """``step_breakdown`` of every prefill and decode step in ``timed`` (rows of ``model``'s mix,
    timed earlier without one) that ran."""
    rows = []
    for row in timed:
        if row.kind not in ("prefill", "decode") or row.status == "FAIL" or not row.latency_us:
            continue
        batch, prompt_len = row.shape["batch"], row.shape["prompt_len"]
        progress(f"breakdown [{label}]: {row.kind} batch={batch} prompt_len={prompt_len}")
        rows += step_breakdown(plan, model, label, row.kind, batch, prompt_len, row.latency_us, ceilings)
    return rows


def crash_row(kind: str, plan: Plan, label: str, batch: int, prompt_len: int, error: Exception) -> Row:
    spec, steps = plan.spec, plan.spec.workload.decode_steps
    shape = {"batch": batch, "prompt_len": prompt_len} | ({"decode_steps": steps} if kind != "prefill" else {})
    case = f"batch={batch} prompt_len={prompt_len}" + {"prefill": "", "decode": f" steps={steps}",
                                                        "check": f" decode_steps={steps}"}[kind]
    return ROW_TYPES[kind](op=kind if kind != "check" else PIPELINE, backend=label, case=case, dtype=dtype_name(spec.dtype),
                    device=spec.device, shape=shape, status="FAIL", note=f"raised {type(error).__name__}: {error}",
                    backends=label if label in BASELINES else plan.label())


@torch.inference_mode()
def prefill_row(plan: Plan, model, label: str, ceilings: dict, batch: int, prompt_len: int,
                ttft: bool = True) -> PrefillRow:
    """Latency of one prefill and (``ttft``) its time to first token, prompts starting on the host."""
    spec, bench = plan.spec, plan.spec.bench
    prompts = random_prompts(spec.model.vocab, batch, prompt_len, PROMPT_SEED)
    model.reset(batch, prompt_len + spec.workload.decode_steps)
    _peak_memory_start(spec.device)
    prefill = measure(lambda: model.prefill(prompts), device=spec.device, warmup_ms=bench.warmup_ms,
                      rep_ms=bench.rep_ms, flush_l2=False, across=across_ranks(model))
    peak = _peak_memory_bytes(spec.device)
    first = measure(lambda: first_token(model, prompts), device=spec.device, warmup_ms=bench.warmup_ms,
                    rep_ms=bench.rep_ms, flush_l2=False, across=across_ranks(model)) if ttft else None
    flops = prefill_flops(spec, batch, prompt_len)
    tflops = flops / (prefill.median_us * 1e-6) / 1e12
    matmul_tflops = flops_ceiling_tflops(ceilings)
    # the model's FLOPs are shared by the ranks: each GPU is held to its own share
    suspect = rate_problem(flops / rank_count(model), None, prefill.median_us, ceilings)
    return PrefillRow(
        op="prefill", backend=label, case=f"batch={batch} prompt_len={prompt_len}", dtype=dtype_name(spec.dtype),
        device=spec.device, shape={"batch": batch, "prompt_len": prompt_len},
        status="SUSPECT" if suspect else "PASS", note=suspect,
        **_timing_fields(prefill), ttft_us=first.median_us if first else None, flops=flops, tflops=tflops,
        throughput_basis=prefill.method, frac_peak_flops=tflops / matmul_tflops if matmul_tflops else None,
        tokens_per_s=batch * prompt_len / (prefill.median_us * 1e-6), peak_memory_bytes=peak,
        backends=label if label in BASELINES else plan.label(),
    )


def across_ranks(model) -> AcrossRanks | None:
    """Rank-agreed timing for one rank of a tensor-parallel pipeline (its steps are collectives)."""
    return AcrossRanks() if rank_count(model) > 1 else None


def first_token(model, prompts) -> torch.Tensor:
    if hasattr(model, "generate"):
        return model.generate(prompts, 1)
    return model.prefill(prompts).argmax(-1)


def time_decode(plan: Plan, model, label: str, weights, ceilings: dict, progress, breakdown: bool = True) -> list[Row]:
    spec, rows = plan.spec, []
    for batch, prompt_len in workload_pairs(spec):
        progress(f"decode [{label}]: batch={batch} prompt_len={prompt_len} steps={spec.workload.decode_steps}")
        try:
            rows.append(decode_row(plan, model, label, weights, ceilings, batch, prompt_len))
            if breakdown:
                rows += step_breakdown(plan, model, label, "decode", batch, prompt_len, rows[-1].latency_us, ceilings)
        except KbenchError:
            raise
        except Exception as error:
            rows.append(crash_row("decode", plan, label, batch, prompt_len, error))
    return rows


@torch.inference_mode()
def decode_row(plan: Plan, model, label: str, weights, ceilings: dict, batch: int, prompt_len: int) -> DecodeRow:
    """Per-token latency of ``decode_steps`` steps after an untimed prefill; roofline: bytes a
    step must read / step time, against the measured copy bandwidth."""
    spec = plan.spec
    bench, steps = spec.bench, spec.workload.decode_steps
    prompts = random_prompts(spec.model.vocab, batch, prompt_len, PROMPT_SEED)
    tokens = torch.stack([p[-1] for p in prompts]).to(spec.device)
    model.reset(batch, prompt_len + steps)
    model.prefill(prompts)
    graph, graph_note = capture_decode(spec, model)

    def decode_steps():
        for _ in range(steps):
            model.decode_step(tokens)

    _peak_memory_start(spec.device)
    # each timed run of the steps starts where the prefill left the cache: rewound to it where the
    # model can (a prefill of batch 64 x 512 costs more than the 32 steps it would precede)
    restart = getattr(model, "rewind", None) or (lambda: model.prefill(prompts))
    timing = measure(decode_steps, device=spec.device, warmup_ms=bench.warmup_ms, rep_ms=bench.rep_ms,
                     flush_l2=False, reset=restart, across=across_ranks(model))
    peak = _peak_memory_bytes(spec.device)
    if graph:
        model.drop_decode_graph()
    step_s = timing.median_us * 1e-6 / steps
    bytes_per_step = decode_bytes_per_step(spec, weights, batch, prompt_len)
    gbps = bytes_per_step / step_s / 1e9
    copy_gbps = ceilings.get("copy_gbps")
    suspect = rate_problem(None, bytes_per_step, step_s * 1e6, ceilings, " (decode roofline)")
    return DecodeRow(
        op="decode", backend=label, case=f"batch={batch} prompt_len={prompt_len} steps={steps}",
        dtype=dtype_name(spec.dtype), device=spec.device,
        shape={"batch": batch, "prompt_len": prompt_len, "decode_steps": steps},
        status="SUSPECT" if suspect else "PASS", note=suspect,
        **_timing_fields(timing, per=steps), bytes=bytes_per_step, gbps=gbps, throughput_basis=timing.method,
        frac_peak_bw=gbps / copy_gbps if copy_gbps else None, tokens_per_s=batch / step_s,
        peak_memory_bytes=peak, cuda_graph=graph, cuda_graph_note=graph_note,
        backends=label if label in BASELINES else plan.label(),
    )


def capture_decode(spec: Spec, model) -> tuple[bool, str | None]:
    """Capture the decode step when the spec asks for CUDA graphs; (captured, why not)."""
    if not spec.bench.cuda_graphs:
        return False, "bench.cuda_graphs is off"
    if torch.device(spec.device).type != "cuda":
        return False, "CUDA graphs need a CUDA device"
    if not hasattr(model, "capture_decode_graph"):
        return False, "this baseline runs eagerly"
    if model.cuda_graph_blocker:
        return False, f"{model.cuda_graph_blocker} cannot be captured"
    try:
        model.capture_decode_graph()
    except KbenchError as error:
        return False, error.message
    return True, None
