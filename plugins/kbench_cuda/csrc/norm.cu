// rmsnorm and add_rmsnorm: one block per row, the row held in registers, one pass.
//
// Numerics follow HF LlamaRMSNorm (kbench/ops/norm.py): the sum of squares and the
// normalisation in fp32, the normalised row rounded to T, then multiplied by the weight in
// T. add_rmsnorm first rounds x + residual to T (what HF's `residual + hidden_states`
// stores) and normalises that rounded row.
#include "common.cuh"
#include "launchers.h"

namespace kbench {
namespace {

// Every load of a block (the weight, the row and, for add_rmsnorm, the residual) goes out before
// any arithmetic where the registers allow (LOADS_FIRST): one round trip, the reduction, the
// stores. The per-access loop instead makes dependent round trips (in its SASS each weight load
// follows the previous access's output store, and in add_rmsnorm the residual store of access i
// precedes the loads of access i + 1); it remains for rows too wide for the register file (more
// than 2 accesses a thread at over 256 threads).
//
// Threads a block: the fewest accesses a thread that keep a block within kMaxThreads threads;
// where that leaves more than 2 accesses a thread, within kWideMaxThreads instead. Wider blocks
// pay only there: at 2 accesses -> 1 they were slower at few rows (see docs/kernels.md).
#ifndef KBENCH_NORM_MAX_THREADS
#define KBENCH_NORM_MAX_THREADS 256
#endif
#ifndef KBENCH_NORM_WIDE_THREADS
#define KBENCH_NORM_WIDE_THREADS 512
#endif
// From this many rows on (0: never), rows of at most kWideMaxThreads accesses take one access a
// thread, as torch.compile's kernel does at 128 x 4096 (16 warps of one access), where the rule
// above gives 2 accesses in 256 threads.
#ifndef KBENCH_NORM_ONE_ACCESS_ROWS
#define KBENCH_NORM_ONE_ACCESS_ROWS 128
#endif
constexpr int kMaxThreads = KBENCH_NORM_MAX_THREADS;
constexpr int kWideMaxThreads = KBENCH_NORM_WIDE_THREADS;
constexpr int kOneAccessRows = KBENCH_NORM_ONE_ACCESS_ROWS;

// Access i of a thread: the one loaded up front into `early` (EARLY), or loaded from `p` now.
template <bool EARLY, typename T, int VEC, int N>
__device__ __forceinline__ Vec<T, VEC> loaded(const Vec<T, VEC> (&early)[N], int i, const T* p) {
    if constexpr (EARLY) {
        return early[i];
    } else {
        return load_vec<T, VEC>(p);
    }
}

// VEC elements per access (16 bytes, or 1 when the row is not 16-byte aligned);
// VPT accesses per thread, so a block of `blockDim.x` threads holds VEC * VPT * blockDim.x
// elements of the row in registers. LOADS_FIRST: all loads before any arithmetic.
template <typename T, int VEC, int VPT, bool ADD, bool LOADS_FIRST>
__global__ void rmsnorm_kernel(const T* __restrict__ x, T* __restrict__ residual, const T* __restrict__ weight,
                               T* __restrict__ out, int hidden, float inv_hidden, float eps) {
    __shared__ float scratch[32];
    const int64_t row_offset = static_cast<int64_t>(blockIdx.x) * hidden;
    constexpr int kEarly = LOADS_FIRST ? VPT : 1;
    constexpr int kEarlyResidual = LOADS_FIRST && ADD ? VPT : 1;
    Vec<T, VEC> weights[kEarly], xs[kEarly], residuals[kEarlyResidual];
    if constexpr (LOADS_FIRST) {
#pragma unroll
        for (int i = 0; i < VPT; ++i) {
            const int col = (i * blockDim.x + threadIdx.x) * VEC;
            if (col < hidden) {
                weights[i] = load_vec<T, VEC>(weight + col);
                xs[i] = load_vec<T, VEC>(x + row_offset + col);
                if constexpr (ADD) residuals[i] = load_vec<T, VEC>(residual + row_offset + col);
            }
        }
    }
    float values[VPT][VEC];
    float sum_sq = 0.f;
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
        const int col = (i * blockDim.x + threadIdx.x) * VEC;
        if (col < hidden) {
            Vec<T, VEC> xv = loaded<LOADS_FIRST>(xs, i, x + row_offset + col);
            if constexpr (ADD) {
                xv = add_vec<T, VEC>(loaded<LOADS_FIRST>(residuals, i, residual + row_offset + col), xv);
                store_vec<T, VEC>(residual + row_offset + col, xv);
            }
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                values[i][e] = to_float(xv.v[e]);
                sum_sq += values[i][e] * values[i][e];
            }
        }
    }
    // the mean as torch takes it, the sum times 1 / hidden (no division and its slow path)
    const float rstd = rsqrtf(block_sum(sum_sq, scratch) * inv_hidden + eps);
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
        const int col = (i * blockDim.x + threadIdx.x) * VEC;
        if (col < hidden) {
            const Vec<T, VEC> wv = loaded<LOADS_FIRST>(weights, i, weight + col);
            float normed[VEC];
#pragma unroll
            for (int e = 0; e < VEC; ++e) normed[e] = values[i][e] * rstd;
            store_vec<T, VEC>(out + row_offset + col, mul_vec<T, VEC>(wv, to_vec<T, VEC>(normed)));
        }
    }
}

// Loads first at up to 2 accesses a thread: every row of up to 1024 accesses (hidden 8192 in
// bf16) under the rule below. Wider rows (4 or 8 accesses a thread in 512 or more threads) take
// the per-access loop, whose registers fit any block.
template <typename T, int VEC, int VPT, bool ADD>
void launch_rows(const T* x, T* residual, const T* weight, T* out, int tokens, int threads, int hidden, float eps,
                 cudaStream_t stream) {
    rmsnorm_kernel<T, VEC, VPT, ADD, (VPT <= 2)><<<tokens, threads, 0, stream>>>(
            x, residual, weight, out, hidden, 1.0f / static_cast<float>(hidden), eps);
}

template <typename T, int VEC, bool ADD>
cudaError_t launch_with_vec(const void* x, void* residual, const void* weight, void* out, int tokens, int hidden,
                            float eps, cudaStream_t stream) {
    const int accesses = hidden / VEC;
    // Fewest accesses per thread that keep the block within kMaxThreads threads (room for
    // several blocks per SM), or within kWideMaxThreads where that leaves more than 2; up to 8
    // per thread with blocks of up to 1024 threads.
    int per_thread = 1;
    while (per_thread < 8 && (accesses + per_thread - 1) / per_thread > kMaxThreads) per_thread *= 2;
    if (kOneAccessRows > 0 && tokens >= kOneAccessRows && accesses <= kWideMaxThreads) {
        per_thread = 1;
    } else if (per_thread > 2) {
        while (per_thread > 1 && (accesses + per_thread / 2 - 1) / (per_thread / 2) <= kWideMaxThreads) {
            per_thread /= 2;
        }
    }
    int threads = (accesses + per_thread - 1) / per_thread;
    threads = (threads + 31) / 32 * 32;
    if (threads > 1024) return cudaErrorInvalidConfiguration;
    const T* xp = static_cast<const T*>(x);
    T* rp = static_cast<T*>(residual);
    const T* wp = static_cast<const T*>(weight);
    T* op = static_cast<T*>(out);
    switch (per_thread) {
        case 1: launch_rows<T, VEC, 1, ADD>(xp, rp, wp, op, tokens, threads, hidden, eps, stream); break;
        case 2: launch_rows<T, VEC, 2, ADD>(xp, rp, wp, op, tokens, threads, hidden, eps, stream); break;
        case 4: launch_rows<T, VEC, 4, ADD>(xp, rp, wp, op, tokens, threads, hidden, eps, stream); break;
        default: launch_rows<T, VEC, 8, ADD>(xp, rp, wp, op, tokens, threads, hidden, eps, stream); break;
    }
    return cudaGetLastError();
}

template <typename T, bool ADD>
cudaError_t launch_norm(const void* x, void* residual, const void* weight, void* out, int tokens, int hidden,
                        float eps, cudaStream_t stream) {
    if (tokens == 0) return cudaSuccess;
    constexpr int kVec = kVec16<T>;
    const bool vectorised = hidden % kVec == 0 && aligned16(x) && aligned16(weight) && aligned16(out) &&
                            (!ADD || aligned16(residual));
    if (vectorised) return launch_with_vec<T, kVec, ADD>(x, residual, weight, out, tokens, hidden, eps, stream);
    return launch_with_vec<T, 1, ADD>(x, residual, weight, out, tokens, hidden, eps, stream);
}

}  // namespace

cudaError_t launch_rmsnorm(const void* x, const void* weight, void* out, int tokens, int hidden, float eps,
                           DType dtype, cudaStream_t stream) {
    KBENCH_DISPATCH_FLOAT(dtype, return launch_norm<scalar_t, false>(x, nullptr, weight, out, tokens, hidden, eps, stream));
    return cudaSuccess;
}

cudaError_t launch_add_rmsnorm(const void* x, void* residual, const void* weight, void* out, int tokens, int hidden,
                               float eps, DType dtype, cudaStream_t stream) {
    KBENCH_DISPATCH_FLOAT(dtype, return launch_norm<scalar_t, true>(x, residual, weight, out, tokens, hidden, eps, stream));
    return cudaSuccess;
}

}  // namespace kbench
