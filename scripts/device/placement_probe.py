"""Whether a kernel's graph time depends on where its buffers land: GPU machine.

    python3 scripts/device/placement_probe.py [--op rope] [--spec llama2-13b] [--tokens 8,32] [--pads-mb 0,1,2,...]

torch.compile's rope at 8-64 tokens took 2.2-2.3 µs in some processes and 2.8-2.9 in others
(`compile_pairs.py`, three rounds each, the rounds of one process alike), while triton's and cuda's
stayed within 5%. Within a process the caching allocator hands every round the same addresses;
across processes they differ. Here, in one process, a pad of each size is allocated before a
case's inputs, which moves where their copies and the outputs land; the table gives each
backend's kernel µs at each pad. A time that follows the pad depends on placement.
"""

from __future__ import annotations

import argparse

import torch
from compile_pairs import spec_cases  # this script's folder is on the path

from kbench.bench.sweep import op_rows
from kbench.plugins import get_registry
from kbench.spec import BenchConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--op", default="rope")
    parser.add_argument("--spec", action="append", default=None, help="model_specs/NAME.yaml (default: 7b, 13b)")
    parser.add_argument("--tokens", default="8,32,64")
    parser.add_argument("--backend", action="append", default=None, help="default: compile, triton, cuda")
    parser.add_argument("--pads-mb", default="0,0.0625,0.5,1,1.5,2,3,4,6,8")
    args = parser.parse_args()
    registry = get_registry()
    backends = args.backend or ["compile", "triton", "cuda"]
    wanted = {int(t) for t in args.tokens.split(",")}
    bench = BenchConfig(warmup_ms=5.0, rep_ms=30.0, flush_l2=True)
    cases = spec_cases(registry, args.op, args.spec or ["llama2-7b", "llama2-13b"], lambda t: t in wanted)
    pads = [float(p) for p in args.pads_mb.split(",")]
    print(f"{args.op}: kernel µs under graph replay, by the pad (MB) allocated before the inputs")
    for label, case in cases.items():
        print(f"\n{label}")
        print("  pad MB  " + "".join(f"{b:>10s}" for b in backends))
        for pad_mb in pads:
            pad = torch.empty(int(pad_mb * 2**20), dtype=torch.uint8, device="cuda")
            rows = op_rows(registry, args.op, backends, [case], torch.bfloat16, "cuda", bench)
            times = {row["backend"]: row.get("graph_latency_us") for row in rows if row["status"] == "PASS"}
            print(f"  {pad_mb:6.3f}  " + "".join(f"{times.get(b) or float('nan'):10.2f}" for b in backends), flush=True)
            del pad, rows


if __name__ == "__main__":
    main()
