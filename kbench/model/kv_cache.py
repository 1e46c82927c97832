"""The preallocated KV cache in ``attention_decode``'s layouts, written without a host sync.
Contiguous: ``k[layer]: [batch, capacity, kv_heads, head_dim]``. Paged: ``k[layer]:
[num_blocks, block_size, kv_heads, head_dim]`` with ``block_table: [batch, blocks_per_seq]``
int32, blocks handed out in a seeded random order so a kernel ignoring the table reads wrong keys.
``slot_mapping`` gives each token's row as ``kv_write`` takes it."""

from __future__ import annotations

import math

import torch

from kbench.config import ModelConfig
from kbench.ops.kv_cache import as_pair as _as_pair  # noqa: F401  (tests check the pairing)
from kbench.ops.kv_cache import kv_write_reference


class KVCache:
    """K and V for every layer of ``batch`` sequences of up to ``capacity`` tokens."""

    def __init__(self, model: ModelConfig, batch: int, capacity: int, dtype: torch.dtype,
                 device: str | torch.device, layout: str = "contiguous", block_size: int = 256, seed: int = 0):
        self.batch, self.layout, self.block_size = batch, layout, block_size
        device = torch.device(device)
        per_token = (model.kv_heads, model.head_dim)
        if layout == "contiguous":
            self.capacity = capacity
            shape = (model.layers, batch, capacity, *per_token)
            self.block_table = None
        elif layout == "paged":
            blocks_per_seq = math.ceil(capacity / block_size)
            self.capacity = blocks_per_seq * block_size
            num_blocks = batch * blocks_per_seq
            shape = (model.layers, num_blocks, block_size, *per_token)
            order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed))
            self.block_table = order.view(batch, blocks_per_seq).to(device=device, dtype=torch.int32)
        else:
            raise ValueError(f"unknown kv layout {layout!r}")
        # K and V of a layer side by side in one allocation, so that a decode step can write
        # both with one scatter (see ``write``); ``k`` and ``v`` are views of it.
        self.kv = torch.zeros((shape[0], 2, *shape[1:]), dtype=dtype, device=device)
        self.k, self.v = self.kv[:, 0], self.kv[:, 1]

    def slot_index(self, seq_ids: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sequence, position) or, paged, (block, offset) of each token's slot; on the device."""
        if self.block_table is None:
            return seq_ids, positions
        blocks = self.block_table[seq_ids, torch.div(positions, self.block_size, rounding_mode="floor")]
        return blocks.long(), torch.remainder(positions, self.block_size)

    def slot_mapping(self, seq_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Each token's row in ``k[layer]`` seen as ``[slots, kv_heads, head_dim]``: the
        ``slot_mapping`` of ``kv_write``. Device tensors in, device tensor out."""
        first, second = self.slot_index(seq_ids, positions)
        return first * self.k.shape[2] + second

    def write(self, layer: int, slots: tuple[torch.Tensor, torch.Tensor], k: torch.Tensor, v: torch.Tensor) -> None:
        """Store ``k, v: [tokens, kv_heads, head_dim]`` at ``slots`` (from ``slot_index``) with
        the reference ``kv_write`` (one scatter where k and v are views of one product)."""
        first, second = slots
        kv_write_reference(k, v, self.k[layer], self.v[layer], first * self.k.shape[2] + second)
