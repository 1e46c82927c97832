// rope: q and k rotated in place in one launch.
//
// The angles are `position * inv_freq[i]` in fp32 with full-precision sincosf, as the
// reference's fp32 `angles.cos()`; every scaling variant arrives through inv_freq.
//   half (HF): cos/sin rounded to T, each product and the sum rounded to T, as HF's
//              `x * cos + rotate_half(x) * sin` in x.dtype;
//   interleaved (Meta): pairs (2i, 2i+1) rotated in fp32, rounded once.
// From kFewTokens tokens up one block takes all heads of a token, from a cos/sin table it
// computes once into shared memory; below, a 2-D grid (tokens, head slices) spreads a token's
// heads over several blocks.
#include "common.cuh"
#include "launchers.h"

namespace kbench {
namespace {

// Below this many tokens the (token, head slice) grid: blocks of kSliceThreads threads, each
// thread one access of kSliceVec elements (a pair of them for half) that computes the angles of
// its own elements (no shared table, no barrier), so a token's heads spread over many SMs and the
// angles overlap the loads. From kFewTokens one block a token takes all heads, its table computed
// once a token: at 512 tokens the slices were still faster (see docs/kernels.md).
#ifndef KBENCH_ROPE_FEW_TOKENS
#define KBENCH_ROPE_FEW_TOKENS 1024
#endif
#ifndef KBENCH_ROPE_SLICE_THREADS
#define KBENCH_ROPE_SLICE_THREADS 128
#endif
// Below this many tokens a slice thread computes one angle (one element an access for half, one
// pair for interleaved): each sincosf branches on its argument, so the angles of one thread do
// not overlap and a thread's latency grows with their number. From kTinyTokens there are enough
// threads for wider accesses to win again.
#ifndef KBENCH_ROPE_TINY_TOKENS
#define KBENCH_ROPE_TINY_TOKENS 32
#endif
constexpr int kFewTokens = KBENCH_ROPE_FEW_TOKENS;
constexpr int kTinyTokens = KBENCH_ROPE_TINY_TOKENS;
constexpr int kSliceThreads = KBENCH_ROPE_SLICE_THREADS;
// Elements a slice thread moves an access (0: 16 bytes' worth).
#ifndef KBENCH_ROPE_SLICE_VEC
#define KBENCH_ROPE_SLICE_VEC 4
#endif

// cos and sin of angle `position * frequency` in fp32; the table and the slices' per-thread
// angles both come from here (the half style rounds them to T in rotate, as HF rounds its cos/sin
// tables to x.dtype).
__device__ __forceinline__ void angle_cos_sin(float position, float frequency, float* c, float* s) {
    sincosf(position * frequency, s, c);
}

// How the slices compute their angles (a tuning knob): 0, sincosf each; 1, fast_cos_sin each,
// then sincosf for all of a lane's angles only where one of them is past kFastTrigLimit. Each
// sincosf ends its fast path in a branch, so a lane's angles ran one after another; with 1 a lane
// branches once.
#ifndef KBENCH_ROPE_FAST_TRIG
#define KBENCH_ROPE_FAST_TRIG 1
#endif
constexpr bool kFastTrig = KBENCH_ROPE_FAST_TRIG != 0;
constexpr float kFastTrigLimit = 105615.0f;

// sin and cos of x without a branch, for |x| <= kFastTrigLimit: x = j * pi/2 + r with pi/2 in
// three float parts (each product fused), then polynomials in r * r on |r| <= pi/4 (fitted by
// least squares in float64) and the quadrant j % 4. At most 1.56 ulp from sin and cos in float64
// over llama's positions and frequencies; once rounded to bf16 almost always the correctly
// rounded value, as HF's tables (from torch's cos) are.
__device__ __forceinline__ void fast_cos_sin(float x, float* c, float* s) {
    const float j = rintf(x * 0.636619772f);
    float r = fmaf(-j, 1.57079637f, x);
    r = fmaf(-j, -4.37113883e-08f, r);
    r = fmaf(-j, -1.71512451e-15f, r);
    const float z = r * r;
    const float sin_poly = fmaf(fmaf(-1.95138462e-04f, z, 8.33214726e-03f), z, -1.66666538e-01f);
    const float sin_r = fmaf(sin_poly * z, r, r);
    const float cos_poly = fmaf(fmaf(2.44357598e-05f, z, -1.38873409e-03f), z, 4.16666456e-02f);
    const float cos_r = fmaf(cos_poly * z, z, fmaf(-0.5f, z, 1.0f));
    const int quadrant = static_cast<int>(j) & 3;
    const float sv = (quadrant & 1) ? cos_r : sin_r;
    const float cv = (quadrant & 1) ? sin_r : cos_r;
    *s = (quadrant & 2) ? -sv : sv;
    *c = ((quadrant + 1) & 2) ? -cv : cv;
}

// cos and sin of the N angles `position * frequency[i]` (see KBENCH_ROPE_FAST_TRIG).
template <int N>
__device__ __forceinline__ void angles_cos_sin(float position, const float* frequency, float* c, float* s) {
    if constexpr (kFastTrig) {
        float x[N];
        bool slow = false;
#pragma unroll
        for (int i = 0; i < N; ++i) {
            x[i] = position * frequency[i];
            fast_cos_sin(x[i], &c[i], &s[i]);
            slow |= !(fabsf(x[i]) <= kFastTrigLimit);  // NaN and inf too
        }
        if (slow) {
#pragma unroll
            for (int i = 0; i < N; ++i) sincosf(x[i], &s[i], &c[i]);
        }
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) angle_cos_sin(position, frequency[i], &c[i], &s[i]);
    }
}

// cos[half_dim], then sin[half_dim] of the token's angles; the caller synchronises.
__device__ __forceinline__ void fill_table(float* table, float position, const float* __restrict__ inv_freq,
                                           int half_dim) {
    for (int i = threadIdx.x; i < half_dim; i += blockDim.x) {
        angle_cos_sin(position, inv_freq[i], &table[i], &table[half_dim + i]);
    }
}

// Elements j..j+VEC of one head: a holds them and, for half, b the ones half_dim further on.
// c[i] and s[i] are the cos and sin of angle i counted from the first angle of element j
// (angle j for half, j / 2 for interleaved).
template <typename T, int VEC, bool INTERLEAVED>
__device__ __forceinline__ void rotate(Vec<T, VEC>& a, Vec<T, VEC>& b, const float* c, const float* s) {
    if constexpr (INTERLEAVED) {
        // each product rounded to fp32 before the sum, as the reference's separate ops (no fma)
#pragma unroll
        for (int e = 0; e < VEC; e += 2) {
            const float re = to_float(a.v[e]), im = to_float(a.v[e + 1]);
            a.v[e] = from_float<T>(__fsub_rn(__fmul_rn(re, c[e / 2]), __fmul_rn(im, s[e / 2])));
            a.v[e + 1] = from_float<T>(__fadd_rn(__fmul_rn(re, s[e / 2]), __fmul_rn(im, c[e / 2])));
        }
    } else if constexpr (VEC == 1 && kPacked16<T>) {
        // the element and its partner as one pair: {a, b} * {cos, cos} + {b, a} * {-sin, sin}, each
        // product and the sum rounded to T as HF (b * -sin rounds to minus b * sin rounded), in
        // two conversions and three packed ops
        using P = Pair<T>;
        const P x(a.v[0], b.v[0]);
        const P rotated = __hadd2_rn(__hmul2_rn(x, to_pair(c[0], c[0], P{})),
                                     __hmul2_rn(__lowhigh2highlow(x), to_pair(-s[0], s[0], P{})));
        a.v[0] = rotated.x;
        b.v[0] = rotated.y;
    } else {
        // cos, sin, every product and the sum rounded to T (packed pairs in 16-bit types)
        const Vec<T, VEC> cos_t = to_vec<T, VEC>(c), sin_t = to_vec<T, VEC>(s);
        const Vec<T, VEC> x1 = a;
        a = sub_vec(mul_vec(x1, cos_t), mul_vec(b, sin_t));
        b = add_vec(mul_vec(b, cos_t), mul_vec(x1, sin_t));
    }
}

// The same rotation with the angles of elements j..j+VEC read from the token's table.
template <typename T, int VEC, bool INTERLEAVED>
__device__ __forceinline__ void rotate_from_table(Vec<T, VEC>& a, Vec<T, VEC>& b, const float* table, int j,
                                                  int half_dim) {
    const int first = INTERLEAVED ? j / 2 : j;
    rotate<T, VEC, INTERLEAVED>(a, b, table + first, table + half_dim + first);
}

// Element j of head `head` of the token, q's heads first, then k's, as one offset in Index from a
// selected tensor and strides (no branch: the slice kernel's loads wait on this address).
template <typename Index, typename T>
__device__ __forceinline__ T* head_element(T* q, T* k, int token, int head, int heads, int j, int64_t q_token_stride,
                                           int64_t q_head_stride, int64_t k_token_stride, int64_t k_head_stride) {
    const bool is_q = head < heads;
    T* const tensor = is_q ? q : k;
    const Index token_stride = static_cast<Index>(is_q ? q_token_stride : k_token_stride);
    const Index head_stride = static_cast<Index>(is_q ? q_head_stride : k_head_stride);
    const Index row = static_cast<Index>(is_q ? head : head - heads);
    return tensor + (static_cast<Index>(token) * token_stride + row * head_stride + static_cast<Index>(j));
}

// One block per token, all heads of q and k.
template <typename T, int VEC, bool INTERLEAVED>
__global__ void rope_kernel(T* __restrict__ q, T* __restrict__ k, const int64_t* __restrict__ positions,
                            const float* __restrict__ inv_freq, int heads, int kv_heads, int head_dim,
                            int64_t q_token_stride, int64_t q_head_stride, int64_t k_token_stride,
                            int64_t k_head_stride) {
    extern __shared__ float table[];  // cos[half_dim], then sin[half_dim]
    const int token = blockIdx.x;
    const int half_dim = head_dim / 2;
    fill_table(table, static_cast<float>(positions[token]), inv_freq, half_dim);
    __syncthreads();

    const int per_head = (INTERLEAVED ? head_dim : half_dim) / VEC;
    const int items = (heads + kv_heads) * per_head;
    for (int item = threadIdx.x; item < items; item += blockDim.x) {
        const int head = item / per_head;
        const int j = (item - head * per_head) * VEC;
        T* const element = head_element<int64_t>(q, k, token, head, heads, j, q_token_stride, q_head_stride,
                                                 k_token_stride, k_head_stride);
        Vec<T, VEC> a = load_vec<T, VEC>(element), b;
        if constexpr (!INTERLEAVED) b = load_vec<T, VEC>(element + half_dim);
        rotate_from_table<T, VEC, INTERLEAVED>(a, b, table, j, half_dim);
        store_vec<T, VEC>(element, a);
        if constexpr (!INTERLEAVED) store_vec<T, VEC>(element + half_dim, b);
    }
}

// Grid (tokens, slices): block (t, s) rotates heads [s * heads_per_block, (s + 1) *
// heads_per_block) of token t, counted over q's heads then k's (a slice may hold both), one
// access per thread: blockDim.x >= heads_per_block * per_head. Its loads go out before each
// thread computes the angles of its own elements, so the sincosf runs while they are in flight
// (no shared table and no barrier: see kSliceThreads).
//
// HEAD_DIM 128 (every shipped spec; 0: head_dim at run time) makes per_head a constant and the
// offsets 32-bit (the host checks they fit). Its lanes share their angles: whichever heads a
// warp holds, it needs only the head's 64 distinct angles (two a lane), so lane L computes angles
// 2L and 2L + 1 and takes the others of its access from their lanes by shuffles, where computing
// its own would take kAngles sincosf (4 in the default 4-element half-style access). The warp's
// every lane therefore computes its two angles before a lane outside the grid leaves.
template <typename T, int VEC, bool INTERLEAVED, int HEAD_DIM>
__global__ void rope_slice_kernel(T* __restrict__ q, T* __restrict__ k, const int64_t* __restrict__ positions,
                                  const float* __restrict__ inv_freq, int heads, int kv_heads, int head_dim_arg,
                                  int heads_per_block, int64_t q_token_stride, int64_t q_head_stride,
                                  int64_t k_token_stride, int64_t k_head_stride) {
    using Index = std::conditional_t<HEAD_DIM == 0, int64_t, int>;
    const int head_dim = HEAD_DIM == 0 ? head_dim_arg : HEAD_DIM;
    const int token = blockIdx.x;
    const int half_dim = head_dim / 2;
    const int per_head = (INTERLEAVED ? head_dim : half_dim) / VEC;
    const int local_head = threadIdx.x / per_head;
    const int head = blockIdx.y * heads_per_block + local_head;
    const int j = (threadIdx.x - local_head * per_head) * VEC;
    const bool active = local_head < heads_per_block && head < heads + kv_heads;
    constexpr int kAngles = INTERLEAVED ? VEC / 2 : VEC;
    constexpr int kLaneAngles = HEAD_DIM / 2 / 32;  // distinct angles of a head a lane
    constexpr bool kShare = HEAD_DIM != 0 && HEAD_DIM % 64 == 0 && kAngles > kLaneAngles;
    // no exit and no branch between q's and k's address before the loads: the first load waits
    // on nothing but this address
    T* const element = head_element<Index>(q, k, token, head, heads, j, q_token_stride, q_head_stride,
                                           k_token_stride, k_head_stride);
    Vec<T, VEC> a, b;
    if (active) {
        a = load_vec<T, VEC>(element);
        if constexpr (!INTERLEAVED) b = load_vec<T, VEC>(element + half_dim);
    }
    const int first = INTERLEAVED ? j / 2 : j;
    const float position = static_cast<float>(positions[token]);
    float c[kAngles], s[kAngles];
    if constexpr (kShare) {
        // angle i of this access is angle first + i of the head: slot (first + i) % kLaneAngles of lane
        // (first + i) / kLaneAngles (first is a multiple of kAngles, so of kLaneAngles)
        const int lane = threadIdx.x & 31;
        float frequency[kLaneAngles], own_c[kLaneAngles], own_s[kLaneAngles];
#pragma unroll
        for (int i = 0; i < kLaneAngles; ++i) frequency[i] = inv_freq[lane * kLaneAngles + i];
        angles_cos_sin<kLaneAngles>(position, frequency, own_c, own_s);
#pragma unroll
        for (int i = 0; i < kAngles; ++i) {
            const int from = first / kLaneAngles + i / kLaneAngles;
            c[i] = __shfl_sync(0xffffffffu, own_c[i % kLaneAngles], from);
            s[i] = __shfl_sync(0xffffffffu, own_s[i % kLaneAngles], from);
        }
        if (!active) return;
    } else {
        // Every frequency is loaded before the first sincosf: loaded inside the loop, each load went
        // out only after the previous angle's sincosf (its slow path stores to local memory, which
        // nvcc does not move loads across), kAngles dependent L2 round trips a thread.
        float frequency[kAngles];
#pragma unroll
        for (int i = 0; i < kAngles; ++i) frequency[i] = inv_freq[first + i];
        angles_cos_sin<kAngles>(position, frequency, c, s);
        if (!active) return;
    }
    rotate<T, VEC, INTERLEAVED>(a, b, c, s);
    store_vec<T, VEC>(element, a);
    if constexpr (!INTERLEAVED) store_vec<T, VEC>(element + half_dim, b);
}

// Whether every element offset of q and k fits in an int (the specialised slice kernel's offsets).
bool offsets_fit_int(int tokens, int heads, int kv_heads, int head_dim, int64_t q_token_stride,
                     int64_t q_head_stride, int64_t k_token_stride, int64_t k_head_stride) {
    const int64_t last = static_cast<int64_t>(tokens - 1);
    const int64_t q_end = last * q_token_stride + (heads > 0 ? heads - 1 : 0) * q_head_stride + head_dim;
    const int64_t k_end = last * k_token_stride + (kv_heads > 0 ? kv_heads - 1 : 0) * k_head_stride + head_dim;
    const bool non_negative = q_token_stride >= 0 && q_head_stride >= 0 && k_token_stride >= 0 && k_head_stride >= 0;
    return non_negative && q_end <= INT32_MAX && k_end <= INT32_MAX;
}

// The slice grid with accesses of SLICE_VEC elements: whole heads a block, as many as fit
// kSliceThreads threads, or one head of up to 1024 threads. False where the shape has no such grid.
template <typename T, int SLICE_VEC, bool INTERLEAVED>
bool launch_slices(T* q, T* k, const int64_t* positions, const float* inv_freq, int tokens, int heads,
                   int kv_heads, int head_dim, int64_t q_token_stride, int64_t q_head_stride,
                   int64_t k_token_stride, int64_t k_head_stride, cudaStream_t stream) {
    const int per_head = (INTERLEAVED ? head_dim : head_dim / 2) / SLICE_VEC;
    const int heads_per_block = per_head >= kSliceThreads ? 1 : kSliceThreads / per_head;
    const int slices = (heads + kv_heads + heads_per_block - 1) / heads_per_block;
    if (per_head > 1024 || slices > 65535) return false;
    const int threads = (heads_per_block * per_head + 31) / 32 * 32;
    const bool specialised = head_dim == 128 && offsets_fit_int(tokens, heads, kv_heads, head_dim, q_token_stride,
                                                                q_head_stride, k_token_stride, k_head_stride);
    const auto kernel = specialised ? rope_slice_kernel<T, SLICE_VEC, INTERLEAVED, 128>
                                    : rope_slice_kernel<T, SLICE_VEC, INTERLEAVED, 0>;
    kernel<<<dim3(tokens, slices), threads, 0, stream>>>(q, k, positions, inv_freq, heads, kv_heads, head_dim,
                                                         heads_per_block, q_token_stride, q_head_stride,
                                                         k_token_stride, k_head_stride);
    return true;
}

template <typename T, int VEC, bool INTERLEAVED>
void launch_with_vec(T* q, T* k, const int64_t* positions, const float* inv_freq, int tokens, int heads,
                     int kv_heads, int head_dim, int64_t q_token_stride, int64_t q_head_stride,
                     int64_t k_token_stride, int64_t k_head_stride, cudaStream_t stream) {
    constexpr bool kNarrower = KBENCH_ROPE_SLICE_VEC > 0 && KBENCH_ROPE_SLICE_VEC < VEC &&
                               (!INTERLEAVED || KBENCH_ROPE_SLICE_VEC % 2 == 0);
    constexpr int kSliceVec = kNarrower ? KBENCH_ROPE_SLICE_VEC : VEC;
    constexpr int kOneAngle = INTERLEAVED ? 2 : 1;  // elements an access that hold one angle
    if (tokens < kTinyTokens && launch_slices<T, kOneAngle, INTERLEAVED>(q, k, positions, inv_freq, tokens, heads,
            kv_heads, head_dim, q_token_stride, q_head_stride, k_token_stride, k_head_stride, stream)) {
        return;
    }
    if (tokens < kFewTokens && launch_slices<T, kSliceVec, INTERLEAVED>(q, k, positions, inv_freq, tokens, heads,
            kv_heads, head_dim, q_token_stride, q_head_stride, k_token_stride, k_head_stride, stream)) {
        return;
    }
    rope_kernel<T, VEC, INTERLEAVED><<<tokens, 128, sizeof(float) * head_dim, stream>>>(
        q, k, positions, inv_freq, heads, kv_heads, head_dim, q_token_stride, q_head_stride, k_token_stride,
        k_head_stride);
}

template <typename T, bool INTERLEAVED>
cudaError_t launch_rope_t(void* q, void* k, const int64_t* positions, const float* inv_freq, int tokens, int heads,
                          int kv_heads, int head_dim, int64_t q_token_stride, int64_t q_head_stride,
                          int64_t k_token_stride, int64_t k_head_stride, cudaStream_t stream) {
    if (tokens == 0 || heads + kv_heads == 0) return cudaSuccess;  // (a grid of 0 slices is an error)
    constexpr int kVec = kVec16<T>;
    constexpr int kNarrow = INTERLEAVED ? 2 : 1;
    const int span = INTERLEAVED ? head_dim : head_dim / 2;
    const bool vectorised = span % kVec == 0 && q_token_stride % kVec == 0 && q_head_stride % kVec == 0 &&
                            k_token_stride % kVec == 0 && k_head_stride % kVec == 0 && aligned16(q) && aligned16(k);
    T* qp = static_cast<T*>(q);
    T* kp = static_cast<T*>(k);
    if (vectorised) {
        launch_with_vec<T, kVec, INTERLEAVED>(qp, kp, positions, inv_freq, tokens, heads, kv_heads, head_dim,
                                              q_token_stride, q_head_stride, k_token_stride, k_head_stride, stream);
    } else {
        launch_with_vec<T, kNarrow, INTERLEAVED>(qp, kp, positions, inv_freq, tokens, heads, kv_heads, head_dim,
                                                 q_token_stride, q_head_stride, k_token_stride, k_head_stride,
                                                 stream);
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
