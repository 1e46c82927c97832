"""Rotary position embedding: ``rope`` on q and k at given positions.

CONTRACT (to be completed with math, reference and cases):

``rope(q, k, positions, inv_freq, style) -> (q_out, k_out)``

- ``q: [tokens, heads, head_dim]``, ``k: [tokens, kv_heads, head_dim]`` (float dtypes),
- ``positions: [tokens]`` int64 (the absolute position of each packed token),
- ``inv_freq: [head_dim // 2]`` float32, the frequencies after scaling; computed by
  ``rope_inv_freq(head_dim, rope_config, seq_len)`` for scaling none / linear / dynamic / llama3,
  so every backend handles every scaling variant by taking this tensor,
- ``style``: ``"half"`` (HF rotate_half: pairs (i, i + head_dim/2)) or ``"interleaved"``
  (Meta: pairs (2i, 2i+1)).
May write q and k in place (``inplace=("q", "k")``) and return them.
"""

OPS = []
