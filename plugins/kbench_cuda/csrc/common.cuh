// Shared device helpers of the kbench CUDA kernels: dtype conversion, 16-byte vectors,
// warp and block reductions, and the dtype dispatch the plain C++ launchers use.
// Only CUDA headers here, so every .cu file compiles without torch (CI checks that).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

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

// Round a float to T and back: what a torch op computing in T does to an intermediate.
template <typename T>
__device__ __forceinline__ float round_to(float v) { return to_float(from_float<T>(v)); }

// N elements of T moved with one access of N * sizeof(T) bytes (16 for the full width).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
    T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
    return *reinterpret_cast<const Vec<T, N>*>(p);
}

// Evict-first load (`ld.global.cs`) for data read once and too large to stay in L2 (the KV
// cache a decode step streams). Activations go through load_vec: the next op reads them while
// they are still in L2 (on the H100 plain loads took rmsnorm at 1024 x 8192 from 10.5 to 9.6 us
// and swiglu at 1024 x 28672 from 64.4 to 61.4, scripts/device/cuda_variants.py).
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
