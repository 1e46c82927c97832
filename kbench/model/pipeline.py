"""A LLaMA model assembled from the backends a spec chose. One decoder layer, for ``tokens``
packed tokens (prefill) or one token per sequence (decode)::

    h, residual = add_rmsnorm(ffn_out, residual, attn_norm)    # rmsnorm(x) in layer 0
    q, k, v     = split(linear(h, wqkv) + bqkv)                 # [tokens, heads|kv_heads, head_dim]
    q, k        = rope(q, k, positions, inv_freq, style)
    kv_write(k, v, k_cache, v_cache, slot_mapping)              # a device-side scatter
    o           = attention_prefill(q, k, v, cu_seqlens, ...)   # or attention_decode(q, cache, ...)
    h, residual = add_rmsnorm(linear(o, wo) + bo, residual, ffn_norm)
    ffn_out     = ffn(h, w_gate_up, w_down[, b_gate_up, b_down])

after ``x = embedding(ids, table)``; then ``add_rmsnorm(ffn_out, residual, norm)``, the LM
head ``linear(h, lm_head)`` and ``sample``. Every op runs the plan's choice, called through
``Pipeline.fn``; views, splits and position bookkeeping are a breakdown's remainder. A decode
step never syncs with the host, so it can be captured as a CUDA graph.
In a tensor-parallel run each rank holds a shard (``kbench.model.tensor_parallel``): ``all_reduce``
joins the o and ffn partial sums; the embedding and LM head are vocabulary-parallel.

Biases exist only where the model has them; q/k/v and o biases go through the ``linear``
contract, mlp biases through the ``ffn`` contract. Rope follows
transformers: dynamic NTK recomputes ``inv_freq`` each forward from the longest length seen
since ``reset`` (cached keys keep their rotation); yarn's cos/sin factor ``a`` is folded into
the attention scale (``a**2 / sqrt(head_dim)``, the same as scaling q and k by ``a``).
Sequences may run past ``max_seq_len`` (the trained positions), as in transformers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from kbench.config import SamplingConfig
from kbench.errors import KbenchError
from kbench.model.arithmetic import kv_bytes_per_token
from kbench.model.kv_cache import KVCache
from kbench.model.tensor_parallel import SINGLE_RANK
from kbench.model.weights import Weights
from kbench.ops.rope import dynamic_inv_freq, rope_attention_factor, rope_inv_freq
from kbench.plan import Plan
from kbench.registry import Implementation

# Up to this many tokens (decode steps) q, k and v come from one GEMM over the whole of wqkv:
# streaming 3 weight blocks in one launch is faster than 3 launches, and the copies are tiny.
ONE_QKV_GEMM_MAX_TOKENS = 64
# the call sites of ``linear`` (``Pipeline.fn`` keys ``linear[qkv]``, ...)
PROJECTIONS = ("qkv", "o", "lm_head")
# The ops one phase alone calls; an op only a prefill calls is never part of a captured decode
# step, so it cannot block the capture.
PHASE_OF_OP = {"attention_prefill": "prefill", "attention_decode": "decode"}


def calls_per_step(model, op: str, proj: str | None = None) -> int:
    """How many times one prefill or decode step calls ``op`` (``linear``: the projection
    ``proj``; the q/k/v projection counts as one call per layer, one GEMM or three)."""
    once = {"embedding", "rmsnorm", "sample"}
    if op in once or (op == "linear" and proj == "lm_head"):
        return 1
    return 2 * model.layers if op == "add_rmsnorm" else model.layers


def bias(tensor: torch.Tensor | None) -> dict:
    """``{"bias": tensor}`` for a biased projection, ``{}`` otherwise (the ``linear`` call of an
    unbiased model carries no bias argument at all)."""
    return {} if tensor is None else {"bias": tensor}


def steps_per_request(op: str, case, workload) -> tuple[int, int]:
    """(prefill, decode): how many steps of one request of ``workload`` call ``op`` at ``case``'s
    shape: ``(1, 0)`` a prefill shape, ``(0, decode_steps)`` a decode one; the LM head and the
    sampler run on one row per sequence in both, ``(1, decode_steps)``; so does a token count
    that is both a prefill's and a decode batch's (a one-token prompt)."""
    steps = workload.decode_steps
    phase = case.get("phase") or PHASE_OF_OP.get(op)
    if phase is None and (op in ("sample", "topk") or case.get("proj") == "lm_head"):
        phase = "both"
    if phase is None and "tokens" in case.keys():
        prefill, decode = case["tokens"] in workload.prefill_tokens, case["tokens"] in workload.batch
        phase = "both" if prefill == decode else "prefill" if prefill else "decode"
    return {"prefill": (1, 0), "decode": (0, steps)}.get(phase, (1, steps))


def split_qkv(qkv: torch.Tensor, heads: int, kv_heads: int, head_dim: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense ``q [tokens, heads, head_dim]``, ``k`` and ``v [tokens, kv_heads, head_dim]`` from one
    q|k|v product ``[tokens, (heads + 2 kv_heads) head_dim]``, k and v a pair in one buffer (the
    reference ``kv_write`` stores them in one scatter). One row is already dense: views. Past one,
    the columns of each are strided, and a copy per tensor is a launch of a few kB that costs
    about as much as a norm: one copy of all three when they are alike (MHA), else one for q and
    one for k and v."""
    tokens = qkv.shape[0]
    q_cols = heads * head_dim
    if tokens == 1:
        q, k, v = qkv.split([q_cols, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
        return q.view(1, heads, head_dim), k.view(1, kv_heads, head_dim), v.view(1, kv_heads, head_dim)
    if heads == kv_heads:
        q, k, v = qkv.view(tokens, 3, heads, head_dim).transpose(0, 1).contiguous().unbind(0)
        return q, k, v
    q = qkv[:, :q_cols].contiguous().view(tokens, heads, head_dim)
    k, v = qkv[:, q_cols:].view(tokens, 2, kv_heads, head_dim).transpose(0, 1).contiguous().unbind(0)
    return q, k, v


def random_prompts(vocab: int, batch: int, prompt_len: int, seed: int) -> list[torch.Tensor]:
    """``batch`` prompts of ``prompt_len`` token ids in [0, vocab), int64 on the CPU."""
    g = torch.Generator().manual_seed(seed)
    return list(torch.randint(0, vocab, (batch, prompt_len), generator=g, dtype=torch.int64).unbind(0))


def build_pipeline(plan: Plan, weights: Weights, parallel=None) -> Pipeline:
    """The pipeline that runs ``plan``'s choices (``plan.with_reference()``: the all-reference one);
    ``parallel``: one rank's ``kbench.model.tensor_parallel.TensorParallel`` over its shard of the weights."""
    return Pipeline(plan, weights, parallel)


class Pipeline:

    def __init__(self, plan: Plan, weights: Weights, parallel=None):
        spec = plan.spec
        model = weights.model
        if (model.layers, model.hidden, model.vocab) != (spec.model.layers, spec.model.hidden, spec.model.vocab):
            raise KbenchError(f"{spec.path}: the weights ({weights.source}) do not match the spec's model shapes.",
                              "Load them with kbench.model.load_weights(spec).")
        self.spec, self.model, self.weights = spec, model, weights
        self.dtype, self.device = spec.dtype, torch.device(spec.device)
        self.plan = plan
        self.implementations: dict[str, Implementation] = {name: op.implementation
                                                            for name, op in plan.pipeline_ops.items()}
        impl = self.implementations
        # call site -> the callable a step calls there: the op's name, or ``linear[PROJ]`` for each
        # projection, so a breakdown tells them apart; ``traced_calls`` wraps them
        self.fn: dict[str, Callable] = {name: i.fn for name, i in impl.items() if name != "linear"}
        self.fn |= {f"linear[{proj}]": impl["linear"].fn for proj in PROJECTIONS}
        # how the ranks of a tensor-parallel run join; bound to ``self.fn``, so traced calls reach it
        self.parallel = (parallel or SINGLE_RANK).bind(self.fn)
        # a backend registered with cuda_graphs=False blocks capturing the decode step if the step calls it
        self.cuda_graph_blocker: str | None = next(
            (f"{op}/{i.backend} ({i.plugin})" for op, i in impl.items() if not i.cuda_graphs and PHASE_OF_OP.get(op) != "prefill"),
            None)
        self.scale = model.head_dim ** -0.5 * rope_attention_factor(model.rope) ** 2
        self.weight_bytes = weights.nbytes
        self.cache: KVCache | None = None
        self.inv_freq = self._inv_freq(model.rope.original_max_position)
        # dynamic NTK: the longest length seen since reset, on the device (grown in each forward)
        self._rope_len = torch.zeros((), dtype=torch.int64, device=self.device)
        self._graph: tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor] | None = None
        self._lengths: list[int] = []  # host mirror of cache_seqlens, never read from the device
        self._sized_by_prefill = False  # a cache prefill sized grows with the prompts; one reset sized does not
        self._prefilled: tuple[torch.Tensor, list[int], torch.Tensor] | None = None  # for rewind

    def _inv_freq(self, seq_len: int) -> torch.Tensor:
        return rope_inv_freq(self.model.head_dim, self.model.rope, seq_len).to(self.device)

    def _rope_frequencies(self, positions: torch.Tensor) -> torch.Tensor:
        """``inv_freq`` for one forward: fixed, or (dynamic NTK) from the longest length so far."""
        if self.model.rope.scaling != "dynamic":
            return self.inv_freq
        torch.maximum(self._rope_len, positions.max() + 1, out=self._rope_len)
        return dynamic_inv_freq(self.model.head_dim, self.model.rope, self._rope_len)

    # -- state ----------------------------------------------------------------------------

    def reset(self, batch: int, max_seq_len: int) -> None:
        """Empty the cache for ``batch`` sequences of up to ``max_seq_len`` tokens; zeroed in place
        when the sizes are unchanged, so a captured decode graph stays valid."""
        if batch < 1 or max_seq_len < 1:
            raise KbenchError(f"reset needs batch >= 1 and max_seq_len >= 1, got {batch} and {max_seq_len}.")
        if self.cache is not None and (self.cache.batch, self._capacity_asked) == (batch, max_seq_len):
            self.cache_seqlens.zero_()
            self.positions.zero_()
        else:
            self._graph = None
            self.cache = None  # free the old cache before allocating the new one
            workload = self.spec.workload
            self.cache = KVCache(self.model, batch, max_seq_len, self.dtype, self.device,
                                 workload.kv_layout, workload.block_size)
            self._capacity_asked = max_seq_len
            self.cache_seqlens = torch.zeros(batch, dtype=torch.int32, device=self.device)
            self.positions = torch.zeros(batch, dtype=torch.int64, device=self.device)
            self._batch_ids = torch.arange(batch, device=self.device)
        self._rope_len.zero_()
        self._lengths = [0] * batch
        self._sized_by_prefill = False
        self._prefilled = None

    def rewind(self) -> None:
        """Back to the state the last ``prefill`` left, its prompts' cache rows kept: the decode
        steps since are forgotten (their rows are rewritten by the next steps at the same
        positions), so the same steps can be timed again without another prefill."""
        if self.cache is None or self._prefilled is None:
            raise KbenchError("rewind before prefill.", "Call prefill(prompts) first.")
        lengths_device, lengths, rope_len = self._prefilled
        self.cache_seqlens.copy_(lengths_device)
        self.positions.copy_(lengths_device)
        self._rope_len.copy_(rope_len)
        self._lengths = list(lengths)

    def kv_bytes_per_step(self) -> int:
        per_token = kv_bytes_per_token(self.model, self.dtype)
        return per_token * sum(length + 1 for length in self._lengths)

    # -- the model ------------------------------------------------------------------------

    def _layers(self, x: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every decoder layer on ``x: [tokens, hidden]``; returns (ffn_out, residual) of the last."""
        m, fn = self.model, self.fn
        tokens, eps = x.shape[0], m.norm_eps
        qkv_rows = [m.heads * m.head_dim, m.kv_heads * m.head_dim, m.kv_heads * m.head_dim]
        inv_freq = self._rope_frequencies(positions)
        residual, ffn_out = x, None
        for index, layer in enumerate(self.weights.layers):
            if ffn_out is None:
                h = fn["rmsnorm"](x=x, weight=layer.attn_norm, eps=eps)
            else:
                h, residual = fn["add_rmsnorm"](x=ffn_out, residual=residual, weight=layer.attn_norm, eps=eps)
            if tokens <= ONE_QKV_GEMM_MAX_TOKENS:
                # decode: one weight-streaming GEMM, then its columns made dense heads
                q, k, v = split_qkv(fn["linear[qkv]"](x=h, weight=layer.wqkv, **bias(layer.bqkv)), m.heads,
                                    m.kv_heads, m.head_dim)
            else:
                # prefill: one GEMM per row block of wqkv, so q, k, v come out dense (as every
                # backend's contract wants) without copying [tokens, hidden] activations
                biases = layer.bqkv.split(qkv_rows) if layer.bqkv is not None else (None,) * 3
                q, k, v = (fn["linear[qkv]"](x=h, weight=w, **bias(b)).view(tokens, -1, m.head_dim)
                           for w, b in zip(layer.wqkv.split(qkv_rows), biases, strict=True))
            q, k = fn["rope"](q=q, k=k, positions=positions, inv_freq=inv_freq, style=m.rope.style)
            fn["kv_write"](k=k, v=v, k_cache=self.cache.k[index], v_cache=self.cache.v[index], slot_mapping=slots)
            attn = attend(index, q, k, v).reshape(tokens, m.heads * m.head_dim)
            # biased models run on one rank (tensor_parallel refuses them), so bo is added once
            o = self.parallel.reduce(fn["linear[o]"](x=attn, weight=layer.wo, **bias(layer.bo)))
            h, residual = fn["add_rmsnorm"](x=o, residual=residual, weight=layer.ffn_norm, eps=eps)
            mlp_bias = {} if layer.b_gate_up is None else {"b_gate_up": layer.b_gate_up, "b_down": layer.b_down}
            ffn_out = self.parallel.reduce(fn["ffn"](x=h, w_gate_up=layer.w_gate_up, w_down=layer.w_down, **mlp_bias))
        return ffn_out, residual

    def _logits(self, ffn_out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        h, _ = self.fn["add_rmsnorm"](x=ffn_out, residual=residual, weight=self.weights.norm, eps=self.model.norm_eps)
        return self.parallel.logits(h, self.weights.lm_head)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.parallel.embed(ids, self.weights.embedding)

    def prefill(self, prompts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits ``[batch, vocab]`` at the last position of each prompt (1-D int64), cache emptied;
        a cache ``reset`` sized is kept while the prompts fit, one prefill sized grows with them."""
        lengths = [int(p.numel()) for p in prompts]
        if not lengths or min(lengths) < 1:
            raise KbenchError("prefill needs at least one prompt, each of at least one token.")
        batch, longest = len(lengths), max(lengths)
        needed = longest + self.spec.workload.decode_steps
        if (self.cache is None or self.cache.batch != batch or self._capacity_asked < longest
                or (self._sized_by_prefill and self._capacity_asked < needed)):
            self.reset(batch, needed)
            self._sized_by_prefill = True
        else:
            sized_by_prefill = self._sized_by_prefill
            self.reset(batch, self._capacity_asked)
            self._sized_by_prefill = sized_by_prefill
        device = self.device
        tokens = torch.cat([p.reshape(-1) for p in prompts]).to(device)
        cu_seqlens = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)
        positions = torch.cat([torch.arange(n) for n in lengths]).to(device)
        seq_ids = torch.repeat_interleave(torch.arange(batch), torch.tensor(lengths)).to(device)

        def attend(layer: int, q, k, v):
            return self.fn["attention_prefill"](q=q, k=k, v=v, cu_seqlens=cu_seqlens, max_seqlen=longest, scale=self.scale)

        ffn_out, residual = self._layers(self._embed(tokens), positions, self.cache.slot_mapping(seq_ids, positions),
                                         attend)
        last = (cu_seqlens[1:] - 1).long()
        logits = self._logits(ffn_out[last], residual[last])
        lengths_device = torch.tensor(lengths, device=device)
        self.cache_seqlens.copy_(lengths_device)
        self.positions.copy_(lengths_device)
        self._lengths = lengths
        self._prefilled = (lengths_device, list(lengths), self._rope_len.clone())
        return logits

    def _decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """One token per sequence; advances ``positions`` and ``cache_seqlens`` on the device."""
        self.cache_seqlens.add_(1)  # the new token is in the cache when attention reads it
        slots = self.cache.slot_mapping(self._batch_ids, self.positions)

        def attend(layer: int, q, k, v):
            return self.fn["attention_decode"](q=q, k_cache=self.cache.k[layer], v_cache=self.cache.v[layer],
                                          cache_seqlens=self.cache_seqlens, block_table=self.cache.block_table,
                                          scale=self.scale)

        ffn_out, residual = self._layers(self._embed(tokens), self.positions, slots, attend)
        logits = self._logits(ffn_out, residual)
        self.positions.add_(1)
        return logits

    def decode_step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens: [batch]`` int64 and return the next logits ``[batch, vocab]`` (under a
        captured graph its static output, which the next step overwrites)."""
        if self.cache is None:
            raise KbenchError("decode_step before prefill.", "Call prefill(prompts) first.")
        if max(self._lengths) >= self.cache.capacity:
            raise KbenchError(f"decode_step past the KV cache: a sequence already holds {max(self._lengths)} tokens, "
                              f"the cache {self.cache.capacity}.",
                              "Call reset(batch, max_seq_len) with room for the longest prompt plus the decode steps "
                              "(generate makes that room itself).")
        self._lengths = [n + 1 for n in self._lengths]
        if self._graph is not None:
            graph, static_tokens, static_logits = self._graph
            static_tokens.copy_(tokens)
            graph.replay()
            return static_logits
        return self._decode(tokens.to(self.device))

    def sample(self, logits: torch.Tensor, uniforms: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
        return self.fn["sample"](logits=logits, uniforms=uniforms, temperature=sampling.temperature,
                            top_k=sampling.top_k, top_p=sampling.top_p)

    def generate(self, prompts: Sequence[torch.Tensor], steps: int, sampling: SamplingConfig | None = None,
                 seed: int = 0) -> torch.Tensor:
        """``steps`` new tokens per prompt, ``[batch, steps]`` int64, sampled with uniforms from
        ``seed``, in a cache with room for them (grown if needed)."""
        if steps < 1:
            raise KbenchError(f"generate needs steps >= 1, got {steps}.")
        sampling = sampling or self.spec.workload.sampling
        batch = len(prompts)
        needed = max((int(p.numel()) for p in prompts), default=0) + steps - 1
        if batch and (self.cache is None or self.cache.batch != batch or self._capacity_asked < needed):
            self.reset(batch, needed)  # room for the prompt and every step (prefill keeps a cache that fits)
        uniforms = torch.rand((steps, batch), generator=torch.Generator().manual_seed(seed)).to(self.device)
        out = torch.empty((batch, steps), dtype=torch.int64, device=self.device)
        token = self.sample(self.prefill(prompts), uniforms[0], sampling)
        out[:, 0] = token
        for step in range(1, steps):
            token = self.sample(self.decode_step(token), uniforms[step], sampling)
            out[:, step] = token
        return out

    # -- CUDA graphs ----------------------------------------------------------------------

    def capture_decode_graph(self) -> None:
        """Capture one decode step for the current batch; ``decode_step`` then replays it."""
        if self.device.type != "cuda":
            raise KbenchError(f"CUDA graphs need device cuda; this pipeline runs on {self.device}.",
                              "Set bench.cuda_graphs: false, or run on a GPU.")
        if self.cuda_graph_blocker:
            raise KbenchError(f"{self.cuda_graph_blocker} is registered with cuda_graphs=False and cannot be captured.",
                              "Choose another backend for it, or set bench.cuda_graphs: false.")
        if self.cache is None or max(self._lengths) >= self.cache.capacity:
            raise KbenchError("capture_decode_graph needs a prefilled cache with room for one more token.",
                              "Call prefill(prompts) first, with reset(batch, max_seq_len) leaving room.")
        static_tokens = torch.zeros(self.cache.batch, dtype=torch.int64, device=self.device)
        saved = self.positions.clone(), self.cache_seqlens.clone()
        # warm up on a side stream (lazy init, cuBLAS workspaces) as torch.cuda.graphs advises;
        # the slot it writes is rewritten by the next real step
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            syncing_op = self._decode_finding_host_sync(static_tokens)
        torch.cuda.current_stream().wait_stream(stream)
        self.positions.copy_(saved[0])
        self.cache_seqlens.copy_(saved[1])
        if syncing_op:
            syncing_op = syncing_op.split("[", 1)[0]  # linear[qkv] -> linear
            impl = self.implementations[syncing_op]
            self.cuda_graph_blocker = f"{syncing_op}/{impl.backend} ({impl.plugin}; synchronises with the host)"
            raise KbenchError(f"{self.cuda_graph_blocker} cannot be captured in a CUDA graph, although registered "
                              "with cuda_graphs=True.",
                              "Choose another backend for it, or set bench.cuda_graphs: false; its plugin should "
                              "register it with cuda_graphs=False.")
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                static_logits = self._decode(static_tokens)
        except RuntimeError as error:
            chosen = ", ".join(f"{op}/{i.backend}" for op, i in self.implementations.items())
            raise KbenchError(f"capturing the decode step failed ({error}); one of {chosen} synchronises with the "
                              "host or allocates by data although registered with cuda_graphs=True.",
                              "Set bench.cuda_graphs: false, and report the backend's cuda_graphs flag.") from error
        self._graph = (graph, static_tokens, static_logits)

    def _decode_finding_host_sync(self, tokens: torch.Tensor) -> str | None:
        """The op whose call syncs with the host in one eager decode step (breaking capture), or None."""
        current: list[str | None] = [None]

        def enter(op: str, call: Callable) -> Callable:
            def traced(**inputs):
                current[0] = op
                out = call(**inputs)
                current[0] = None
                return out
            return traced

        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            with self.traced_calls(enter):
                self._decode(tokens)
        except RuntimeError:
            if current[0] is None:
                raise
            return current[0]
        finally:
            torch.cuda.set_sync_debug_mode(previous)
        return None

    @contextmanager
    def traced_calls(self, wrap: Callable[[str, Callable], Callable]) -> Iterator[None]:
        """Within the block every op is called through ``wrap(op, fn)`` (a step's breakdown
        times each call this way); the plain callables come back afterwards."""
        originals = dict(self.fn)
        self.fn.update({name: wrap(name, call) for name, call in originals.items()})
        try:
            yield
        finally:
            self.fn.update(originals)

    def drop_decode_graph(self) -> None:
        self._graph = None
