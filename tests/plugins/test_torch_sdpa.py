"""plugins/kbench_torch/sdpa.py: the SDPA attention backends."""

import pytest
import torch

from kbench.bench.check import check_implementation
from kbench.ops.attention import ATTENTION_DECODE, ATTENTION_PREFILL, attention_prefill_reference
from kbench.ops.base import Case

BACKENDS = ["sdpa", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "sdpa-math"]


def test_every_sdpa_backend_is_registered_for_both_ops(registry):
    for op in ("attention_prefill", "attention_decode"):
        for backend in BACKENDS:
            impl = registry.get(op, backend)
            assert impl.plugin == "torch" and impl.version == torch.__version__


def test_only_the_syncing_flash_prefill_opts_out_of_cuda_graphs(registry):
    flags = {b: registry.get("attention_prefill", b).cuda_graphs for b in BACKENDS}
    assert flags == {b: b != "sdpa-flash" for b in BACKENDS}
    assert all(registry.get("attention_decode", b).cuda_graphs for b in BACKENDS)


@pytest.mark.parametrize("backend", ["sdpa-efficient", "sdpa-cudnn"])
def test_cuda_only_kernels_say_so_on_a_cpu(registry, backend):
    case = ATTENTION_PREFILL.test_cases[1]
    reason = registry.get("attention_prefill", backend).reason(case, torch.bfloat16, "cpu")
    assert reason and "CUDA" in reason


def uneven_case():
    return Case("attention_prefill", batch=5, seq_lens=[7, 1, 0, 19, 4], heads=8, kv_heads=2, head_dim=64)


@pytest.mark.parametrize("backend", ["sdpa", "sdpa-math", "sdpa-flash"])
def test_uneven_varlen_batch_on_cpu_matches_the_reference(registry, backend):
    check = check_implementation(registry, "attention_prefill", backend, uneven_case(), torch.float32, "cpu")
    assert check.ok, check.summary()


def test_uneven_varlen_paths_agree():
    from kbench_torch import sdpa

    inputs = ATTENTION_PREFILL.make_inputs(uneven_case(), torch.float32, "cpu", 4)
    args = (inputs["q"], inputs["k"], inputs["v"], inputs["cu_seqlens"])
    padded = sdpa._prefill_padded(None, *args, inputs["max_seqlen"], inputs["scale"])
    looped = sdpa._prefill_per_sequence(None, *args, inputs["scale"])
    torch.testing.assert_close(padded, looped, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(padded, attention_prefill_reference(**inputs), atol=1e-5, rtol=1e-5)


# -- GPU: every kernel at the shipped models' shapes, and graph capture of the sync-free paths --

MODEL_HEADS = [(32, 32, 128), (32, 8, 128), (64, 8, 128)]  # llama2-7b, llama3-8b, llama2-70b


def _gpu_cases():
    for heads, kv_heads, head_dim in MODEL_HEADS:
        yield Case("attention_prefill", batch=2, seq_len=512, heads=heads, kv_heads=kv_heads, head_dim=head_dim)
        yield Case("attention_prefill", batch=3, seq_lens=[300, 1, 77], heads=heads, kv_heads=kv_heads,
                   head_dim=head_dim)
        for layout in ("contiguous", "paged"):
            yield Case("attention_decode", batch=4, context=2048, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                       layout=layout, block_size=256, random_lengths=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", list(_gpu_cases()), ids=lambda c: f"{c.op}-{c.label}".replace(" ", ","))
@pytest.mark.parametrize("backend", BACKENDS)
def test_sdpa_matches_reference_at_model_shapes(registry, backend, case, dtype):
    reason = registry.get(case.op, backend).reason(case, dtype, "cuda")
    if reason:
        pytest.skip(reason)
    check = check_implementation(registry, case.op, backend, case, dtype, "cuda")
    assert check.ok, check.summary()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["sdpa", "sdpa-efficient"])
def test_uneven_attention_prefill_and_decode_replay_in_a_cuda_graph(registry, backend):
    for op, case in [(ATTENTION_PREFILL, uneven_case()), (ATTENTION_DECODE, ATTENTION_DECODE.test_cases[2])]:
        impl = registry.get(op.name, backend)
        inputs = op.make_inputs(case, torch.bfloat16, "cuda", 0)
        expected = impl(**inputs)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            impl(**inputs)  # warm-up outside the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = impl(**inputs)
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("layout", ["contiguous", "paged"])
def test_flash_decode_path_loops_over_cache_lengths_like_the_reference(layout):
    # sdpa-flash takes no mask on CUDA, so decode slices each sequence's cache; the same
    # code with torch's default kernel runs here
    from kbench_torch.sdpa import _decode_per_sequence, logical_cache

    from kbench.ops.attention import ATTENTION_DECODE
    from kbench.ops.base import Case

    case = Case("attention_decode", batch=3, context=40, heads=8, kv_heads=2, head_dim=32, layout=layout,
                block_size=16, random_lengths=True)
    inputs = ATTENTION_DECODE.make_inputs(case, torch.float32, torch.device("cpu"), 0)
    keys = logical_cache(inputs["k_cache"], inputs["block_table"]).transpose(1, 2)
    values = logical_cache(inputs["v_cache"], inputs["block_table"]).transpose(1, 2)
    out = _decode_per_sequence(None, inputs["q"], keys, values, inputs["cache_seqlens"], inputs["scale"])
    torch.testing.assert_close(out, ATTENTION_DECODE.reference(**inputs), atol=1e-5, rtol=1e-5)
