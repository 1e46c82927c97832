"""``kbench run SPEC --tp N`` and ``kbench bench all_reduce --tp N``: the same steps on N ranks.

Every rank resolves the plan over its shard's shapes (``Shard.model``), checks and times the
ops there, checks its part of the tensor-parallel pipeline against the all-reference one over
the same ranks, and times prefill and decode with the ranks agreeing on every repetition (the
slowest rank counts). The ``all_reduce`` the step makes is checked against the sum of every
rank's inputs (drawn again locally) and timed at the step's shapes, beside the bus bandwidth
the run measures. Rank 0 writes the one record, with ``record["parallel"]``: the rank count,
per-rank weight and peak memory, the all-reduce time per decode step and the decode roofline
at N ranks ((weights + KV) / N per rank against N x the copy bandwidth).
"""

from __future__ import annotations

import dataclasses
import io

import torch
from rich.console import Console

from kbench.bench.limits import flops_ceiling_tflops
from kbench.bench.timing import AcrossRanks, measure
from kbench.distributed import check_ranks_fit, group_backend, launch
from kbench.errors import KbenchError
from kbench.model.arithmetic import decode_bytes_at_ranks, prefill_flops
from kbench.model.tensor_parallel import Shard, check_tensor_parallel
from kbench.ops.base import Case, dtype_name
from kbench.ops.comm import rank_inputs, step_cases
from kbench.registry import REFERENCE
from kbench.results.rows import OpRow, Row

BUS_PROBE_BYTES = {"cuda": 256 * 2**20, "cpu": 4 * 2**20}


def check_tensor_parallel_run(spec, ranks: int, baselines) -> None:
    """The mistakes a TP run would only find on its ranks: shapes, baselines, the comm backend."""
    check_tensor_parallel(spec.model, ranks, where=f"{spec.path} (--tp)")
    check_ranks_fit(ranks, spec.device)
    if "hf" in baselines:
        raise KbenchError("--baseline hf runs transformers' LLaMA on one device; it cannot run over ranks.",
                          "Drop --baseline hf, or run without --tp.")


def rank_spec(spec, shard: Shard):
    """The spec one rank runs: the same, at its shard's shapes."""
    return dataclasses.replace(spec, model=shard.model)


def quiet_console() -> Console:
    return Console(file=io.StringIO())


def all_reduce_rows(registry, backends: list[str], cases: list[Case], dtype, device, bench, bus_gbps: float | None,
                    seed: int = 0) -> list[Row]:
    """Check (against the sum of every rank's inputs, in float64) and time each backend at each
    case on every rank together; GB/s are bus GB/s, ``frac_peak_bw`` of the measured ``bus_gbps``."""
    from kbench.bench.sweep import throughput

    op, across, rank = registry.op("all_reduce"), AcrossRanks(), torch.distributed.get_rank()
    device = torch.device(device)
    rows = []
    for case in cases:
        x = rank_inputs(case, dtype, device, seed, rank)["x"]
        expected = sum(rank_inputs(case, dtype, device, seed, r)["x"].double() for r in range(case["ranks"]))
        for backend in backends:
            row = OpRow(op=op.name, backend=backend, case=case.label, dtype=dtype_name(dtype), device=str(device),
                        shape=case.as_dict(), flops=float(op.flops(case)), bytes=float(op.bytes(case, dtype)))
            impl = registry.get(op.name, backend)
            reason = impl.reason(case, dtype, device)
            if reason:
                rows.append(dataclasses.replace(row, status="SKIP", note=reason))
                continue
            out = impl(x=x.clone(), inplace=case["inplace"])
            check = op.compare(out, expected.to(dtype), op.tolerance(dtype))
            ok = across.slowest([0.0 if check.ok else 1.0])[0] == 0.0  # every rank's share must be right
            row = dataclasses.replace(row, status="PASS" if ok else "FAIL", max_abs_err=check.max_abs_err,
                                      max_rel_err=check.max_rel_err, note=check.detail or None)
            if ok:
                work = x.clone()
                timing = measure(lambda: impl(x=work, inplace=case["inplace"]), device=device,  # noqa: B023
                                 warmup_ms=bench.warmup_ms, rep_ms=bench.rep_ms, flush_l2=False,
                                 reset=lambda: work.copy_(x), across=across)  # noqa: B023
                row = dataclasses.replace(row, latency_us=timing.median_us, p20_us=timing.p20_us,
                                          p80_us=timing.p80_us, min_us=timing.min_us, mean_us=timing.mean_us,
                                          reps=timing.reps, method=timing.method,
                                          **throughput(row.flops, row.bytes, timing, {"copy_gbps": bus_gbps}))
            rows.append(row)
    return rows


def measure_bus_gbps(device: str, dtype, bench) -> float:
    """Bus GB/s of the group's own all-reduce (``torch.distributed.all_reduce``) on a large tensor."""
    ranks = torch.distributed.get_world_size()
    kind = torch.device(device).type
    x = torch.ones(BUS_PROBE_BYTES[kind] // dtype.itemsize, dtype=dtype, device=device)
    timing = measure(lambda: torch.distributed.all_reduce(x), device=device, warmup_ms=bench.warmup_ms,
                     rep_ms=bench.rep_ms, flush_l2=False, reset=lambda: x.fill_(1), across=AcrossRanks())
    return 2 * (ranks - 1) / ranks * x.numel() * dtype.itemsize / (timing.median_us * 1e-6) / 1e9


# -- kbench run SPEC --tp N -----------------------------------------------------------------

def run_tensor_parallel(spec_path, overrides, options, ranks: int, console: Console, progress_console: Console):
    """``kbench run`` over ``ranks`` ranks; the ``RunResult`` of rank 0's record."""
    from kbench.commands.run import RunResult
    from kbench.plugins import get_registry
    from kbench.results.load import read_json
    from kbench.spec import load_spec

    spec = load_spec(spec_path, overrides)
    check_tensor_parallel_run(spec, ranks, options.baselines)
    from kbench.plan import resolve_plan

    # every backend can run a rank's shapes here (forked ranks inherit the loaded registry)
    resolve_plan(rank_spec(spec, Shard(spec.model, 0, ranks)), get_registry())
    path = launch(_run_rank, ranks, spec.device, str(spec_path), overrides, options)
    from kbench.results.report import print_run

    record = read_json(path)
    print_run(record, console)
    console.print(f"record: {path}", highlight=False)
    return RunResult(record, path)


def _run_rank(rank: int, ranks: int, spec_path: str, overrides, options):
    from kbench.bench.end_to_end import PIPELINE, time_end_to_end
    from kbench.bench.pipeline_check import check_pipeline
    from kbench.commands.run import check_and_time_ops, mark_pipeline_failures, progress_display
    from kbench.console import make_console
    from kbench.env import machine_record, machine_state, measure_ceilings
    from kbench.model import build_pipeline
    from kbench.model.tensor_parallel import TensorParallel, load_shard_weights
    from kbench.plan import resolve_plan
    from kbench.plugins import get_registry
    from kbench.results.record import build_record, write_record
    from kbench.spec import load_spec

    spec = load_spec(spec_path, overrides)
    start_state = machine_state(spec.device)
    shard = Shard(spec.model, rank, ranks)
    plan = resolve_plan(rank_spec(spec, shard), get_registry())
    progress_console = make_console(stderr=True) if rank == 0 else quiet_console()
    rows: list[Row] = []
    parallel: dict = {"ranks": ranks, "group_backend": group_backend(spec.device), "all_reduce": plan.backend("all_reduce")}
    with progress_display(progress_console) as progress:
        progress("measuring device ceilings")
        ceilings = measure_ceilings(spec.device)
        ceilings["all_reduce_bus_gbps"] = measure_bus_gbps(spec.device, spec.dtype, spec.bench)
        if not options.skip_ops:
            rows += check_and_time_ops(plan, ceilings, progress)
            progress("ops: all_reduce across ranks")
            backends = list(dict.fromkeys([REFERENCE, plan.backend("all_reduce")]))
            rows += all_reduce_rows(plan.registry, backends, step_cases(spec.model, spec.workload, ranks), spec.dtype,
                                    spec.device, spec.bench, ceilings["all_reduce_bus_gbps"])
        if not options.skip_e2e:
            progress("loading weights (this rank's shard)")
            weights = load_shard_weights(spec, shard)
            pipeline = build_pipeline(plan, weights, TensorParallel(shard))
            rows += check_pipeline(plan, weights, pipeline, progress)
            rows += time_end_to_end(plan, pipeline, PIPELINE, weights, ceilings, progress)
            del pipeline
            if "reference" in options.baselines:
                baseline = build_pipeline(plan.with_reference(), weights, TensorParallel(shard))
                rows += time_end_to_end(plan, baseline, "reference", weights, ceilings, progress)
                del baseline
            parallel["weight_bytes_per_rank"] = gathered(weights.nbytes)
    rows = whole_model_rows(spec, ranks, ceilings, mark_pipeline_failures(plan, rows))
    parallel["peak_memory_bytes_per_rank"] = gathered(max((r.peak_memory_bytes or 0) for r in rows
                                                          if r.kind in ("prefill", "decode")) if rows else 0)
    parallel["all_reduce_per_decode_step_us"] = all_reduce_per_step(spec, rows, plan.backend("all_reduce"))
    machines = gathered(machine_record(start_state, machine_state(spec.device)))  # each rank's own GPU
    if rank != 0:
        return None
    throttled = [m["throttled"] for m in machines if m["throttled"] is not None]
    record = build_record(name=spec.name, command=options.command, spec=spec.to_dict(), backends=plan.record(),
                          registry=plan.registry, device=spec.device, ceilings=ceilings, rows=rows,
                          machine={**machines[0], "throttled": any(throttled) if throttled else None,
                                   "ranks": machines})
    record["parallel"] = parallel
    return write_record(record, options.out_dir)


def gathered(value) -> list:
    """``value`` of every rank, in rank order."""
    values = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(values, value)
    return values


def whole_model_rows(spec, ranks: int, ceilings: dict, rows: list[Row]) -> list[Row]:
    """Prefill and decode rows as the whole model's work over ``ranks`` ranks: FLOPs and bytes
    of every rank together, against ``ranks`` x the device's ceilings (the TP roofline)."""
    copy_gbps, matmul_tflops = ceilings.get("copy_gbps"), flops_ceiling_tflops(ceilings)
    out = []
    for row in rows:
        if row.kind == "decode" and row.latency_us and row.backend != "hf":
            step_bytes = decode_bytes_at_ranks(spec, ranks, row.shape["batch"], row.shape["prompt_len"])
            gbps = step_bytes / (row.latency_us * 1e-6) / 1e9
            row = dataclasses.replace(row, bytes=step_bytes, gbps=gbps,
                                      frac_peak_bw=gbps / (ranks * copy_gbps) if copy_gbps else None)
        elif row.kind == "prefill" and row.latency_us:
            flops = prefill_flops(spec, row.shape["batch"], row.shape["prompt_len"])
            tflops = flops / (row.latency_us * 1e-6) / 1e12
            row = dataclasses.replace(row, flops=flops, tflops=tflops,
                                      frac_peak_flops=tflops / (ranks * matmul_tflops) if matmul_tflops else None)
        out.append(row)
    return out


def all_reduce_per_step(spec, rows: list[Row], backend: str) -> dict:
    """batch -> µs a decode step spends in all-reduces: 2 per layer (after o and down) and one for
    the embedding, each at the op row's time for ``[batch, hidden]`` (there is no per-op step
    breakdown to read it from)."""
    per_step = 2 * spec.model.layers + 1
    latency = {r.shape["tokens"]: r.latency_us for r in rows
               if r.kind == "op" and r.op == "all_reduce" and r.backend == backend and r.latency_us}
    return {str(batch): per_step * latency[batch] for batch in spec.workload.batch if batch in latency}


# -- kbench bench all_reduce --tp N -----------------------------------------------------------

def bench_all_reduce(ranks: int, backends: list[str], dims: dict[str, list[str]], dtype, device, bench, out_dir):
    """The path of rank 0's record of the all_reduce sweep at ``ranks`` ranks, written to ``out_dir``."""
    from kbench.commands.bench import sweep_cases
    from kbench.plugins import get_registry

    registry = get_registry()
    cases = [case.replace(ranks=ranks) for case in sweep_cases(registry.op("all_reduce"), dims)]
    return launch(_bench_rank, ranks, device, backends, cases, dtype, device, bench, out_dir)


def _bench_rank(rank: int, ranks: int, backends, cases, dtype, device, bench, out_dir):
    from kbench.commands.bench import bench_record
    from kbench.plugins import get_registry

    registry = get_registry()
    for backend in backends:  # a backend that cannot run on this group at all: exit 2, not rows of SKIP
        if all(registry.get("all_reduce", backend).reason(case, dtype, torch.device(device)) for case in cases):
            registry.resolve("all_reduce", backend, cases[0], dtype, device)
    bus_gbps = measure_bus_gbps(device, dtype, bench)
    rows = all_reduce_rows(registry, backends, cases, dtype, device, bench, bus_gbps)
    if rank != 0:
        return None
    record = bench_record("all_reduce", backends, rows, registry, device, dtype, bench,
                          ceilings={"all_reduce_bus_gbps": bus_gbps})
    record["parallel"] = {"ranks": ranks, "group_backend": group_backend(device)}
    from kbench.results.record import write_record

    return write_record(record, out_dir)
