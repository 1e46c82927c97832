// rope: q and k rotated in place in one launch, one block per token.
//
// The block computes cos/sin of `position * inv_freq[i]` once into shared memory (fp32
// angles and full-precision sincosf, as the reference's fp32 `angles.cos()`), then every
// head of q and k reuses them. Every scaling variant arrives through inv_freq.
//   half (HF): cos/sin rounded to T, each product and the sum rounded to T, as HF's
//              `x * cos + rotate_half(x) * sin` in x.dtype;
//   interleaved (Meta): pairs (2i, 2i+1) rotated in fp32, rounded once.
#include "common.cuh"
#include "launchers.h"

namespace kbench {
namespace {

template <typename T, int VEC, bool INTERLEAVED>
__global__ void rope_kernel(T* __restrict__ q, T* __restrict__ k, const int64_t* __restrict__ positions,
                            const float* __restrict__ inv_freq, int heads, int kv_heads, int head_dim,
                            int64_t q_token_stride, int64_t q_head_stride, int64_t k_token_stride,
                            int64_t k_head_stride) {
    extern __shared__ float table[];  // cos[half_dim], then sin[half_dim]
    const int token = blockIdx.x;
    const int half_dim = head_dim / 2;
    const float position = static_cast<float>(positions[token]);
    for (int i = threadIdx.x; i < half_dim; i += blockDim.x) {
        float s, c;
        sincosf(position * inv_freq[i], &s, &c);
        if constexpr (!INTERLEAVED) {
            c = round_to<T>(c);
            s = round_to<T>(s);
        }
        table[i] = c;
        table[half_dim + i] = s;
    }
    __syncthreads();

    const int per_head = (INTERLEAVED ? head_dim : half_dim) / VEC;
    const int items = (heads + kv_heads) * per_head;
    for (int item = threadIdx.x; item < items; item += blockDim.x) {
        const int head = item / per_head;
        const int j = (item - head * per_head) * VEC;
        T* base = head < heads ? q + token * q_token_stride + head * q_head_stride
                               : k + token * k_token_stride + (head - heads) * k_head_stride;
        if constexpr (INTERLEAVED) {
            Vec<T, VEC> v = load_vec<T, VEC>(base + j);
#pragma unroll
            for (int e = 0; e < VEC; e += 2) {
                const float c = table[(j + e) / 2], s = table[half_dim + (j + e) / 2];
                const float re = to_float(v.v[e]), im = to_float(v.v[e + 1]);
                v.v[e] = from_float<T>(re * c - im * s);
                v.v[e + 1] = from_float<T>(re * s + im * c);
            }
            store_vec<T, VEC>(base + j, v);
        } else {
            Vec<T, VEC> a = load_vec<T, VEC>(base + j);
            Vec<T, VEC> b = load_vec<T, VEC>(base + half_dim + j);
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                const float c = table[j + e], s = table[half_dim + j + e];
                const float x1 = to_float(a.v[e]), x2 = to_float(b.v[e]);
                a.v[e] = from_float<T>(round_to<T>(x1 * c) - round_to<T>(x2 * s));
                b.v[e] = from_float<T>(round_to<T>(x2 * c) + round_to<T>(x1 * s));
            }
            store_vec<T, VEC>(base + j, a);
            store_vec<T, VEC>(base + half_dim + j, b);
        }
    }
}

template <typename T, bool INTERLEAVED>
cudaError_t launch_rope_t(void* q, void* k, const int64_t* positions, const float* inv_freq, int tokens, int heads,
                          int kv_heads, int head_dim, int64_t q_token_stride, int64_t q_head_stride,
                          int64_t k_token_stride, int64_t k_head_stride, cudaStream_t stream) {
    if (tokens == 0) return cudaSuccess;
    constexpr int kVec = kVec16<T>;
    constexpr int kNarrow = INTERLEAVED ? 2 : 1;
    const int span = INTERLEAVED ? head_dim : head_dim / 2;
    const bool vectorised = span % kVec == 0 && q_token_stride % kVec == 0 && q_head_stride % kVec == 0 &&
                            k_token_stride % kVec == 0 && k_head_stride % kVec == 0 && aligned16(q) && aligned16(k);
    const int threads = 128;
    const size_t shared = sizeof(float) * head_dim;
    T* qp = static_cast<T*>(q);
    T* kp = static_cast<T*>(k);
    if (vectorised) {
        rope_kernel<T, kVec, INTERLEAVED><<<tokens, threads, shared, stream>>>(
            qp, kp, positions, inv_freq, heads, kv_heads, head_dim, q_token_stride, q_head_stride, k_token_stride,
            k_head_stride);
    } else {
        rope_kernel<T, kNarrow, INTERLEAVED><<<tokens, threads, shared, stream>>>(
            qp, kp, positions, inv_freq, heads, kv_heads, head_dim, q_token_stride, q_head_stride, k_token_stride,
            k_head_stride);
    }
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_rope(void* q, void* k, const int64_t* positions, const float* inv_freq, int tokens, int heads,
                        int kv_heads, int head_dim, int64_t q_token_stride, int64_t q_head_stride,
                        int64_t k_token_stride, int64_t k_head_stride, bool interleaved, DType dtype,
                        cudaStream_t stream) {
    KBENCH_DISPATCH_FLOAT(dtype, {
        if (interleaved)
            return launch_rope_t<scalar_t, true>(q, k, positions, inv_freq, tokens, heads, kv_heads, head_dim,
                                                 q_token_stride, q_head_stride, k_token_stride, k_head_stride, stream);
        return launch_rope_t<scalar_t, false>(q, k, positions, inv_freq, tokens, heads, kv_heads, head_dim,
                                              q_token_stride, q_head_stride, k_token_stride, k_head_stride, stream);
    });
    return cudaSuccess;
}

}  // namespace kbench
