"""How fast can the KV cache of a decode step be read at all, cold? On the GPU machine.

    python3 scripts/device/decode_read_bound.py

For the decode-attention cases below 80% of copy, times kernels that only read K and V (sum
them) beside triton's ``attention_decode``, timed as ``kbench bench`` times a kernel: CUDA-graph
replay, the graph's calls cycling through copies of the cache that span 2 x L2 (``op.cold``).

- ``flat P``: P programs, each summing one contiguous 1/P of K and of V (16 KB loads): the
  fastest order the bytes can be read in.
- ``heads``: one program per (split, kv head), each summing its head's 256-byte rows of its
  slice of tokens, 64 tokens a step: the order the attention kernel reads them in.
- ``attention``: the kernel itself (split pass and merge); ``no pdl`` with the merge launched
  after the split pass ends rather than scheduled early (``MERGE_PDL``); ``split only`` without
  the merge (its output is not checked); with ``--configs``, each split-pass config forced
  (``BLOCK_N/warps/stages``), the autotuner's and EXTRA_CONFIGS.

Prints µs and % of the measured copy bandwidth on the K/V bytes. The gap between ``flat`` and
100% is what a kernel cannot win at that size; between ``heads`` and ``attention`` is compute
and the merge.
"""

from __future__ import annotations

import argparse
from unittest import mock

import torch
import triton
import triton.language as tl
from kbench_triton import attention_decode as decode_module
from kbench_triton.attention_decode import attention_decode, num_splits

from kbench.bench.sweep import time_op
from kbench.bench.timing import l2_cache_bytes
from kbench.env import measure_ceilings
from kbench.ops.base import Case
from kbench.plugins import get_registry
from kbench.spec import BenchConfig

CASES = [(1, 32, 512), (1, 32, 2048), (1, 32, 8192), (1, 8, 2048), (1, 8, 8192), (8, 8, 512), (8, 32, 512),
         (8, 8, 2048), (64, 32, 512), (64, 8, 2048)]
FLAT_BLOCK = 8192
BENCH = BenchConfig(warmup_ms=5.0, rep_ms=30.0)
# launch shapes outside the autotuner's list, timed with --configs beside its own
EXTRA_CONFIGS = [triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=st)
                 for n, w, st in [(32, 1, 4), (64, 1, 3), (32, 2, 4), (64, 2, 3), (64, 2, 4), (128, 2, 3), (64, 4, 5),
                                  (32, 4, 6)]]


@triton.jit
def _flat_sum(k_ptr, v_ptr, out_ptr, per_program, total, BLOCK: tl.constexpr, STAGES: tl.constexpr):
    pid = tl.program_id(0)
    start = pid.to(tl.int64) * per_program
    end = tl.minimum(start + per_program, total)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in tl.range(start, end, BLOCK, num_stages=STAGES):
        mask = i + offs < end
        acc += tl.load(k_ptr + i + offs, mask=mask, other=0.0).to(tl.float32)
        acc += tl.load(v_ptr + i + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + pid, tl.sum(acc, 0))


@triton.jit
def _head_sum(k_ptr, v_ptr, out_ptr, seq_len, stride_t, NUM_SPLITS: tl.constexpr, HEAD_DIM: tl.constexpr,
              BLOCK_N: tl.constexpr, STAGES: tl.constexpr):
    split = tl.program_id(0)
    head = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    per_split = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, seq_len)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    base = batch * seq_len * stride_t + head * HEAD_DIM
    acc = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    for t in tl.range(start, end, BLOCK_N, num_stages=STAGES):
        rows = t + offs_n
        ptrs = base + rows[:, None] * stride_t + offs_d[None, :]
        mask = (rows < end)[:, None]
        acc += tl.load(k_ptr + ptrs, mask=mask, other=0.0).to(tl.float32)
        acc += tl.load(v_ptr + ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + (batch * tl.num_programs(1) + head) * NUM_SPLITS + split, tl.sum(tl.sum(acc, 1), 0))


def flat(programs: int, stages: int):
    def run(k_cache, v_cache, **_):
        total = k_cache.numel()
        per = triton.cdiv(triton.cdiv(total, programs), FLAT_BLOCK) * FLAT_BLOCK
        out = torch.empty(programs, dtype=torch.float32, device=k_cache.device)
        _flat_sum[(programs,)](k_cache, v_cache, out, per, total, BLOCK=FLAT_BLOCK, STAGES=stages, num_warps=8)
        return out
    return run


def heads(splits: int, stages: int):
    def run(k_cache, v_cache, **_):
        batch, seq_len, kv_heads, head_dim = k_cache.shape
        out = torch.empty(batch * kv_heads * splits, dtype=torch.float32, device=k_cache.device)
        _head_sum[(splits, kv_heads, batch)](k_cache, v_cache, out, seq_len, k_cache.stride(1), NUM_SPLITS=splits,
                                             HEAD_DIM=head_dim, BLOCK_N=64, STAGES=stages, num_warps=4)
        return out
    return run


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


class _OneConfig:
    def __init__(self, config):
        self.tuner = triton.autotune(configs=[config], key=["capacity_bucket"])(decode_module._split_kernel)

    def __getitem__(self, grid):
        return self.tuner[grid]


def variant(pdl: bool = True, merge: bool = True):
    """attention_decode with or without the early-scheduled merge, or without the merge."""
    def run(**inputs):
        merge_kernel = decode_module._merge_kernel if merge else _NoLaunch()
        with mock.patch.object(decode_module, "MERGE_PDL", pdl), \
                mock.patch.object(decode_module, "_merge_kernel", merge_kernel):
            return attention_decode(**inputs)
    return run


def forced(config):
    """attention_decode with its split pass launched at ``config`` only."""
    split = _OneConfig(config)

    def run(**inputs):
        with mock.patch.object(decode_module, "SPLIT", split):
            return attention_decode(**inputs)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", action="store_true", help="also time each split-pass config forced")
    parser.add_argument("--attention-only", action="store_true", help="leave out the kernels that only read")
    args = parser.parse_args()
    registry = get_registry()
    op = registry.op("attention_decode")
    copy_gbps = measure_ceilings(torch.device("cuda"))["copy_gbps"]
    print(f"copy {copy_gbps:.0f} GB/s, L2 {l2_cache_bytes('cuda') >> 20} MiB", flush=True)
    for batch, kv_heads, context in CASES:
        case = Case("attention_decode", batch=batch, context=context, heads=32, kv_heads=kv_heads, head_dim=128,
                    layout="contiguous", block_size=16)
        inputs = op.make_inputs(case, torch.bfloat16, "cuda", 0)
        kv_bytes = op.bytes(case, torch.bfloat16)
        # the cache of the case has exactly ``context`` tokens, so the sums cover the K/V bytes
        assert inputs["k_cache"].shape[1] == context, inputs["k_cache"].shape
        splits = num_splits(batch, kv_heads, context, torch.device("cuda"))
        kernels = {}
        if not args.attention_only:
            kernels |= {f"flat {p} s{s}": flat(p, s) for p in (132, 264, 528) for s in (1, 3)}
            kernels |= {f"heads x{splits} s{s}": heads(splits, s) for s in (1, 3)}
        kernels[f"attention x{splits}"] = attention_decode
        if splits > 1:
            kernels["attention no pdl"] = variant(pdl=False)
            kernels["split only"] = variant(merge=False)
        for config in decode_module._CONFIGS + EXTRA_CONFIGS if args.configs else ():
            prefetch = "p" if config.kwargs.get("PREFETCH") else ""  # configs of 1c94910
            label = f"{config.kwargs['BLOCK_N']}/{config.num_warps}/{config.num_stages}{prefetch}"
            kernels[f"attention {label}"] = forced(config)
        total = inputs["k_cache"].float().sum() + inputs["v_cache"].float().sum()
        attended = op.reference(**inputs)
        cells = []
        for name, impl in kernels.items():
            if name.startswith("attention"):
                torch.testing.assert_close(impl(**inputs), attended, atol=3e-2, rtol=2e-2)
            elif not name.startswith("split"):
                torch.testing.assert_close(impl(**inputs).sum(), total, rtol=1e-3, atol=1.0)
            timing = time_op(impl, op, inputs, "cuda", BENCH, cuda_graph=True)  # as kbench bench: cold cache
            pct = 100 * kv_bytes / timing.median_us / 1e3 / copy_gbps
            cells.append(f"{name}: {timing.median_us:.1f} µs {pct:.0f}%")
        print(f"batch {batch} kv_heads {kv_heads} context {context} ({kv_bytes / 2**20:.1f} MiB, {timing.input_sets} sets): "
              + ", ".join(cells), flush=True)
    for key, config in decode_module.SPLIT.chosen().items():
        print(f"autotuned {key}: {config}")


if __name__ == "__main__":
    main()
