"""Time the ``triton`` backend's kernels against torch.compile / SDPA / the reference.

    python benchmarks/triton_bench.py [--ops rmsnorm,attention_decode] [--quick] [--sweep] [--out DIR]

Every timing is ``triton.testing.do_bench`` (median, L2 flushed between repetitions). GB/s
counts the op's own ``bytes(case, dtype)``, TFLOP/s its ``flops(case)``; ``%copy`` is the
fraction of the 3.0 TB/s device-to-device copy measured on the H100 machine. Each Triton
output is also compared with the baseline's under the op's tolerance (``check``). Inputs are
drawn on the GPU in bfloat16 and follow the ops' contracts. ``--out`` receives the table as
JSON and the configs the autotuner chose.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from functools import partial

import torch
import triton

from kbench.config import RopeConfig
from kbench.ops.base import Case
from kbench.ops.rope import rope_inv_freq
from kbench.plugins import get_registry

COPY_GBPS = 3000.0
DTYPE = torch.bfloat16
LLAMA2 = {"hidden": 4096, "intermediate": 11008, "heads": 32, "kv_heads": 32, "head_dim": 128, "vocab": 32000}
LLAMA3 = {"hidden": 4096, "intermediate": 14336, "heads": 32, "kv_heads": 8, "head_dim": 128, "vocab": 128256}


def _randn(*shape, scale=1.0):
    return torch.randn(*shape, device="cuda", dtype=torch.float32).mul_(scale).to(DTYPE)


def cases(quick: bool) -> dict[str, list[Case]]:
    """The target shapes of the issue, per op (``--quick``: the largest and one small)."""
    tokens = [1, 256, 4096, 32768] if not quick else [4096, 32768]
    out = {
        "rmsnorm": [Case("rmsnorm", tokens=t, hidden=4096) for t in tokens],
        "add_rmsnorm": [Case("add_rmsnorm", tokens=t, hidden=4096) for t in tokens],
        "rope": [Case("rope", tokens=t, heads=32, kv_heads=kv, head_dim=128, seq_len=4096, style=style)
                 for t in tokens[-1 if quick else -2:] for kv in (32, 8) for style in ("half", "interleaved")],
        "swiglu": [Case("swiglu", tokens=t, intermediate=11008) for t in tokens],
        "ffn": [Case("ffn", tokens=t, hidden=4096, intermediate=11008) for t in (16, 4096)],
        "attention_prefill": [
            Case("attention_prefill", batch=b, seq_len=n, **_attn(model))
            for model in (LLAMA2, LLAMA3) for b, n in ((4, 4096), (1, 8192), (16, 512))[: 2 if quick else 3]
        ],
        "attention_decode": [
            Case("attention_decode", batch=b, context=c, layout=layout, block_size=256, **_attn(model))
            for model in (LLAMA2, LLAMA3) for b in ((1, 64) if quick else (1, 16, 64))
            for c in ((512, 8192) if quick else (512, 2048, 8192)) for layout in ("contiguous",)
        ] + [Case("attention_decode", batch=16, context=4096, layout="paged", block_size=16, **_attn(LLAMA3))],
        "sample": [
            Case("sample", batch=64, vocab=v, temperature=t, top_k=k, top_p=p)
            for v in (32000, 128256) for t, k, p in ((0.0, 0, 1.0), (1.0, 0, 1.0), (0.8, 50, 1.0), (0.8, 0, 0.9),
                                                     (0.8, 50, 0.95))
        ],
        "topk": [Case("topk", batch=64, vocab=v, k=50) for v in (32000, 128256)],
    }
    first = ("attention_prefill", "attention_decode", "sample", "topk")
    return {name: out[name] for name in (*first, *(n for n in out if n not in first))}


def _attn(model):
    return {k: model[k] for k in ("heads", "kv_heads", "head_dim")}


def inputs_for(case: Case) -> dict:
    """The op's keyword arguments for ``case``, drawn on the GPU."""
    op = case.op
    if op in ("rmsnorm", "add_rmsnorm"):
        inputs = {"x": _randn(case["tokens"], case["hidden"]), "weight": 1 + _randn(case["hidden"], scale=0.1),
                  "eps": 1e-5}
        if op == "add_rmsnorm":
            inputs["residual"] = _randn(case["tokens"], case["hidden"])
        return inputs
    if op == "rope":
        tokens, head_dim = case["tokens"], case["head_dim"]
        return {"q": _randn(tokens, case["heads"], head_dim), "k": _randn(tokens, case["kv_heads"], head_dim),
                "positions": torch.arange(tokens, device="cuda") % case["seq_len"],
                "inv_freq": rope_inv_freq(head_dim, RopeConfig(), case["seq_len"]).cuda(), "style": case["style"]}
    if op == "swiglu":
        shape = (case["tokens"], case["intermediate"])
        return {"gate": _randn(*shape, scale=2.0), "up": _randn(*shape)}
    if op == "ffn":
        hidden, intermediate = case["hidden"], case["intermediate"]
        return {"x": _randn(case["tokens"], hidden), "w_gate_up": _randn(2 * intermediate, hidden, scale=hidden ** -0.5),
                "w_down": _randn(hidden, intermediate, scale=intermediate ** -0.5)}
    if op == "attention_prefill":
        batch, seq_len = case["batch"], case["seq_len"]
        tokens = batch * seq_len
        return {"q": _randn(tokens, case["heads"], case["head_dim"]),
                "k": _randn(tokens, case["kv_heads"], case["head_dim"]),
                "v": _randn(tokens, case["kv_heads"], case["head_dim"]),
                "cu_seqlens": torch.arange(0, tokens + 1, seq_len, device="cuda", dtype=torch.int32),
                "max_seqlen": seq_len, "scale": case["head_dim"] ** -0.5}
    if op == "attention_decode":
        batch, context, kv_heads, head_dim = case["batch"], case["context"], case["kv_heads"], case["head_dim"]
        inputs = {"q": _randn(batch, case["heads"], head_dim),
                  "cache_seqlens": torch.full((batch,), context, device="cuda", dtype=torch.int32),
                  "block_table": None, "scale": head_dim ** -0.5}
        if case["layout"] == "paged":
            block_size = case["block_size"]
            blocks = batch * triton.cdiv(context, block_size)
            inputs["block_table"] = torch.randperm(blocks, device="cuda", dtype=torch.int32).view(batch, -1)
            shape = (blocks, block_size, kv_heads, head_dim)
        else:
            shape = (batch, context, kv_heads, head_dim)
        inputs["k_cache"], inputs["v_cache"] = _randn(*shape), _randn(*shape)
        return inputs
    if op == "sample":
        batch = case["batch"]
        return {"logits": _randn(batch, case["vocab"], scale=3.0), "uniforms": torch.rand(batch, device="cuda"),
                "temperature": case["temperature"], "top_k": case["top_k"], "top_p": case["top_p"]}
    if op == "topk":
        return {"logits": _randn(case["batch"], case["vocab"], scale=3.0), "k": case["k"]}
    raise ValueError(op)


BASELINES = {
    "attention_prefill": ("sdpa-flash", "sdpa"),
    "attention_decode": ("sdpa-flash", "sdpa"),
    "ffn": ("reference",),
    "sample": ("compile", "reference"),
    "topk": ("compile", "reference"),
}


def _clone(inputs):
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


GRAPH_OPS = ("attention_decode", "sample", "topk")


def _time(fn, graph: bool) -> dict:
    """Median of do_bench (L2 flushed); for decode-sized ops also a CUDA-graph replay (kernel time)."""
    times = {"us": triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3}
    if graph:
        times["graph_us"] = triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3
    return times


def bench_case(registry, case: Case, baselines: tuple[str, ...]) -> list[dict]:
    op = registry.op(case.op)
    inputs = inputs_for(case)
    rows = []
    triton_out = None
    for backend in ("triton", *baselines):
        row = {"op": case.op, "case": case.label, "backend": backend}
        try:
            impl = registry.resolve(case.op, backend, case, DTYPE, "cuda")
            out = impl(**_clone(inputs))
            if backend == "triton":
                triton_out = out
                row["check_vs_triton"] = ""
            elif triton_out is not None:
                row["check_vs_triton"] = "PASS" if op.compare(triton_out, out, op.tolerance(DTYPE)).ok else "FAIL"
            row |= _time(lambda impl=impl: impl(**inputs), case.op in GRAPH_OPS)
        except Exception as error:  # a baseline that cannot run here is reported, never fatal
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:100] if str(error) else ''}"
            rows.append(row)
            continue
        nbytes, flops, ms = op.bytes(case, DTYPE), op.flops(case), row["us"] / 1e3
        row |= {"gbps": nbytes / ms / 1e6, "tflops": flops / ms / 1e9, "pct_copy": 100 * nbytes / ms / 1e6 / COPY_GBPS}
        rows.append(row)
    base = next((r for r in rows[1:] if "us" in r), None)
    if base and "us" in rows[0]:
        rows[0]["speedup"] = base["us"] / rows[0]["us"]
        if "graph_us" in rows[0] and "graph_us" in base:
            rows[0]["graph_speedup"] = base["graph_us"] / rows[0]["graph_us"]
    return rows


def print_row(row: dict) -> None:
    if "error" in row:
        print(f"{row['op']:<18} {row['case'][:62]:<62} {row['backend']:<11} {row['error'][:90]}", flush=True)
        return
    speedup = f"{row['speedup']:.2f}x" if "speedup" in row else ""
    if "graph_us" in row:
        speedup += f" graph {row['graph_us']:.1f}us" + (f" {row['graph_speedup']:.2f}x" if "graph_speedup" in row else "")
    print(f"{row['op']:<18} {row['case'][:62]:<62} {row['backend']:<11} {row['us']:>10.1f} {row['gbps']:>8.0f} "
          f"{row['tflops']:>7.1f} {row['pct_copy']:>6.1f}% {row.get('check_vs_triton', ''):<5} {speedup}", flush=True)


def _gbps(ms: float, nbytes: float) -> str:
    return f"{ms * 1e3:8.1f}us {nbytes / ms / 1e6:6.0f} GB/s {100 * nbytes / ms / 1e6 / COPY_GBPS:5.1f}%"


def _launch_ms(kernel, grid, *args, **kwargs) -> float:
    return triton.testing.do_bench(lambda: kernel[grid](*args, **kwargs), warmup=25, rep=100, return_mode="median")


def sweep() -> None:
    """Launch parameters of the bandwidth-bound kernels, timed directly (tuning aid)."""
    from kbench_triton import attention_decode as decode
    from kbench_triton import ffn, norm
    from kbench_triton import rope as rope_module

    hidden = 4096
    for tokens in (4096, 32768):
        x, weight = _randn(tokens, hidden), _randn(hidden)
        out = torch.empty_like(x)
        for warps in (4, 8, 16):
            ms = _launch_ms(norm._rmsnorm_kernel, (tokens,), x, x, weight, out, hidden, hidden, hidden, hidden, 1e-5,
                            HAS_RESIDUAL=False, BLOCK=hidden, num_warps=warps)
            print(f"sweep rmsnorm tokens={tokens} warps={warps} {_gbps(ms, 2 * x.numel() * 2)}", flush=True)
    tokens, intermediate = 32768, 11008
    gate, up = _randn(tokens, intermediate), _randn(tokens, intermediate)
    out = torch.empty_like(gate)
    for block in (1024, 2048, 4096, 8192):
        for warps in (4, 8):
            ms = _launch_ms(ffn._swiglu_kernel, (tokens, triton.cdiv(intermediate, block)), gate, up, out,
                            intermediate, intermediate, intermediate, intermediate, BLOCK=block, num_warps=warps)
            print(f"sweep swiglu BLOCK={block} warps={warps} {_gbps(ms, 3 * gate.numel() * 2)}", flush=True)
    gate = up = out = None
    positions = torch.arange(tokens, device="cuda") % 4096
    inv_freq = rope_inv_freq(128, RopeConfig(), 4096).cuda()
    for kv_heads in (32, 8):
        q, k = _randn(tokens, 32, 128), _randn(tokens, kv_heads, 128)
        nbytes = 2 * (q.numel() + k.numel()) * 2
        for block_heads in (4, 8, 16, 32):
            for warps in (2, 4, 8):
                ms = _launch_ms(rope_module._rope_kernel, (tokens,), q, k, positions, inv_freq, *q.stride(),
                                *k.stride(), 32, kv_heads, HALF=64, INTERLEAVED=False, PRECISE_TRIG=True,
                                BLOCK_HEADS=block_heads, BLOCK_HALF=64, num_warps=warps)
                print(f"sweep rope kv_heads={kv_heads} BLOCK_HEADS={block_heads} warps={warps} {_gbps(ms, nbytes)}",
                      flush=True)
    default = decode.PROGRAMS_PER_SM
    for kv_heads, batch, context in ((32, 1, 8192), (8, 1, 8192), (8, 4, 2048), (32, 1, 512)):
        case = Case("attention_decode", batch=batch, context=context, layout="contiguous", block_size=256,
                    heads=32, kv_heads=kv_heads, head_dim=128)
        inputs = inputs_for(case)
        nbytes = 2 * batch * context * kv_heads * 128 * 2
        for per_sm in (2, 4, 8, 16):
            decode.PROGRAMS_PER_SM = per_sm
            decode.attention_decode(**inputs)
            ms = triton.testing.do_bench_cudagraph(partial(decode.attention_decode, **inputs), rep=100,
                                                   return_mode="median")
            splits = decode.num_splits(batch, kv_heads, context, torch.device("cuda"))
            print(f"sweep decode kv_heads={kv_heads} batch={batch} context={context} per_sm={per_sm} "
                  f"splits={splits} graph {_gbps(ms, nbytes)}", flush=True)
    decode.PROGRAMS_PER_SM = default


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", default="")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile where it is not the baseline")
    parser.add_argument("--budget-s", type=float, default=math.inf, help="stop starting new cases after this")
    parser.add_argument("--out", default=os.environ.get("OUT", ""))
    parser.add_argument("--sweep", action="store_true", help="time launch-parameter variants first")
    args = parser.parse_args(argv)
    if args.sweep:
        sweep()
    registry = get_registry()
    wanted = [o for o in args.ops.split(",") if o]
    started = time.time()
    rows = []
    print(f"{'op':<18} {'case':<62} {'backend':<11} {'us':>10} {'GB/s':>8} {'TFLOP/s':>7} {'%copy':>7} check speedup")
    for op_name, op_cases in cases(args.quick).items():
        if wanted and op_name not in wanted:
            continue
        for case in op_cases:
            if time.time() - started > args.budget_s:
                print(f"budget spent: skipping {case}")
                continue
            for row in bench_case(registry, case, BASELINES.get(op_name, ("compile",))):
                print_row(row)
                rows.append(row)
            torch.cuda.empty_cache()
            _write(args.out, rows)
    print(json.dumps(_write(args.out, rows), indent=1))
    return 0


def _write(out: str, rows: list[dict]) -> dict:
    """Rewrite the JSON record (after every case, so a run cut short keeps what it measured)."""
    from kbench_triton.plugin import tuned_configs

    configs = tuned_configs()
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "triton_bench.json"), "w") as f:
            json.dump({"rows": rows, "tuned_configs": configs, "device": torch.cuda.get_device_name()}, f, indent=1)
    return configs


if __name__ == "__main__":
    sys.exit(main())
