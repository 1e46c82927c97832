#!/usr/bin/env bash
# Liger-Kernel vs kbench's own Triton and CUDA kernels at Llama 2 7B shapes, on the GPU machine.
#
# Prepare here (the device has no network; .whl/ is git-ignored and travels with `carry`):
#
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl liger-kernel==0.8.5
#
# Then on the device tool, from the project root, with carry [".whl"]:
#
#   bash scripts/device/liger_compare.sh [seconds per kbench bench, default 150]
#
# What it does: installs the liger wheel (pure Python) into /tmp/liger-site, kbench and
# examples/kbench-liger editable; lists the liger backend; runs kbench's conformance suite
# on it (`pytest --kbench-backend liger`); then for rmsnorm, add_rmsnorm, rope and swiglu
# `kbench bench OP --backend liger --vs triton --vs cuda --spec model_specs/llama2-7b.yaml`
# (correctness first, then CUDA-event and CUDA-graph timings at the shapes Llama 2 7B runs)
# and `kbench compare --baseline triton` of each record; last, docs/writing-a-backend-plugin.md
# and `kbench new-plugin` followed on the GPU (tests/test_tutorial.py, tests/test_scaffold.py).
# The cuda backend JIT-builds its extension on first use (a minute or more, cached for the
# later ops).
#
# Back in $OUT: log.txt (everything printed) and one run record per op under results/.
set -uo pipefail
per_bench_s=${1:-150}
out=${OUT:-/tmp/kbench-out}
mkdir -p "$out/results"
log="$out/log.txt"
exec > >(tee "$log") 2>&1
export PYTHONUNBUFFERED=1 COLUMNS=160

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/liger-site \
  .whl/liger_kernel-*.whl || { echo "no liger wheel in .whl/: see the header of this script"; exit 2; }
export PYTHONPATH=/tmp/liger-site${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . -e examples/kbench-liger || exit 2
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton, liger_kernel; print('torch', torch.__version__, 'triton', triton.__version__, 'liger', liger_kernel.__file__)"

echo "== kbench list (liger)"
kbench list --json --op rmsnorm | python3 -c "import json, sys; d = json.load(sys.stdin); print([r for r in d['implementations'] if r['backend'] == 'liger'], d['plugin_errors'])"

echo "== conformance: pytest --kbench-backend liger"
(cd examples/kbench-liger && timeout 240 python3 -m pytest -q -p no:cacheprovider -rs --kbench-backend liger -m kbench_conformance)

for op in rmsnorm add_rmsnorm rope swiglu; do
  echo "== kbench bench $op"
  timeout "$per_bench_s" kbench bench "$op" --backend liger --vs triton --vs cuda \
    --spec model_specs/llama2-7b.yaml --out "$out/results"
  echo "exit status $?"
done

echo "== kbench compare --baseline triton (per op; latency as called, then kernel time from CUDA graphs)"
for record in "$out"/results/*.json; do
  kbench compare --baseline triton "$record"
  kbench compare --baseline triton --metric kernel_us "$record"
done
echo "== the plugin tutorial and the scaffold, followed on the GPU (their checks run on cuda here)"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_tutorial.py tests/test_scaffold.py
echo "== done"
