"""Two calls of the cuda attention_decode built with KBENCH_DECODE_TRACE=1, for the trace lines
its blocks print (start/end globaltimer, clock64 at seqlen, loop end, partials stored, merged).

    KBENCH_CUDA_DEFINES=KBENCH_DECODE_TRACE=1 python3 scripts/device/decode_trace.py 8x2048x8 > trace.txt
"""

import sys

import torch

from kbench.ops.base import Case
from kbench.plugins import get_registry

registry = get_registry()
impl = registry.get("attention_decode", "cuda")
if impl.unavailable_reason():  # also loads the build
    sys.exit(impl.unavailable_reason())
op = registry.op("attention_decode")
batch, context, kv_heads = (int(part) for part in sys.argv[1].split("x"))
case = Case("attention_decode", {"batch": batch, "context": context, "heads": 32, "kv_heads": kv_heads,
                                 "head_dim": 128, "layout": "contiguous", "block_size": 16})
inputs = op.make_inputs(case, torch.bfloat16, torch.device("cuda"), 3)
for _ in range(2):
    impl.fn(**inputs)
    torch.cuda.synchronize()
flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
flush.zero_()  # L2 cold, as the bench has it
torch.cuda.synchronize()
impl.fn(**inputs)
torch.cuda.synchronize()
print("calls done", file=sys.stderr)
