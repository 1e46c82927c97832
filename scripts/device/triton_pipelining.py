"""Which compiled triton kernels had their loads pipelined: reads triton's cache on the GPU machine.

    python3 scripts/device/triton_pipelining.py [KERNEL_NAME ...]

For each compiled kernel of those names (default ``_split_kernel``), prints its launch options
and how many of its loads went through ``cp.async`` (``async_copy_global_to_local``) against
plain ``tt.load``s in the final TTGIR: a loop whose loads are all plain was not pipelined.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> None:
    names = sys.argv[1:] or ["_split_kernel"]
    cache = Path(os.environ.get("TRITON_CACHE_DIR", Path.home() / ".triton" / "cache"))
    for name in names:
        for ttgir in sorted(cache.glob(f"*/{name}.ttgir")):
            text = ttgir.read_text()
            meta = json.loads(ttgir.with_suffix(".json").read_text())
            print(f"{name} warps={meta.get('num_warps')} stages={meta.get('num_stages')}: "
                  f"{text.count('async_copy_global_to_local')} cp.async, {text.count('tt.load')} tt.load, "
                  f"{text.count('ttng.warp_group_dot')} wgmma, shared {meta.get('shared')} B")


if __name__ == "__main__":
    main()
