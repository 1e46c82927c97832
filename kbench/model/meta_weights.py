"""Meta's original checkpoint layout: ``params.json`` and ``consolidated.NN.pth``, one file per
model-parallel rank, loaded as it is (rope style ``interleaved``: Meta's q/k rows are not
permuted for rotate_half).

Meta's model code (fairscale layers) splits each tensor over the ranks: column-parallel
layers (``wq``, ``wk``, ``wv``, ``w1`` gate, ``w3`` up, ``output``) by rows, row-parallel ones
(``wo``, ``w2`` down) by columns, the embedding by the model dimension (LLaMA 2's
ParallelEmbedding) or by the vocabulary (Llama 3's); norms are replicated. The loader
concatenates each tensor back in rank order, reading shards memory-mapped with
``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kbench.checkpoint import check_meta_folder, meta_shards
from kbench.config import ModelConfig
from kbench.errors import KbenchError
from kbench.model.weights import META_LAYER_NAMES, Weights, checkpoint_name, fused_layer, layer_shapes

ROW_SPLIT = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3", "output")
COLUMN_SPLIT = ("attention.wo", "feed_forward.w2")


def _split_dim(name: str, shard: torch.Tensor, shape: tuple[int, ...], ranks: int) -> int | None:
    """The dimension ``name`` is split along over ``ranks`` files (None: replicated)."""
    if ranks == 1 or shard.ndim == 1:
        return None
    stem = name.removesuffix(".weight").split(".", 2)[-1] if name.startswith("layers.") else name.removesuffix(".weight")
    if stem in ROW_SPLIT:
        return 0
    if stem in COLUMN_SPLIT:
        return 1
    # the embedding: whichever dimension the shard is short in
    return 1 if shard.shape[0] == shape[0] else 0


def load_meta_weights(folder: Path, model: ModelConfig, dtype: torch.dtype, device: str | torch.device) -> Weights:
    """The first ``model.layers`` layers of a Meta checkpoint, fused for the pipeline."""
    problem = check_meta_folder(folder)
    if problem:
        raise KbenchError(problem, "Point weights.path at a folder with params.json and consolidated.00.pth ...")
    device = torch.device(device)
    paths = meta_shards(folder)
    shards = [torch.load(p, map_location="cpu", weights_only=True, mmap=True) for p in paths]
    m = model

    def get(name: str, *shape: int) -> torch.Tensor:
        if name not in shards[0]:
            raise KbenchError(f"{paths[0]} has no tensor {name!r}.",
                              "The checkpoint is incomplete or not a LLaMA; re-download it.")
        parts = [shard[name] for shard in shards]
        dim = _split_dim(name, parts[0], shape, len(parts))
        tensor = parts[0] if dim is None else torch.cat(parts, dim=dim)
        if tuple(tensor.shape) != shape:
            raise KbenchError(f"{folder}: {name} has shape {list(tensor.shape)} over {len(parts)} shards, but "
                              f"params.json (and the spec's model section) gives {list(shape)}.",
                              "The tensors do not match params.json: fix it, or re-download the checkpoint.")
        return tensor.to(device=device, dtype=dtype)

    layers = [fused_layer({role: get(checkpoint_name(role, META_LAYER_NAMES, f"layers.{i}."), *shape)
                           for role, shape in layer_shapes(m).items()}) for i in range(m.layers)]
    embedding = get("tok_embeddings.weight", m.vocab, m.hidden)
    lm_head = get("output.weight", m.vocab, m.hidden)
    return Weights(m, embedding, layers, get("norm.weight", m.hidden), lm_head, str(folder))
