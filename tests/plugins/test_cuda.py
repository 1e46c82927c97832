"""The ``cuda`` backend: its sources compile, it degrades to "unavailable" with a reason,
and on a GPU it matches the references at every shape of the shipped model specs."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from kbench_cuda import build

from kbench.bench.check import check_implementation
from kbench.config import ModelConfig, RopeConfig, SamplingConfig, Workload
from kbench.ops.base import Case
from kbench.ops.rope import rope_case_dims

NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
def test_every_kernel_source_compiles_for_sm90(tmp_path):
    """Each .cu includes only CUDA headers, so nvcc alone catches syntax and type errors."""
    sources = [p for p in build.compiled_sources() if p.suffix == ".cu"]
    assert sources, "no .cu sources found"

    def compile_one(source: Path) -> tuple[Path, subprocess.CompletedProcess]:
        cmd = [NVCC, "-c", "-arch=sm_90", "-std=c++17", "-O3", f"-I{build.CSRC}", str(source),
               "-o", str(tmp_path / f"{source.stem}.o")]
        return source, subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    workers = max(1, min(len(sources), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(compile_one, sources))
    failures = [f"{source.name}:\n{result.stderr[-3000:]}" for source, result in results if result.returncode]
    assert not failures, "\n\n".join(failures)


def test_without_cuda_every_op_is_listed_unavailable_with_a_reason(registry):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    impls = {op: impl for (op, backend), impl in registry.implementations.items() if backend == "cuda"}
    assert {"rmsnorm", "add_rmsnorm"} <= set(impls)
    for op, impl in impls.items():
        case = registry.op(op).test_cases[0]
        reason = impl.reason(case, torch.float32, "cpu")
        assert reason, f"{op}/cuda claims it can run without CUDA"


def test_missing_nvcc_is_a_reason_not_an_error(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(build, "_nvcc", lambda: None)
    build.load.cache_clear()
    try:
        assert "nvcc not found" in build.load()
    finally:
        build.load.cache_clear()


def test_failed_build_reason_carries_the_compiler_error(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    def failing_load(**kwargs):
        raise RuntimeError("Error building extension 'kbench_cuda':\n[1/2] nvcc ...\n"
                           "norm.cu(12): error: identifier \"oops\" is undefined\nninja: build stopped")

    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(build, "environment_reason", lambda: None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: (9, 0))
    monkeypatch.setattr(cpp_extension, "load", failing_load)
    build.load.cache_clear()
    try:
        reason = build.load()
    finally:
        build.load.cache_clear()
    assert reason.startswith("CUDA build failed")
    assert 'identifier "oops" is undefined' in reason


def test_build_key_changes_with_the_gpu_architecture():
    assert build.build_key((9, 0)) != build.build_key((8, 0))
    assert build.build_key((9, 0)) == build.build_key((9, 0))


def test_tuning_macros_reach_nvcc_and_the_build_key(monkeypatch):
    monkeypatch.setenv(build.DEFINES_ENV, " KBENCH_STREAM_LOADS=0  KBENCH_SWIGLU_UNROLL=2 ")
    macros = build.defines()
    assert macros == ["KBENCH_STREAM_LOADS=0", "KBENCH_SWIGLU_UNROLL=2"]
    assert build.nvcc_flags((9, 0), macros)[-2:] == ["-DKBENCH_STREAM_LOADS=0", "-DKBENCH_SWIGLU_UNROLL=2"]
    assert build.build_key((9, 0), macros) != build.build_key((9, 0))
    monkeypatch.delenv(build.DEFINES_ENV)
    assert build.defines() == []


@pytest.mark.parametrize("text", ["KBENCH_X=1;rm -rf /", "-O0", "KBENCH_X", "OTHER=1", "KBENCH_X=fast"])
def test_a_malformed_tuning_macro_is_a_reason_not_a_build(monkeypatch, text):
    from torch.utils import cpp_extension

    monkeypatch.setenv(build.DEFINES_ENV, text)
    monkeypatch.setattr(build, "environment_reason", lambda: None)
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: pytest.fail("built with a malformed macro"))
    build.load.cache_clear()
    try:
        reason = build.load()
    finally:
        build.load.cache_clear()
    assert build.DEFINES_ENV in reason and "KBENCH_NAME=INTEGER" in reason


def _variants():
    """Builds with the sources' ``#ifndef`` tuning knobs set away from their defaults."""
    return {
        "current": [],
        "previous": ["KBENCH_NORM_WIDE_THREADS=256", "KBENCH_SWIGLU_VEC=8", "KBENCH_SWIGLU_THREADS=128",
                     "KBENCH_ROPE_TINY_TOKENS=0", "KBENCH_LINEAR_MMA_TOKENS=4", "KBENCH_LINEAR_ROWS=4"],
        "cuda-cores": ["KBENCH_LINEAR_MMA_TOKENS=9", "KBENCH_LINEAR_STREAM=0", "KBENCH_LINEAR_PREFETCH=0"],
    }


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
def test_every_tuning_variant_compiles_for_sm90(tmp_path):
    """Every tuning-knob variant (the ``KBENCH_*`` macros of the memory-bound kernels' sources,
    as ``KBENCH_CUDA_DEFINES`` sets them) compiles for sm_90."""
    sources = {p.stem: p for p in build.compiled_sources()}
    variants = {name: macros for name, macros in _variants().items() if macros}
    # KBENCH_<SOURCE>_<KNOB>: each variant compiles the sources whose knobs it sets
    jobs = [(name, macros, sources[stem]) for name, macros in variants.items()
            for stem in sorted({macro.split("_")[1].lower() for macro in macros})]

    def compile_one(job):
        name, macros, source = job
        cmd = [NVCC, "-c", "-arch=sm_90", "-std=c++17", "-O1", f"-I{build.CSRC}", *(f"-D{m}" for m in macros),
               str(source), "-o", str(tmp_path / f"{name}-{source.stem}.o")]
        return job, subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    with concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        results = list(pool.map(compile_one, jobs))
    failures = [f"{name} {source.name}:\n{r.stderr[-2000:]}" for (name, _, source), r in results if r.returncode]
    assert not failures, "\n\n".join(failures)


# -- on a GPU: every shape of the shipped specs -----------------------------------------------

LLAMA3_ROPE = RopeConfig(theta=500000.0, scaling="llama3", factor=8.0, low_freq_factor=1.0,
                         high_freq_factor=4.0, original_max_position=8192)
MODELS = (
    ModelConfig("llama2-7b", vocab=32000, hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32,
                head_dim=128),
    ModelConfig("llama2-13b", vocab=32000, hidden=5120, intermediate=13824, layers=40, heads=40, kv_heads=40,
                head_dim=128),
    ModelConfig("llama2-70b", vocab=32000, hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8,
                head_dim=128),
    ModelConfig("llama3-8b", vocab=128256, hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8,
                head_dim=128, rope=LLAMA3_ROPE, norm_eps=1e-5, max_seq_len=8192),
)
# Short prompts keep the references fast; a long paged context exercises split-KV decode.
WORKLOADS = (
    Workload(batch=(1, 4), prompt_len=(100,), decode_steps=8,
             sampling=SamplingConfig(temperature=0.8, top_k=50, top_p=0.9)),
    Workload(batch=(3,), prompt_len=(1000,), decode_steps=4, kv_layout="paged", block_size=16,
             sampling=SamplingConfig(temperature=0.0)),
    Workload(batch=(8,), prompt_len=(2,), decode_steps=2, sampling=SamplingConfig(temperature=1.0, top_p=0.95)),
    # every sampling mode: temperature alone, top-k alone
    Workload(batch=(5,), prompt_len=(2,), decode_steps=1, sampling=SamplingConfig(temperature=0.7)),
    Workload(batch=(2,), prompt_len=(3,), decode_steps=1, sampling=SamplingConfig(temperature=1.0, top_k=20)),
)
OPS = ("rmsnorm", "add_rmsnorm", "rope", "swiglu", "sample", "topk", "attention_decode")


def _spec_params():
    from kbench.plugins import get_registry

    registry = get_registry()
    seen = set()
    for model in MODELS:
        for workload in WORKLOADS:
            for op_name in OPS:
                if op_name not in registry.ops:
                    continue
                op = registry.ops[op_name]
                for case in op.cases_for(model, workload):
                    for dtype in op.dtypes:
                        key = (op_name, case, dtype)
                        if key not in seen:
                            seen.add(key)
                            yield pytest.param(op_name, case, dtype,
                                               id=f"{model.name}-{op_name}-{case.label}-{dtype}".replace(" ", ","))


@pytest.mark.gpu
@pytest.mark.parametrize(("op_name", "case", "dtype"), list(_spec_params()))
def test_cuda_matches_reference_at_model_shapes(registry, op_name, case, dtype):
    reason = registry.get(op_name, "cuda").reason(case, dtype, "cuda")
    if reason:
        pytest.fail(f"cuda cannot run {op_name} {case.label}: {reason}")
    check = check_implementation(registry, op_name, "cuda", case, dtype, "cuda", seed=3)
    assert check.ok, f"{op_name} {case.label} {dtype}: {check.summary()}"


@pytest.mark.gpu
def test_ops_run_inside_a_cuda_graph(registry):
    """Captured once and replayed on new inputs, the graph gives the reference's output."""
    if registry.get("rmsnorm", "cuda").unavailable_reason():
        pytest.skip(registry.get("rmsnorm", "cuda").unavailable_reason())
    x = torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    fn = registry.get("rmsnorm", "cuda").fn
    fn(x=x, weight=weight, eps=1e-5)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(x=x, weight=weight, eps=1e-5)
    x.copy_(torch.randn_like(x))
    graph.replay()
    expected = registry.op("rmsnorm").reference(x=x, weight=weight, eps=1e-5)
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=1.6e-2)


@pytest.mark.gpu
def test_ops_compile_with_torch_compile(registry):
    """The fake implementations let torch.compile trace the custom ops (fullgraph)."""
    if registry.get("swiglu", "cuda").unavailable_reason():
        pytest.skip(registry.get("swiglu", "cuda").unavailable_reason())
    fn = registry.get("swiglu", "cuda").fn
    compiled = torch.compile(lambda gate, up: fn(gate=gate, up=up) * 2, fullgraph=True)
    gate = torch.randn(16, 256, device="cuda", dtype=torch.float16)
    up = torch.randn(16, 256, device="cuda", dtype=torch.float16)
    expected = registry.op("swiglu").reference(gate=gate, up=up) * 2
    torch.testing.assert_close(compiled(gate, up), expected, atol=2e-3, rtol=2e-3)


# -- on a GPU: both launch paths of the norms and rope, both access widths of swiglu ------------
# The spec shapes reach the norms' loads-first path and rope's slice grid (below 1024 tokens) and
# per-token blocks, but only at widths of whole 16-byte accesses, rope only in the half style and
# never with a head slice holding q and k heads. These cases take every path, at widths of one
# element an access too.


def _rope_case(tokens, heads, kv_heads, head_dim, style):
    return Case("rope", tokens=tokens, heads=heads, kv_heads=kv_heads, head_dim=head_dim, phase="decode",
                seq_len=4096, **rope_case_dims(RopeConfig(style=style)))


PATH_CASES = (
    # hidden 1000: 16-byte accesses, one a thread; 4096 and 4104, two (4104: a last access past
    # the row), all loads first; 2047 and 4095: one element an access, 4 and 8 a thread in 512
    # threads (the per-access loop)
    *(Case(op, tokens=t, hidden=h, eps=1e-5) for op in ("rmsnorm", "add_rmsnorm") for t in (1, 265)
      for h in (1000, 2047, 4095, 4096, 4104)),
    # 4-element accesses with a last block part-filled; 11007 at odd token counts is one element
    # an access
    *(Case("swiglu", tokens=t, intermediate=11008) for t in (1, 99, 197)),
    *(Case("swiglu", tokens=t, intermediate=11007) for t in (1, 23, 25)),
    # 6 + 3 heads: slices of 8 heads (half) or 4 (interleaved), some holding q and k heads;
    # head_dim 72 and 68 give one element (half) or pair (interleaved) an access in the 16-bit
    # dtypes, and slices of 3 heads; 31 and 32 tokens straddle the one-angle slices' threshold
    # (kTinyTokens), 1023 and 1024 the per-token blocks' (kFewTokens)
    *(_rope_case(t, heads, kv_heads, head_dim, style) for t in (1, 31, 32, 1023, 1024)
      for heads, kv_heads, head_dim in ((6, 3, 128), (6, 3, 72), (5, 3, 68)) for style in ("half", "interleaved")),
)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", PATH_CASES, ids=lambda case: f"{case.op}-{case.label}".replace(" ", ","))
def test_cuda_matches_reference_on_both_sides_of_each_launch_threshold(registry, case, dtype):
    reason = registry.get(case.op, "cuda").reason(case, dtype, "cuda")
    if reason:
        pytest.fail(f"cuda cannot run {case.op} {case.label}: {reason}")
    check = check_implementation(registry, case.op, "cuda", case, dtype, "cuda", seed=5)
    assert check.ok, f"{case.op} {case.label} {dtype}: {check.summary()}"


@pytest.mark.gpu
@pytest.mark.parametrize("style", ["half", "interleaved"])
@pytest.mark.parametrize("tokens", [3, 64, 1100])  # one-angle slices, wider slices, a block a token
def test_rope_rotates_q_and_k_views_of_a_fused_qkv_buffer(registry, tokens, style):
    """q and k as strided views of [tokens, heads + 2 kv_heads, head_dim]; v stays untouched."""
    if registry.get("rope", "cuda").unavailable_reason():
        pytest.skip(registry.get("rope", "cuda").unavailable_reason())
    heads, kv_heads, head_dim, dtype = 6, 3, 128, torch.bfloat16
    qkv = torch.randn(tokens, heads + 2 * kv_heads, head_dim, device="cuda", dtype=dtype)
    positions = torch.randint(0, 4096, (tokens,), device="cuda")
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, head_dim, 2, device="cuda").float() / head_dim)
    expected_q, expected_k = registry.op("rope").reference(
        q=qkv[:, :heads].clone(), k=qkv[:, heads:heads + kv_heads].clone(), positions=positions,
        inv_freq=inv_freq, style=style)
    v = qkv[:, heads + kv_heads:].clone()
    registry.get("rope", "cuda").fn(q=qkv[:, :heads], k=qkv[:, heads:heads + kv_heads], positions=positions,
                                    inv_freq=inv_freq, style=style)
    tolerance = registry.op("rope").tolerance(dtype)
    torch.testing.assert_close(qkv[:, :heads], expected_q, atol=tolerance.atol, rtol=tolerance.rtol)
    torch.testing.assert_close(qkv[:, heads:heads + kv_heads], expected_k, atol=tolerance.atol, rtol=tolerance.rtol)
    assert torch.equal(qkv[:, heads + kv_heads:], v)


@pytest.mark.gpu
@pytest.mark.parametrize("style", ["half", "interleaved"])
@pytest.mark.parametrize("tokens", [3, 64])  # one-angle slices, shared-angle slices
def test_rope_slices_take_sincosf_where_an_angle_is_past_the_fast_path(registry, tokens, style):
    """The slices' branch-free sin/cos (KBENCH_ROPE_FAST_TRIG) reduces angles up to 105615 only;
    a lane with a larger angle computes all of its angles by sincosf. At 2^40 the branch-free
    reduction alone is far off, so positions that large must still match the reference, beside
    small ones in the same call."""
    if registry.get("rope", "cuda").unavailable_reason():
        pytest.skip(registry.get("rope", "cuda").unavailable_reason())
    heads, kv_heads, head_dim, dtype = 32, 8, 128, torch.bfloat16
    q = torch.randn(tokens, heads, head_dim, device="cuda", dtype=dtype)
    k = torch.randn(tokens, kv_heads, head_dim, device="cuda", dtype=dtype)
    large = torch.tensor([2**40, 10**6, 150_000, 105_615, 17], device="cuda")
    positions = large[torch.arange(tokens, device="cuda") % large.numel()]
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, head_dim, 2, device="cuda").float() / head_dim)
    expected_q, expected_k = registry.op("rope").reference(q=q.clone(), k=k.clone(), positions=positions,
                                                           inv_freq=inv_freq, style=style)
    registry.get("rope", "cuda").fn(q=q, k=k, positions=positions, inv_freq=inv_freq, style=style)
    tolerance = registry.op("rope").tolerance(dtype)
    torch.testing.assert_close(q, expected_q, atol=tolerance.atol, rtol=tolerance.rtol)
    torch.testing.assert_close(k, expected_k, atol=tolerance.atol, rtol=tolerance.rtol)


def test_build_lock_clears_a_stale_torch_lock_and_excludes_a_second_builder(tmp_path):
    import fcntl

    (tmp_path / "lock").write_text("")  # what a build killed by a timeout leaves behind
    with build.build_lock(tmp_path):
        assert not (tmp_path / "lock").exists()
        with open(tmp_path / ".kbench-build.lock") as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(tmp_path / ".kbench-build.lock") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released once the build is over


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["contiguous", "paged"])
@pytest.mark.parametrize("kv_heads", [32, 8])
def test_decode_at_every_length_residue(registry, layout, kv_heads):
    """Lengths that end a split slice on every slot of a warp: a loop whose pass count differs
    between the lanes of one warp hung here (llama2-7b, prompt 128, first decode step: 129)."""
    from kbench.ops.base import Case

    lengths = (1, 2, 3, 5, 17, 31, 33, 64, 100, 129, 130, 255, 257, 513)
    case = Case("attention_decode", {"batch": len(lengths), "context": max(lengths), "context_lens": lengths, "heads": 32,
                 "kv_heads": kv_heads, "head_dim": 128, "layout": layout, "block_size": 16})
    check = check_implementation(registry, "attention_decode", "cuda", case, torch.bfloat16, "cuda", seed=5)
    assert check.ok, check.summary()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize(("heads", "kv_heads"), [(32, 32), (32, 8), (12, 2)])
@pytest.mark.parametrize("slices", [2, 3, 7, 11, 13, 16, 17])
def test_decode_merges_at_every_cluster_size(registry, heads, kv_heads, dtype, slices):
    """A capacity of 64 x k tokens gives k splits a sequence (the plan's fewest tokens a split is
    64), up to what the plan's wave takes (fewer with more KV heads: 2 x 2 keeps the most). So the
    tensor-core GQA kernel's in-cluster merge (KBENCH_DECODE_CLUSTER: up to 8 splits) runs at
    cluster sizes such as 3 and 7, which divide neither 512 nor 768 outputs evenly, and the larger
    counts, MHA and float32 take the merge kernel. The second sequence ends 37 tokens short: its
    last split holds no token."""
    from kbench.ops.base import Case

    capacity = 64 * slices
    case = Case("attention_decode", {"batch": 2, "context": capacity, "context_lens": (capacity, capacity - 37),
                                     "heads": heads, "kv_heads": kv_heads, "head_dim": 128, "layout": "contiguous",
                                     "block_size": 16})
    check = check_implementation(registry, "attention_decode", "cuda", case, dtype, "cuda", seed=11)
    assert check.ok, check.summary()


# (heads, kv_heads): groups 2, 4 (llama3-8b's), 8, 6 (not a power of two) and MQA with 8 heads
GQA_SHAPES = [(8, 4), (32, 8), (16, 2), (12, 2), (8, 1)]
# chunk (16 tokens) and split (64-token multiples) boundaries, and lengths one either side
GQA_LENGTHS = (1, 15, 16, 17, 63, 64, 65, 129, 513)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(("layout", "block_size"), [("contiguous", 16), ("paged", 16), ("paged", 256), ("paged", 5)])
@pytest.mark.parametrize("head_dim", [64, 80, 128])
@pytest.mark.parametrize(("heads", "kv_heads"), GQA_SHAPES)
def test_gqa_decode_matches_reference_at_chunk_and_page_boundaries(registry, heads, kv_heads, head_dim, layout,
                                                                   block_size, dtype):
    """The tensor-core GQA kernel stages 16-token chunks per warp and addresses every token
    through its page, so chunks that straddle pages (block size 5) and slices that end inside
    a chunk must give the reference's output; so must splits past a short sequence's end."""
    from kbench.ops.base import Case

    case = Case("attention_decode", {"batch": len(GQA_LENGTHS), "context": max(GQA_LENGTHS),
                                     "context_lens": GQA_LENGTHS, "heads": heads, "kv_heads": kv_heads,
                                     "head_dim": head_dim, "layout": layout, "block_size": block_size})
    check = check_implementation(registry, "attention_decode", "cuda", case, dtype, "cuda", seed=7)
    assert check.ok, check.summary()


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["contiguous", "paged"])
def test_gqa_decode_with_many_chunks_per_warp(registry, layout):
    """40 sequences x 8 KV heads fill the GPU with 3 splits of ~670 tokens: each warp rescales
    its running output over ~10 chunks (the short cases above see one or two)."""
    from kbench.ops.base import Case

    case = Case("attention_decode", {"batch": 40, "context": 2000, "random_lengths": True, "heads": 32,
                                     "kv_heads": 8, "head_dim": 128, "layout": layout, "block_size": 16})
    check = check_implementation(registry, "attention_decode", "cuda", case, torch.bfloat16, "cuda", seed=11)
    assert check.ok, check.summary()


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["contiguous", "paged"])
def test_gqa_decode_replays_in_a_cuda_graph_on_new_lengths(registry, layout):
    """Captured once, replayed after the cache contents and cache_seqlens change in place: the
    launch reads no length on the host, so the replay matches the reference at the new lengths."""
    from kbench.ops.base import Case

    impl = registry.get("attention_decode", "cuda")
    if impl.unavailable_reason():
        pytest.skip(impl.unavailable_reason())
    case = Case("attention_decode", {"batch": 4, "context": 700, "context_lens": [700, 3, 64, 300], "heads": 32,
                                     "kv_heads": 8, "head_dim": 128, "layout": layout, "block_size": 16})
    op = registry.op("attention_decode")
    inputs = op.make_inputs(case, torch.bfloat16, torch.device("cuda"), 13)
    impl.fn(**inputs)  # first call outside the capture: builds, plans, opts into shared memory
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = impl.fn(**inputs)
    inputs["k_cache"].copy_(torch.randn_like(inputs["k_cache"]))
    inputs["v_cache"].copy_(torch.randn_like(inputs["v_cache"]))
    inputs["cache_seqlens"].copy_(torch.tensor([1, 700, 17, 511], dtype=torch.int32))
    graph.replay()
    expected = op.reference(**inputs)
    tolerance = op.tolerance(torch.bfloat16)
    torch.testing.assert_close(out, expected, atol=tolerance.atol, rtol=tolerance.rtol)


# One sequence over a long context: the plan splits it across the GPU (up to 256 slices with a
# single kv head), so the last block of each (sequence, kv head) merges many partials that other
# blocks wrote, in several passes through its shared memory where they outgrow it (GQA-8's 8 x
# ~30 rows, a single head's ~250). MHA, GQA-4, GQA-8, MQA and a single head; bfloat16 GQA runs
# gqa_decode_kernel, the rest decode_kernel.
MERGE_SHAPES = [(32, 32), (32, 8), (64, 8), (8, 1), (1, 1)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "paged"])
@pytest.mark.parametrize(("heads", "kv_heads"), MERGE_SHAPES)
def test_decode_merges_its_splits_call_after_call_and_in_graph_replays(registry, heads, kv_heads, layout, dtype):
    """The splits' merge (merge_kernel; with KBENCH_DECODE_MERGE_PDL=0 the block that finishes
    last, found by per-(sequence, kv head) counters that the kernel puts back to zero): a second
    call, every replay of a captured graph and the eager calls between replays must each match
    the reference and give the same bits (a merge that read a partial before it was written, or
    counters left non-zero, would not)."""
    impl = registry.get("attention_decode", "cuda")
    if impl.unavailable_reason():
        pytest.skip(impl.unavailable_reason())
    context = 16384
    case = Case("attention_decode", {"batch": 1, "context": context, "heads": heads, "kv_heads": kv_heads,
                                     "head_dim": 128, "layout": layout, "block_size": 16})
    op = registry.op("attention_decode")
    tolerance = op.tolerance(dtype)
    inputs = op.make_inputs(case, dtype, torch.device("cuda"), 17)

    def check(out):
        torch.testing.assert_close(out, op.reference(**inputs), atol=tolerance.atol, rtol=tolerance.rtol)

    first = impl.fn(**inputs)
    second = impl.fn(**inputs)
    check(first)
    assert torch.equal(first, second), "the second call merged differently (counters left non-zero?)"

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = impl.fn(**inputs)
    # the whole context; one token (every split but the first empty, weight 0); a length that
    # ends inside a slice
    for length in (context, 1, 64 * 37 + 5):
        inputs["k_cache"].copy_(torch.randn_like(inputs["k_cache"]))
        inputs["v_cache"].copy_(torch.randn_like(inputs["v_cache"]))
        inputs["cache_seqlens"].fill_(length)
        graph.replay()
        check(out)
        assert torch.equal(out, impl.fn(**inputs)), f"graph replay and eager call differ at length {length}"


@pytest.mark.gpu
@pytest.mark.parametrize(("heads", "kv_heads"), [(32, 32), (32, 8)])
def test_each_call_of_a_graph_merges_its_own_splits(registry, heads, kv_heads):
    """Calls back to back in one graph on two caches whose values centre on +1 and -1 (outputs
    ~2 apart): a merge that read partials before its own split pass had written them (the
    merge launch overlaps the split pass, KBENCH_DECODE_MERGE_PDL) would mix in the other's."""
    impl = registry.get("attention_decode", "cuda")
    if impl.unavailable_reason():
        pytest.skip(impl.unavailable_reason())
    case = Case("attention_decode", {"batch": 1, "context": 8192, "heads": heads, "kv_heads": kv_heads,
                                     "head_dim": 128, "layout": "contiguous", "block_size": 16})
    op = registry.op("attention_decode")
    tolerance = op.tolerance(torch.bfloat16)
    sets = []
    for sign in (1, -1):
        inputs = op.make_inputs(case, torch.bfloat16, torch.device("cuda"), 5 + sign)
        inputs["v_cache"].mul_(0.5).add_(sign)
        sets.append((inputs, op.reference(**inputs)))
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [impl.fn(**sets[i % 2][0]) for i in range(8)]
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        for i, out in enumerate(outs):
            torch.testing.assert_close(out, sets[i % 2][1], atol=tolerance.atol, rtol=tolerance.rtol)


# -- linear: the skinny-batch kernel at decode token counts -------------------------------------
# 16-bit dtypes take the tensor-core kernel (one to four warps a tile), float32 the CUDA-core
# kernel. Widths: the three projections at reduced sizes, llama2-7b's qkv, out_features not a
# multiple of 8 (a last tile or row group part-filled), in_features a multiple of 8 but not of a
# 32-wide step (a part-filled last step), and odd in_features (rows not 16-byte aligned: one
# element an access); with a bias, a part-filled tile and odd rows.
LINEAR_SHAPES = (("qkv", 512, 1536, False), ("o", 512, 512, False), ("lm_head", 512, 4000, False),
                 ("qkv", 4096, 12288, False), ("o", 512, 1001, False), ("o", 1000, 264, False),
                 ("o", 1001, 77, False), ("qkv", 512, 1001, True), ("o", 1001, 77, True))
LINEAR_CASES = tuple(Case("linear", tokens=t, in_features=k, out_features=n, proj=proj, **({"bias": True} if bias else {}))
                     for t in (1, 3, 8) for proj, k, n, bias in LINEAR_SHAPES)


def test_linear_declines_more_than_8_tokens_with_a_reason():
    from kbench_cuda import plugin

    case = Case("linear", tokens=9, in_features=4096, out_features=4096, proj="o")
    assert "tokens 9 > 8" in plugin.supports_linear(case, torch.bfloat16, torch.device("cuda"))
    assert plugin.supports_linear(case, torch.bfloat16, torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("case", LINEAR_CASES, ids=lambda case: case.label.replace(" ", ","))
def test_linear_matches_reference_at_decode_shapes(registry, case, dtype):
    reason = registry.get("linear", "cuda").reason(case, dtype, "cuda")
    if reason:
        pytest.fail(f"cuda cannot run linear {case.label}: {reason}")
    check = check_implementation(registry, "linear", "cuda", case, dtype, "cuda", seed=19)
    assert check.ok, f"linear {case.label} {dtype}: {check.summary()}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("tokens", [1, 3, 8])
def test_linear_reads_strided_and_misaligned_rows(registry, tokens, dtype):
    """x and weight as views: rows of a wider buffer (strided, 16-byte aligned), then shifted by
    one element (misaligned), and the weight as the middle row block of a fused matrix."""
    impl = registry.get("linear", "cuda")
    if impl.unavailable_reason():
        pytest.skip(impl.unavailable_reason())
    k, n = 1024, 520
    x_wide = torch.randn(tokens, k + 16, device="cuda", dtype=dtype)
    w_wide = torch.randn(3 * n, k + 16, device="cuda", dtype=dtype) / k**0.5
    tolerance = registry.op("linear").tolerance(dtype)
    for shift in (0, 1):
        x, weight = x_wide[:, shift:shift + k], w_wide[n:2 * n, shift:shift + k]
        out = impl.fn(x=x, weight=weight)
        expected = registry.op("linear").reference(x=x.contiguous(), weight=weight.contiguous())
        torch.testing.assert_close(out, expected, atol=tolerance.atol, rtol=tolerance.rtol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_linear_replays_in_a_cuda_graph_on_new_inputs(registry, dtype):
    """Captured once (x staged in over 48 KB of shared memory: 8 tokens of 4096), replayed after
    x and the weight change in place: the replay matches the reference on the new values."""
    impl = registry.get("linear", "cuda")
    if impl.unavailable_reason():
        pytest.skip(impl.unavailable_reason())
    op = registry.op("linear")
    case = Case("linear", tokens=8, in_features=4096, out_features=4096, proj="o")
    inputs = op.make_inputs(case, dtype, torch.device("cuda"), 23)
    impl.fn(**inputs)  # first call outside the capture: opts the kernel in to its shared memory
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = impl.fn(**inputs)
    fresh = op.make_inputs(case, dtype, torch.device("cuda"), 29)
    inputs["x"].copy_(fresh["x"])
    inputs["weight"].copy_(fresh["weight"])
    graph.replay()
    tolerance = op.tolerance(dtype)
    torch.testing.assert_close(out, op.reference(**inputs), atol=tolerance.atol, rtol=tolerance.rtol)
