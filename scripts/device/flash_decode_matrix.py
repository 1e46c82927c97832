"""Which decode shapes FA4 gets right (run on the GPU machine with FA4 staged).

    python3 scripts/device/flash_decode_matrix.py [--backend flash-fa4]

Checks ``attention_decode`` of one backend against the reference over head_dim x kv_heads x
layout, with lengths 1/45/17, and prints one line per case: what a ``supports()`` rule for the
backend has to be based on.
"""

from __future__ import annotations

import argparse
import itertools

import torch

from kbench.bench.check import check_implementation
from kbench.ops.base import Case
from kbench.plugins import get_registry


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="flash-fa4")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    registry = get_registry()
    impl = registry.get("attention_decode", args.backend)
    print(args.backend, "unavailable:", impl.unavailable_reason())
    for head_dim, kv_heads, (layout, block) in itertools.product(
            (64, 80, 96, 128), (1, 4), (("contiguous", 16), ("paged", 16), ("paged", 64))):
        case = Case("attention_decode", {"batch": 3, "context": 45, "context_lens": (1, 45, 17), "heads": 4,
                                         "kv_heads": kv_heads, "head_dim": head_dim, "layout": layout,
                                         "block_size": block})
        reason = impl.reason(case, torch.bfloat16, args.device)
        if reason:
            print(f"SKIP {case.label}: {reason}")
            continue
        try:
            check = check_implementation(registry, "attention_decode", args.backend, case, torch.bfloat16, args.device,
                                         seed=1)
            print(f"{'PASS' if check.ok else 'FAIL'} {case.label}: {check.summary()}")
        except Exception as error:  # noqa: BLE001 - a raising kernel is one more result here
            print(f"RAISE {case.label}: {type(error).__name__}: {str(error)[:200]}")


if __name__ == "__main__":
    main()
