"""kbench/model/pipeline.py's glue between ops: what the decode step does outside the plan's calls."""

import pytest
import torch

from kbench.model.pipeline import split_qkv
from kbench.ops.kv_cache import as_pair


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("tokens", [1, 3])
def test_split_qkv_gives_dense_heads_equal_to_the_products_columns_with_k_and_v_a_pair(tokens, heads, kv_heads):
    head_dim = 8
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim)
    q, k, v = split_qkv(qkv, heads, kv_heads, head_dim)
    columns = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    for got, want, n in zip((q, k, v), columns, (heads, kv_heads, kv_heads), strict=True):
        assert got.shape == (tokens, n, head_dim) and got.is_contiguous()
        assert torch.equal(got.reshape(tokens, -1), want)
    assert as_pair(k, v) is not None  # the reference kv_write's one scatter
    copies = 0 if tokens == 1 else (1 if heads == kv_heads else 2)
    buffers = {t.data_ptr() - t.storage_offset() * t.element_size() for t in (q, k, v)}
    assert len(buffers) == max(copies, 1) and (tokens > 1 or buffers == {qkv.data_ptr()})
