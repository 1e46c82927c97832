"""The Triton kernels torch.compile makes of a reference, and the launch shape each one runs: GPU machine.

    python3 scripts/device/compile_kernels.py OP TOKENS[,TOKENS...] [--spec NAME]

For each case of OP in the spec with one of the token counts, compiles the reference as the
``compile`` backend does, runs it once (Inductor autotunes its reductions on that call), and
prints each generated kernel's name, its block sizes, warps and stages as chosen, and its
source. Where cuda or triton trail torch.compile at a shape this says what compile launched.
"""

from __future__ import annotations

import argparse

import torch
from compile_pairs import spec_cases  # this script's folder is on the path
from kbench_torch.compiled import describe_config, inductor_tuners

from kbench.plugins import get_registry


def describe(tuner) -> str:
    candidates = list(getattr(tuner, "configs", None) or [])
    launchers = getattr(tuner, "launchers", None) or []
    chosen = [launcher.config for launcher in launchers if hasattr(launcher, "config")] or candidates
    shown = "; ".join(f"{describe_config(c)} num_stages={c.num_stages}" for c in chosen)
    name = getattr(tuner.fn, "__name__", "?")
    size_hints = getattr(tuner, "size_hints", None)
    return f"{name} size_hints={size_hints} chosen={shown} (of {len(candidates)} configs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("op")
    parser.add_argument("tokens", help="comma-separated token counts")
    parser.add_argument("--spec", default="llama2-7b")
    parser.add_argument("--source", action="store_true", help="print each kernel's source too")
    args = parser.parse_args()
    wanted = {int(t) for t in args.tokens.split(",")}
    registry = get_registry()
    op = registry.op(args.op)
    for case in spec_cases(registry, args.op, [args.spec], lambda t: t in wanted).values():
        torch._dynamo.reset()
        seen = {id(t) for t in inductor_tuners()}
        inputs = op.make_inputs(case, torch.bfloat16, torch.device("cuda"), 0)
        torch.compile(op.reference, dynamic=False)(**inputs)
        torch.cuda.synchronize()
        print(f"=== {args.op} {case.label}")
        for tuner in inductor_tuners():
            if id(tuner) in seen:
                continue
            print("  " + describe(tuner))
            if args.source:
                print(getattr(tuner.fn, "src", "(no source)"))


if __name__ == "__main__":
    main()
