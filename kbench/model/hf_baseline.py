"""Hugging Face's LlamaForCausalLM with the pipeline's weights and a static cache, timed like
``Pipeline``. Prompts of one prefill have equal length: padding would change what is measured."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from kbench.errors import KbenchError
from kbench.model.weights import Weights


def interleaved_to_half(w: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """Permute a q or k projection's rows so rotate_half rope computes what interleaved (Meta) rope
    does: pair (2i, 2i+1) of each head becomes (i, i + head_dim/2); q.k is unchanged."""
    hidden = w.shape[1]
    return w.view(heads, head_dim // 2, 2, hidden).transpose(1, 2).reshape(heads * head_dim, hidden)


def hf_config(model, dtype: torch.dtype):
    from transformers import LlamaConfig

    rope = model.rope
    scaling = None
    if rope.scaling == "linear":
        scaling = {"rope_type": "linear", "factor": rope.factor}
    elif rope.scaling == "dynamic":
        scaling = {"rope_type": "dynamic", "factor": rope.factor,
                   "original_max_position_embeddings": rope.original_max_position}
    elif rope.scaling == "llama3":
        scaling = {"rope_type": "llama3", "factor": rope.factor, "low_freq_factor": rope.low_freq_factor,
                   "high_freq_factor": rope.high_freq_factor,
                   "original_max_position_embeddings": rope.original_max_position}
    elif rope.scaling == "yarn":
        scaling = {"rope_type": "yarn", "factor": rope.factor, "beta_fast": rope.beta_fast,
                   "beta_slow": rope.beta_slow, "truncate": rope.truncate,
                   "original_max_position_embeddings": rope.original_max_position}
        if rope.attention_factor is not None:
            scaling["attention_factor"] = float(rope.attention_factor)
    return LlamaConfig(
        vocab_size=model.vocab, hidden_size=model.hidden, intermediate_size=model.intermediate,
        num_hidden_layers=model.layers, num_attention_heads=model.heads, num_key_value_heads=model.kv_heads,
        head_dim=model.head_dim, rms_norm_eps=model.norm_eps,
        max_position_embeddings=rope.original_max_position if rope.scaling == "dynamic" else model.max_seq_len,
        rope_theta=rope.theta, rope_scaling=scaling, tie_word_embeddings=model.tie_embeddings,
        attention_bias=model.attention_bias, mlp_bias=model.mlp_bias, torch_dtype=dtype,
    )


def best_attention(device: torch.device, dtype: torch.dtype) -> str:
    # FA4 installs a namespace package `flash_attn` without FA2's kernels: ask transformers.
    from transformers.utils import is_flash_attn_2_available

    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and is_flash_attn_2_available():
        return "flash_attention_2"
    return "sdpa"


def hf_model(weights: Weights, dtype: torch.dtype, device: torch.device, attention: str | None = None):
    """LlamaForCausalLM holding ``weights`` (shared storage where layouts allow), in eval mode."""
    try:
        from transformers import LlamaForCausalLM
    except ImportError as error:
        raise KbenchError(f"the HF baseline needs transformers ({error}).",
                          "pip install 'kbench[hf]' (transformers, safetensors).") from None
    m = weights.model
    config = hf_config(m, dtype)
    config._attn_implementation = attention or best_attention(device, dtype)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    state = weights.to_hf_state_dict()
    if m.rope.style == "interleaved":
        for i in range(m.layers):
            for name, heads in (("q_proj", m.heads), ("k_proj", m.kv_heads)):
                key = f"model.layers.{i}.self_attn.{name}.weight"
                state[key] = interleaved_to_half(state[key], heads, m.head_dim)
    if m.tie_embeddings:
        state.pop("lm_head.weight")
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (m.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"HF state dict mismatch: missing {missing}, unexpected {unexpected}")
    if m.tie_embeddings:
        model.tie_weights()
    # buffers (rotary inv_freq) were created on meta: rebuild them on the real device
    with torch.device(device):
        model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    model = model.to(device=device).eval()
    still_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if still_meta:
        raise RuntimeError(f"HF model tensors left uninitialised: {still_meta}")
    return model


def reset_rope_state(model) -> None:
    """Undo what dynamic NTK's forwards grew, so each generation starts as in a fresh model."""
    rotary = model.model.rotary_emb
    original = getattr(rotary, "original_inv_freq", None)
    if original is not None and hasattr(rotary, "original_max_seq_len"):
        rotary.inv_freq = original.clone()
        rotary.max_seq_len_cached = rotary.original_max_seq_len


class HFBaseline:

    def __init__(self, spec, weights: Weights, attention: str | None = None):
        self.spec, self.device, self.dtype = spec, torch.device(spec.device), spec.dtype
        self.attention = attention or best_attention(self.device, self.dtype)
        self.model = hf_model(weights, self.dtype, self.device, self.attention)
        self.cache = None
        self._batch = self._capacity = 0
        forward = inspect.signature(type(self.model.model).forward).parameters
        self._takes_cache_position = "cache_position" in forward
        self._keep_kwarg = next((k for k in ("logits_to_keep", "num_logits_to_keep")
                                 if k in inspect.signature(type(self.model).forward).parameters), None)
        self.positions: torch.Tensor | None = None

    @property
    def name(self) -> str:
        return f"hf-{self.attention}"

    def reset(self, batch: int, max_seq_len: int) -> None:
        """An empty static cache for ``batch`` sequences of up to ``max_seq_len`` tokens; rope as
        in a fresh model (dynamic NTK starts again from the trained length)."""
        reset_rope_state(self.model)
        if self.cache is not None and (batch, max_seq_len) == (self._batch, self._capacity):
            self.cache.reset()
        else:
            from transformers import StaticCache

            params = inspect.signature(StaticCache.__init__).parameters
            kwargs = {"config": self.model.config, "max_cache_len": max_seq_len}
            if "max_batch_size" in params:  # transformers 4.x allocates eagerly
                kwargs |= {"max_batch_size": batch, "device": self.device, "dtype": self.dtype}
            self.cache = StaticCache(**kwargs)
            self._batch, self._capacity = batch, max_seq_len
        self.positions = torch.zeros((batch, 1), dtype=torch.int64, device=self.device)

    def _forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "position_ids": position_ids, "past_key_values": self.cache,
                  "use_cache": True}
        if self._takes_cache_position:
            kwargs["cache_position"] = position_ids[0]
        if self._keep_kwarg:
            kwargs[self._keep_kwarg] = 1
        return self.model(**kwargs).logits[:, -1]

    @torch.inference_mode()
    def prefill(self, prompts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits ``[batch, vocab]`` at the last position of equal-length prompts."""
        lengths = {int(p.numel()) for p in prompts}
        if len(lengths) != 1:
            raise KbenchError("the HF baseline needs prompts of one length.", "Use equal prompt lengths (random_prompts does).")
        length = lengths.pop()
        batch = len(prompts)
        needed = length + self.spec.workload.decode_steps
        if self.cache is None or batch != self._batch or needed > self._capacity:
            self.reset(batch, needed)
        else:
            self.reset(batch, self._capacity)
        input_ids = torch.stack([p.reshape(-1) for p in prompts]).to(self.device)
        position_ids = torch.arange(length, device=self.device)[None].expand(batch, length)
        logits = self._forward(input_ids, position_ids)
        self.positions.fill_(length)
        return logits

    @torch.inference_mode()
    def decode_step(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self._forward(tokens.reshape(-1, 1).to(self.device), self.positions)
        self.positions.add_(1)
        return logits
