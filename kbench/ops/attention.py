"""Attention: ``attention_prefill`` (causal, packed varlen) and ``attention_decode`` (KV cache).

CONTRACT (to be completed with math, reference and cases):

``attention_prefill(q, k, v, cu_seqlens, max_seqlen, scale) -> out``
- ``q: [tokens, heads, head_dim]``, ``k, v: [tokens, kv_heads, head_dim]``, packed sequences,
- ``cu_seqlens: [batch + 1]`` int32 prefix sums of sequence lengths, ``max_seqlen: int``,
- causal within each sequence, GQA/MQA by ``heads // kv_heads`` query heads per kv head,
- ``out: [tokens, heads, head_dim]`` in q.dtype.

``attention_decode(q, k_cache, v_cache, cache_seqlens, block_table, scale) -> out``
- ``q: [batch, heads, head_dim]`` (one new token per sequence; its K/V are already in the cache),
- contiguous: ``k_cache, v_cache: [batch, max_seq_len, kv_heads, head_dim]``, ``block_table=None``,
- paged: ``k_cache, v_cache: [num_blocks, block_size, kv_heads, head_dim]``,
  ``block_table: [batch, max_blocks_per_seq]`` int32,
- ``cache_seqlens: [batch]`` int32: tokens in the cache for each sequence (including the new one),
- ``out: [batch, heads, head_dim]`` in q.dtype.
"""

OPS = []
