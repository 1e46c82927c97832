#!/usr/bin/env bash
# The GPU records under results/examples/, made on the device machine, one phase per call
# (each fits in one 10-minute call; measured on the H100: a llama2-7b run takes 150-300 s).
# A phase that timed a knob taken out again is removed with it: results/README.md names the
# commit each record ran at, whose copy of this file has the phase.
#
#   smoke      every mix on a 2-layer llama2-7b, and a decode-step profile
#   probe      the decode-step profiles of the triton and cuda mixes, and a 2-layer cuda run
#   reference  --attention sdpa-flash with op rows, compared with the all-reference record (issue 3)
#   kernels    triton everywhere, cuda everywhere, sdpa-flash, and triton vs cuda (issues 3, 4, 5)
#   flash      flash + the fastest mix beside hf, FA4 prefill and decode benches (issue 6)
#   liger      liger vs triton and cuda (issue 7)
#   sweeps     decode attention and sampling sweeps at the issues' target shapes (issues 4, 5)
#   triton     the triton plugin's tests on the GPU, then its sweeps against sdpa, the reference
#              and torch.compile, and a decode-step profile (issue 4)
#   tests      every gpu-marked test and the conformance suite on the GPU (issue 2)
#   gqa        the cuda decode kernels' GPU tests, the decode sweep (contiguous and paged GQA-8) and a
#              memcheck (issue 5)
#   compile    rope and swiglu against torch.compile at llama2-7b's, llama2-13b's and the other
#              widths' shapes (issue 4)
#   topk       the filter top-k and sample on the GPU: tests, a memcheck of them, both benches (issue 4)
#   triton-run the issue's command, triton for every op, and rope against torch.compile (issue 4)
#   cuda-small every cuda GPU test, a memcheck, and the memory-bound ops against triton and
#              torch.compile at llama2-7b's shapes (issue 5)
#   splits     triton decode attention at every split count where it is furthest below copy (issue 4)
#   round4     the cuda norm and rope GPU tests, then cuda_variants.py's round 4 (issue 5)
#   triton-final  the decode sweep against sdpa, then all of tests/plugins/test_triton.py (issue 4)
#   cuda-decode  the cuda decode GPU tests and the decode sweep beside triton (issue 5)
#   decode-knob  the cuda decode plan's fewest tokens a split, at 64, 256 and 1024 (issue 5)
#   decode-stages  the cuda decode GPU tests, then the decode sweep at ring depths 4 (beside
#              triton), 1, 2 and 3 (issue 5)
#   cold-sweeps  the triton and cuda decode sweeps with the KV cache read cold (issues 4, 5)
#   cold-triton  issue 4's command, the KV cache read cold in its decode-attention rows (issue 4)
#   cold-cuda  issue 5's command, and its compare with the cold-triton record (TRITON_RECORD=path)
#   cold-splits  triton's decode at every split count and cuda's plan at 2x and 4x its wave, the
#              cache read cold (issues 4, 5)
#   read-bound  kernels that only read the KV cache, cold, beside triton's decode at each of its
#              configs (issue 4)
#   read-configs  triton's decode at each of its split-pass configs, cold, and which of them had
#              their loads pipelined (issue 4)
#   merge-pdl  triton's cold decode sweep (its merge now a PDL launch), then the cuda decode tests
#              and sweeps with its merge as a PDL launch (KBENCH_DECODE_MERGE_PDL) or not (issues 4, 5)
#   fill-merge  the cuda decode plan's wave at 50% and 100%, twice each, with the per-head PDL
#              merge (issue 5)
#   compile-pairs  triton and cuda against torch.compile at every spec shape up to 1024 tokens,
#              three rounds in one process (issues 4, 5)
#   rope-knobs  rope against torch.compile at llama2-7b's and 13b's shapes: triton with its
#              per-token path from 1024 tokens, cuda builds of its slice knobs (issues 4, 5)
#   decode-fill  the cuda decode plan's wave at 50%, 100% and 200% of the resident blocks (issue 5)
#   decode-profile  Nsight Compute on the cuda decode kernels where they trail triton, and the
#              GQA kernel at ring depths 2 and 4 (issue 5)
#   decode-trace  per-block timings of the cuda decode kernels (KBENCH_DECODE_TRACE) (issue 5)
#   compile-configs  torch.compile at each of its autotuner's candidate configs, against both backends
#   rope-rounding  rope's HF rounding: GPU tests, memcheck, pairs, and the rounding test on sources
#              with the fma contraction put back, which must fail (issues 4, 5)
#   rope-final  rope's GPU tests, a memcheck, issue 4's and 5's commands and their compare (4, 5)
#   config-pairs-rope  rope and add_rmsnorm against each of compile's configs, up to 1024 tokens (4, 5)
#   config-pairs-norm  rmsnorm and swiglu the same way (issues 4, 5)
#   inductor-record  the compile tests, then a rope bench whose record keeps compile's configs
#   gqa-fill   the cuda GQA decode plan's wave at 50% and 75% of the resident blocks, twice each (5)
#   cuda-check   every cuda GPU test and the memcheck (issue 5)
#   rope-mid-tiles  triton rope's tile shape at 32-64 tokens against compile's faster config (issue 4)
#   mid-tiles-check  rope's GPU checks, then triton's rope against each of compile's configs (issue 4)
#   mid-tiles-run  issue 4's command and its compare with issue 5's record (issue 4)
#   fast-trig-check  cuda rope's checks at the branch-free angles, a mutation, issue 5's command (5)
#   rope-fast-trig  cuda rope's slices with branch-free angles: checks, then against compile (issue 5)
#   small-gaps  cuda-check, triton's decode tests, rope against torch.compile over rounds, and the
#              kernels compile launches where cuda trails it (issues 4, 5)
#   rope-slices  what compile launches where cuda trails it, then cuda rope's slice knobs against
#              torch.compile over rounds (issue 5)
#   cuda-pairs  cuda-check, then cuda against torch.compile at every spec shape over rounds (issue 5)
#   packed     cuda's 16-bit kernels on packed pairs: tests, memcheck, pairs against compile, issue 5's
#              command (issue 5)
#   shared-angles  cuda rope's slices sharing angles by shuffles, norms scaling by 1 / hidden: checks,
#              then against compile beside 16-byte slices and one-access norms (issue 5)
#   cluster-merge  cuda decode's splits merged in a thread-block cluster: tests, memcheck, the sweep
#              beside triton and at clusters of up to 8 and none (issue 5)
#   cluster-final  cluster merge for GQA only: checks, the sweep beside triton, rope slice knobs
#              against compile up to 128 tokens (issue 5)
#   cuda-final-run  issue 5's command and compare, cuda against compile over rounds, the GQA plan's
#              wave at 50% and 100% with cluster merges (issue 5)
#   mha-cluster  cuda's MHA decode merging in clusters of up to 8, its plan at 67%: swept cold;
#              both backends' norms against compile in one process (issue 5)
#   final-runs  decode tests, the cuda decode sweep, issue 4's and 5's commands and compare (4, 5)
#   final-pairs  both backends against compile over rounds at every spec shape (issues 4, 5)
#   rope-cold  compile's rope kernels, then cuda rope variants against compile with cold q/k (5)
#   review-check  the review's mends: cuda tests, memcheck, bench tests, the decode sweep (4, 5)
#   rope-tiny  rope at 1-64 tokens against compile, one angle a thread up to 32 tokens (4, 5)
#   kept-runs  each graph call with its own outputs: bench tests, issue 4's and 5's commands, compare
#   kept-pairs  the same rule: both backends against compile (markdown), the decode sweep (4, 5)
#   rope-four  rope at 1-32 tokens: 4-element accesses at every token count against one angle (4, 5)
#   rope-blocks  rope at 1-64 tokens: fewer, larger blocks, against compile (4, 5)
#   pairs-processes  both backends against compile over three fresh processes, up to 64 tokens (4, 5)
#   cuda-check-sweep  the same, then the decode sweep beside triton (issue 5)
#   norm-weight  triton's norms (weight loaded with the row) against compile and cuda (issue 4)
#   decode     triton decode attention's GPU tests, split counts and sweep against sdpa (issue 4)
#   tune       candidate launch shapes of rope, add_rmsnorm and swiglu against torch.compile, and
#              rope at the other specs' head counts (issue 4)
#   variants   builds of the cuda kernels with other tuning knobs timed against each other and
#              torch.compile (issue 5)
#   cuda-final every cuda GPU test, a memcheck, and the knobs' next round (issue 5)
#   cuda-run   issue 5's command, compared with issue 4's triton record, and the memory-bound
#              ops against triton and torch.compile at llama2-7b's shapes (issue 5)
#
# FA4 first (flash, kernels, sweeps): shared/device/fa4-wheels.sh, two calls; then start each
# call with `source /tmp/fa4/env.sh &&`. The liger wheel travels in .whl/ (carry it).
# Each step has its own time limit so one slow step cannot cost the others; records and the
# log go to $OUT (the device tool brings them back: at most 8 files).
set -uo pipefail
phase=${1:?usage: gpu_runs.sh PHASE (the phases are listed above)}
# an unknown phase stops here, before the install: the phases are this file's case labels
grep -Eq "^${phase})" "$0" || { echo "unknown phase $phase (the phases are listed at the top of $0)"; exit 2; }
# a step past its limit gets SIGABRT first, so faulthandler prints where every thread was
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 COLUMNS=170
OUT=${OUT:-/tmp/kbench-out}
records=$OUT/records
mkdir -p "$records"
exec > >(tee -a "$OUT/$phase.log") 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || { echo "install failed"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
started=$SECONDS

step() {  # step LIMIT_S command...: run with a time limit, report its exit status
    local limit=$1; shift
    echo; echo "=== [$((SECONDS - started))s] $* (limit ${limit}s)"
    timeout --signal=ABRT --kill-after=10 "$limit" "$@" 2>&1 | grep -v "UserWarning: Argument aux_data\|exe_args, func_types"
    echo "=== exit ${PIPESTATUS[0]}"
}

latest() { ls -t "$records"/*"$1"*.json 2>/dev/null | head -1; }
spec=model_specs/llama2-7b.yaml

# steps that several phases take
decode_sweep() {  # decode_sweep --vs BACKEND...: MHA and GQA-8 over batch and context
    step 150 kbench bench attention_decode --backend triton "$@" \
        --batch 1,8,64 --context 512,2048,8192 --heads 32 --kv-heads 32,8 --head-dim 128 --out "$records"
}
sampling_benches() {  # top-k and sample at issue 4's shapes
    step 40 kbench bench topk --backend triton --vs cuda --vs reference --batch 64 --vocab 32000,128256 \
        --k 50 --out "$records"
    step 50 kbench bench sample --backend triton --vs cuda --vs reference \
        --batch 64 --vocab 32000,128256 --temperature 0.8 --top-k 50 --top-p 0.95 --out "$records"
}
cuda_memcheck() {  # one run of every cuda kernel under compute-sanitizer
    step 90 compute-sanitizer --tool memcheck --error-exitcode 3 python3 benchmarks/cuda_bench.py --once
}
cuda_sweep() {  # cuda_sweep LIMIT_S: the cuda decode sweep beside triton, MHA and GQA-8
    step "$1" kbench bench attention_decode --backend cuda --vs triton \
        --batch 1,8,64 --context 512,2048,8192 --heads 32 --kv-heads 32,8 --head-dim 128 --out "$records"
}
cuda_decode() {  # the cuda decode GPU tests, then the decode sweep beside triton
    step 200 python3 -m pytest -q -p no:cacheprovider tests/plugins/test_cuda.py -k decode
    cuda_sweep 150
}
triton_decode_tests() {  # triton's decode attention GPU tests
    step 200 python3 -m pytest -q -p no:cacheprovider tests/plugins/test_triton.py -k "decode or arriving"
}
cuda_checks() {  # every cuda GPU test, then the memcheck
    step 260 python3 -m pytest -q -p no:cacheprovider tests/plugins/test_cuda.py
    cuda_memcheck
}
cuda_variants() {  # cuda_variants LIMIT_S: the cuda tuning variants against each other and torch.compile
    step "$1" python3 scripts/device/cuda_variants.py --json "$OUT/cuda-variants.json"
}
build_variants() {  # build_variants DEFINES...: the cuda builds side by side, each "NAME=V ..." ("" for none)
    local defines pids=()
    for defines in "$@"; do
        KBENCH_CUDA_DEFINES="$defines" timeout 200 \
            python3 -c "import kbench_cuda.build as b; print('${defines:-default}', b.load() or 'built')" &
        pids+=($!)
    done
    wait "${pids[@]}"  # (a bare wait would also wait for the tee of this script's output)
}
build_knob() {  # build_knob MACRO VALUE...: the cuda builds with MACRO=VALUE side by side ("default": none)
    local macro=$1 value variants=()
    shift
    for value in "$@"; do
        if [ "$value" = default ]; then variants+=(""); else variants+=("$macro=$value"); fi
    done
    build_variants "${variants[@]}"
}
sweep_knob() {  # sweep_knob MACRO LIMIT_S BATCHES KV_HEADS VALUE...: the cuda decode sweep on each build
    local macro=$1 limit=$2 batches=$3 kv_heads=$4 value
    shift 4
    for value in "$@"; do
        KBENCH_CUDA_DEFINES="$macro=$value" step "$limit" kbench bench attention_decode --backend cuda \
            --batch "$batches" --context 512,2048,8192 --heads 32 --kv-heads "$kv_heads" --head-dim 128 --out "$records"
    done
}
compile_kernels() {  # what torch.compile launches at the shapes where cuda trailed it
    local kernels="python3 scripts/device/compile_kernels.py --source"
    step 60 $kernels add_rmsnorm 128 --spec llama2-7b
    step 60 $kernels rmsnorm 512,1024 --spec llama2-7b
    step 60 $kernels swiglu 128 --spec llama2-7b
    step 60 $kernels rope 1,32,64 --spec llama2-7b
}
variant_tests() {  # variant_tests LIMIT_S FILTER VARIANT...: the cuda GPU tests matching FILTER on each build
    local limit=$1 filter=$2 variant
    shift 2
    for variant in "$@"; do
        KBENCH_CUDA_DEFINES="$variant" step "$limit" python3 -m pytest -q -p no:cacheprovider \
            tests/plugins/test_cuda.py -k "$filter" -x
    done
}
variant_pairs() {  # variant_pairs LIMIT_S "ARGS" VARIANT...: compile_pairs.py ARGS (three rounds) on each build
    local limit=$1 args=$2 variant
    shift 2
    for variant in "$@"; do
        echo "--- ${variant:-default}"
        # shellcheck disable=SC2086  # ARGS is a list of words
        KBENCH_CUDA_DEFINES="$variant" step "$limit" python3 scripts/device/compile_pairs.py --rounds 3 $args
    done
}
issue_runs() {  # issue_runs TRITON_LIMIT_S CUDA_LIMIT_S: issue 4's command, issue 5's, and their compare
    step "$1" kbench run $spec --norm triton --rope triton --attention triton --ffn triton --sampling triton \
        --batch 1,64 --prompt-len 512 --out "$records"
    local triton_record
    triton_record=$(latest llama2-7b)
    step "$2" kbench run $spec --norm cuda --rope cuda --ffn cuda --attention cuda --sampling cuda \
        --backend attention_prefill=triton --batch 1,64 --prompt-len 512 --out "$records"
    step 20 kbench compare "$triton_record" "$(latest llama2-7b)" \
        --metric kernel_us --format markdown --output "$OUT/compare-triton-vs-cuda.md"
}
rope_checks() {  # rope's GPU tests of both backends (rounding included) and its conformance cases
    step 200 python3 -m pytest -q -p no:cacheprovider tests/test_rope_rounding.py tests/plugins/test_cuda.py \
        tests/plugins/test_triton.py -k "rope or rounds or threshold"
    step 120 python3 -m pytest -q -p no:cacheprovider tests/test_conformance.py -k "rope and (cuda or triton)"
}
rope_against_compile() {  # rope at llama2-7b's and llama2-13b's shapes
    for spec_name in llama2-7b llama2-13b; do
        step 60 kbench bench rope --backend triton --vs compile --spec model_specs/$spec_name.yaml --out "$records"
    done
}

case $phase in
smoke)  # every backend mix through a 2-layer llama2-7b, and where a decode step's time goes
    fast=(--backend norm=triton --backend rope=triton --backend attention=triton --backend ffn=triton
          --backend sampling=triton)
    step 150 python3 scripts/device/profile_decode.py $spec "${fast[@]}" --batch 1,64 --gemms
    step 90 python3 scripts/device/profile_decode.py $spec --backend norm=cuda --backend rope=cuda \
        --backend ffn=cuda --backend attention=triton --backend attention_decode=cuda --batch 1
    tiny=(--layers 2 --batch 1,4 --prompt-len 128 --decode-steps 8 --out /tmp/smoke)
    step 90 kbench run $spec "${tiny[@]}"
    step 90 kbench run $spec --attention sdpa-flash "${tiny[@]}"
    step 120 kbench run $spec --norm triton --rope triton --attention triton --ffn triton --sampling triton "${tiny[@]}"
    step 120 kbench run $spec --norm cuda --rope cuda --ffn cuda --sampling cuda --attention triton \
        --backend attention_decode=cuda "${tiny[@]}"
    step 90 kbench run $spec --norm compile --rope compile --sampling compile --attention sdpa "${tiny[@]}"
    ;;
probe)  # where a decode step's time goes, and the cuda mix end to end on 2 layers
    step 150 python3 scripts/device/profile_decode.py $spec --backend norm=triton --backend rope=triton \
        --backend attention=triton --backend ffn=triton --backend sampling=triton --batch 1,64 --gemms
    step 120 python3 scripts/device/profile_decode.py $spec --backend norm=cuda --backend rope=cuda \
        --backend ffn=cuda --backend attention=triton --backend attention_decode=cuda --batch 1
    step 120 kbench run $spec --norm cuda --rope cuda --ffn cuda --sampling cuda --attention triton \
        --backend attention_decode=cuda --layers 2 --batch 1,4 --prompt-len 128 --decode-steps 8 --out /tmp/smoke
    ;;
reference)  # issue 3: --attention sdpa-flash with its op rows (the kernels phase skips them to save
            # time), compared with the all-reference record committed under results/examples/
    step 200 kbench run $spec --attention sdpa-flash --batch 1,64 --prompt-len 512 --out "$records"
    step 20 kbench compare results/examples/20261123T185307Z-llama2-7b-439869.json "$(latest llama2-7b)" \
        --format markdown --output "$OUT/compare-reference-vs-sdpa-flash.md"
    ;;
kernels)  # triton everywhere, cuda everywhere it has kernels, and the sdpa-flash pipeline (issues 3-5)
    short=(--batch 1,64 --prompt-len 512)
    step 250 kbench run $spec --norm triton --rope triton --attention triton --ffn triton --sampling triton \
        "${short[@]}" --out "$records"
    triton=$(latest llama2-7b)
    step 100 kbench run $spec --attention sdpa-flash --skip-ops "${short[@]}" --out "$records"
    step 220 kbench run $spec --norm cuda --rope cuda --ffn cuda --attention cuda --sampling cuda \
        --backend attention_prefill=triton "${short[@]}" --out "$records"
    cuda=$(ls -t "$records"/*.json | head -1)
    step 20 kbench compare "$triton" "$cuda" --format markdown --output "$OUT/compare-triton-vs-cuda.md"
    ;;
flash)  # the fastest mix with flash attention beside transformers, FA4 prefill at the issue's shape,
        # and liger against triton and cuda (issues 6, 7); FA4 staged first, liger's wheel in .whl/
    # decode attention from triton: split-KV keeps all SMs busy at batch 1, where FA4 runs one
    # block per head (the decode bench below puts the two side by side)
    step 330 kbench run $spec --attention flash --backend attention_decode=triton --norm triton --rope triton \
        --ffn triton --sampling triton --baseline hf --batch 1,8,32,64 --prompt-len 512 --out "$records"
    step 60 kbench bench attention_prefill --backend flash --vs sdpa-flash --vs triton \
        --batch 4 --seq-len 4096 --heads 32 --kv-heads 32 --head-dim 128 --out "$records"
    step 60 kbench bench attention_decode --backend flash --vs triton --vs cuda --vs sdpa \
        --batch 1,64 --context 544,4096 --heads 32 --kv-heads 32 --head-dim 128 --out "$records"
    ;;
liger)  # liger's kernels through examples/kbench-liger against triton and cuda (issue 7)
    if python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/liger-site .whl/liger_kernel-*.whl \
        && python3 -m pip install -q --no-deps --no-build-isolation -e examples/kbench-liger >/dev/null 2>&1; then
        export PYTHONPATH=/tmp/liger-site${PYTHONPATH:+:$PYTHONPATH}
        step 45 kbench bench rmsnorm --backend liger --vs triton --vs cuda --tokens 4096,32768 --hidden 4096 \
            --out "$records"
        step 45 kbench bench swiglu --backend liger --vs triton --vs cuda --tokens 4096,32768 --intermediate 11008 \
            --out "$records"
        step 45 kbench bench rope --backend liger --vs triton --vs cuda --tokens 4096,32768 --heads 32 \
            --kv-heads 32 --head-dim 128 --style half --scaling none --out "$records"
    fi
    ;;
triton)  # the triton plugin on the GPU: its own tests (graph replay of the split kernels, the
         # down-path timing, ties in both top-k paths), then the figures of issue 4
    # the skinny-GEMM parity test autotunes 36 configs for each dtype and row count (compiling
    # them took the whole 150 s limit once); the split-K and graph-replay tests cover the kernel
    step 200 python3 -m pytest -q -p no:cacheprovider tests/plugins/test_triton.py -k "not skinny_gemms_match"
    decode_sweep --vs sdpa
    sampling_benches
    rope_against_compile
    step 80 python3 scripts/device/profile_decode.py $spec --backend norm=triton --backend rope=triton \
        --backend attention=triton --backend ffn=triton --backend sampling=triton --batch 1
    ;;
sweeps)  # the figures the issues name that no run above measures (issues 4, 5): decode attention
         # for MHA and GQA-8 over batch and context (sampling and top-k at both vocab sizes: the
         # triton phase), the memory-bound ops against torch.compile at the spec's shapes, and a memcheck
    decode_sweep --vs cuda --vs sdpa --vs flash
    for op in rmsnorm add_rmsnorm rope swiglu; do
        step 40 kbench bench $op --backend triton --vs cuda --vs compile --spec $spec --out "$records"
    done
    cuda_memcheck
    ;;
topk)  # the filter top-k: its tests (graph replay among them), a memcheck of them, the benches
    step 150 python3 -m pytest -q -p no:cacheprovider tests/plugins/test_triton.py -k "topk or sample"
    step 120 compute-sanitizer --tool memcheck --error-exitcode 3 \
        python3 -m pytest -q -p no:cacheprovider tests/plugins/test_triton.py -k "filter_topk"
    sampling_benches
    ;;
triton-run)  # issue 4's done-when command with its op rows, and rope against torch.compile
    step 280 kbench run $spec --norm triton --rope triton --attention triton --ffn triton --sampling triton \
        --batch 1,64 --prompt-len 512 --out "$records"
    rope_against_compile
    ;;
gqa)  # the cuda decode kernels: GPU tests (the tensor-core GQA kernel among them), sweep, memcheck
    cuda_decode
    step 60 kbench bench attention_decode --backend cuda --vs triton --batch 1,8,64 --context 512,2048,8192 \
        --heads 32 --kv-heads 8 --head-dim 128 --layout paged --block-size 16 --out "$records"
    cuda_memcheck
    ;;
compile)  # triton against torch.compile where the two were close (every shape compiled now)
    rope_against_compile
    step 60 kbench bench swiglu --backend triton --vs compile --spec $spec --out "$records"
    step 90 kbench bench swiglu --backend triton --vs compile --tokens 1,64,512,32768 \
        --intermediate 13824,14336,28672 --out "$records"
    ;;
cuda-small)  # the cuda kernels' few-token paths: tests, memcheck, and the spec's shapes
    cuda_checks
    for op in rmsnorm add_rmsnorm rope swiglu; do
        step 50 kbench bench $op --backend cuda --vs triton --vs compile --spec $spec --out "$records"
    done
    ;;
splits)  # the split count of triton's decode attention, measured where the heuristic is weakest
    step 200 python3 scripts/device/decode_splits.py
    ;;
decode)  # triton's decode attention: GPU tests, split counts, the sweep (issue 4)
    triton_decode_tests
    step 330 python3 scripts/device/decode_splits.py
    decode_sweep --vs sdpa
    ;;
tune)  # launch shapes of the small-token cases where torch.compile led (issue 4)
    step 300 python3 scripts/device/tune_small.py --quick
    for other in llama2-13b llama2-70b llama3-8b; do
        step 60 kbench bench rope --backend triton --vs cuda --vs compile --spec model_specs/$other.yaml --out "$records"
    done
    ;;
variants)  # the cuda kernels' tuning knobs (issue 5)
    cuda_variants 480
    ;;
triton-final)  # the decode sweep at the final split rule, then every GPU test of the triton backend
    decode_sweep --vs sdpa
    step 520 python3 -m pytest -q -p no:cacheprovider tests/plugins/test_triton.py
    ;;
cuda-decode)  # the cuda decode kernels' GPU tests and their sweep beside triton's (issue 5)
    cuda_decode
    ;;
decode-trace)  # per-block timings of the cuda decode kernels (KBENCH_DECODE_TRACE)
    export KBENCH_CUDA_DEFINES="KBENCH_DECODE_TRACE=1"
    python3 -c "import kbench_cuda.build as b; print('trace', b.load() or 'built')"
    for c in 1x2048x8 1x8192x8 8x512x8 8x2048x8 1x512x32 8x512x32 1x2048x32; do
        timeout 60 python3 scripts/device/decode_trace.py $c > "$OUT/trace-$c.txt"
    done
    ;;
cold-sweeps)  # decode attention with graph calls cycling through copies of the KV cache (op.cold)
    decode_sweep --vs sdpa
    cuda_sweep 100
    ;;
cold-triton)  # issue 4's done-when command
    step 300 kbench run $spec --norm triton --rope triton --attention triton --ffn triton --sampling triton \
        --batch 1,64 --prompt-len 512 --out "$records"
    ;;
cold-cuda)  # issue 5's command, compared with the cold-triton record
    step 300 kbench run $spec --norm cuda --rope cuda --ffn cuda --attention cuda --sampling cuda \
        --backend attention_prefill=triton --batch 1,64 --prompt-len 512 --out "$records"
    step 20 kbench compare "${TRITON_RECORD:?path of the cold-triton record}" "$(latest llama2-7b)" \
        --metric kernel_us --format markdown --output "$OUT/compare-triton-vs-cuda.md"
    ;;
cold-splits)  # with the cache read cold: triton's split counts, cuda's plan wave at 200% and 400%
    build_knob KBENCH_DECODE_FILL 200 400 &
    knob_builds=$!
    step 300 python3 scripts/device/decode_splits.py
    wait $knob_builds
    sweep_knob KBENCH_DECODE_FILL 60 1,8 32,8 200 400
    ;;
read-bound)  # how fast the cache of each case below 80% can be read at all, cold
    triton_decode_tests
    step 400 python3 scripts/device/decode_read_bound.py
    ;;
read-configs)  # triton's split pass at each config (prefetch or not), cold, and its pipelining
    triton_decode_tests
    step 400 python3 scripts/device/decode_read_bound.py --attention-only --configs
    step 30 python3 scripts/device/triton_pipelining.py _split_kernel _head_sum _flat_sum
    ;;
merge-pdl)  # the merge as a second launch made with programmatic dependent launch, in both backends
    build_knob KBENCH_DECODE_MERGE_PDL 0 1 &
    knob_builds=$!
    decode_sweep --vs sdpa
    wait $knob_builds
    KBENCH_CUDA_DEFINES=KBENCH_DECODE_MERGE_PDL=1 step 200 \
        python3 -m pytest -q -p no:cacheprovider tests/plugins/test_cuda.py -k decode
    sweep_knob KBENCH_DECODE_MERGE_PDL 60 1,8 32,8 0 1 0 1
    ;;
fill-merge)  # fewer, longer splits now that the merge is a launch of its own, a block a head
    build_knob KBENCH_DECODE_FILL 50 100
    sweep_knob KBENCH_DECODE_FILL 60 1,8 32,8 50 100 50 100
    ;;
gqa-fill)  # the GQA kernel's plan at 75% of its resident blocks (3 splits at batch 8, clusters of 3)
           # against 50% (2), alternated twice; the decode tests on the 75% build first (issue 5;
           # ran at cbc6ad3: 75% was slower, batch 8 x 2048 30.2 µs against 28.5-28.6)
    build_knob KBENCH_GQA_FILL 50 75
    variant_tests 200 "decode" "KBENCH_GQA_FILL=75"
    sweep_knob KBENCH_GQA_FILL 60 1,8 8 50 75 50 75
    ;;
compile-pairs)  # "never slower than torch.compile": each small case over rounds, not one sweep
    [ -n "${WITH_TESTS:-}" ] && step 200 python3 -m pytest -q -p no:cacheprovider tests/plugins/test_cuda.py \
        tests/plugins/test_triton.py -k "rope or norm or swiglu or threshold"
    step 560 python3 scripts/device/compile_pairs.py --rounds 3 --max-tokens 1024
    ;;
rope-knobs)  # rope's few-token paths: where the per-token kernel starts, and cuda's slice shape
    rope_variants=("KBENCH_ROPE_FEW_TOKENS=1024" "KBENCH_ROPE_FEW_TOKENS=1024 KBENCH_ROPE_SLICE_THREADS=64"
                   "KBENCH_ROPE_FEW_TOKENS=1024 KBENCH_ROPE_SLICE_THREADS=256"
                   "KBENCH_ROPE_FEW_TOKENS=1024 KBENCH_ROPE_SLICE_VEC=2" "KBENCH_ROPE_FEW_TOKENS=1024 KBENCH_ROPE_SLICE_VEC=8")
    build_variants "${rope_variants[@]}"
    pairs="python3 scripts/device/compile_pairs.py --ops rope --spec llama2-7b --spec llama2-13b --rounds 3"
    KBENCH_CUDA_DEFINES="${rope_variants[0]}" step 150 $pairs --patch kbench_triton.rope.FEW_TOKENS=1024
    for variant in "${rope_variants[@]:1}"; do
        echo "--- $variant"
        KBENCH_CUDA_DEFINES="$variant" step 100 $pairs --backend cuda
    done
    ;;
decode-fill)  # the cuda decode plan's wave (KBENCH_DECODE_FILL): builds side by side, then each swept
    build_knob KBENCH_DECODE_FILL 50 100 200
    sweep_knob KBENCH_DECODE_FILL 50 1,8 32,8 50 100 200
    ;;
decode-profile)  # where the cuda decode kernels' time goes, and the GQA ring's depth (KBENCH_GQA_STAGES)
    build_knob KBENCH_GQA_STAGES 2 4 &
    knob_builds=$!
    python3 -c "import kbench_cuda.build as b; print('default', b.load() or 'built')"
    ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    echo "ncu: ${ncu:-not found}"
    [ -n "$ncu" ] && step 240 "$ncu" --section SpeedOfLight --section WarpStateStats --section Occupancy \
        --section LaunchStats --section MemoryWorkloadAnalysis -k regex:decode --launch-skip 1 \
        python3 scripts/device/decode_ncu.py 1x2048x8 1x8192x8 8x512x8 1x512x32 8x512x32 > "$OUT/ncu.txt"
    wait $knob_builds
    sweep_knob KBENCH_GQA_STAGES 50 1,8,64 8 2 4
    ;;
decode-stages)  # the cuda decode ring's depth (KBENCH_DECODE_STAGES): builds side by side, tests, sweeps
    build_knob KBENCH_DECODE_STAGES default 1 2 3
    step 170 python3 -m pytest -q -p no:cacheprovider tests/plugins/test_cuda.py -k decode
    cuda_sweep 80
    sweep_knob KBENCH_DECODE_STAGES 50 1,8,64 32,8 1 2 3
    ;;
decode-knob)  # the cuda decode split plan's fewest tokens a split: builds side by side, then each swept
    build_knob KBENCH_DECODE_SPLIT_TOKENS 64 256 1024
    sweep_knob KBENCH_DECODE_SPLIT_TOKENS 120 1,8 32,8 64 256 1024
    ;;
norm-weight)  # triton's norms with the weight loaded before the reduction, against compile (issue 4)
    for op in add_rmsnorm rmsnorm; do
        step 60 kbench bench $op --backend triton --vs compile --vs cuda --spec $spec --out "$records"
        step 60 kbench bench $op --backend triton --vs compile --tokens 1,8,64,128,1024 --hidden 8192 --out "$records"
    done
    ;;
round4)  # the cuda norm and rope tests at the few-row / few-token launch shapes, then knob round 4
    step 200 python3 -m pytest -q -p no:cacheprovider tests/plugins/test_cuda.py -k "norm or rope"
    cuda_variants 330
    ;;
cuda-final)  # the cuda kernels at their chosen knobs: every GPU test, a memcheck, the knob round
    cuda_checks
    cuda_variants 200
    ;;
small-gaps)  # every cuda GPU test and memcheck, triton's decode tests, rope against compile over rounds,
    # and the kernels torch.compile launches where cuda trails it (issues 4, 5)
    cuda_checks
    triton_decode_tests
    step 240 python3 scripts/device/compile_pairs.py --ops rope --rounds 3 --max-tokens 1024
    compile_kernels
    ;;
rope-slices)  # the kernels compile launches where cuda trails it, then cuda rope's slice knobs with
    # every frequency loaded up front, against torch.compile over rounds (issue 5)
    build_variants "KBENCH_ROPE_SLICE_VEC=2" "KBENCH_ROPE_SLICE_THREADS=64" &
    knob_builds=$!
    compile_kernels
    wait $knob_builds
    variant_pairs 120 "--ops rope --spec llama2-7b --spec llama2-13b --backend cuda" \
        "KBENCH_ROPE_SLICE_VEC=2" "KBENCH_ROPE_SLICE_THREADS=64"
    ;;
cuda-pairs)  # every cuda GPU test and the memcheck, then cuda against torch.compile at every spec
    # shape up to 1024 tokens over rounds (issue 5)
    cuda_checks
    step 420 python3 scripts/device/compile_pairs.py --rounds 3 --max-tokens 1024 --backend cuda \
        --ops rope,swiglu,rmsnorm,add_rmsnorm
    ;;
packed)  # cuda's norms, rope and swiglu on packed 16-bit pairs: every cuda GPU test and the memcheck,
    # both backends against torch.compile over rounds, then issue 5's command and its compare with
    # triton's record (TRITON_RECORD=path) (issue 5)
    cuda_checks
    step 260 python3 scripts/device/compile_pairs.py --rounds 3 --max-tokens 1024 \
        --ops add_rmsnorm,rmsnorm,rope,swiglu
    step 200 kbench run $spec --norm cuda --rope cuda --ffn cuda --attention cuda --sampling cuda \
        --backend attention_prefill=triton --batch 1,64 --prompt-len 512 --out "$records"
    step 20 kbench compare "${TRITON_RECORD:?path of the triton record}" "$(latest llama2-7b)" \
        --metric kernel_us --format markdown --output "$OUT/compare-triton-vs-cuda.md"
    ;;
shared-angles)  # cuda rope's slice lanes sharing their angles by shuffles and norms scaling by
    # 1 / hidden: every cuda GPU test and the memcheck, then against torch.compile over rounds beside
    # builds with 16-byte rope slices and norms of one access a thread from 128 rows (issue 5)
    cuda_checks
    variants=("" "KBENCH_ROPE_SLICE_VEC=8" "KBENCH_NORM_ONE_ACCESS_ROWS=128")
    build_variants "${variants[@]:1}"
    variant_tests 90 "rope or rmsnorm" "${variants[@]:1}"
    variant_pairs 120 "--backend cuda --ops rope --spec llama2-7b --spec llama2-13b --max-tokens 512" \
        "${variants[@]:0:2}"
    variant_pairs 120 "--backend cuda --ops add_rmsnorm,rmsnorm --spec llama2-7b --spec llama2-13b" \
        "" "${variants[@]:2}"
    ;;
cluster-merge)  # cuda decode's splits merged in a thread-block cluster: the decode GPU tests and
    # memcheck, then the decode sweep beside triton, and builds merging in clusters of up to 8 and
    # never (merge_kernel) swept in the same call (issue 5)
    build_variants "" "KBENCH_DECODE_CLUSTER=0" "KBENCH_DECODE_CLUSTER=8"
    step 200 python3 -m pytest -q -p no:cacheprovider tests/plugins/test_cuda.py -k "decode or cluster"
    variant_tests 150 "cluster or merges" "KBENCH_DECODE_CLUSTER=8"
    cuda_memcheck
    cuda_sweep 150
    sweep_knob KBENCH_DECODE_CLUSTER 100 1,8,64 32,8 0 8
    ;;
cluster-final)  # the cluster merge for the tensor-core GQA kernel only: every cuda GPU test and the
    # memcheck, the decode sweep beside triton, then rope's slices of 256 threads or 2 elements
    # against torch.compile over rounds up to 128 tokens (issue 5)
    rope_variants=("KBENCH_ROPE_SLICE_THREADS=256" "KBENCH_ROPE_SLICE_VEC=2")
    build_variants "${rope_variants[@]}" >"$OUT/variant-builds.log" 2>&1 &
    knob_builds=$!
    cuda_checks
    wait $knob_builds
    cuda_sweep 150
    variant_tests 60 rope "${rope_variants[@]}"
    variant_pairs 90 "--backend cuda --ops rope --spec llama2-7b --spec llama2-13b --max-tokens 128" \
        "" "${rope_variants[@]}"
    ;;
cuda-final-run)  # issue 5's command and its compare with triton's record (TRITON_RECORD=path), cuda
    # against torch.compile at every spec shape up to 1024 tokens over rounds, then the GQA kernel's
    # plan at 50% and 100% of its resident blocks now that up to 8 splits merge in a cluster (issue 5)
    build_variants "" "KBENCH_GQA_FILL=50" "KBENCH_GQA_FILL=100"
    step 200 kbench run $spec --norm cuda --rope cuda --ffn cuda --attention cuda --sampling cuda \
        --backend attention_prefill=triton --batch 1,64 --prompt-len 512 --out "$records"
    step 20 kbench compare "${TRITON_RECORD:?path of the triton record}" "$(latest llama2-7b)" \
        --metric kernel_us --format markdown --output "$OUT/compare-triton-vs-cuda.md"
    step 300 python3 scripts/device/compile_pairs.py --rounds 3 --max-tokens 1024 --backend cuda \
        --ops add_rmsnorm,rmsnorm,rope,swiglu
    sweep_knob KBENCH_GQA_FILL 60 1,8,64 8 50 100
    ;;
mha-cluster)  # cuda's MHA decode kernel merging its splits in clusters of up to 8, with its plan's
    # wave at 67% of the resident blocks (8 splits at batch 1 where it took 12) or not, swept cold
    # against the default; then the norms of both backends against torch.compile in one process
    # (issue 5)
    variants=("KBENCH_DECODE_MHA_CLUSTER=8" "KBENCH_DECODE_FILL=67" "KBENCH_DECODE_FILL=67 KBENCH_DECODE_MHA_CLUSTER=8")
    build_variants "" "${variants[@]}"
    variant_tests 120 "cluster or merges or residue" "${variants[2]}"
    for variant in "" "${variants[@]}"; do
        KBENCH_CUDA_DEFINES="$variant" step 60 kbench bench attention_decode --backend cuda \
            --batch 1,8 --context 512,2048,8192 --heads 32 --kv-heads 32 --head-dim 128 --out "$records"
    done
    step 120 python3 scripts/device/compile_pairs.py --rounds 3 --ops add_rmsnorm,rmsnorm --spec llama2-7b
    ;;
final-runs)  # at the final code (graphs whose in-place copies span 2 x L2 for every backend, cuda's
    # MHA plan at 67%): the decode GPU tests, the decode sweeps, issue 4's and issue 5's commands
    # and their compare (issues 4, 5)
    step 120 python3 -m pytest -q -p no:cacheprovider tests/plugins/test_cuda.py tests/bench -k "decode or cluster or sweep or timing"
    cuda_sweep 150
    issue_runs 240 200
    ;;
final-pairs)  # both backends against torch.compile at every spec shape up to 1024 tokens over rounds,
    # with the in-place copies spanning 2 x L2 for every backend (issues 4, 5)
    step 540 python3 scripts/device/compile_pairs.py --rounds 3 --max-tokens 1024 \
        --ops add_rmsnorm,rmsnorm,rope,swiglu
    ;;
rope-cold)  # rope at 1-128 tokens with every backend's q and k copies read cold (the new graph
    # rule): what torch.compile launches, then cuda's default against one angle a thread up to 64
    # tokens and 2-element slices, each against compile over rounds (issue 5)
    variants=("KBENCH_ROPE_TINY_TOKENS=65" "KBENCH_ROPE_SLICE_VEC=2")
    build_variants "" "${variants[@]}" >"$OUT/variant-builds.log" 2>&1 &
    knob_builds=$!
    step 90 python3 scripts/device/compile_kernels.py --source rope 1,32 --spec llama2-7b
    wait $knob_builds
    variant_tests 60 rope "${variants[@]}"
    variant_pairs 90 "--backend cuda --ops rope --spec llama2-7b --spec llama2-13b --max-tokens 128" \
        "" "${variants[@]}"
    ;;
review-check)  # after the review's mends (one decode launch path; cold copies spanning 2 x L2 for
    # every backend): every cuda GPU test, the memcheck, the bench GPU tests, and the decode sweep
    # beside triton under the new rule (issues 4, 5)
    cuda_checks
    step 120 python3 -m pytest -q -p no:cacheprovider tests/bench
    cuda_sweep 150
    ;;
rope-tiny)  # rope at 1-64 tokens under kept outputs (compile's writes as cold as the in-place ones):
    # what compile launches at 8 and 32 tokens of 40 heads, then one angle a thread up to 32 tokens
    # (cuda KBENCH_ROPE_TINY_TOKENS=33, triton TINY_TOKENS=33) against the defaults (issues 4, 5)
    build_variants "" "KBENCH_ROPE_TINY_TOKENS=33" >"$OUT/variant-builds.log" 2>&1 &
    knob_builds=$!
    step 90 python3 scripts/device/compile_kernels.py --source rope 8,32 --spec llama2-13b
    wait $knob_builds
    pairs="--ops rope --spec llama2-7b --spec llama2-13b --max-tokens 64"
    variant_pairs 120 "$pairs" "" "KBENCH_ROPE_TINY_TOKENS=33"
    variant_pairs 120 "$pairs --backend triton --patch kbench_triton.rope.TINY_TOKENS=33" ""
    ;;
rope-four)  # rope at 1-32 tokens against compile with kept outputs: 4-element accesses sharing angles
    # by shuffles at every token count (cuda KBENCH_ROPE_TINY_TOKENS=1; triton TINY_TOKENS=1: 4-head
    # tiles) against one angle a thread below 32 tokens (issues 4, 5)
    build_variants "" "KBENCH_ROPE_TINY_TOKENS=1" >"$OUT/variant-builds.log" 2>&1
    pairs="--ops rope --spec llama2-7b --spec llama2-13b --max-tokens 32"
    variant_pairs 100 "$pairs" "" "KBENCH_ROPE_TINY_TOKENS=1"
    variant_pairs 100 "$pairs --backend triton --patch kbench_triton.rope.TINY_TOKENS=1" ""
    ;;
rope-blocks)  # rope at 1-64 tokens against compile: fewer, larger blocks (compile launches 80 programs at 8
    # tokens of 40/40 heads where cuda launches 320): cuda slices of 256 and 512 threads, triton
    # tiles of 8 heads from 32 tokens (issues 4, 5)
    build_variants "" "KBENCH_ROPE_SLICE_THREADS=256" "KBENCH_ROPE_SLICE_THREADS=512" >"$OUT/variant-builds.log" 2>&1
    pairs="--ops rope --spec llama2-7b --spec llama2-13b --max-tokens 64"
    variant_pairs 100 "$pairs --backend cuda" "" "KBENCH_ROPE_SLICE_THREADS=256" "KBENCH_ROPE_SLICE_THREADS=512"
    variant_pairs 100 "$pairs --backend triton --patch kbench_triton.rope.MID_TILE_HEADS=8" ""
    ;;
pairs-processes)  # both backends against torch.compile in three fresh processes: every spec shape up to 64
    # tokens, then llama2-7b's rmsnorm (where cuda trailed at 512 and 1024 rows) (issues 4, 5). Its one
    # run cut the first step off at 400 s in its third process (each took ~135 s): allow 450
    step 450 python3 scripts/device/compile_pairs.py --rounds 3 --processes 3 --max-tokens 64 \
        --ops add_rmsnorm,rmsnorm,rope,swiglu --output "$OUT/compile-pairs-processes.md"
    step 170 python3 scripts/device/compile_pairs.py --rounds 3 --processes 3 --ops rmsnorm --spec llama2-7b \
        --output "$OUT/compile-pairs-rmsnorm-processes.md"
    ;;
kept-runs)  # with each graph call's outputs its own where its inputs are (kept outputs): the bench GPU
    # tests, issue 4's and 5's commands and their compare (issues 4, 5)
    step 90 python3 -m pytest -q -p no:cacheprovider tests/bench
    issue_runs 250 220
    ;;
kept-pairs)  # the same rule: both backends against torch.compile at every spec shape up to 1024 tokens
    # over rounds, written as markdown; then the decode sweep beside triton (issues 4, 5)
    step 330 python3 scripts/device/compile_pairs.py --rounds 3 --max-tokens 1024 \
        --ops add_rmsnorm,rmsnorm,rope,swiglu --output "$OUT/compile-pairs.md"
    cuda_sweep 150
    ;;
compile-configs)  # torch.compile at each of its autotuner's candidate configs, against both backends:
                  # rope and add_rmsnorm up to 64 tokens, llama2-7b's rmsnorm up to 1024
    step 60 python3 -m pytest -q -p no:cacheprovider tests/test_compile_pairs.py
    step 300 python3 scripts/device/compile_pairs.py --rounds 3 --max-tokens 64 --ops rope,add_rmsnorm \
        --compile-configs 2 --output "$OUT/compile-configs.md"
    step 150 python3 scripts/device/compile_pairs.py --rounds 3 --max-tokens 1024 --ops rmsnorm --spec llama2-7b \
        --compile-configs 3 --output "$OUT/compile-configs-rmsnorm.md"
    ;;
rope-rounding)  # rope rounding as HF (no fma contraction) with the branchless small-token kernels:
               # the GPU tests, a memcheck, rope against compile's configs; then the rounding test
               # on sources with the contraction put back, which must fail (issues 4, 5)
    rope_checks
    cuda_memcheck
    step 170 python3 scripts/device/compile_pairs.py --rounds 3 --ops rope --spec llama2-7b --spec llama2-13b \
        --max-tokens 64 --compile-configs 2 --output "$OUT/rope-rounding.md"
    local_sources="plugins/kbench_cuda/csrc/common.cuh plugins/kbench_cuda/csrc/rope.cu plugins/kbench_triton/rope.py"
    mkdir -p /tmp/rope-sources && cp $local_sources /tmp/rope-sources/
    sed -i 's/__h\(add\|sub\|mul\)2_rn(/__h\12(/g' plugins/kbench_cuda/csrc/common.cuh plugins/kbench_cuda/csrc/rope.cu
    sed -i 's/enable_fp_fusion=False/enable_fp_fusion=True/' plugins/kbench_triton/rope.py
    step 150 python3 -m pytest -q -p no:cacheprovider tests/test_rope_rounding.py -k "bfloat16 and half"
    for source in $local_sources; do cp "/tmp/rope-sources/$(basename "$source")" "$source"; done
    ;;
rope-mid)  # rope at 32-64 tokens against torch.compile's faster config there (512 elements, 8
           # warps): one angle a thread (cuda TINY_TOKENS 65, triton 2-head tiles), 2-element
           # accesses (cuda SLICE_VEC 2), 8-warp 4-head tiles (triton), one process each (issues 4, 5)
    build_variants "" "KBENCH_ROPE_TINY_TOKENS=65" "KBENCH_ROPE_SLICE_VEC=2" >"$OUT/variant-builds.log" 2>&1
    pairs="--rounds 3 --ops rope --spec llama2-7b --spec llama2-13b --max-tokens 64 --compile-config 1"
    step 100 python3 scripts/device/compile_pairs.py $pairs --output "$OUT/rope-mid-default.md"
    KBENCH_CUDA_DEFINES="KBENCH_ROPE_TINY_TOKENS=65" step 100 python3 scripts/device/compile_pairs.py $pairs \
        --patch kbench_triton.rope.TINY_TOKENS=65 --output "$OUT/rope-mid-one-angle.md"
    KBENCH_CUDA_DEFINES="KBENCH_ROPE_SLICE_VEC=2" step 100 python3 scripts/device/compile_pairs.py $pairs \
        --patch kbench_triton.rope.MID_TILE_WARPS=8 --output "$OUT/rope-mid-two.md"
    ;;
rope-final)  # the final rope kernels: their GPU tests (rounding included), a memcheck, then issue 4's
            # and 5's commands and their compare (issues 4, 5)
    rope_checks
    cuda_memcheck
    issue_runs 220 200
    ;;
config-pairs-rope)  # rope and add_rmsnorm at every spec shape up to 1024 tokens against each of
                    # torch.compile's configs (issues 4, 5)
    step 560 python3 scripts/device/compile_pairs.py --rounds 3 --ops rope,add_rmsnorm --compile-configs 2 \
        --output "$OUT/config-pairs-rope.md"
    ;;
config-pairs-norm)  # rmsnorm and swiglu the same way (issues 4, 5)
    step 560 python3 scripts/device/compile_pairs.py --rounds 3 --ops rmsnorm,swiglu --compile-configs 2 \
        --output "$OUT/config-pairs-norm.md"
    ;;
inductor-record)  # the record keeps torch.compile's chosen configs: the compile tests, then a rope
                  # bench against compile whose record shows them
    step 120 python3 -m pytest -q -p no:cacheprovider tests/plugins/test_torch_compiled.py tests/test_compile_pairs.py
    step 120 kbench bench rope --backend cuda --vs compile --spec $spec --out "$records"
    step 20 python3 -c "import json, sys; d = json.load(open(sys.argv[1])); \
print(json.dumps(d['plugin_details'].get('torch'), indent=1))" "$(latest bench-rope)"
    ;;
rope-mid-tiles)  # triton rope's tile at 32-64 tokens (MID_TILE_HEADS x MID_TILE_WARPS), each against
                # compile's faster config there, the default and 8 x 4 twice (issue 4)
    pairs="--rounds 3 --ops rope --spec llama2-7b --spec llama2-13b --min-tokens 32 --max-tokens 64 --compile-config 1 --backend triton"
    for variant in 4x4 8x4 8x2 16x4 16x8 4x4 8x4; do
        echo "--- heads x warps $variant"
        step 60 python3 scripts/device/compile_pairs.py $pairs --patch "kbench_triton.rope.MID_TILE_HEADS=${variant%x*}" \
            --patch "kbench_triton.rope.MID_TILE_WARPS=${variant#*x}"
    done
    ;;
mid-tiles-check)  # triton rope's 8-head tiles at 32-127 tokens: rope's GPU tests of both backends and
                 # its conformance cases, then triton against each of compile's configs at every
                 # spec shape up to 1024 tokens (issue 4)
    rope_checks
    step 250 python3 scripts/device/compile_pairs.py --rounds 3 --ops rope --backend triton --compile-configs 2 \
        --output "$OUT/config-pairs-rope-triton.md"
    ;;
mid-tiles-run)  # issue 4's command at that code, compared with issue 5's record (cuda unchanged since)
    step 240 kbench run $spec --norm triton --rope triton --attention triton --ffn triton --sampling triton \
        --batch 1,64 --prompt-len 512 --out "$records"
    step 20 kbench compare "$(latest llama2-7b)" results/examples/20261124T090846Z-llama2-7b-7559fe.json \
        --metric kernel_us --format markdown --output "$OUT/compare-triton-vs-cuda.md"
    ;;
rope-fast-trig)  # cuda rope's slices with branch-free angles (the default) against sincosf
                # (KBENCH_ROPE_FAST_TRIG=0): rope's GPU tests and HF-rounding test, then rope at 1-64
                # tokens against compile's faster config, the two builds alternated twice (issue 5; ran
                # at 26c8f43 with the default and fast builds the other way round)
    build_variants "" "KBENCH_ROPE_FAST_TRIG=0" >"$OUT/variant-builds.log" 2>&1
    step 150 python3 -m pytest -q -p no:cacheprovider tests/test_rope_rounding.py tests/plugins/test_cuda.py \
        -k "rope or rounds"
    pairs="--rounds 3 --ops rope --spec llama2-7b --spec llama2-13b --spec llama3-8b --max-tokens 64 --compile-config 1 --backend cuda"
    for variant in "KBENCH_ROPE_FAST_TRIG=0" "" "KBENCH_ROPE_FAST_TRIG=0" ""; do
        echo "--- ${variant:-default}"
        KBENCH_CUDA_DEFINES="$variant" step 70 python3 scripts/device/compile_pairs.py $pairs
    done
    ;;
fast-trig-check)  # cuda rope at the branch-free angles' default: its GPU tests (the rounding test and
                 # the angles past the fast path's reach included), a memcheck, the same test on
                 # sources without the sincosf fallback (must fail), then issue 5's command and its
                 # compare with issue 4's record (issue 5)
    step 200 python3 -m pytest -q -p no:cacheprovider tests/test_rope_rounding.py tests/plugins/test_cuda.py \
        -k "rope or rounds"
    cuda_memcheck
    cp plugins/kbench_cuda/csrc/rope.cu /tmp/rope.cu.kept
    sed -i 's/slow |= !(fabsf(x\[i\]) <= kFastTrigLimit);/slow |= false;/' plugins/kbench_cuda/csrc/rope.cu
    grep -c "slow |= false" plugins/kbench_cuda/csrc/rope.cu
    step 150 python3 -m pytest -q -p no:cacheprovider tests/plugins/test_cuda.py -k past_the_fast_path
    cp /tmp/rope.cu.kept plugins/kbench_cuda/csrc/rope.cu
    step 220 kbench run $spec --norm cuda --rope cuda --ffn cuda --attention cuda --sampling cuda \
        --backend attention_prefill=triton --batch 1,64 --prompt-len 512 --out "$records"
    step 20 kbench compare results/examples/20261124T103950Z-llama2-7b-d54a96.json "$(latest llama2-7b)" \
        --metric kernel_us --format markdown --output "$OUT/compare-triton-vs-cuda.md"
    ;;
cuda-check)  # every cuda GPU test and a memcheck of every kernel
    cuda_checks
    ;;
cuda-check-sweep)  # every cuda GPU test, a memcheck of every kernel, the decode sweep beside triton
    cuda_checks
    cuda_sweep 100
    ;;
cuda-run)  # issue 5's command with its op rows, compared with issue 4's triton record; the
           # memory-bound ops against triton and torch.compile at llama2-7b's shapes
    step 240 kbench run $spec --norm cuda --rope cuda --ffn cuda --attention cuda --sampling cuda \
        --backend attention_prefill=triton --batch 1,64 --prompt-len 512 --out "$records"
    step 20 kbench compare results/examples/20261123T222954Z-llama2-7b-364cd9.json "$(latest llama2-7b)" \
        --metric kernel_us --format markdown --output "$OUT/compare-triton-vs-cuda.md"
    for op in rmsnorm add_rmsnorm rope swiglu; do
        step 50 kbench bench $op --backend cuda --vs triton --vs compile --spec $spec --out "$records"
    done
    ;;
tests)
    step 280 python3 -m pytest -q -p no:cacheprovider -m gpu tests
    step 280 python3 -m pytest -q -p no:cacheprovider tests/test_conformance.py
    ;;
*) echo "unknown phase $phase"; exit 2 ;;
esac
echo; echo "=== done in $((SECONDS - started))s"; ls -la "$records"
# the device tool brings back at most 8 files: past 6 records, one archive of them
if [ "$(ls "$records" | wc -l)" -gt 6 ]; then
    tar -cf "$OUT/records.tar" -C "$records" . && rm -rf "$records" && echo "records in $OUT/records.tar"
fi
