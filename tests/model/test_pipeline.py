"""kbench/model/pipeline.py: decode agrees with prefill, paged with contiguous, and every
family call goes through the chosen backend."""

import pytest
import torch
from tiny_models import TINY_MODEL, build_pipeline, write_spec

from kbench.config import SamplingConfig
from kbench.errors import KbenchError
from kbench.model import load_weights, random_prompts
from kbench.ops import BUILTIN_OPS
from kbench.registry import Implementation, Registry
from kbench.spec import Overrides, load_spec

PIPELINE_OPS = [op.name for op in BUILTIN_OPS if op.role]
WORKLOAD = {"batch": [3], "prompt_len": [9], "decode_steps": 6, "block_size": 4}


def _pipeline(spec, registry, **backends):
    return build_pipeline(spec, registry, load_weights(spec), backends or None)


def _prompts(vocab, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g) for n in lengths]


@pytest.mark.parametrize("layout", ["contiguous", "paged"])
def test_decode_matches_last_row_of_prefill(tmp_path, registry, layout):
    spec = load_spec(write_spec(tmp_path, workload={**WORKLOAD, "kv_layout": layout}))
    pipeline = _pipeline(spec, registry)
    prompts = _prompts(spec.model.vocab, [5, 9, 1])
    generated = [[] for _ in prompts]
    token = pipeline.prefill(prompts).argmax(-1)
    for _ in range(4):
        for seq, t in zip(generated, token.tolist(), strict=True):
            seq.append(t)
        logits = pipeline.decode_step(token)
        full = [torch.cat([p, torch.tensor(g)]) for p, g in zip(prompts, generated, strict=True)]
        expected = _pipeline(spec, registry).prefill(full)
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
        token = logits.argmax(-1)


def test_packed_prefill_matches_one_prompt_at_a_time(tmp_path, registry):
    spec = load_spec(write_spec(tmp_path, workload=WORKLOAD))
    pipeline = _pipeline(spec, registry)
    prompts = _prompts(spec.model.vocab, [7, 2, 11])
    packed = pipeline.prefill(prompts)
    alone = torch.cat([pipeline.prefill([p]) for p in prompts])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampling", [SamplingConfig(), SamplingConfig(temperature=0.8, top_k=20, top_p=0.9)],
                         ids=["greedy", "top-k-top-p"])
def test_paged_cache_matches_contiguous(tmp_path, registry, sampling):
    contiguous = load_spec(write_spec(tmp_path, "c.yaml", workload=WORKLOAD))
    paged = load_spec(write_spec(tmp_path, "p.yaml", workload={**WORKLOAD, "kv_layout": "paged"}))
    prompts = _prompts(contiguous.model.vocab, [5, 9, 3])
    a = _pipeline(contiguous, registry).generate(prompts, 6, sampling, seed=3)
    b = _pipeline(paged, registry).generate(prompts, 6, sampling, seed=3)
    assert torch.equal(a, b)


def test_paged_blocks_are_not_in_order(tmp_path, registry):
    spec = load_spec(write_spec(tmp_path, workload={**WORKLOAD, "kv_layout": "paged"}))
    pipeline = _pipeline(spec, registry)
    pipeline.reset(3, 16)
    table = pipeline.cache.block_table
    assert table.shape == (3, 4) and not torch.equal(table.flatten().sort().values, table.flatten())


def test_generate_is_seeded_and_greedy_follows_argmax(tmp_path, registry):
    spec = load_spec(write_spec(tmp_path, workload=WORKLOAD))
    pipeline = _pipeline(spec, registry)
    prompts = random_prompts(spec.model.vocab, 2, 6, seed=1)
    hot = SamplingConfig(temperature=1.5)
    assert torch.equal(pipeline.generate(prompts, 5, hot, seed=7), pipeline.generate(prompts, 5, hot, seed=7))
    greedy = pipeline.generate(prompts, 4, SamplingConfig(), seed=0)
    token = pipeline.prefill(prompts).argmax(-1)
    for step in range(4):
        assert torch.equal(greedy[:, step], token)
        token = pipeline.decode_step(token).argmax(-1)


def test_layers_override_builds_fewer_layers_of_the_same_shapes(tmp_path, registry):
    path = write_spec(tmp_path, workload=WORKLOAD)
    full, cut = load_spec(path), load_spec(path, Overrides(layers=1))
    weights_full, weights_cut = load_weights(full), load_weights(cut)
    assert len(weights_cut.layers) == 1
    assert [t.shape for t in weights_cut.tensors()] == [t.shape for t in weights_full.tensors()][:len(weights_cut.tensors())]
    assert build_pipeline(cut, registry, weights_cut).prefill(random_prompts(cut.model.vocab, 1, 4, 0)).shape == (1, 96)


def test_kv_bytes_and_weight_bytes(tmp_path, registry):
    spec = load_spec(write_spec(tmp_path, workload=WORKLOAD))
    pipeline = _pipeline(spec, registry)
    pipeline.prefill(_prompts(spec.model.vocab, [4, 6]))
    m = spec.model
    per_token = 2 * m.layers * m.kv_heads * m.head_dim * 4
    assert pipeline.kv_bytes_per_step() == per_token * (5 + 7)
    assert pipeline.weight_bytes == load_weights(spec).nbytes


def test_decoding_past_the_cache_is_an_error(tmp_path, registry):
    spec = load_spec(write_spec(tmp_path, workload=WORKLOAD))
    pipeline = _pipeline(spec, registry)
    pipeline.reset(1, 5)
    token = pipeline.prefill(_prompts(spec.model.vocab, [4])).argmax(-1)
    pipeline.decode_step(token)
    with pytest.raises(KbenchError, match="past the KV cache"):
        pipeline.decode_step(token)


def test_a_longer_prompt_after_a_shorter_one_gets_room_for_every_decode_step(tmp_path, registry):
    spec = load_spec(write_spec(tmp_path, workload=WORKLOAD))  # decode_steps 6
    reused, fresh = _pipeline(spec, registry), _pipeline(spec, registry)
    reused.prefill(_prompts(spec.model.vocab, [4]))  # a cache of 4 + 6 tokens
    prompt = _prompts(spec.model.vocab, [8], seed=1)
    token, expected = reused.prefill(prompt).argmax(-1), fresh.prefill(prompt).argmax(-1)
    for _ in range(6):
        token, expected = reused.decode_step(token).argmax(-1), fresh.decode_step(expected).argmax(-1)
        assert torch.equal(token, expected)
    assert reused.cache.capacity >= 8 + 6


# -- backends: a registry built here, with a spy backend in every family --------------------


def _spy_registry(calls: list[str], cuda_graphs: bool = True) -> Registry:
    registry = Registry()
    for op in BUILTIN_OPS:
        registry.add_op(op, "kbench-core")
    for name in PIPELINE_OPS:
        reference = registry.ops[name].reference

        def spy(_name=name, _reference=reference, **inputs):
            calls.append(_name)
            return _reference(**inputs)

        registry.add_implementation(Implementation(name, "spy", spy, "spy-plugin",
                                                   cuda_graphs=cuda_graphs or name != "attention_decode"))
    return registry


def test_every_family_call_goes_through_the_chosen_backend(tmp_path, registry):
    spec = load_spec(write_spec(tmp_path, workload=WORKLOAD))
    calls = []
    spy = _spy_registry(calls)
    weights = load_weights(spec)
    pipeline = build_pipeline(spec, spy, weights, dict.fromkeys(PIPELINE_OPS, "spy"))
    prompts = _prompts(spec.model.vocab, [3, 5])
    tokens = pipeline.generate(prompts, 3)
    layers = spec.model.layers
    assert calls.count("rmsnorm") == 3 and calls.count("add_rmsnorm") == 3 * 2 * layers
    assert calls.count("rope") == calls.count("ffn") == 3 * layers
    assert calls.count("attention_prefill") == layers and calls.count("attention_decode") == 2 * layers
    assert calls.count("sample") == 3
    reference = build_pipeline(spec, registry, weights).generate(prompts, 3)
    assert torch.equal(tokens, reference)
    assert pipeline.cuda_graph_blocker is None


def test_a_backend_that_cannot_run_here_is_refused_when_the_pipeline_is_built(tmp_path):
    spec = load_spec(write_spec(tmp_path, workload=WORKLOAD))
    registry = Registry()
    for op in BUILTIN_OPS:
        registry.add_op(op, "kbench-core")
    loaded = []
    registry.add_implementation(Implementation("rope", "absent", registry.ops["rope"].reference, "test",
                                               available=lambda: loaded.append(1) or "needs a library"))
    with pytest.raises(KbenchError, match="rope: backend 'absent' cannot run here: needs a library"):
        build_pipeline(spec, registry, load_weights(spec), {"rope": "absent"})
    assert loaded == [1]


def test_cuda_graph_blocker_names_the_implementation(tmp_path):
    spec = load_spec(write_spec(tmp_path, workload=WORKLOAD))
    pipeline = build_pipeline(spec, _spy_registry([], cuda_graphs=False), load_weights(spec), {"attention": "spy"})
    assert pipeline.cuda_graph_blocker.startswith("attention_decode/spy")
    with pytest.raises(KbenchError):
        pipeline.capture_decode_graph()


def test_a_prefill_only_backend_that_cannot_be_captured_does_not_block_the_decode_graph(tmp_path, registry):
    # the prefill reference loops over cu_seqlens on the host, but a decode step never calls it
    spec = load_spec(write_spec(tmp_path, workload=WORKLOAD))
    assert not registry.get("attention_prefill", "reference").cuda_graphs
    assert build_pipeline(spec, registry, load_weights(spec)).cuda_graph_blocker is None


def _core_registry() -> Registry:
    """The core ops and their references alone, for a test that adds a backend of its own."""
    registry = Registry()
    for op in BUILTIN_OPS:
        registry.add_op(op, "kbench-core")
    return registry


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["contiguous", "paged"])
def test_cuda_graph_decode_matches_eager(tmp_path, registry, layout):
    # the references throughout: the decode reference reads nothing back to the host, so it is captured
    spec = load_spec(write_spec(tmp_path, device="cuda", workload={**WORKLOAD, "kv_layout": layout}))
    weights = load_weights(spec)
    eager, graphed = build_pipeline(spec, registry, weights), build_pipeline(spec, registry, weights)
    assert graphed.cuda_graph_blocker is None
    prompts = _prompts(spec.model.vocab, [5, 9, 2])
    token_a = eager.prefill(prompts).argmax(-1)
    token_b = graphed.prefill(prompts).argmax(-1)
    graphed.capture_decode_graph()
    for _ in range(4):
        a, b = eager.decode_step(token_a), graphed.decode_step(token_b)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        token_a, token_b = a.argmax(-1), b.argmax(-1)
    graphed.prefill(prompts)  # same batch and capacity: the graph stays valid after a new prefill
    eager.prefill(prompts)
    torch.testing.assert_close(graphed.decode_step(token_a), eager.decode_step(token_a), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scaling", ["none", "dynamic"])
def test_rewind_repeats_the_decode_steps_after_the_prefill_exactly(tmp_path, registry, scaling):
    # a decode timing rewinds between its runs instead of prefilling again: the second run of the
    # same steps must see the same cache, positions and (dynamic NTK) rope length as the first
    rope = {"scaling": "dynamic", "factor": 4.0, "original_max_position": 8} if scaling == "dynamic" else {}
    spec = load_spec(write_spec(tmp_path, model={**TINY_MODEL, "rope": {**TINY_MODEL.get("rope", {}), **rope}},
                                workload=WORKLOAD))
    pipeline = _pipeline(spec, registry)
    with pytest.raises(KbenchError, match="rewind before prefill"):
        pipeline.rewind()
    prompts = _prompts(spec.model.vocab, [5, 7, 2])  # the steps pass position 8 (dynamic NTK grows)
    token = pipeline.prefill(prompts).argmax(-1)

    def steps():
        return torch.stack([pipeline.decode_step(token).clone() for _ in range(4)])

    first = steps()
    pipeline.rewind()
    torch.testing.assert_close(steps(), first, atol=0, rtol=0)
    assert pipeline._lengths == [9, 11, 6]


@pytest.mark.gpu
def test_cuda_graph_decode_grows_dynamic_ntk_like_eager(tmp_path, registry):
    """The dynamic-NTK base is recomputed on the device each step, so a replayed graph grows it too."""
    model = {**TINY_MODEL, "rope": {"scaling": "dynamic", "factor": 4.0, "original_max_position": 8}}
    spec = load_spec(write_spec(tmp_path, device="cuda", model=model, workload=WORKLOAD))
    weights = load_weights(spec)
    eager, graphed = build_pipeline(spec, registry, weights), build_pipeline(spec, registry, weights)
    prompts = _prompts(spec.model.vocab, [5, 7, 2])  # decode passes position 8 after a few steps
    token = eager.prefill(prompts).argmax(-1)
    graphed.prefill(prompts)
    graphed.capture_decode_graph()
    for _ in range(5):
        a, b = eager.decode_step(token), graphed.decode_step(token)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        token = a.argmax(-1)


@pytest.mark.gpu
def test_capture_names_an_op_that_syncs_with_the_host(tmp_path):
    spec = load_spec(write_spec(tmp_path, device="cuda", workload=WORKLOAD))
    registry = _core_registry()

    def syncing_decode(**inputs):
        inputs["cache_seqlens"].max().item()
        return registry.ops["attention_decode"].reference(**inputs)

    registry.add_implementation(Implementation("attention_decode", "syncing", syncing_decode, "test"))
    registry.add_implementation(Implementation("attention_prefill", "syncing",
                                               registry.ops["attention_prefill"].reference, "test"))
    pipeline = build_pipeline(spec, registry, load_weights(spec), {"attention": "syncing"})
    pipeline.prefill(_prompts(spec.model.vocab, [3, 4, 5]))
    with pytest.raises(KbenchError, match="attention_decode/syncing"):
        pipeline.capture_decode_graph()
    assert pipeline.cuda_graph_blocker.startswith("attention_decode/syncing")



def test_op_level_backend_choice_reaches_the_pipeline(tmp_path, registry):
    spec = load_spec(write_spec(tmp_path, workload=WORKLOAD), Overrides.from_cli(backend=("attention_decode=sdpa",)))
    pipeline = _pipeline(spec, registry)
    assert pipeline.implementations["attention_decode"].backend == "sdpa"
    assert pipeline.implementations["attention_prefill"].backend == "reference"
