"""``kbench run SPEC``: correctness and speed of the chosen backends, op by op and end to end.

``run()`` reads top to bottom; each step is a function named after what it does:

1. resolve the spec and the backends (``load_spec``, ``check_backends``);
2. measure the device's ceilings (copy bandwidth, bf16 matmul) on CUDA;
3. check every chosen backend against the reference at the model's own shapes and time
   it there (and the reference, so the table shows the speedup);
4. build the pipeline and check it against the all-reference pipeline, teacher-forced:
   both see the same prompt and then the reference's greedy tokens, so one early
   difference cannot snowball; max logit error and greedy-token agreement per step;
5. time prefill (latency per batch x prompt length, time to first token) and decode
   (per-token latency, tokens/s, fraction of the copy-bandwidth roofline), with peak memory;
   optionally the same for baselines (``hf``: transformers' LLaMA; ``reference``);
6. write the run record and print the tables.

A FAIL anywhere is FAIL in every table: the end-to-end rows of a pipeline that uses a
failing backend are FAIL too, and the run's status (exit code 1).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

import kbench
from kbench.bench.sweep import op_rows
from kbench.bench.timing import Timing, measure
from kbench.env import environment, measure_ceilings
from kbench.errors import KbenchError
from kbench.model import build_pipeline, load_weights, random_prompts
from kbench.ops import FAMILIES
from kbench.ops.base import dtype_name
from kbench.plugins import get_registry
from kbench.registry import REFERENCE, Registry
from kbench.results.record import SCHEMA_VERSION, make_row, new_run_id, record_status, write_record
from kbench.results.report import print_run
from kbench.spec import PIPELINE_OPS, Overrides, Spec, backend_for, check_backends, load_spec, op_cases

BASELINES = ("hf", "reference")
PROMPT_SEED = 1234
PIPELINE = "pipeline"
# Pipeline check: max |logit error| allowed, relative to the largest reference logit of the step.
LOGIT_RTOL = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 5e-2}
# In 16 bits a pipeline may be this many times further from the float32 oracle than the
# 16-bit reference pipeline is (kernels round differently, not necessarily worse).
ERROR_FACTOR = 2.0
CHECK_MAX_BATCH = 8


@dataclass(frozen=True)
class RunOptions:
    """What ``kbench run`` does besides the spec: where to write, which parts, which baselines."""

    out_dir: Path = Path("results")
    baselines: tuple[str, ...] = ()
    skip_ops: bool = False
    skip_e2e: bool = False
    command: tuple[str, ...] = ()


@dataclass
class RunResult:
    record: dict
    path: Path

    @property
    def failed(self) -> bool:
        return self.record["status"] == "FAIL"


def run(spec_path: str | Path, overrides: Overrides | None, options: RunOptions, console: Console,
        progress_console: Console | None = None) -> RunResult:
    """The whole ``kbench run``; KbenchError (nothing written) for a user mistake."""
    spec = load_spec(spec_path, overrides)
    registry = get_registry()
    check_backends(spec, registry)
    check_baselines(options.baselines)
    record = start_record(spec, registry, options.command)
    rows: list[dict] = []
    with progress_display(progress_console or console) as progress:
        progress("measuring device ceilings")
        record["ceilings"] = measure_ceilings(spec.device)
        if not options.skip_ops:
            rows += check_and_time_ops(spec, registry, record["ceilings"], progress)
        if not options.skip_e2e:
            progress("loading weights")
            weights = load_weights(spec)
            pipeline = build_pipeline(spec, registry, weights)
            rows += check_pipeline(spec, registry, weights, pipeline, progress)
            rows += time_end_to_end(spec, pipeline, PIPELINE, weights, record["ceilings"], progress)
            del pipeline  # one model's weights and KV cache on the device at a time
            for name in options.baselines:
                baseline = build_baseline(spec, registry, weights, name)
                rows += time_end_to_end(spec, baseline, name, weights, record["ceilings"], progress)
                del baseline
    rows = mark_pipeline_failures(spec, rows)
    record["rows"] = rows
    record["status"] = record_status(rows)
    record["plugin_details"] = registry.plugin_details()
    path = write_record(record, options.out_dir)
    print_run(record, console)
    console.print(f"record: {path}", highlight=False)
    return RunResult(record, path)


# -- 1. spec, backends, record header ---------------------------------------------------

def check_baselines(baselines: Sequence[str]) -> None:
    for name in baselines:
        if name not in BASELINES:
            raise KbenchError(f"Unknown baseline {name!r}.", f"Baselines: {', '.join(BASELINES)}.")
        if name == "hf":
            try:
                import transformers  # noqa: F401
            except ImportError:
                raise KbenchError("--baseline hf needs transformers.", "pip install 'kbench[hf]'.") from None


def chosen_backends(spec: Spec, registry: Registry) -> dict:
    """family -> {backend, ops: {op: {backend, plugin, version}}} for the record."""
    chosen = {}
    for family in FAMILIES:
        backend = spec.backends.get(family, REFERENCE)
        ops = {}
        for op in registry.ops_of_family(family):
            op_backend = backend_for(spec.backends, op.name, family)
            impl = registry.implementations.get((op.name, op_backend))
            if impl is not None:
                version = impl.version or registry.plugins.get(impl.plugin)
                if impl.plugin == "kbench-core":
                    version = version or kbench.__version__
                ops[op.name] = {"backend": op_backend, "plugin": impl.plugin, "version": version}
        chosen[family] = {"backend": backend, "ops": ops}
    return chosen


def start_record(spec: Spec, registry: Registry, command: Sequence[str]) -> dict:
    now = datetime.now(timezone.utc)
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": new_run_id(spec.name, now),
        "created": now.isoformat(),
        "command": list(command),
        "spec": spec.to_dict(),
        "backends": chosen_backends(spec, registry),
        "plugins": dict(registry.plugins),
        "plugin_errors": dict(registry.plugin_errors),
        "env": environment(spec.device),
        "ceilings": {},
        "status": None,
        "rows": [],
    }


@contextmanager
def progress_display(console: Console) -> Iterator[Callable[[str], None]]:
    """A transient spinner with the current step; yields ``progress(text)``.

    When the output is not a terminal (a log file, CI, a remote GPU job) each step is printed
    as a plain line with the elapsed time instead, so a slow step can be seen afterwards.
    """
    if not console.is_terminal:
        start = time.perf_counter()
        yield lambda text: console.print(f"[{time.perf_counter() - start:7.1f}s] {text}", highlight=False)
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("starting", total=None)
        yield lambda text: progress.update(task, description=text)


# -- 3. ops at the model's shapes ---------------------------------------------------------

def check_and_time_ops(spec: Spec, registry: Registry, ceilings: dict, progress) -> list[dict]:
    """Check and time the chosen backend (and the reference) on every op case of the model."""
    rows = []
    for op_name, cases in op_cases(spec, registry).items():
        op = registry.op(op_name)
        if spec.dtype not in op.dtypes:
            continue
        chosen = backend_for(spec.backends, op_name, op.family)
        backends = [b for b in dict.fromkeys([REFERENCE, chosen]) if (op_name, b) in registry.implementations]
        rows += op_rows(registry, op_name, backends, cases, spec.dtype, spec.device, spec.bench,
                        lambda text: progress(f"ops: {text}"), ceilings=ceilings)
    return rows


# -- 4-5. the pipeline ------------------------------------------------------------------

def build_baseline(spec: Spec, registry: Registry, weights, name: str):
    """``hf`` (transformers' LLaMA on the same weights) or ``reference`` (the all-reference
    pipeline)."""
    if name == "hf":
        from kbench.model.hf_baseline import HFBaseline

        return HFBaseline(spec, weights)
    return build_pipeline(spec, registry, weights, all_reference(spec))


def time_end_to_end(spec: Spec, model, label: str, weights, ceilings: dict, progress) -> list[dict]:
    """Prefill then decode rows of one model, and its device memory released afterwards."""
    rows = time_prefill(spec, model, label, ceilings, progress)
    rows += time_decode(spec, model, label, weights, ceilings, progress)
    model.reset(1, 1)  # drop the workload's KV cache before the next model allocates its own
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


def all_reference(spec: Spec) -> dict[str, str]:
    return {family: REFERENCE for family in spec.backends}


def backends_label(spec: Spec) -> str:
    return " ".join(f"{family}={backend}" for family, backend in spec.backends.items())


def workload_pairs(spec: Spec) -> list[tuple[int, int]]:
    return [(batch, prompt_len) for batch in spec.workload.batch for prompt_len in spec.workload.prompt_len]


def check_pipeline(spec: Spec, registry: Registry, weights, pipeline, progress) -> list[dict]:
    """Teacher-forced comparison with an oracle at every (batch, prompt_len).

    In float32 the oracle is the all-reference pipeline and the pipeline must match it to
    ``LOGIT_RTOL``. In bfloat16/float16 the reference itself rounds (HF eager keeps the
    attention scores in 16 bits), so a kernel that keeps more precision differs from it by as
    much as the reference differs from exact arithmetic. There the oracle is the all-reference
    pipeline in float32 on the same weights, and the pipeline must be no further from it than
    ``ERROR_FACTOR`` times the 16-bit reference pipeline (or ``LOGIT_RTOL``, whichever is larger).
    The oracle sees at most ``CHECK_MAX_BATCH`` prompts of each batch, to bound its memory.
    """
    steps = spec.workload.decode_steps
    if all(backend == REFERENCE for backend in spec.backends.values()):
        return [check_row(spec, batch, prompt_len, status="PASS", max_abs_err=0.0, max_rel_err=0.0,
                          token_agreement=1.0, note="every backend is the reference: nothing to compare")
                for batch, prompt_len in workload_pairs(spec)]
    low_precision = spec.dtype != torch.float32
    reference = build_pipeline(spec, registry, weights, all_reference(spec)) if low_precision else None
    oracle_spec = dataclasses.replace(spec, dtype=torch.float32)
    oracle_weights = weights.to(torch.float32) if low_precision else weights
    oracle = build_pipeline(oracle_spec, registry, oracle_weights, all_reference(spec))
    rows = []
    for batch, prompt_len in workload_pairs(spec):
        progress(f"checking pipeline: batch={batch} prompt_len={prompt_len}")
        prompts = random_prompts(spec.model.vocab, batch, prompt_len, PROMPT_SEED)[:CHECK_MAX_BATCH]
        try:
            fields = teacher_forced_check(pipeline, oracle, reference, prompts, steps, spec.dtype)
        except KbenchError:
            raise
        except Exception as error:
            rows.append(crash_row("check", spec, PIPELINE, batch, prompt_len, error))
            continue
        rows.append(check_row(spec, batch, prompt_len, checked_batch=len(prompts), **fields))
    del reference, oracle, oracle_weights
    return rows


def check_row(spec: Spec, batch: int, prompt_len: int, **fields) -> dict:
    steps = spec.workload.decode_steps
    return make_row("check", PIPELINE, PIPELINE, case=f"batch={batch} prompt_len={prompt_len} decode_steps={steps}",
                    dtype=dtype_name(spec.dtype), device=spec.device,
                    shape={"batch": batch, "prompt_len": prompt_len, "decode_steps": steps},
                    backends=backends_label(spec), **fields)


def _step_errors(logits: torch.Tensor, oracle64: torch.Tensor, scale: torch.Tensor) -> tuple[float, float]:
    error = (logits.double() - oracle64).abs()
    return error.max().item(), (error.amax(dim=-1) / scale).max().item()


@torch.inference_mode()
def teacher_forced_check(pipeline, oracle, reference, prompts, steps: int, dtype: torch.dtype) -> dict:
    """Feed every pipeline the prompts, then the oracle's greedy token for ``steps`` steps.

    Per step: |logit error| against the oracle, relative to the step's largest oracle logit,
    for the pipeline and (in 16 bits) for the reference pipeline of the same dtype. Allowed:
    ``max(LOGIT_RTOL, ERROR_FACTOR * reference error)``. A greedy token that differs from the
    oracle's is an error only where the oracle's margin between the two exceeds that allowance
    (otherwise it is a near-tie that rounding alone can flip).
    """
    floor = LOGIT_RTOL.get(dtype, 5e-2)
    max_abs = max_rel = reference_rel = 0.0
    margins = []
    agree = total = 0
    logits, oracle_logits = pipeline.prefill(prompts), oracle.prefill(prompts)
    reference_logits = reference.prefill(prompts) if reference is not None else None
    for step in range(steps + 1):
        oracle64 = oracle_logits.double()
        scale = oracle64.abs().amax(dim=-1).clamp_min(1e-6)
        if not torch.isfinite(logits).all():
            return {"status": "FAIL", "max_abs_err": math.inf, "max_rel_err": math.inf,
                    "token_agreement": agree / max(total, 1), "note": f"non-finite logits at step {step}"}
        step_abs, step_rel = _step_errors(logits, oracle64, scale)
        max_abs, max_rel = max(max_abs, step_abs), max(max_rel, step_rel)
        if reference_logits is not None:
            reference_rel = max(reference_rel, _step_errors(reference_logits, oracle64, scale)[1])
        oracle_tokens, tokens = oracle64.argmax(-1), logits.argmax(-1)
        same = oracle_tokens == tokens
        agree += int(same.sum())
        total += same.numel()
        gap = oracle64.gather(-1, oracle_tokens[:, None])[:, 0] - oracle64.gather(-1, tokens[:, None])[:, 0]
        margins.append((gap / scale)[~same])
        if step < steps:
            logits, oracle_logits = pipeline.decode_step(oracle_tokens), oracle.decode_step(oracle_tokens)
            if reference is not None:
                reference_logits = reference.decode_step(oracle_tokens)
    allowed = max(floor, ERROR_FACTOR * reference_rel)
    real_mismatches = int((torch.cat(margins) > allowed).sum()) if margins else 0
    ok = max_rel <= allowed and real_mismatches == 0
    basis = (f"{ERROR_FACTOR:g}x the {dtype_name(dtype)} reference's own error {reference_rel:.3g}"
             if reference is not None else "float32 tolerance")
    note = (f"max logit error {max_rel:.3g} of the largest logit, allowed {allowed:.3g} ({basis}); "
            f"{real_mismatches} greedy tokens differ from the float32 oracle beyond a near-tie")
    return {"status": "PASS" if ok else "FAIL", "max_abs_err": max_abs, "max_rel_err": max_rel,
            "reference_rel_err": reference_rel if reference is not None else None, "allowed_rel_err": allowed,
            "token_agreement": agree / total, "tokens_compared": total, "note": note}


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


def time_prefill(spec: Spec, model, label: str, ceilings: dict, progress) -> list[dict]:
    """Prefill rows for every (batch, prompt_len) of the workload."""
    rows = []
    for batch, prompt_len in workload_pairs(spec):
        progress(f"prefill [{label}]: batch={batch} prompt_len={prompt_len}")
        try:
            rows.append(prefill_row(spec, model, label, ceilings, batch, prompt_len))
        except KbenchError:
            raise
        except Exception as error:  # a crashing backend is a FAIL row, not a lost run
            rows.append(crash_row("prefill", spec, label, batch, prompt_len, error))
    return rows


def crash_row(kind: str, spec: Spec, label: str, batch: int, prompt_len: int, error: Exception) -> dict:
    steps = spec.workload.decode_steps
    shape = {"batch": batch, "prompt_len": prompt_len} | ({"decode_steps": steps} if kind != "prefill" else {})
    case = f"batch={batch} prompt_len={prompt_len}" + {"prefill": "", "decode": f" steps={steps}",
                                                        "check": f" decode_steps={steps}"}[kind]
    return make_row(kind, kind if kind != "check" else PIPELINE, label, case=case, dtype=dtype_name(spec.dtype),
                    device=spec.device, shape=shape, status="FAIL", note=f"raised {type(error).__name__}: {error}",
                    backends=backends_label(spec) if label == PIPELINE else label)


def prefill_flops(spec: Spec, batch: int, prompt_len: int) -> float:
    """FLOPs of one prefill: 2 per weight per token in the layers' matmuls, the LM head on the
    last position of each prompt, and causal attention (QK^T and PV over prompt_len(prompt_len+1)/2 pairs).
    """
    m = spec.model
    layer_weights = (m.heads + 2 * m.kv_heads) * m.head_dim * m.hidden + m.hidden * m.heads * m.head_dim \
        + 3 * m.hidden * m.intermediate
    tokens = batch * prompt_len
    attention = 4 * m.heads * m.head_dim * batch * prompt_len * (prompt_len + 1) / 2
    return m.layers * (2 * layer_weights * tokens + attention) + 2 * batch * m.vocab * m.hidden


@torch.inference_mode()
def prefill_row(spec: Spec, model, label: str, ceilings: dict, batch: int, prompt_len: int) -> dict:
    """Latency of one prefill of ``batch`` prompts of ``prompt_len`` tokens, and time to first token.

    TTFT is the prefill plus choosing the first token (the pipeline's sampling op; argmax
    for a baseline without one), prompts starting on the host. TFLOP/s from ``prefill_flops``,
    as a fraction of the measured bf16 matmul ceiling.
    """
    bench = spec.bench
    prompts = random_prompts(spec.model.vocab, batch, prompt_len, PROMPT_SEED)
    model.reset(batch, prompt_len + spec.workload.decode_steps)
    _peak_memory_start(spec.device)
    prefill = measure(lambda: model.prefill(prompts), device=spec.device, warmup_ms=bench.warmup_ms,
                      rep_ms=bench.rep_ms, flush_l2=False)
    peak = _peak_memory_bytes(spec.device)
    first = measure(lambda: first_token(model, prompts), device=spec.device, warmup_ms=bench.warmup_ms,
                    rep_ms=bench.rep_ms, flush_l2=False)
    flops = prefill_flops(spec, batch, prompt_len)
    tflops = flops / (prefill.median_us * 1e-6) / 1e12
    matmul_tflops = ceilings.get("matmul_bf16_tflops")
    return make_row(
        "prefill", "prefill", label, case=f"batch={batch} prompt_len={prompt_len}", dtype=dtype_name(spec.dtype),
        device=spec.device, shape={"batch": batch, "prompt_len": prompt_len}, status="PASS",
        **_timing_fields(prefill), ttft_us=first.median_us, flops=flops, tflops=tflops,
        throughput_basis=prefill.method, frac_peak_flops=tflops / matmul_tflops if matmul_tflops else None,
        tokens_per_s=batch * prompt_len / (prefill.median_us * 1e-6), peak_memory_bytes=peak,
        backends=backends_label(spec) if label == PIPELINE else label,
    )


def first_token(model, prompts) -> torch.Tensor:
    if hasattr(model, "generate"):
        return model.generate(prompts, 1)
    return model.prefill(prompts).argmax(-1)


def decode_bytes_per_step(spec: Spec, weights, batch: int, prompt_len: int) -> float:
    """Bytes one decode step must read, averaged over the timed steps: every weight but the
    embedding table (a step reads ``batch`` of its rows), plus K and V of every cached token.
    """
    model, steps = spec.model, spec.workload.decode_steps
    weight_bytes = weights.nbytes
    if weights.lm_head.data_ptr() != weights.embedding.data_ptr():
        weight_bytes -= weights.embedding.numel() * weights.embedding.element_size()
    kv_per_token = 2 * model.layers * model.kv_heads * model.head_dim * spec.dtype.itemsize
    # step i (0-based) attends over prompt_len + i + 1 tokens per sequence
    mean_context = prompt_len + 1 + (steps - 1) / 2
    return weight_bytes + kv_per_token * batch * mean_context


def time_decode(spec: Spec, model, label: str, weights, ceilings: dict, progress) -> list[dict]:
    """Decode rows for every (batch, prompt_len) of the workload."""
    rows = []
    for batch, prompt_len in workload_pairs(spec):
        progress(f"decode [{label}]: batch={batch} prompt_len={prompt_len} steps={spec.workload.decode_steps}")
        try:
            rows.append(decode_row(spec, model, label, weights, ceilings, batch, prompt_len))
        except KbenchError:
            raise
        except Exception as error:
            rows.append(crash_row("decode", spec, label, batch, prompt_len, error))
    return rows


@torch.inference_mode()
def decode_row(spec: Spec, model, label: str, weights, ceilings: dict, batch: int, prompt_len: int) -> dict:
    """Per-token latency of ``decode_steps`` steps after a prefill (the prefill is not timed).

    Under ``bench.cuda_graphs`` on CUDA the pipeline replays a captured decode step.
    Roofline: bytes a step must read / step time, as a fraction of the measured copy bandwidth.
    """
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
    timing = measure(decode_steps, device=spec.device, warmup_ms=bench.warmup_ms, rep_ms=bench.rep_ms,
                     flush_l2=False, reset=lambda: model.prefill(prompts))
    peak = _peak_memory_bytes(spec.device)
    if graph:
        model.drop_decode_graph()
    step_s = timing.median_us * 1e-6 / steps
    bytes_per_step = decode_bytes_per_step(spec, weights, batch, prompt_len)
    gbps = bytes_per_step / step_s / 1e9
    copy_gbps = ceilings.get("copy_gbps")
    return make_row(
        "decode", "decode", label, case=f"batch={batch} prompt_len={prompt_len} steps={steps}",
        dtype=dtype_name(spec.dtype), device=spec.device,
        shape={"batch": batch, "prompt_len": prompt_len, "decode_steps": steps}, status="PASS",
        **_timing_fields(timing, per=steps), bytes=bytes_per_step, gbps=gbps, throughput_basis=timing.method,
        frac_peak_bw=gbps / copy_gbps if copy_gbps else None, tokens_per_s=batch / step_s,
        peak_memory_bytes=peak, cuda_graph=graph, cuda_graph_note=graph_note,
        backends=backends_label(spec) if label == PIPELINE else label,
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


# -- FAIL everywhere ----------------------------------------------------------------------

def mark_pipeline_failures(spec: Spec, rows: list[dict]) -> list[dict]:
    """Prefill and decode rows of the pipeline become FAIL when a backend it uses failed its
    op check or the pipeline failed its end-to-end check.
    """
    family_of = {op: family for family, ops in PIPELINE_OPS.items() for op in ops}
    failed = sorted({f"{r['op']}/{r['backend']}" for r in rows
                     if r["kind"] == "op" and r["status"] == "FAIL" and r["op"] in family_of
                     and r["backend"] == backend_for(spec.backends, r["op"], family_of[r["op"]])})
    if any(r["kind"] == "check" and r["status"] == "FAIL" for r in rows):
        failed.append("end-to-end check")
    if not failed:
        return rows
    note = f"pipeline uses a failing part: {', '.join(failed)}"
    return [{**r, "status": "FAIL", "note": note} if r["kind"] in ("prefill", "decode") and r["backend"] == PIPELINE
            else r for r in rows]



# -- the command line ----------------------------------------------------------------------

@click.command("run")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--attention", default=None, metavar="NAME", help="Backend for the attention family.")
@click.option("--norm", default=None, metavar="NAME", help="Backend for the norm family.")
@click.option("--rope", default=None, metavar="NAME", help="Backend for the rope family.")
@click.option("--ffn", default=None, metavar="NAME", help="Backend for the ffn family.")
@click.option("--sampling", default=None, metavar="NAME", help="Backend for the sampling family.")
@click.option("--backend", "backend", multiple=True, metavar="FAMILY=NAME", help="Backend for a family (repeatable).")
@click.option("--dtype", default=None, help="float32, bfloat16 (bf16), float16 (fp16).")
@click.option("--device", default=None, help="cpu or cuda.")
@click.option("--batch", default=None, metavar="1,8,32", help="Batch sizes of the workload.")
@click.option("--prompt-len", "prompt_len", default=None, metavar="128,1024", help="Prompt lengths of the workload.")
@click.option("--decode-steps", "decode_steps", type=click.IntRange(min=1), default=None, help="Decode steps timed.")
@click.option("--layers", type=click.IntRange(min=1), default=None, help="Build the model with this many layers.")
@click.option("--cuda-graphs/--no-cuda-graphs", "cuda_graphs", default=None,
              help="Decode under a captured CUDA graph. (Op rows report graph-replay kernel time on CUDA either way.)")
@click.option("--out", "out_dir", default="results", type=click.Path(file_okay=False), show_default=True,
              help="Folder for the run record.")
@click.option("--baseline", "baselines", multiple=True, type=click.Choice(["hf", "reference"]),
              help="Also time transformers' LLaMA (hf) or the all-reference pipeline end to end.")
@click.option("--skip-ops", is_flag=True, help="Skip the op-level checks and timings.")
@click.option("--skip-e2e", is_flag=True, help="Skip the end-to-end pipeline check and timings.")
def run_command(spec, out_dir, baselines, skip_ops, skip_e2e, **flags):
    """Check and time the SPEC's backends op by op and end to end; write a run record.

    Exit status: 0 all PASS, 1 something FAILed, 2 a mistake in the spec or the flags.
    """
    if skip_ops and skip_e2e:
        raise KbenchError("--skip-ops and --skip-e2e together leave nothing to run.", "Drop one of them.")
    overrides = Overrides.from_cli(**flags)
    options = RunOptions(out_dir=Path(out_dir), baselines=tuple(dict.fromkeys(baselines)), skip_ops=skip_ops,
                         skip_e2e=skip_e2e, command=tuple(["kbench", *sys.argv[1:]]))
    result = run(spec, overrides, options, Console(), progress_console=Console(stderr=True))
    sys.exit(1 if result.failed else 0)
