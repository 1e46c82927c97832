#!/usr/bin/env bash
# Attention on the GPU machine: FA4 vs SDPA prefill timing, then the attention tests with the gpu ones.
#
# Run from the project root on the device tool's machine, after FA4 was staged there with
# /work/shared/device/fa4-wheels.sh (without it the flash backends report "not installed"):
#
#   bash scripts/device/flash_conformance.sh [bench|decode|tests|all] [seconds for pytest]
#
# bench: prefill timings; decode: decode timings; tests: the attention tests (KBENCH_K narrows -k).
#
# FA4 compiles each kernel variant on first use; its disk cache (/tmp/fa4/cache) lets a later call
# on the same warm machine pick up where a timed-out one stopped. Logs go to $OUT (or /tmp/kbench-out).
set -uo pipefail
what=${1:-all}
pytest_s=${2:-200}
out=${OUT:-/tmp/kbench-out}
mkdir -p "$out"
start=$(date +%s)

python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.txt" 2>&1 || cat "$out/install.txt"
if [ -f /tmp/fa4/env.sh ]; then
  # shellcheck disable=SC1091
  source /tmp/fa4/env.sh
  export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 FLASH_ATTENTION_CUTE_DSL_CACHE_DIR=/tmp/fa4/cache
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader

if [ "$what" = bench ] || [ "$what" = all ]; then
  python3 - <<'PY' 2>&1 | tee "$out/bench.txt"
import time

import torch
import triton
import triton.testing

from kbench.ops.base import Case
from kbench.plugins import get_registry

registry = get_registry()
print(f"torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}")
for backend in ("flash", "flash-fa2", "flash-fa3", "flash-fa4"):
    impl = registry.get("attention_prefill", backend)
    print(f"  {backend:10s} version={impl.version} unavailable={impl.unavailable_reason()}")

op = registry.op("attention_prefill")
cases = [
    Case("attention_prefill", batch=4, seq_len=4096, heads=32, kv_heads=32, head_dim=128),
    Case("attention_prefill", batch=4, seq_len=1024, heads=32, kv_heads=32, head_dim=128),
]
for case in cases:
    inputs = op.make_inputs(case, torch.bfloat16, torch.device("cuda"), 0)
    print(f"prefill {case.label} bf16 causal, {op.flops(case) / 1e12:.3f} TFLOP per call")
    for backend in ("flash-fa4", "sdpa-flash", "sdpa-cudnn", "sdpa", "flash"):
        impl = registry.get("attention_prefill", backend)
        reason = impl.reason(case, torch.bfloat16, "cuda")
        if reason:
            print(f"  {backend:12s} skipped: {reason}")
            continue
        first = time.perf_counter()
        impl(**inputs)
        torch.cuda.synchronize()
        first_s = time.perf_counter() - first
        ms = triton.testing.do_bench(lambda impl=impl: impl(**inputs), warmup=50, rep=200)
        print(f"  {backend:12s} {ms * 1e3:9.1f} us  {op.flops(case) / ms / 1e9:7.1f} TFLOP/s  (first call {first_s:.1f} s)")
PY
fi

if [ "$what" = decode ]; then
  python3 - <<'PY' 2>&1 | tee "$out/decode.txt"
import torch
import triton.testing

from kbench.ops.base import Case
from kbench.plugins import get_registry

registry = get_registry()
op = registry.op("attention_decode")
for layout in ("paged", "contiguous"):
    case = Case("attention_decode", batch=32, context=4096, heads=32, kv_heads=8, head_dim=128, layout=layout,
                block_size=256)
    inputs = op.make_inputs(case, torch.bfloat16, torch.device("cuda"), 0)
    print(f"decode {case.label} bf16, {op.bytes(case, torch.bfloat16) / 1e6:.1f} MB moved per call")
    for backend in ("flash-fa4", "flash", "sdpa-cudnn", "sdpa-efficient", "sdpa"):
        impl = registry.get("attention_decode", backend)
        reason = impl.reason(case, torch.bfloat16, "cuda")
        if reason:
            print(f"  {backend:14s} skipped: {reason}")
            continue
        impl(**inputs)
        ms = triton.testing.do_bench(lambda impl=impl: impl(**inputs), warmup=50, rep=200)
        print(f"  {backend:14s} {ms * 1e3:8.1f} us  {op.bytes(case, torch.bfloat16) / ms / 1e6:7.1f} GB/s")
PY
fi

if [ "$what" = tests ] || [ "$what" = all ]; then
  # One pytest per file, each given what is left of the budget, so a slow FA4 compile cannot hide
  # the other files' results; -v logs each test as it finishes, so a timed-out file still tells.
  for file in tests/plugins/test_flash.py tests/plugins/test_torch_sdpa.py tests/ops/test_attention.py \
              tests/test_conformance.py; do
    left=$((pytest_s - ($(date +%s) - start)))
    if [ "$left" -lt 15 ]; then echo "$file: not run, out of time"; continue; fi
    log="$out/$(basename "$file" .py).txt"
    timeout "$left" python3 -m pytest -v -p no:cacheprovider "$file" -k "${KBENCH_K:-attention}" >"$log" 2>&1
    status=$?
    echo "$file: exit $status ($([ $status = 124 ] && echo "timed out after ${left}s" || tail -1 "$log"))"
    echo "  passed $(grep -c ' PASSED' "$log"), failed $(grep -c ' FAILED' "$log"), skipped $(grep -c ' SKIPPED' "$log")"
    grep -E "^(FAILED|ERROR)|^E  " "$log" | head -20
  done
fi
