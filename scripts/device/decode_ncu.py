"""Calls the cuda attention_decode a few times at the given cases, for a profiler to watch.

    ncu --section SpeedOfLight --section WarpStateStats -k regex:decode \\
        python3 scripts/device/decode_ncu.py 1x2048x8 1x8192x8 1x512x32

Each case is BATCHxCONTEXTxKV_HEADS (32 query heads, head_dim 128, bf16, contiguous cache).
The output of each call is checked against the reference once, so a profile is of a right kernel.
"""

from __future__ import annotations

import sys

import torch

from kbench.ops.base import Case
from kbench.plugins import get_registry


def main() -> None:
    registry = get_registry()
    impl = registry.get("attention_decode", "cuda")
    if impl.unavailable_reason():
        sys.exit(impl.unavailable_reason())
    op = registry.op("attention_decode")
    for text in sys.argv[1:]:
        batch, context, kv_heads = (int(part) for part in text.split("x"))
        case = Case("attention_decode", {"batch": batch, "context": context, "heads": 32, "kv_heads": kv_heads,
                                         "head_dim": 128, "layout": "contiguous", "block_size": 16})
        inputs = op.make_inputs(case, torch.bfloat16, torch.device("cuda"), 3)
        out = impl.fn(**inputs)
        tolerance = op.tolerance(torch.bfloat16)
        torch.testing.assert_close(out, op.reference(**inputs), atol=tolerance.atol, rtol=tolerance.rtol)
        for _ in range(3):
            impl.fn(**inputs)
        torch.cuda.synchronize()
        print(f"{text}: checked, 4 calls")


if __name__ == "__main__":
    main()
