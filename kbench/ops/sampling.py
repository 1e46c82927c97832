"""Sampling: ``sample`` and ``topk`` over logits.

CONTRACT (to be completed with math, reference and cases):

``sample(logits, uniforms, temperature, top_k, top_p) -> tokens``
- ``logits: [batch, vocab]`` (any float dtype; math in float32), ``uniforms: [batch]`` float32 in [0, 1),
- ``temperature == 0``: greedy (argmax, lowest index on ties); else probabilities
  softmax(logits / temperature), then top-k (keep tokens whose logit >= the k-th largest; 0 = off),
  then top-p (keep token t iff the mass of tokens strictly more probable than t is < top_p;
  1.0 = off), renormalise, and pick by inverse CDF in vocabulary-index order: the first index
  whose cumulative kept probability exceeds ``u * total``,
- ``tokens: [batch]`` int64.

``topk(logits, k) -> (values, indices)``: ``[batch, k]`` each, sorted descending.
"""

OPS = []
