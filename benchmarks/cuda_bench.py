"""Time the ``cuda`` backend's kernels against torch.compile and the reference at LLaMA shapes.

    python benchmarks/cuda_bench.py [--ops rmsnorm,swiglu] [--baselines compile,reference]
                                    [--quick] [--json results.json]
    python benchmarks/cuda_bench.py --once     # each op once at a small shape (for
                                               # compute-sanitizer --tool memcheck)

Every timing is ``triton.testing.do_bench`` (median, L2 flushed between repetitions). GB/s
counts the op's own ``bytes(case, dtype)`` (each input read once, each output written once;
for attention_decode the K/V rows the sequences hold, plus q and out), and ``%peak`` is the
fraction of the 3.0 TB/s device-to-device copy measured on the H100 machine. Inputs are drawn
on the GPU (large caches would take minutes on the CPU); they follow the ops' contracts.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

from kbench.config import RopeConfig
from kbench.ops.base import Case
from kbench.ops.rope import rope_inv_freq
from kbench.plugins import get_registry

COPY_GBPS = 3000.0
DTYPE = torch.bfloat16


def _randn(*shape, scale=1.0):
    return torch.randn(*shape, device="cuda", dtype=torch.float32).mul_(scale).to(DTYPE)


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
    if op == "sample":
        batch = case["batch"]
        return {"logits": _randn(batch, case["vocab"], scale=3.0),
                "uniforms": torch.rand(batch, device="cuda"), "temperature": case["temperature"],
                "top_k": case["top_k"], "top_p": case["top_p"]}
    if op == "topk":
        return {"logits": _randn(case["batch"], case["vocab"], scale=3.0), "k": case["k"]}
    if op == "attention_decode":
        batch, context, kv_heads, head_dim = case["batch"], case["context"], case["kv_heads"], case["head_dim"]
        inputs = {"q": _randn(batch, case["heads"], head_dim),
                  "cache_seqlens": torch.full((batch,), context, device="cuda", dtype=torch.int32),
                  "scale": head_dim ** -0.5}
        if case["layout"] == "paged":
            block_size = case["block_size"]
            per_seq = -(-context // block_size)
            table = torch.randperm(batch * per_seq, device="cuda", dtype=torch.int32).view(batch, per_seq)
            shape = (batch * per_seq, block_size, kv_heads, head_dim)
            inputs["block_table"] = table
        else:
            shape = (batch, context, kv_heads, head_dim)
            inputs["block_table"] = None
        inputs["k_cache"], inputs["v_cache"] = _randn(*shape), _randn(*shape)
        return inputs
    raise ValueError(f"no inputs for {op}")


def decode_bytes(case: Case) -> float:
    kv = 2 * case["batch"] * case["context"] * case["kv_heads"] * case["head_dim"] * DTYPE.itemsize
    return kv + 2 * case["batch"] * case["heads"] * case["head_dim"] * DTYPE.itemsize


def bench_cases(quick: bool) -> list[Case]:
    """llama2-7b prefill/decode shapes, llama3-8b GQA decode, sampling at both vocabularies."""
    cases = []
    for tokens in (1, 32) if quick else (1, 4096, 32768):
        cases += [Case("rmsnorm", tokens=tokens, hidden=4096), Case("add_rmsnorm", tokens=tokens, hidden=4096)]
    for tokens in (4096,) if quick else (1, 32768):
        cases += [Case("swiglu", tokens=tokens, intermediate=11008)]
        for style in ("half", "interleaved"):
            cases.append(Case("rope", tokens=tokens, heads=32, kv_heads=32, head_dim=128, seq_len=4096, style=style))
    for vocab in (32000, 128256):
        cases.append(Case("topk", batch=64, vocab=vocab, k=50))
        for temperature, top_k, top_p in ((0.0, 0, 1.0), (0.8, 0, 1.0), (0.8, 50, 1.0), (0.8, 0, 0.9),
                                          (0.8, 50, 0.9)):
            cases.append(Case("sample", batch=64, vocab=vocab, temperature=temperature, top_k=top_k, top_p=top_p))
    batches, contexts = ((1, 64), (512, 8192)) if quick else ((1, 8, 64), (512, 2048, 8192))
    for heads, kv_heads in ((32, 32), (32, 8)):
        for batch in batches:
            for context in contexts:
                for layout in ("contiguous", "paged"):
                    cases.append(Case("attention_decode", batch=batch, context=context, heads=heads,
                                      kv_heads=kv_heads, head_dim=128, layout=layout, block_size=256))
    seen, unique = set(), []
    for case in cases:
        if case not in seen:
            seen.add(case)
            unique.append(case)
    return unique


def time_us(fn) -> float:
    import triton.testing

    return 1000.0 * triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")


def run_once() -> int:
    """Each op of the cuda backend once at a small shape, synchronised: for memcheck."""
    registry = get_registry()
    small = [Case("rmsnorm", tokens=7, hidden=4096), Case("add_rmsnorm", tokens=7, hidden=320),
             Case("rope", tokens=5, heads=32, kv_heads=8, head_dim=128, seq_len=64, style="half"),
             Case("rope", tokens=5, heads=4, kv_heads=2, head_dim=80, seq_len=64, style="interleaved"),
             # the wider slices and the per-token blocks
             Case("rope", tokens=64, heads=5, kv_heads=3, head_dim=128, seq_len=64, style="half"),
             Case("rope", tokens=1100, heads=5, kv_heads=3, head_dim=72, seq_len=2048, style="half"),
             Case("swiglu", tokens=3, intermediate=11008), Case("swiglu", tokens=3, intermediate=1001),
             Case("topk", batch=3, vocab=4099, k=50), Case("topk", batch=2, vocab=32000, k=64),
             Case("sample", batch=3, vocab=32000, temperature=0.8, top_k=50, top_p=0.9),
             Case("sample", batch=2, vocab=4099, temperature=0.0, top_k=0, top_p=1.0),
             Case("attention_decode", batch=2, context=300, heads=32, kv_heads=8, head_dim=128, layout="paged",
                  block_size=16),
             Case("attention_decode", batch=2, context=2000, heads=8, kv_heads=8, head_dim=64,
                  layout="contiguous", block_size=16)]
    for case in small:
        impl = registry.get(case.op, "cuda")
        reason = impl.reason(case, DTYPE, "cuda")
        if reason:
            print(f"{case}: {reason}")
            return 1
        impl(**inputs_for(case))
        torch.cuda.synchronize()
        print(f"ran {case}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", default="", help="comma-separated ops (default: all)")
    parser.add_argument("--baselines", default="compile,reference", help="backends timed beside cuda")
    parser.add_argument("--quick", action="store_true", help="fewer shapes")
    parser.add_argument("--once", action="store_true", help="run each op once (for compute-sanitizer)")
    parser.add_argument("--json", default="", help="write every row to this file")
    args = parser.parse_args(argv)
    if args.once:
        return run_once()
    registry = get_registry()
    reason = registry.get("rmsnorm", "cuda").unavailable_reason()
    if reason:
        print(f"cuda backend unavailable: {reason}")
        return 1
    wanted = set(filter(None, args.ops.split(",")))
    baselines = [b for b in args.baselines.split(",") if b]
    rows = []
    header = f"{'op':<17}{'case':<66}{'backend':<10}{'us':>10}{'GB/s':>9}{'%copy':>7}{'speedup':>9}"
    print(header)
    for case in bench_cases(args.quick):
        if wanted and case.op not in wanted:
            continue
        op = registry.op(case.op)
        inputs = inputs_for(case)
        nbytes = decode_bytes(case) if case.op == "attention_decode" else op.bytes(case, DTYPE)
        cuda_us = None
        for backend in ["cuda", *baselines]:
            if (case.op, backend) not in registry.implementations:
                continue
            impl = registry.get(case.op, backend)
            if impl.reason(case, DTYPE, "cuda"):
                continue
            if backend == "reference" and case.op == "attention_decode" and case["batch"] * case["context"] > 65536:
                continue  # the per-sequence Python loop would dominate the run
            started = time.perf_counter()
            try:
                latency_us = time_us(lambda impl=impl, inputs=inputs: impl(**inputs))
            except Exception as error:  # a baseline that cannot run here is reported, not fatal
                print(f"{case.op:<17}{case.label:<66}{backend:<10} failed: {type(error).__name__}: {error}")
                continue
            cuda_us = latency_us if backend == "cuda" else cuda_us
            gbps = nbytes / latency_us / 1e3
            speedup = latency_us / cuda_us if cuda_us else math.nan
            row = {"op": case.op, "case": case.label, "backend": backend, "latency_us": latency_us,
                   "gbps": gbps, "copy_frac": gbps / COPY_GBPS, "cuda_speedup": speedup,
                   "wall_s": time.perf_counter() - started}
            rows.append(row)
            print(f"{case.op:<17}{case.label:<66}{backend:<10}{latency_us:>10.1f}{gbps:>9.0f}"
                  f"{100 * gbps / COPY_GBPS:>6.0f}%{speedup:>8.2f}x", flush=True)
        del inputs
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, handle,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
