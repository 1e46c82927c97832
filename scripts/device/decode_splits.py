"""Triton decode attention at each split count, on the GPU machine.

    python3 scripts/device/decode_splits.py [--quick]

For the cases where the kernel is furthest below copy bandwidth, times ``attention_decode``
with every split count (checked against the reference first, timed as ``kbench bench`` times a
kernel: CUDA-graph replay, the KV cache read cold as ``op.cold`` has it) and prints µs and % of
the measured copy bandwidth per count, with the count the heuristic picks marked.
"""

from __future__ import annotations

import argparse

import torch
from kbench_triton.attention_decode import attention_decode, num_splits

from kbench.bench.sweep import time_op
from kbench.env import measure_ceilings
from kbench.ops.base import Case
from kbench.plugins import get_registry
from kbench.spec import BenchConfig

CASES = [(batch, kv_heads, context) for batch, kv_heads, context in (
    (1, 8, 512), (1, 32, 512), (1, 8, 2048), (1, 32, 2048), (1, 8, 8192), (8, 8, 512), (8, 8, 2048),
    (8, 32, 512))]
SPLITS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
# --quick: where the rule's choice lies between one and a few splits (64 programs at one split)
QUICK_CASES = [(8, 8, 512), (8, 8, 2048), (2, 32, 512), (2, 32, 2048), (4, 8, 512), (4, 8, 2048)]
QUICK_SPLITS = (1, 2, 3, 4, 6, 8)
BENCH = BenchConfig(warmup_ms=5.0, rep_ms=30.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the cases near one split, counts up to 8")
    args = parser.parse_args()
    cases, split_counts = (QUICK_CASES, QUICK_SPLITS) if args.quick else (CASES, SPLITS)
    registry = get_registry()
    op = registry.op("attention_decode")
    copy_gbps = measure_ceilings(torch.device("cuda"))["copy_gbps"]
    for batch, kv_heads, context in cases:
        case = Case("attention_decode", batch=batch, context=context, heads=32, kv_heads=kv_heads, head_dim=128,
                    layout="contiguous", block_size=16)
        inputs = op.make_inputs(case, torch.bfloat16, "cuda", 0)
        expected = op.reference(**inputs)
        chosen = num_splits(batch, kv_heads, inputs["k_cache"].shape[1], torch.device("cuda"))
        kv_bytes = op.bytes(case, torch.bfloat16)
        cells = []
        for splits in split_counts:
            if splits > max(1, context // 16):
                continue
            out = attention_decode(**inputs, splits=splits)
            torch.testing.assert_close(out, expected, atol=3e-2, rtol=2e-2)
            # as kbench bench times it: graph replay, the calls cycling through copies of the cache
            timing = time_op(lambda splits=splits, **kw: attention_decode(**kw, splits=splits), op, inputs, "cuda",
                             BENCH, cuda_graph=True)
            mark = "*" if splits == chosen else ""
            cells.append(f"{splits}{mark}: {timing.median_us:.1f} µs {100 * kv_bytes / timing.median_us / 1e3 / copy_gbps:.0f}%")
        print(f"batch {batch} kv_heads {kv_heads} context {context}: " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
