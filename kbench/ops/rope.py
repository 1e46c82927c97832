"""Rotary position embedding: ``rope`` on q and k at given positions.

Frequencies (``rope_inv_freq``, faithful to Hugging Face's rope init functions)::

    inv_freq[i] = 1 / theta ** (2i / head_dim)          i in [0, head_dim / 2), float32
    linear:  inv_freq / factor                          (same as positions / factor)
    dynamic: theta' = theta * (factor * seq_len / original_max_position - (factor - 1))
                      ** (head_dim / (head_dim - 2))    only once seq_len > original_max_position;
             seq_len is the longest length seen since the sequences started (transformers
             recomputes it per forward and only grows it; cached keys keep their rotation)
    llama3:  wavelen = 2 pi / inv_freq; low = original_max_position / low_freq_factor,
             high = original_max_position / high_freq_factor;
             wavelen < high: inv_freq;  wavelen > low: inv_freq / factor;
             between: (1 - s) * inv_freq / factor + s * inv_freq,
                      s = (original_max_position / wavelen - low_freq_factor)
                          / (high_freq_factor - low_freq_factor)
    yarn:    d(r) = head_dim ln(original_max_position / (2 pi r)) / (2 ln theta);
             low, high = d(beta_fast), d(beta_slow) (floor / ceil if truncate), clamped to
             [0, head_dim - 1]; ramp_i = clamp((i - low) / (high - low), 0, 1);
             inv_freq * (1 - ramp) + inv_freq / factor * ramp; and cos, sin times
             attention_factor, which the pipeline folds into the attention scale
             (scores times attention_factor ** 2), so this op never sees it

Rotation of one head vector ``x`` at position ``p`` (angles ``p * inv_freq[i]`` in float32)::

    half (HF rotate_half, pairs (i, i + head_dim/2)):
        emb = cat(angles, angles);  cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
        out = x * cos + cat(-x[half:], x[:half]) * sin          # in x.dtype, as HF
    interleaved (Meta, pairs (2i, 2i+1)), in float32 then cast back, as Meta's complex product
    (x[2i] + j x[2i+1]) * (cos + j sin):
        out[2i]   = x[2i] cos - x[2i+1] sin
        out[2i+1] = x[2i] sin + x[2i+1] cos

The two styles agree after HF's checkpoint permutation of the q/k projection rows (pair
(2i, 2i+1) of the interleaved layout becomes (i, i + head_dim/2) of the half layout).

CONTRACT: ``rope(q, k, positions, inv_freq, style) -> (q_out, k_out)``

- ``q: [tokens, heads, head_dim]``, ``k: [tokens, kv_heads, head_dim]`` (one float dtype),
- ``positions: [tokens]`` int64 (the absolute position of each packed token),
- ``inv_freq: [head_dim // 2]`` float32, the frequencies after scaling; computed by
  ``rope_inv_freq(head_dim, rope_config, seq_len)`` for scaling none / linear / dynamic /
  llama3 / yarn,
  so every backend handles every scaling variant by taking this tensor,
- ``style``: ``"half"`` or ``"interleaved"``.
May write q and k in place (``inplace=("q", "k")``) and return them; the reference returns
new tensors.

Cases: ``tokens``, ``heads``, ``kv_heads``, ``head_dim``, ``phase`` (``prefill``: positions
``0..seq_len-1`` repeated; ``decode``: random positions below ``seq_len``), ``seq_len`` and the
rope settings (``style``, ``scaling``, ``theta`` and what the scaling reads).
"""

from __future__ import annotations

import math
from dataclasses import fields

import torch

from kbench.config import RopeConfig
from kbench.errors import KbenchError, unknown_name
from kbench.ops.base import FLOAT_DTYPES, Case, Op, Tolerance, elementwise_tolerance, expect_tensor, generator, randn

STYLES = ("half", "interleaved")
SCALINGS = ("none", "linear", "dynamic", "llama3", "yarn")
PHASES = ("prefill", "decode")
# The RopeConfig fields each scaling reads, beyond theta and style.
SCALING_FIELDS = {
    "none": (),
    "linear": ("factor",),
    "dynamic": ("factor", "original_max_position"),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position"),
    "yarn": ("factor", "original_max_position", "beta_fast", "beta_slow", "truncate"),
}


def check_style(style: str) -> None:
    if style not in STYLES:
        raise unknown_name("rope style", style, STYLES)


def check_rope(head_dim: int, rope: RopeConfig) -> None:
    """KbenchError for a rope setting no scaling can compute."""
    if rope.scaling not in SCALINGS:
        raise unknown_name("rope scaling", rope.scaling, SCALINGS)
    check_style(rope.style)
    if head_dim <= 0 or head_dim % 2:
        raise KbenchError(f"rope needs an even head_dim, got {head_dim}.", "Use an even head_dim (64, 128, ...).")
    if rope.scaling != "none" and rope.factor <= 0:
        raise KbenchError(f"rope scaling {rope.scaling!r} needs factor > 0, got {rope.factor}.")
    if rope.scaling == "llama3" and rope.high_freq_factor <= rope.low_freq_factor:
        raise KbenchError(
            f"llama3 rope needs high_freq_factor > low_freq_factor, got {rope.high_freq_factor} <= {rope.low_freq_factor}.",
            "Llama 3.1 uses low_freq_factor 1 and high_freq_factor 4.",
        )


def rope_inv_freq(head_dim: int, rope: RopeConfig, seq_len: int) -> torch.Tensor:
    """The rotary frequencies ``[head_dim // 2]`` float32 (CPU) for ``rope`` at ``seq_len`` (max
    position + 1, read by ``dynamic`` only); step by step as HF's ``ROPE_INIT_FUNCTIONS``, so
    they agree bit for bit."""
    check_rope(head_dim, rope)
    base = rope.theta
    if rope.scaling == "dynamic" and seq_len > rope.original_max_position:
        growth = rope.factor * seq_len / rope.original_max_position - (rope.factor - 1)
        base = base * growth ** (head_dim / (head_dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if rope.scaling == "linear":
        inv_freq = inv_freq / rope.factor
    elif rope.scaling == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, rope)
    elif rope.scaling == "yarn":
        inv_freq = _yarn_inv_freq(head_dim, rope)
    return inv_freq


def dynamic_inv_freq(head_dim: int, rope: RopeConfig, seq_len: torch.Tensor) -> torch.Tensor:
    """Dynamic-NTK frequencies for a device tensor ``seq_len`` (0-d int64), on its device.

    The same formula as ``rope_inv_freq`` in float32 tensor arithmetic, as transformers
    computes it per forward from ``max(position_ids) + 1``; no host synchronisation, so a
    decode step that calls it can be captured in a CUDA graph.
    """
    length = torch.clamp_min(seq_len, rope.original_max_position)
    base = rope.theta * ((rope.factor * length / rope.original_max_position) - (rope.factor - 1)) \
        ** (head_dim / (head_dim - 2))
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=seq_len.device).float() / head_dim
    return 1.0 / (base ** exponents)


def rope_attention_factor(rope: RopeConfig) -> float:
    """What yarn multiplies cos and sin by (1.0 for every other scaling)."""
    if rope.scaling != "yarn":
        return 1.0
    if rope.attention_factor is not None:
        return rope.attention_factor
    return 1.0 if rope.factor <= 1 else 0.1 * math.log(rope.factor) + 1.0


def _yarn_inv_freq(head_dim: int, rope: RopeConfig) -> torch.Tensor:
    """YaRN: high frequencies kept, low ones interpolated by ``factor``, a linear ramp between."""
    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(rope.original_max_position / (rotations * 2 * math.pi)) / (2 * math.log(rope.theta))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # as transformers: no zero-width ramp
    pos_freqs = rope.theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (rope.factor * pos_freqs)
    ramp = torch.clamp((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp
    return interpolation * (1 - keep) + extrapolation * keep


def _llama3_inv_freq(inv_freq: torch.Tensor, rope: RopeConfig) -> torch.Tensor:
    """Llama 3.1's per-frequency interpolation: long wavelengths scaled, short ones kept."""
    low_freq_wavelen = rope.original_max_position / rope.low_freq_factor
    high_freq_wavelen = rope.original_max_position / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (rope.original_max_position / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


def _rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def rope_reference(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, style: str
) -> tuple[torch.Tensor, torch.Tensor]:
    check_style(style)
    angles = positions.float()[:, None] * inv_freq.float()[None, :]  # [tokens, head_dim / 2], fp32 as HF
    if style == "half":
        emb = torch.cat((angles, angles), dim=-1)
        cos = emb.cos().to(q.dtype)[:, None, :]
        sin = emb.sin().to(q.dtype)[:, None, :]
        return _rope_half(q, cos, sin), _rope_half(k, cos, sin)
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    return _rope_interleaved(q, cos, sin), _rope_interleaved(k, cos, sin)


def rope_config_of(case: Case) -> RopeConfig:
    """The RopeConfig a case describes (fields it does not name keep their defaults)."""
    names = {f.name for f in fields(RopeConfig)}
    return RopeConfig(**{key: value for key, value in case if key in names})


def rope_case_dims(rope: RopeConfig) -> dict:
    """The rope settings a case carries: style, scaling, theta and what the scaling reads."""
    extra = SCALING_FIELDS.get(rope.scaling, ())
    return {"style": rope.style, "scaling": rope.scaling, "theta": rope.theta} | {
        name: getattr(rope, name) for name in extra
    }


def _positions(case: Case, g: torch.Generator) -> torch.Tensor:
    tokens, seq_len, phase = case["tokens"], case["seq_len"], case.get("phase", "prefill")
    if phase == "prefill":
        return torch.arange(tokens, dtype=torch.int64) % seq_len
    if phase == "decode":
        return torch.randint(0, seq_len, (tokens,), generator=g, dtype=torch.int64)
    raise unknown_name("rope case phase", phase, PHASES)


def _make_inputs(case: Case, dtype: torch.dtype, device, seed: int) -> dict:
    g = generator(device, seed)
    tokens, head_dim = case["tokens"], case["head_dim"]
    rope = rope_config_of(case)
    return {
        "q": randn((tokens, case["heads"], head_dim), dtype, device, g),
        "k": randn((tokens, case["kv_heads"], head_dim), dtype, device, g),
        "positions": _positions(case, g).to(device),
        "inv_freq": rope_inv_freq(head_dim, rope, case["seq_len"]).to(device),
        "style": rope.style,
    }


# A position far past any trained range: fp32 angles there are large, so wrapping, int32
# overflow of p * stride or a low-precision angle shows.
FAR_POSITION = 100_000


def _hard_positions(case: Case) -> list[int]:
    """Position 0, the ends of the case's range and of the trained range, just past both, and far."""
    seq_len = case["seq_len"]
    trained = case.get("original_max_position") or seq_len
    near = {0, seq_len - 1, seq_len, seq_len + 1, trained - 1, trained, trained + 1, 2 * trained + 3, FAR_POSITION}
    # past the trained range first, so that one token still gets a position past it
    return sorted((p for p in near if p >= 0), key=lambda p: (p < trained, p))


def _hard_inputs(case: Case, dtype: torch.dtype, device, seed: int) -> dict[str, dict]:
    """Positions the contract makes hard: 0 (angle 0: cos 1, sin 0), at and past the trained
    range (``original_max_position``, else the case's ``seq_len``) and far past it; ``inv_freq``
    for the longest of them (dynamic scaling grows it)."""
    inputs = _make_inputs(case, dtype, device, seed)
    tokens, rope = case["tokens"], rope_config_of(case)
    special = _hard_positions(case)
    sets = {}
    for label, positions in (("position 0", [0] * tokens),
                             (f"position {FAR_POSITION}", [FAR_POSITION] * tokens),
                             ("positions at and past the trained range",
                              [special[i % len(special)] for i in range(tokens)])):
        seq_len = max(case["seq_len"], max(positions) + 1)
        sets[label] = inputs | {
            "positions": torch.tensor(positions, dtype=torch.int64).to(device),
            "inv_freq": rope_inv_freq(case["head_dim"], rope, seq_len).to(device),
        }
    return sets


def _validate(inputs) -> None:
    q, k = inputs.get("q"), inputs.get("k")
    expect_tensor("q", q, dtype=FLOAT_DTYPES, ndim=3, op="rope")
    tokens, _, head_dim = q.shape
    if head_dim % 2:
        raise KbenchError(f"rope: head_dim must be even, q has shape {list(q.shape)}.")
    expect_tensor("k", k, dtype=q.dtype, shape=(tokens, None, head_dim), op="rope")
    expect_tensor("positions", inputs.get("positions"), dtype=torch.int64, shape=(tokens,), op="rope")
    expect_tensor("inv_freq", inputs.get("inv_freq"), dtype=torch.float32, shape=(head_dim // 2,), op="rope")
    check_style(inputs.get("style"))


def _flops(case: Case) -> float:
    # x * cos + rotated * sin: 3 flops per output element (the sin/cos are per token, not counted)
    return 3.0 * case["tokens"] * (case["heads"] + case["kv_heads"]) * case["head_dim"]


def _bytes(case: Case, dtype: torch.dtype) -> float:
    # read q, k, write q_out, k_out; positions int64 and inv_freq float32 once
    elements = case["tokens"] * (case["heads"] + case["kv_heads"]) * case["head_dim"]
    return 2 * elements * dtype.itemsize + 8 * case["tokens"] + 4 * case["head_dim"] // 2


def rope_tolerance(dtype: torch.dtype) -> Tolerance:
    """Elementwise tolerance, widened in 16 bits to admit a kernel that computes in float32 and
    rounds once: HF rounds cos, sin, both products and the sum, up to one ulp of |q| away."""
    if dtype == torch.bfloat16:
        return Tolerance(atol=4e-2, rtol=1.6e-2)
    if dtype == torch.float16:
        return Tolerance(atol=5e-3, rtol=4e-3)
    return elementwise_tolerance(dtype)


def rope_cases(model, workload) -> list[Case]:
    """Prefill token counts (sequences of each prompt length) and decode batch sizes
    (positions up to the last decode step's context), at the model's heads and rope."""
    shape = {"heads": model.heads, "kv_heads": model.kv_heads, "head_dim": model.head_dim}
    settings = rope_case_dims(model.rope)
    prefill = {}
    for batch in workload.batch:
        for prompt_len in workload.prompt_len:
            prefill.setdefault(batch * prompt_len, prompt_len)
    cases = [
        Case("rope", tokens=tokens, **shape, phase="prefill", seq_len=seq_len, **settings)
        for tokens, seq_len in sorted(prefill.items())
    ]
    decode = {}
    for batch, context in workload.decode_contexts:
        decode[batch] = max(decode.get(batch, 0), context)
    cases += [
        Case("rope", tokens=batch, **shape, phase="decode", seq_len=context, **settings)
        for batch, context in sorted(decode.items())
    ]
    return cases


def _test_case(tokens, heads, kv_heads, head_dim, phase, seq_len, **rope) -> Case:
    dims = rope_case_dims(RopeConfig(**rope))
    return Case("rope", tokens=tokens, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                phase=phase, seq_len=seq_len, **dims)


LLAMA3_ROPE = {"theta": 500000.0, "scaling": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position": 8192}

ROPE = Op(
    name="rope",
    role="rotary embedding of q and k",
    family="rope",
    doc="q: [tokens, heads, head_dim], k: [tokens, kv_heads, head_dim], positions: [tokens], "
        "inv_freq: [head_dim/2] -> (q_out, k_out)",
    make_inputs=_make_inputs,
    reference=rope_reference,
    flops=_flops,
    bytes=_bytes,
    cases_for=rope_cases,
    validate=_validate,
    tolerance=rope_tolerance,
    inplace=("q", "k"),
    hard_inputs=_hard_inputs,
    # Few distinct shapes (torch.compile specialises per shape); the scalings share them.
    test_cases=(
        _test_case(1, 4, 1, 64, "decode", 40000, style="half"),
        _test_case(37, 4, 2, 64, "prefill", 19, style="interleaved", **LLAMA3_ROPE),
        _test_case(37, 4, 2, 64, "prefill", 37, style="half", scaling="linear", factor=4.0),
        _test_case(37, 4, 2, 64, "prefill", 37, style="half", scaling="yarn", factor=4.0, original_max_position=16),
        _test_case(37, 8, 1, 80, "decode", 9000, style="half", scaling="dynamic", factor=2.0,
                   original_max_position=2048),
        _test_case(37, 8, 1, 80, "prefill", 37, style="interleaved"),
    ),
)

OPS = [ROPE]
