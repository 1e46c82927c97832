// Shared device helpers of the kbench CUDA kernels: dtype conversion, 16-byte vectors,
// warp and block reductions, and the dtype dispatch the plain C++ launchers use.
// Only CUDA headers here, so every .cu file compiles without torch (CI checks that).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "launchers.h"

namespace kbench {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// N elements of T moved with one access of N * sizeof(T) bytes (16 for the full width).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
    T v[N];
};

// Two elements of a 16-bit T as one register (__nv_bfloat162 or __half2), and two floats
// rounded to it with one instruction (F2FP).
template <typename T>
using Pair = std::conditional_t<std::is_same_v<T, __half>, __half2, __nv_bfloat162>;
__device__ __forceinline__ __nv_bfloat162 to_pair(float a, float b, __nv_bfloat162) {
    return __floats2bfloat162_rn(a, b);
}
__device__ __forceinline__ __half2 to_pair(float a, float b, __half2) { return __floats2half2_rn(a, b); }
template <typename T>
constexpr bool kPacked16 = std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>;

// N floats rounded to T, two at a time where T is 16-bit (one F2FP instruction a pair, where
// element by element takes a conversion each and a PRMT to pack; the same round-to-nearest-even).
template <typename T, int N>
__device__ __forceinline__ Vec<T, N> to_vec(const float* values) {
    Vec<T, N> out;
    if constexpr (kPacked16<T> && N % 2 == 0) {
#pragma unroll
        for (int i = 0; i < N; i += 2) {
            *reinterpret_cast<Pair<T>*>(&out.v[i]) = to_pair(values[i], values[i + 1], Pair<T>{});
        }
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) out.v[i] = from_float<T>(values[i]);
    }
    return out;
}

// a (op) b element by element, rounded to T as torch rounds a 16-bit op computed in fp32. For
// bf16 and half `packed` works on pairs and gives the same values: a sum, difference or product
// of two T values rounded once to T equals it rounded to fp32 first (fp32 has at least 2p + 2
// bits for either type's p, so the double rounding is innocuous; a product of two T values is
// exact in fp32). It takes one instruction a pair, where fp32 takes two conversions in, one out
// and a pack an element.
template <typename T, int N, typename Packed, typename Scalar>
__device__ __forceinline__ Vec<T, N> elementwise(const Vec<T, N>& a, const Vec<T, N>& b, Packed packed,
                                                 Scalar scalar) {
    Vec<T, N> out;
    if constexpr (kPacked16<T> && N % 2 == 0) {
#pragma unroll
        for (int i = 0; i < N; i += 2) {
            *reinterpret_cast<Pair<T>*>(&out.v[i]) =
                packed(*reinterpret_cast<const Pair<T>*>(&a.v[i]), *reinterpret_cast<const Pair<T>*>(&b.v[i]));
        }
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) out.v[i] = from_float<T>(scalar(to_float(a.v[i]), to_float(b.v[i])));
    }
    return out;
}

// The _rn forms (and __fmul_rn and friends) are never contracted with a neighbouring op into an
// fma: nvcc fused rope's __hmul2 and __hsub2 into one HFMA2, which skips the rounding of the
// product that torch makes (23% of random bf16 outputs then differ from HF's by an ulp).
template <typename T, int N>
__device__ __forceinline__ Vec<T, N> add_vec(const Vec<T, N>& a, const Vec<T, N>& b) {
    return elementwise(a, b, [](auto x, auto y) { return __hadd2_rn(x, y); },
                       [](float x, float y) { return __fadd_rn(x, y); });
}

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> sub_vec(const Vec<T, N>& a, const Vec<T, N>& b) {
    return elementwise(a, b, [](auto x, auto y) { return __hsub2_rn(x, y); },
                       [](float x, float y) { return __fsub_rn(x, y); });
}

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> mul_vec(const Vec<T, N>& a, const Vec<T, N>& b) {
    return elementwise(a, b, [](auto x, auto y) { return __hmul2_rn(x, y); },
                       [](float x, float y) { return __fmul_rn(x, y); });
}

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
    return *reinterpret_cast<const Vec<T, N>*>(p);
}

// Evict-first load (`ld.global.cs`) for data read once and too large to stay in L2 (the KV
// cache a decode step streams). Activations go through load_vec: the next op reads them while
// they are still in L2.
template <typename T, int N>
__device__ __forceinline__ Vec<T, N> load_vec_stream(const T* p) {
    Vec<T, N> out;
    if constexpr (sizeof(T) * N == 16) {
        uint4 raw = __ldcs(reinterpret_cast<const uint4*>(p));
        out = *reinterpret_cast<Vec<T, N>*>(&raw);
    } else {
        out = *reinterpret_cast<const Vec<T, N>*>(p);
    }
    return out;
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& value) {
    *reinterpret_cast<Vec<T, N>*>(p) = value;
}

// Elements of T in one 16-byte access.
template <typename T>
constexpr int kVec16 = 16 / static_cast<int>(sizeof(T));

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Sum over the block, returned to every thread. `scratch` holds 32 floats; blockDim.x is
// a multiple of 32. The leading barrier makes back-to-back calls safe on one scratch.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

// d += a * b, one m16n8k16 tensor-core product of 16-bit T with fp32 accumulators (sm_80 on).
// Fragments as the PTX ISA's "Matrix Fragments for mma.m16n8k16": lane = 4 * group + i holds A's
// rows group and group + 8, B's column group and D's row group (d0, d1) and group + 8 (d2, d3).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                          uint32_t b0, uint32_t b1) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    } else {
        static_assert(std::is_same_v<T, __half>, "mma_16816 takes bfloat16 or float16");
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace kbench

// Runs `__VA_ARGS__` with `scalar_t` bound to the C++ type of `dtype`.
#define KBENCH_DISPATCH_FLOAT(dtype, ...)                         \
    switch (dtype) {                                              \
        case ::kbench::DType::kFloat32: {                         \
            using scalar_t = float;                               \
            __VA_ARGS__;                                          \
            break;                                                \
        }                                                         \
        case ::kbench::DType::kFloat16: {                         \
            using scalar_t = __half;                              \
            __VA_ARGS__;                                          \
            break;                                                \
        }                                                         \
        case ::kbench::DType::kBFloat16: {                        \
            using scalar_t = __nv_bfloat16;                       \
            __VA_ARGS__;                                          \
            break;                                                \
        }                                                         \
        default:                                                  \
            return cudaErrorInvalidValue;                         \
    }
