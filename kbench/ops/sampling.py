"""Sampling: ``sample`` (greedy / temperature / top-k / top-p) and ``topk`` over logits.

Every backend draws with the same pre-drawn uniforms, so a kernel is checked token for
token against the reference. All arithmetic is float32, whatever the logits' dtype.

``sample(logits, uniforms, temperature, top_k, top_p) -> tokens``

Shapes: ``logits: [batch, vocab]`` (float32, bfloat16 or float16; -inf allowed, NaN not,
each row needs a finite maximum), ``uniforms: [batch]`` float32 in [0, 1),
``temperature: float >= 0``, ``top_k: int >= 0`` (0, or any value >= vocab, means off),
``top_p: float`` in (0, 1] (1.0 means off). The three settings apply to the whole batch
and enter the math as float32 numbers.
``tokens: [batch]`` int64.

Math, per row (``s``, ``p``, ``c``: float32 vectors of length vocab)::

    temperature == 0:  token = argmax(logits)          # lowest index among equal maxima;
                                                       # top_k and top_p are ignored
    otherwise:
    s = logits.float() / temperature                   # float32; * (1 / temperature) is
                                                       # within an ulp, and fine
    top-k (0 < top_k < vocab):
        kth = the top_k-th largest value of s          # counted with multiplicity
        keep_k[i] = s[i] >= kth                        # ties at kth all kept (can keep > top_k)
        s[i] = -inf where not keep_k[i]
    p = softmax(s) = exp(s - max s) / sum(exp(s - max s))    # over the tokens top-k kept
    top-p (top_p < 1):
        mass[t] = sum of p[j] over j with p[j] > p[t]  # strictly greater: ties kept together
        keep_p[t] = mass[t] < top_p                    # the most probable token always stays
        p[t] = 0 where not keep_p[t]
    c = cumsum(p) in vocabulary-index order            # renormalising is implicit: compare
    x = u * c[vocab - 1]                               # against u times the kept total
    token = smallest i with c[i] > x, clamped to the last i with p[i] > 0

The kept set of top-p is "sort descending, keep the prefix whose exclusive cumulative mass
(float32) is < top_p, extended to whole tie groups". The inverse CDF does not depend on how
``p`` is scaled, so a kernel may skip the softmax division when top-p is off. A token with
``p[i] == 0`` is never drawn.

Accuracy: ``c`` must be accurate to a few 1e-7 of its total, as a blocked (parallel) scan or
float64 accumulation is; one sequential float32 running sum over a long row is not. Uniforms
are drawn away from the CDF boundaries (``well_posed_uniforms``), so an accurate kernel agrees
token for token.

``topk(logits, k) -> (values, indices)``

Shapes: ``logits: [batch, vocab]`` float, ``1 <= k <= vocab``; ``values: [batch, k]`` in
``logits.dtype`` (the logits themselves, not upcast), ``indices: [batch, k]`` int64. Sorted by
value descending; equal values are ordered by ascending index (bfloat16 logits over a
32000-token vocab do tie), so the output is unique and compared exactly.
"""

from __future__ import annotations

import math
import numbers

import torch

from kbench.errors import KbenchError
from kbench.ops.base import FLOAT_DTYPES, Case, Op, Tolerance, expect_tensor, generator, randn

# Logits of a trained LM head spread over a few units; normal * 3 gives a peaked distribution
# (over 32000 tokens at temperature 1, the top 50 hold half the mass) rather than a flat one.
LOGIT_SCALE = 3.0
DEFAULT_TOPK = 50
# Several times the disagreement of accurate float32 CDF evaluations with the reference (a few
# 1e-7 of the total); only tokens with p below twice this are drawn less often.
BOUNDARY_MARGIN = 2e-6
UNIFORM_CANDIDATES = 8


def truncated_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The float32 distribution ``sample`` draws from (temperature > 0): ``[batch, vocab]``, zero
    where top-k or top-p dropped a token, not renormalised after top-p."""
    vocab = logits.shape[-1]
    scaled = logits.float() / temperature
    if 0 < top_k < vocab:
        kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, -math.inf)
    probs = torch.softmax(scaled, dim=-1)
    if top_p < 1.0:
        sorted_probs = torch.sort(probs, dim=-1, descending=True).values
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # Exclusive prefix sums: the mass ranked strictly before each position. Partial sums
        # of non-negative floats never decrease, so the kept positions form a prefix.
        mass_before = torch.cat([torch.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], dim=-1)
        kept = (mass_before < top_p).sum(dim=-1, keepdim=True)
        threshold = torch.gather(sorted_probs, -1, kept - 1)
        probs = probs.masked_fill(probs < threshold, 0.0)
    return probs


def sample_reference(
    logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    if temperature == 0:
        return torch.argmax(logits, dim=-1)
    probs = truncated_probs(logits, temperature, top_k, top_p)
    cdf = torch.cumsum(probs, dim=-1)
    total = cdf[:, -1:]
    x = uniforms.float()[:, None] * total
    first_above = (cdf <= x).sum(dim=-1)
    # Where rounding leaves x >= total, take the last token with non-zero probability: the
    # first index at which the cumulative sum reaches its total.
    last_kept = (cdf < total).sum(dim=-1)
    return torch.minimum(first_above, last_kept)


def topk_reference(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    # A stable descending sort orders equal values by ascending index; torch.topk does not
    # promise any order among ties.
    values, indices = torch.sort(logits, dim=-1, descending=True, stable=True)
    return values[:, :k], indices[:, :k]


def well_posed_uniforms(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, g: torch.Generator
) -> torch.Tensor:
    """``[batch]`` float32 uniforms from ``g``, each at least ``BOUNDARY_MARGIN`` of the kept total
    from its token's CDF interval ends (else the widest of ``UNIFORM_CANDIDATES`` draws): a draw
    within rounding of a boundary is decided by summation order, not by the contract."""
    batch = logits.shape[0]
    candidates = torch.rand((batch, UNIFORM_CANDIDATES), generator=g, dtype=torch.float32)
    if temperature == 0:
        return candidates[:, 0].contiguous()
    cdf = torch.cumsum(truncated_probs(logits, temperature, top_k, top_p).double(), dim=-1)
    cdf = cdf / cdf[:, -1:]
    x = candidates.double()
    index = torch.searchsorted(cdf, x, right=True).clamp(max=cdf.shape[-1] - 1)
    lower = torch.where(index > 0, cdf.gather(-1, (index - 1).clamp(min=0)), 0.0)
    margin = torch.minimum(x - lower, cdf.gather(-1, index) - x)
    wide = margin >= BOUNDARY_MARGIN
    pick = torch.where(wide.any(dim=-1), wide.int().argmax(dim=-1), margin.argmax(dim=-1))
    return candidates.gather(-1, pick[:, None])[:, 0].contiguous()


def _make_sample(case: Case, dtype: torch.dtype, device, seed: int) -> dict:
    g = generator(device, seed)
    batch, vocab = case["batch"], case["vocab"]
    temperature, top_k, top_p = case["temperature"], case["top_k"], case["top_p"]
    logits = randn((batch, vocab), dtype, "cpu", g, LOGIT_SCALE)
    uniforms = well_posed_uniforms(logits, temperature, top_k, top_p, g)
    return {
        "logits": logits.to(device),
        "uniforms": uniforms.to(device),
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
    }


# Logits far from the ordinary range, finite in the dtype (and, shrunk for temperatures below
# 1, in float32 after the division).
EXTREME_LOGIT = {torch.float32: 1e4, torch.float16: 6e4, torch.bfloat16: 1e36}


def _tied_maxima(logits: torch.Tensor) -> torch.Tensor:
    """Each row's maximum copied to two more tokens, one before and one after where it stands."""
    tied = logits.clone()
    vocab = tied.shape[1]
    for row, top in enumerate(tied.argmax(dim=-1).tolist()):
        for index in ((top * 7 + 3 + row) % vocab, (top * 13 + 5 + row) % vocab):
            tied[row, index] = tied[row, top]
    return tied


def _extreme(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Two tokens per row tied at +big, a few at -big (big: ``EXTREME_LOGIT``), the rest as
    drawn: p is exactly 1/2 on each tied token and 0 elsewhere, whatever the rounding."""
    big = EXTREME_LOGIT.get(logits.dtype, 1e4)
    if temperature > 0:
        big = min(big, torch.finfo(torch.float32).max / 4 * min(1.0, temperature))
    extreme = logits.clone()
    vocab = extreme.shape[1]
    for row in range(extreme.shape[0]):
        first = (row * 31 + 1) % vocab
        extreme[row, (first + vocab // 2) % vocab] = big
        extreme[row, first] = big
        for low in range(3):
            extreme[row, (first + 1 + low * 5) % vocab] = -big
    return extreme


def _hard_sample(case: Case, dtype: torch.dtype, device, seed: int) -> dict[str, dict]:
    """Logits whose outcome the contract fixes exactly: tied maxima (greedy takes the lowest
    index; sampling splits their mass evenly) and extreme-magnitude logits (p exactly 0 or
    1/2); uniforms well posed for each."""
    inputs = _make_sample(case, dtype, "cpu", seed)
    temperature, top_k, top_p = inputs["temperature"], inputs["top_k"], inputs["top_p"]
    if case["vocab"] < 3:
        return {}
    sets = {}
    for label, logits in (("tied maxima", _tied_maxima(inputs["logits"])),
                          ("extreme logits, tied at the top", _extreme(inputs["logits"], temperature))):
        uniforms = well_posed_uniforms(logits, temperature, top_k, top_p, generator("cpu", seed + 1))
        sets[label] = inputs | {"logits": logits.to(device), "uniforms": uniforms.to(device)}
    return sets


def _make_topk(case: Case, dtype: torch.dtype, device, seed: int) -> dict:
    g = generator(device, seed)
    return {"logits": randn((case["batch"], case["vocab"]), dtype, device, g, LOGIT_SCALE), "k": case["k"]}


def _expect_number(name: str, value, *, op: str, integer: bool = False) -> None:
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        what = "an int" if integer else "a finite float"
        raise KbenchError(f"{op}: {name} must be {what}, got {value!r}.")


def _validate_sample(inputs) -> None:
    op = "sample"
    logits = inputs.get("logits")
    expect_tensor("logits", logits, dtype=FLOAT_DTYPES, ndim=2, op=op)
    expect_tensor("uniforms", inputs.get("uniforms"), dtype=torch.float32, shape=(logits.shape[0],), op=op)
    temperature, top_k, top_p = inputs.get("temperature"), inputs.get("top_k"), inputs.get("top_p")
    _expect_number("temperature", temperature, op=op)
    _expect_number("top_k", top_k, op=op, integer=True)
    _expect_number("top_p", top_p, op=op)
    if temperature < 0:
        raise KbenchError(f"{op}: temperature is {temperature}.", "Use 0 for greedy decoding or a positive value.")
    if top_k < 0:
        raise KbenchError(f"{op}: top_k is {top_k}.", "Use 0 to turn top-k off or a positive count.")
    if not 0 < top_p <= 1:
        raise KbenchError(f"{op}: top_p is {top_p}.", "Use a value in (0, 1]; 1.0 turns top-p off.")


def _validate_topk(inputs) -> None:
    op = "topk"
    logits = inputs.get("logits")
    expect_tensor("logits", logits, dtype=FLOAT_DTYPES, ndim=2, op=op)
    k = inputs.get("k")
    _expect_number("k", k, op=op, integer=True)
    if not 1 <= k <= logits.shape[1]:
        raise KbenchError(f"{op}: k is {k} for a vocab of {logits.shape[1]}.", f"Use 1 <= k <= {logits.shape[1]}.")


def _bytes_sample(case: Case, dtype: torch.dtype) -> float:
    # read logits and uniforms once, write int64 tokens
    batch = case["batch"]
    return batch * case["vocab"] * dtype.itemsize + batch * (4 + 8)


def _bytes_topk(case: Case, dtype: torch.dtype) -> float:
    batch, k = case["batch"], case["k"]
    return batch * case["vocab"] * dtype.itemsize + batch * k * (dtype.itemsize + 8)


def _flops_sample(case: Case) -> float:
    # Per element: scale, subtract the max, exp, sum, cumulative sum; top-k/top-p thresholds
    # add a comparison or two. Bandwidth-bound: this only puts a number in the TFLOP/s column.
    return 5.0 * case["batch"] * case["vocab"]


def _flops_topk(case: Case) -> float:
    # one comparison per element against a running threshold
    return 1.0 * case["batch"] * case["vocab"]


# Token agreement is exact. Measured on 2000 rows of 32000 bfloat16 logits at temperature
# 1 and 0.7: with plain uniforms, float64 math and a blocked float32 scan each disagreed with
# the reference on 0 to 2 draws (u * total within rounding of a CDF boundary); with
# ``well_posed_uniforms``, on none. What can remain is a token whose top-p mass lies within
# rounding of top_p, kept by one evaluation and dropped by the other, which moves a draw only
# rarely: one token in 1000 absorbs that in a large batch, and in a decode batch (< 1000
# rows) a single differing token still fails.
SAMPLE_MAX_MISMATCH_FRAC = 1e-3


def _sample_tolerance(dtype: torch.dtype) -> Tolerance:
    return Tolerance(exact=True, max_mismatch_frac=SAMPLE_MAX_MISMATCH_FRAC)


def _topk_tolerance(dtype: torch.dtype) -> Tolerance:
    return Tolerance(exact=True)


def sampling_cases(model, workload) -> list[Case]:
    """One case per decode batch size, at the model's vocab and the workload's sampling."""
    sampling = workload.sampling
    return [
        Case("sample", batch=b, vocab=model.vocab, temperature=sampling.temperature,
             top_k=sampling.top_k, top_p=sampling.top_p)
        for b in sorted(set(workload.batch))
    ]


def topk_cases(model, workload) -> list[Case]:
    """One case per decode batch size, k = the workload's top_k (50 when top-k is off)."""
    k = min(workload.sampling.top_k or DEFAULT_TOPK, model.vocab)
    return [Case("topk", batch=b, vocab=model.vocab, k=k) for b in sorted(set(workload.batch))]


def _sample_case(batch, vocab, temperature, top_k=0, top_p=1.0) -> Case:
    return Case("sample", batch=batch, vocab=vocab, temperature=temperature, top_k=top_k, top_p=top_p)


SAMPLE = Op(
    name="sample",
    role="the next token from the logits",
    family="sampling",
    doc="logits: [batch, vocab], uniforms: [batch] -> tokens [batch] int64",
    make_inputs=_make_sample,
    reference=sample_reference,
    flops=_flops_sample,
    bytes=_bytes_sample,
    cases_for=sampling_cases,
    validate=_validate_sample,
    tolerance=_sample_tolerance,
    hard_inputs=_hard_sample,
    test_cases=(
        _sample_case(3, 1000, 0.0),
        _sample_case(8, 4099, 0.7),
        _sample_case(5, 1000, 1.0, top_k=20),
        _sample_case(4, 4099, 0.8, top_p=0.9),
        _sample_case(2, 4099, 1.2, top_k=50, top_p=0.95),
    ),
)

TOPK = Op(
    name="topk",
    family="sampling",
    doc="logits: [batch, vocab] -> (values [batch, k], indices [batch, k] int64)",
    make_inputs=_make_topk,
    reference=topk_reference,
    flops=_flops_topk,
    bytes=_bytes_topk,
    cases_for=topk_cases,
    validate=_validate_topk,
    tolerance=_topk_tolerance,
    test_cases=(Case("topk", batch=1, vocab=1000, k=50), Case("topk", batch=6, vocab=4099, k=64)),
)

OPS = [SAMPLE, TOPK]
