#!/usr/bin/env bash
# The GPU records under results/examples/, made on the device machine: 'all' in one call,
# or the same work split in two phases with more shapes:
#
#   e2e      llama2-7b end to end: all reference, --attention sdpa-flash, --attention flash
#            with the transformers baseline (FA4 staged first: shared/device/fa4-wheels.sh)
#   kernels  the triton and cuda backends through the whole pipeline, op sweeps at the
#            issues' target shapes, the liger example against both, and the gpu tests
#
# Each step has its own time limit so one slow step cannot cost the others; records and
# the log go to $OUT (the device tool brings them back).
set -uo pipefail
phase=${1:?usage: gpu_runs.sh all|e2e|kernels}
export PYTHONUNBUFFERED=1 COLUMNS=170
OUT=${OUT:-/tmp/kbench-out}
records=$OUT/records
mkdir -p "$records"
exec > >(tee -a "$OUT/$phase.log") 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || { echo "install failed"; exit 1; }
if [ -f /tmp/fa4/env.sh ]; then source /tmp/fa4/env.sh; fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
started=$SECONDS

step() {  # step LIMIT_S command...: run with a time limit, report its exit status
    local limit=$1; shift
    echo; echo "=== [$((SECONDS - started))s] $* (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@"
    echo "=== exit $?"
}

latest() { ls -t "$records"/*"$1"*.json 2>/dev/null | head -1; }
spec=model_specs/llama2-7b.yaml

case $phase in
all)  # everything the issues record, in one device call of under 10 minutes
    short=(--batch 1,64 --prompt-len 512)
    step 170 kbench run $spec --attention flash --baseline hf --prompt-len 512 --out "$records"
    flash=$(latest llama2-7b)
    step 110 kbench run $spec "${short[@]}" --out "$records"
    ref=$(latest llama2-7b)
    step 90 kbench run $spec --attention sdpa-flash "${short[@]}" --out "$records"
    sdpa=$(latest llama2-7b)
    step 100 kbench run $spec --norm triton --rope triton --attention triton --ffn triton --sampling triton \
        "${short[@]}" --out "$records"
    triton=$(latest llama2-7b)
    step 90 kbench run $spec --norm cuda --rope cuda --ffn cuda --sampling cuda --attention flash \
        --backend attention_decode=cuda "${short[@]}" --out "$records"
    cuda=$(latest llama2-7b)
    step 20 kbench compare "$ref" "$sdpa" --format markdown --output "$OUT/compare-reference-vs-sdpa-flash.md"
    step 20 kbench compare "$triton" "$cuda" --format markdown --output "$OUT/compare-triton-vs-cuda.md"
    step 20 kbench compare "$ref" "$sdpa"
    step 20 kbench compare "$triton" "$cuda"
    ;;
e2e)
    step 200 kbench run $spec --out "$records"
    ref=$(latest llama2-7b)
    step 170 kbench run $spec --attention sdpa-flash --out "$records"
    sdpa=$(latest llama2-7b)
    step 200 kbench run $spec --attention flash --baseline hf --out "$records"
    flash=$(latest llama2-7b)
    step 30 kbench compare "$ref" "$sdpa" --format markdown --output "$OUT/compare-ref-vs-sdpa-flash.md"
    step 30 kbench compare "$ref" "$sdpa"
    step 30 kbench compare "$sdpa" "$flash"
    ;;
kernels)
    short=(--batch 1,64 --prompt-len 512)
    step 170 kbench run $spec --norm triton --rope triton --attention triton --ffn triton --sampling triton \
        "${short[@]}" --out "$records"
    triton=$(latest llama2-7b)
    step 150 kbench run $spec --norm cuda --rope cuda --ffn cuda --sampling cuda --attention flash \
        --backend attention_decode=cuda "${short[@]}" --out "$records"
    cuda=$(latest llama2-7b)
    step 30 kbench compare "$triton" "$cuda" --format markdown --output "$OUT/compare-triton-vs-cuda.md"
    step 30 kbench compare "$triton" "$cuda"
    step 90 kbench bench attention_decode --backend triton --vs cuda --vs sdpa --vs flash \
        --batch 1,8,64 --context 512,2048,8192 --heads 32 --kv-heads 32,8 --head-dim 128 --out "$records"
    step 60 kbench bench attention_prefill --backend triton --vs sdpa-flash --vs flash \
        --batch 4 --seq-len 1024,4096 --heads 32 --kv-heads 32 --head-dim 128 --out "$records"
    step 60 kbench bench sample --backend triton --vs cuda --vs reference \
        --batch 64 --vocab 32000,128256 --temperature 0.8 --top-k 50 --top-p 0.95 --out "$records"
    # the liger example plugin (its wheel carried in .whl/) against kbench's own kernels
    if python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/liger-site .whl/liger_kernel-*.whl \
        && python3 -m pip install -q --no-deps --no-build-isolation -e examples/kbench-liger >/dev/null 2>&1; then
        export PYTHONPATH=/tmp/liger-site${PYTHONPATH:+:$PYTHONPATH}
        step 40 kbench bench rmsnorm --backend liger --vs triton --vs cuda --tokens 64,4096,32768 --hidden 4096 --out "$records"
        step 40 kbench bench swiglu --backend liger --vs triton --vs cuda --tokens 64,4096,32768 --intermediate 11008 --out "$records"
        step 40 kbench bench rope --backend liger --vs triton --vs cuda --tokens 64,4096,32768 --heads 32 --kv-heads 32 \
            --head-dim 128 --style half --scaling none --out "$records"
    fi
    left=$((570 - (SECONDS - started)))
    if [ "$left" -gt 30 ]; then
        step "$left" python3 -m pytest -q -x -p no:cacheprovider -m gpu tests/model tests/bench tests/test_cli.py \
            tests/plugins/test_triton.py tests/testing
    fi
    ;;
*) echo "unknown phase $phase"; exit 2 ;;
esac
echo; echo "=== done in $((SECONDS - started))s"; ls -la "$records"
