// sample and topk: one block per row, no sort of the vocab.
//
// The cut-offs are found by radix select over order-preserving 32-bit keys of float32
// values: four passes of 8-bit digits, each a shared-memory histogram of the row's
// elements under the prefix chosen so far. One routine serves both cut-offs: it returns the
// smallest present value v with W(> v) < target, where W sums a weight over the elements
// strictly greater than v:
//   top-k: weight 1, target k          -> v = the k-th largest value (with multiplicity);
//   top-p: weight p, target top_p      -> v = the smallest kept probability (whole tie
//                                         groups kept, as kbench/ops/sampling.py states).
// Masses are summed as 32-bit fixed point (p * 2^31, rounded): integer shared-memory
// atomics are native where float ones are compare-and-swap loops that stall on the few
// crowded bins of a peaked distribution, and the sum is exact and order-independent (each
// term carries at most 2^-32 of rounding, ~1e-7 in all over 128K terms, below the float32
// cumsum's own error).
// The row is re-read from L2 on every pass (a 128256-token fp32 row is 501 KiB, more than
// shared memory); values are recomputed identically each time, so every pass sees the same
// numbers. Math follows kbench/ops/sampling.py; s = logit * (1 / temperature) as torch's
// CUDA division by a scalar computes it.
#include "common.cuh"
#include "launchers.h"

namespace kbench {
namespace {

constexpr int kThreads = 1024;
constexpr int kBins = 256;

__device__ __forceinline__ uint32_t order_key(float v) {
    const uint32_t bits = __float_as_uint(v);
    return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

__device__ __forceinline__ float key_value(uint32_t key) {
    return __uint_as_float((key & 0x80000000u) ? key & 0x7fffffffu : ~key);
}

// One row of logits, read as float32 values s = logit * inv_temperature.
template <typename T, int VEC>
struct Row {
    const T* logits;
    int vocab;
    float inv_temperature;

    // Calls fn(index, s) for every element, coalesced across the block.
    template <typename Fn>
    __device__ __forceinline__ void for_each(Fn&& fn) const {
        const int vectors = vocab / VEC;
        for (int v = threadIdx.x; v < vectors; v += blockDim.x) {
            const Vec<T, VEC> x = load_vec<T, VEC>(logits + v * VEC);
#pragma unroll
            for (int e = 0; e < VEC; ++e) fn(v * VEC + e, to_float(x.v[e]) * inv_temperature);
        }
    }
};

constexpr float kMassScale = 2147483648.f;  // 2^31: a total mass of 1 fits in 32 bits

struct RadixShared {
    uint32_t weight[kBins];
    uint32_t count[kBins];
    uint32_t scratch[32];
    uint32_t prefix;
    uint32_t above;
    int chosen;
};

// The smallest present key v of value(s) over the row with
// sum of weight over elements whose key is > v  <  target, where the weight is 1 (COUNT) or
// the value itself in fixed point (a probability mass, target = top_p * 2^31).
template <bool COUNT, typename RowT, typename ValueFn>
__device__ uint32_t radix_select(const RowT& row, ValueFn value, uint32_t target, RadixShared& sh) {
    if (threadIdx.x == 0) {
        sh.prefix = 0;
        sh.above = 0;
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < kBins; b += blockDim.x) {
            sh.weight[b] = 0;
            sh.count[b] = 0;
        }
        __syncthreads();
        const uint32_t prefix = sh.prefix;
        const uint32_t high_mask = shift == 24 ? 0u : ~((1u << (shift + 8)) - 1u);
        row.for_each([&](int, float s) {
            const float x = value(s);
            const uint32_t key = order_key(x);
            if ((key & high_mask) != prefix) return;
            const uint32_t bin = (key >> shift) & 0xffu;
            atomicAdd(&sh.count[bin], 1u);
            if constexpr (!COUNT) atomicAdd(&sh.weight[bin], __float2uint_rn(x * kMassScale));
        });
        __syncthreads();
        // Threads 0..255 own one bin each (highest bin first): an inclusive scan of the
        // weight from the top bin down gives, for each bin, the weight above it.
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        uint32_t w = 0, n = 0;
        const int bin = kBins - 1 - threadIdx.x;
        if (threadIdx.x < kBins) {
            n = sh.count[bin];
            w = COUNT ? n : sh.weight[bin];
        }
        uint32_t inclusive = w;
#pragma unroll
        for (int offset = 1; offset < 32; offset <<= 1) {
            const uint32_t other = __shfl_up_sync(0xffffffffu, inclusive, offset);
            if (lane >= offset) inclusive += other;
        }
        if (lane == 31 && warp < kBins / 32) sh.scratch[warp] = inclusive;
        if (threadIdx.x == 0) sh.chosen = -1;
        __syncthreads();
        uint32_t warp_offset = 0;
        if (threadIdx.x < kBins)
            for (int i = 0; i < warp; ++i) warp_offset += sh.scratch[i];
        const uint32_t above_bin = sh.above + warp_offset + inclusive - w;
        // Bins qualify from the top down; the lowest qualifying non-empty bin holds v.
        if (threadIdx.x < kBins && n > 0 && above_bin < target) atomicMax(&sh.chosen, threadIdx.x);
        __syncthreads();
        if (threadIdx.x == static_cast<unsigned>(sh.chosen)) {
            sh.prefix = prefix | (static_cast<uint32_t>(bin) << shift);
            sh.above = above_bin;
        }
        __syncthreads();
    }
    return sh.prefix;
}

struct SampleShared {
    RadixShared radix;
    float scratch[32];
    int index_scratch[32];
    float tile_sum[32];
    int token;
};

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) sample_kernel(const T* __restrict__ logits,
                                                          const float* __restrict__ uniforms,
                                                          int64_t* __restrict__ tokens, int vocab,
                                                          float inv_temperature, int top_k, float top_p) {
    __shared__ SampleShared sh;
    const int row_index = blockIdx.x;
    const bool greedy = inv_temperature == 0.f;
    Row<T, VEC> row{logits + static_cast<int64_t>(row_index) * vocab, vocab, greedy ? 1.f : inv_temperature};
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    // Pass 1: the maximum and the index of its first occurrence.
    float best = -INFINITY;
    int best_index = vocab;
    row.for_each([&](int i, float s) {
        if (s > best || (s == best && i < best_index)) {
            best = s;
            best_index = i;
        }
    });
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float other = __shfl_xor_sync(0xffffffffu, best, offset);
        const int other_index = __shfl_xor_sync(0xffffffffu, best_index, offset);
        if (other > best || (other == best && other_index < best_index)) {
            best = other;
            best_index = other_index;
        }
    }
    if (lane == 0) {
        sh.scratch[warp] = best;
        sh.index_scratch[warp] = best_index;
    }
    __syncthreads();
    if (warp == 0) {
        best = lane < (blockDim.x >> 5) ? sh.scratch[lane] : -INFINITY;
        best_index = lane < (blockDim.x >> 5) ? sh.index_scratch[lane] : vocab;
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) {
            const float other = __shfl_xor_sync(0xffffffffu, best, offset);
            const int other_index = __shfl_xor_sync(0xffffffffu, best_index, offset);
            if (other > best || (other == best && other_index < best_index)) {
                best = other;
                best_index = other_index;
            }
        }
        if (lane == 0) {
            sh.scratch[0] = best;
            sh.token = best_index;
        }
    }
    __syncthreads();
    if (greedy) {
        if (threadIdx.x == 0) tokens[row_index] = sh.token;
        return;
    }
    const float max_s = sh.scratch[0];
    __syncthreads();

    // top-k: keep s >= the k-th largest s.
    float kth = -INFINITY;
    if (top_k > 0 && top_k < vocab) {
        kth = key_value(radix_select<true>(row, [](float s) { return s; }, static_cast<uint32_t>(top_k), sh.radix));
    }
    // top-p: p = exp(s - max) / z over the top-k survivors (divided, as torch's softmax);
    // keep p >= the cut.
    const bool use_top_p = top_p < 1.f;
    float z = 1.f, p_cut = 0.f;
    if (use_top_p) {
        float z_part = 0.f;
        row.for_each([&](int, float s) { z_part += s >= kth ? expf(s - max_s) : 0.f; });
        z = block_sum(z_part, sh.scratch);
        auto prob = [=](float s) { return s >= kth ? expf(s - max_s) / z : 0.f; };
        const uint32_t target = static_cast<uint32_t>(fminf(top_p, 1.f) * kMassScale);
        p_cut = key_value(radix_select<false>(row, prob, target, sh.radix));
    }
    // The weight drawn from: p (unnormalised when top-p is off: the inverse CDF is scale-free).
    auto weight = [=](float s) -> float {
        if (s < kth) return 0.f;
        const float e = expf(s - max_s);
        if (!use_top_p) return e;
        const float p = e / z;
        return p >= p_cut ? p : 0.f;
    };

    // Total kept weight, then the first index whose cumulative weight exceeds u * total,
    // scanning tiles of blockDim.x * VEC elements in index order.
    float total_part = 0.f;
    int last_kept = -1;
    row.for_each([&](int i, float s) {
        const float w = weight(s);
        total_part += w;
        if (w > 0.f) last_kept = max(last_kept, i);
    });
    const float total = block_sum(total_part, sh.scratch);
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) last_kept = max(last_kept, __shfl_xor_sync(0xffffffffu, last_kept, offset));
    __syncthreads();
    if (lane == 0) sh.index_scratch[warp] = last_kept;
    if (threadIdx.x == 0) sh.token = -1;
    __syncthreads();
    if (warp == 0) {
        last_kept = lane < (blockDim.x >> 5) ? sh.index_scratch[lane] : -1;
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) last_kept = max(last_kept, __shfl_xor_sync(0xffffffffu, last_kept, offset));
    }
    const float x = uniforms[row_index] * total;
    float running = 0.f;  // cumulative weight before the current tile
    const int vectors = vocab / VEC;
    for (int tile = 0; tile < vectors; tile += blockDim.x) {
        const int v = tile + threadIdx.x;
        float w[VEC];
        float part = 0.f;
        if (v < vectors) {
            const Vec<T, VEC> lv = load_vec<T, VEC>(row.logits + v * VEC);
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                w[e] = weight(to_float(lv.v[e]) * inv_temperature);
                part += w[e];
            }
        }
        // Block-wide inclusive scan of the per-thread parts.
        float inclusive = part;
#pragma unroll
        for (int offset = 1; offset < 32; offset <<= 1) {
            const float other = __shfl_up_sync(0xffffffffu, inclusive, offset);
            if (lane >= offset) inclusive += other;
        }
        if (lane == 31) sh.tile_sum[warp] = inclusive;
        __syncthreads();
        float before = running;
        for (int i = 0; i < warp; ++i) before += sh.tile_sum[i];
        float tile_total = 0.f;
        for (int i = 0; i < static_cast<int>(blockDim.x >> 5); ++i) tile_total += sh.tile_sum[i];
        // The first element of positive weight whose cumulative weight exceeds x; the
        // lowest such index over the block (threads past the crossing report later ones).
        const float start = before + inclusive - part;
        if (v < vectors) {
            float c = start;
            int found = -1;
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                c += w[e];
                if (found < 0 && w[e] > 0.f && c > x) found = v * VEC + e;
            }
            if (found >= 0) atomicMin(reinterpret_cast<unsigned*>(&sh.token), static_cast<unsigned>(found));
        }
        __syncthreads();
        if (sh.token >= 0) break;
        running += tile_total;
    }
    if (threadIdx.x == 0) {
        const int token = sh.token;
        tokens[row_index] = (token < 0 || token > last_kept) ? last_kept : token;
    }
}

// topk: the k-th largest key by radix select, then the elements above it and the first
// equal ones in index order gathered into shared memory and sorted (value desc, index asc).
constexpr int kTopkCapacity = 2048;

struct TopkShared {
    RadixShared radix;
    uint32_t keys[kTopkCapacity];
    int indices[kTopkCapacity];
    int above_count;
    int equal_base[kThreads / 32];
};

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) topk_kernel(const T* __restrict__ logits, T* __restrict__ values,
                                                        int64_t* __restrict__ indices, int vocab, int k) {
    __shared__ TopkShared sh;
    const int row_index = blockIdx.x;
    Row<T, VEC> row{logits + static_cast<int64_t>(row_index) * vocab, vocab, 1.f};
    const uint32_t kth = radix_select<true>(row, [](float s) { return s; }, static_cast<uint32_t>(k), sh.radix);
    if (threadIdx.x == 0) sh.above_count = 0;
    __syncthreads();
    // Elements strictly above the k-th: fewer than k of them, order fixed by the sort below.
    row.for_each([&](int i, float s) {
        const uint32_t key = order_key(s);
        if (key > kth) {
            const int slot = atomicAdd(&sh.above_count, 1);
            sh.keys[slot] = key;
            sh.indices[slot] = i;
        }
    });
    __syncthreads();
    const int above = sh.above_count;
    // Elements equal to the k-th fill the rest in ascending index order: tiles in index
    // order, a block-wide exclusive count of the equal elements within each tile.
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int filled = above;
    const int vectors = vocab / VEC;
    for (int tile = 0; tile < vectors && filled < k; tile += blockDim.x) {
        const int v = tile + threadIdx.x;
        uint32_t equal_mask = 0;
        if (v < vectors) {
            const Vec<T, VEC> lv = load_vec<T, VEC>(row.logits + v * VEC);
#pragma unroll
            for (int e = 0; e < VEC; ++e)
                if (order_key(to_float(lv.v[e])) == kth) equal_mask |= 1u << e;
        }
        const int mine = __popc(equal_mask);
        int inclusive = mine;
#pragma unroll
        for (int offset = 1; offset < 32; offset <<= 1) {
            const int other = __shfl_up_sync(0xffffffffu, inclusive, offset);
            if (lane >= offset) inclusive += other;
        }
        if (lane == 31) sh.equal_base[warp] = inclusive;
        __syncthreads();
        int slot = filled + inclusive - mine;
        for (int i = 0; i < warp; ++i) slot += sh.equal_base[i];
        int tile_total = 0;
        for (int i = 0; i < static_cast<int>(blockDim.x >> 5); ++i) tile_total += sh.equal_base[i];
        for (int e = 0; e < VEC; ++e) {
            if ((equal_mask >> e) & 1u) {
                if (slot < k) {
                    sh.keys[slot] = kth;
                    sh.indices[slot] = v * VEC + e;
                }
                ++slot;
            }
        }
        filled += tile_total;
        __syncthreads();
    }
    // Bitonic sort of the k candidates (padded to a power of two) by key desc, index asc.
    int padded = 1;
    while (padded < k) padded <<= 1;
    for (int i = k + threadIdx.x; i < padded; i += blockDim.x) {
        sh.keys[i] = 0u;
        sh.indices[i] = 0x7fffffff;
    }
    __syncthreads();
    for (int size = 2; size <= padded; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = threadIdx.x; i < padded; i += blockDim.x) {
                const int j = i ^ stride;
                if (j > i) {
                    // "first" = comes earlier in the output order.
                    const bool i_first = sh.keys[i] > sh.keys[j] || (sh.keys[i] == sh.keys[j] && sh.indices[i] < sh.indices[j]);
                    const bool ascending = (i & size) == 0;
                    if (ascending != i_first) {
                        const uint32_t key = sh.keys[i];
                        sh.keys[i] = sh.keys[j];
                        sh.keys[j] = key;
                        const int index = sh.indices[i];
                        sh.indices[i] = sh.indices[j];
                        sh.indices[j] = index;
                    }
                }
            }
            __syncthreads();
        }
    }
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
        const int index = sh.indices[i];
        values[static_cast<int64_t>(row_index) * k + i] = row.logits[index];
        indices[static_cast<int64_t>(row_index) * k + i] = index;
    }
}

template <typename T>
cudaError_t launch_sample_t(const void* logits, const float* uniforms, int64_t* tokens, int batch, int vocab,
                            float temperature, int top_k, float top_p, cudaStream_t stream) {
    if (batch == 0) return cudaSuccess;
    const float inv_temperature = temperature == 0.f ? 0.f : 1.f / temperature;
    const T* lp = static_cast<const T*>(logits);
    if (vocab % kVec16<T> == 0 && aligned16(logits)) {
        sample_kernel<T, kVec16<T>><<<batch, kThreads, 0, stream>>>(lp, uniforms, tokens, vocab, inv_temperature,
                                                                     top_k, top_p);
    } else {
        sample_kernel<T, 1><<<batch, kThreads, 0, stream>>>(lp, uniforms, tokens, vocab, inv_temperature, top_k,
                                                             top_p);
    }
    return cudaGetLastError();
}

template <typename T>
cudaError_t launch_topk_t(const void* logits, void* values, int64_t* indices, int batch, int vocab, int k,
                          cudaStream_t stream) {
    if (batch == 0) return cudaSuccess;
    if (k > kTopkCapacity) return cudaErrorInvalidValue;
    const T* lp = static_cast<const T*>(logits);
    T* vp = static_cast<T*>(values);
    if (vocab % kVec16<T> == 0 && aligned16(logits)) {
        topk_kernel<T, kVec16<T>><<<batch, kThreads, 0, stream>>>(lp, vp, indices, vocab, k);
    } else {
        topk_kernel<T, 1><<<batch, kThreads, 0, stream>>>(lp, vp, indices, vocab, k);
    }
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_sample(const void* logits, const float* uniforms, int64_t* tokens, int batch, int vocab,
                          float temperature, int top_k, float top_p, DType dtype, cudaStream_t stream) {
    KBENCH_DISPATCH_FLOAT(dtype, return launch_sample_t<scalar_t>(logits, uniforms, tokens, batch, vocab, temperature,
                                                                  top_k, top_p, stream));
    return cudaSuccess;
}

cudaError_t launch_topk(const void* logits, void* values, int64_t* indices, int batch, int vocab, int k, DType dtype,
                        cudaStream_t stream) {
    KBENCH_DISPATCH_FLOAT(dtype, return launch_topk_t<scalar_t>(logits, values, indices, batch, vocab, k, stream));
    return cudaSuccess;
}

}  // namespace kbench
