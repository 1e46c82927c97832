"""Tensor parallelism on the CPU with gloo: shards against slices of the whole weights, and the
TP pipeline's logits against the single-rank pipeline's on the same weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from tiny_models import TINY_MODEL, save_hf_checkpoint, write_spec

from kbench.distributed import launch
from kbench.errors import KbenchError
from kbench.model import build_pipeline, load_weights, random_prompts, random_weights
from kbench.model.tensor_parallel import (
    Shard,
    TensorParallel,
    check_tensor_parallel,
    load_hf_shard,
    random_shard_weights,
    shard_weights,
)
from kbench.model.weights import LayerWeights, load_hf_weights
from kbench.plan import resolve_plan
from kbench.plugins import get_registry
from kbench.spec import load_spec

TINY_SPEC = Path(__file__).parents[2] / "model_specs" / "tiny-llama.yaml"


def _same_weights(a, b) -> None:
    assert torch.equal(a.embedding, b.embedding) and torch.equal(a.lm_head, b.lm_head)
    assert torch.equal(a.norm, b.norm) and a.model == b.model
    for layer_a, layer_b in zip(a.layers, b.layers, strict=True):
        for field in dataclasses.fields(LayerWeights):
            x, y = getattr(layer_a, field.name), getattr(layer_b, field.name)
            assert (x is None and y is None) or torch.equal(x, y), field.name  # biases: None without them


def _model(**changes):
    from kbench.config import ModelConfig

    return ModelConfig(name="tiny", **(TINY_MODEL | changes))


@pytest.mark.parametrize("ranks,kv_heads", [(2, 2), (4, 2), (4, 1), (2, 4)])
def test_random_shard_is_the_slice_of_the_whole_random_weights(ranks, kv_heads):
    model = _model(kv_heads=kv_heads)
    whole = random_weights(model, torch.float32, "cpu", seed=3)
    for rank in range(ranks):
        shard = Shard(model, rank, ranks)
        _same_weights(random_shard_weights(shard, torch.float32, "cpu", seed=3), shard_weights(whole, shard))


def test_shard_rows_follow_meta_split_with_replicated_kv_heads():
    # 4 q heads, 2 kv heads over 4 ranks: ranks 0 and 1 attend with kv head 0, ranks 2 and 3 with kv head 1
    model = _model()
    assert [Shard(model, r, 4).kv_heads for r in range(4)] == [(0, 1), (0, 1), (1, 2), (1, 2)]
    assert [Shard(model, r, 4).heads for r in range(4)] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    local = Shard(model, 3, 4).model
    assert (local.heads, local.kv_heads, local.intermediate) == (1, 1, 20)


def test_hf_shard_reads_the_slice_of_the_checkpoint(tmp_path):
    save_hf_checkpoint(tmp_path, shard=True)
    model = _model()
    whole = load_hf_weights(tmp_path, model, torch.float32, "cpu")
    for rank in range(4):
        shard = Shard(model, rank, 4)
        _same_weights(load_hf_shard(tmp_path, shard, torch.float32, "cpu"), shard_weights(whole, shard))


@pytest.mark.parametrize("ranks,changes,problem", [
    (3, {}, "do not divide the 4 attention heads"),
    (2, {"heads": 6, "kv_heads": 3, "hidden": 96}, "the 3 kv heads neither split over nor replicate"),
    (2, {"vocab": 95}, "do not divide the vocabulary of 95"),
    (4, {"intermediate": 90}, "do not divide the intermediate size 90"),
])
def test_rank_counts_that_do_not_shard_the_model_are_refused(ranks, changes, problem):
    with pytest.raises(KbenchError, match=problem):
        check_tensor_parallel(_model(**changes), ranks)


def test_kv_heads_fewer_than_ranks_are_replicated_not_refused():
    check_tensor_parallel(_model(heads=8, kv_heads=2, hidden=128), 8)


def _teacher_forced(rank: int, ranks: int, spec_path: str) -> dict:
    """On every rank: the TP pipeline and the single-rank one on the same weights, fed the
    single-rank pipeline's greedy tokens; rank 0's errors and token agreement."""
    spec = load_spec(spec_path)
    registry = get_registry()
    single = build_pipeline(resolve_plan(spec, registry), load_weights(spec))
    shard = Shard(spec.model, rank, ranks)
    rank_plan = resolve_plan(dataclasses.replace(spec, model=shard.model), registry)
    weights = random_shard_weights(shard, spec.dtype, spec.device, spec.weights.seed)
    parallel = build_pipeline(rank_plan, weights, TensorParallel(shard))
    prompts = random_prompts(spec.model.vocab, 3, 9, seed=5)
    with torch.inference_mode():
        expected, got = single.prefill(prompts), parallel.prefill(prompts)
        worst, agree, total = 0.0, 0, 0
        for _ in range(5):
            worst = max(worst, ((got - expected).abs().max() / expected.abs().max()).item())
            tokens = expected.argmax(-1)
            agree, total = agree + int((got.argmax(-1) == tokens).sum()), total + tokens.numel()
            expected, got = single.decode_step(tokens), parallel.decode_step(tokens)
    return {"max_rel_err": worst, "agreement": agree / total, "kv_heads": shard.model.kv_heads}


@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("kv_heads", [2, 1], ids=["tiny", "kv_heads-1"])
def test_tensor_parallel_logits_equal_the_single_rank_pipeline(tmp_path, ranks, kv_heads):
    spec_path = TINY_SPEC
    if kv_heads != 2:  # the tiny spec with fewer kv heads than ranks: kv heads replicated
        spec_path = write_spec(tmp_path, model=TINY_MODEL | {"kv_heads": kv_heads},
                               backends={"attention": "sdpa", "rmsnorm": "torch"})
    get_registry()  # loaded once: the forked ranks inherit it
    result = launch(_teacher_forced, ranks, "cpu", str(spec_path))
    assert result["kv_heads"] == max(1, kv_heads // ranks)
    assert result["max_rel_err"] < 1e-5
    assert result["agreement"] == 1.0
