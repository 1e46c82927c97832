"""The work of a whole model step, from its shapes: FLOPs of a prefill, bytes of a decode step."""

from __future__ import annotations

from kbench.spec import Spec


def prefill_flops(spec: Spec, batch: int, prompt_len: int) -> float:
    """FLOPs of one prefill: 2 per weight per token, the LM head on each prompt's last position,
    causal attention (QK^T and PV over prompt_len(prompt_len+1)/2 pairs)."""
    m = spec.model
    layer_weights = (m.heads + 2 * m.kv_heads) * m.head_dim * m.hidden + m.hidden * m.heads * m.head_dim \
        + 3 * m.hidden * m.intermediate
    tokens = batch * prompt_len
    attention = 4 * m.heads * m.head_dim * batch * prompt_len * (prompt_len + 1) / 2
    return m.layers * (2 * layer_weights * tokens + attention) + 2 * batch * m.vocab * m.hidden


def kv_bytes_per_token(model, dtype) -> int:
    """Bytes of K and V one token holds in the cache, over every layer."""
    return 2 * model.layers * model.kv_heads * model.head_dim * dtype.itemsize


def decode_bytes_per_step(spec: Spec, weights, batch: int, prompt_len: int) -> float:
    """Bytes one decode step must read, averaged over the timed steps: every weight (of the
    embedding, ``batch`` rows), plus K and V of every cached token."""
    model, steps = spec.model, spec.workload.decode_steps
    weight_bytes = weights.nbytes
    if weights.lm_head.data_ptr() != weights.embedding.data_ptr():
        weight_bytes -= weights.embedding.numel() * weights.embedding.element_size()
    kv_per_token = kv_bytes_per_token(model, spec.dtype)
    # step i (0-based) attends over prompt_len + i + 1 tokens per sequence
    mean_context = prompt_len + 1 + (steps - 1) / 2
    return weight_bytes + kv_per_token * batch * mean_context


def decode_bytes_at_ranks(spec: Spec, ranks: int, batch: int, prompt_len: int) -> float:
    """``decode_bytes_per_step`` of the whole model, from its shapes: what ``ranks`` ranks of a
    tensor-parallel step read together ((weights + KV) / ranks each; replicated kv heads, read
    by several ranks, count once). The roofline at N ranks holds it against N x copy bandwidth.
    """
    from kbench.model.tensor_parallel import model_weight_bytes

    model, steps, size = spec.model, spec.workload.decode_steps, spec.dtype.itemsize
    weight_bytes = model_weight_bytes(model, spec.dtype)
    if not model.tie_embeddings:
        weight_bytes -= model.vocab * model.hidden * size
    kv_per_token = kv_bytes_per_token(model, spec.dtype)
    return weight_bytes + kv_per_token * batch * (prompt_len + 1 + (steps - 1) / 2)
