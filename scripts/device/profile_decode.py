"""Where a decode step's time goes, for one backend mix of a spec (run on the GPU machine).

    python3 scripts/device/profile_decode.py model_specs/llama2-7b.yaml --backend norm=triton \\
        --batch 1 --prompt-len 512 [--gemms]

Prints the step time under a CUDA graph, the kernels of one eager step grouped by name
(count and GPU time per step), and with ``--gemms`` the bandwidth cuBLAS and the Triton
skinny kernels reach on the model's weight matrices at decode row counts (graph replay, cold
weights; ``do_bench`` here once added the Triton launch to every skinny figure).
"""

from __future__ import annotations

import argparse
import collections

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from kbench.model import load_weights
from kbench.model.pipeline import build_pipeline, random_prompts
from kbench.plugins import get_registry
from kbench.spec import Overrides, load_spec


def graph_step_us(pipeline, tokens, replays=50) -> float:
    pipeline.capture_decode_graph()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    pipeline.decode_step(tokens)
    torch.cuda.synchronize()
    start.record()
    for _ in range(replays):
        pipeline.decode_step(tokens)
    end.record()
    torch.cuda.synchronize()
    pipeline.drop_decode_graph()
    return 1000.0 * start.elapsed_time(end) / replays


def kernel_table(pipeline, tokens, steps=3, top=30) -> None:
    pipeline.decode_step(tokens)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            pipeline.decode_step(tokens)
        torch.cuda.synchronize()
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = totals[event.name[:90]]
            entry[0] += 1
            entry[1] += event.device_time
    whole = sum(t for _, t in totals.values()) / steps
    print(f"eager step: {whole:.0f} us of kernel time, {sum(c for c, _ in totals.values()) / steps:.0f} kernels")
    for name, (count, us) in sorted(totals.items(), key=lambda item: -item[1][1])[:top]:
        print(f"  {us / steps:8.1f} us {100 * us / steps / whole:5.1f}%  x{count / steps:5.0f}  {name}")


def gemm_table(pipeline) -> None:
    """cuBLAS and the skinny kernels on the model's matrices, timed as in a captured decode step
    (graph replay, weights read cold: ``kbench_triton.ffn.weight_streaming_us``)."""
    from kbench_triton import gemv
    from kbench_triton.ffn import weight_streaming_us

    layer = pipeline.weights.layers[0]
    weights = {"wqkv": layer.wqkv, "wo": layer.wo, "w_gate_up": layer.w_gate_up, "w_down": layer.w_down,
               "lm_head": pipeline.weights.lm_head}
    print(f"{'matrix':10} {'shape':>14} {'rows':>4} {'cuBLAS us':>10} {'GB/s':>6} {'skinny us':>10} {'GB/s':>6}")
    for name, w in weights.items():
        for rows in (1, 4, 8, 64):
            x = torch.randn(rows, w.shape[1], device=w.device, dtype=w.dtype)
            cublas = weight_streaming_us(lambda w, x=x: F.linear(x, w), w)
            line = f"{name:10} {str(tuple(w.shape)):>14} {rows:4} {cublas:10.1f} {w.nbytes / cublas / 1e3:6.0f}"
            if rows <= gemv.MAX_ROWS:
                skinny_fn = gemv.swiglu_linear if name == "w_gate_up" else gemv.linear
                skinny = weight_streaming_us(lambda w, x=x, f=skinny_fn: f(x, w), w)
                line += f" {skinny:10.1f} {w.nbytes / skinny / 1e3:6.0f}"
            print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("spec")
    parser.add_argument("--backend", action="append", default=[])
    parser.add_argument("--batch", default="1")
    parser.add_argument("--prompt-len", default="512")
    parser.add_argument("--gemms", action="store_true")
    args = parser.parse_args()
    spec = load_spec(args.spec, Overrides.from_cli(backend=args.backend, batch=args.batch,
                                                   prompt_len=args.prompt_len, device="cuda"))
    weights = load_weights(spec)
    pipeline = build_pipeline(spec, get_registry(), weights)
    print("backends:", {op: i.backend for op, i in pipeline.implementations.items()})
    with torch.inference_mode():
        for batch in spec.workload.batch:
            prompt_len = spec.workload.prompt_len[0]
            prompts = random_prompts(spec.model.vocab, batch, prompt_len, 0)
            tokens = torch.stack([p[-1] for p in prompts]).cuda()
            pipeline.reset(batch, prompt_len + 64)
            pipeline.prefill(prompts)
            step = graph_step_us(pipeline, tokens)
            print(f"\n== batch {batch} prompt {prompt_len}: graph step {step:.0f} us = {batch * 1e6 / step:.0f} tok/s")
            kernel_table(pipeline, tokens)
        if args.gemms:
            gemm_table(pipeline)


if __name__ == "__main__":
    main()
