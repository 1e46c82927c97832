"""kbench/model/kv_cache.py: the one-scatter write of a decode token's k and v stores exactly
what two separate writes store, in both layouts."""

import pytest
import torch

from kbench.config import ModelConfig
from kbench.model.kv_cache import KVCache, _as_pair

MODEL = ModelConfig(name="t", vocab=32, hidden=64, intermediate=96, layers=2, heads=4, kv_heads=2, head_dim=16,
                    max_seq_len=64)


def _qkv_views(tokens: int, seed: int = 0):
    """q, k, v as the pipeline's decode makes them: views of one [tokens, q|k|v] product."""
    d, kv = MODEL.head_dim, MODEL.kv_heads * MODEL.head_dim
    qkv = torch.randn(tokens, MODEL.hidden + 2 * kv, generator=torch.Generator().manual_seed(seed))
    q, k, v = qkv.split([MODEL.hidden, kv, kv], dim=-1)
    return qkv, k.view(tokens, -1, d), v.view(tokens, -1, d)


@pytest.mark.parametrize("inference", [False, True], ids=["grad-mode", "inference-mode"])
@pytest.mark.parametrize("layout", ["contiguous", "paged"])
def test_paired_write_equals_two_writes(layout, inference):
    with torch.inference_mode(inference):  # runs decode under inference_mode
        _check_paired_write(layout)


def _check_paired_write(layout):
    one, two = (KVCache(MODEL, batch=3, capacity=20, dtype=torch.float32, device="cpu", layout=layout,
                        block_size=8) for _ in range(2))
    for step, (seq, pos) in enumerate([(0, 5), (2, 17), (1, 0)]):
        _, k, v = _qkv_views(1, seed=step)
        assert _as_pair(k, v) is not None
        slots = one.slot_index(torch.tensor([seq]), torch.tensor([pos]))
        one.write(1, slots, k, v)
        two.write(1, slots, k.clone(), v.clone())  # separate buffers: two scatters
    assert one.k.abs().sum() > 0 and one.v.abs().sum() > 0
    assert torch.equal(one.k, two.k) and torch.equal(one.v, two.v)
    assert torch.equal(one.k[0], torch.zeros_like(one.k[0]))  # the other layer is untouched


def test_pairs_only_views_at_a_fixed_offset_with_equal_strides():
    qkv, k, v = _qkv_views(1)
    pair = _as_pair(k, v)
    assert torch.equal(pair[0], k) and torch.equal(pair[1], v)
    assert _as_pair(v, k) is None  # v before k
    assert _as_pair(k, v.clone()) is None  # another buffer
    _, k3, v3 = _qkv_views(3)
    assert _as_pair(k3.contiguous(), v3.contiguous()) is None
