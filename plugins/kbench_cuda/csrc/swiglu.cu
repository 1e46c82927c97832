// swiglu: out = silu(gate) * up, 16-byte accesses, several in flight per thread.
//
// Rounded as the reference `F.silu(gate) * up` in T: silu in fp32 rounded to T, then the
// product of the two T values in fp32 rounded to T.
#include "common.cuh"
#include "launchers.h"

namespace kbench {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;  // accesses per thread: four 16-byte loads of each input in flight

template <typename T>
__device__ __forceinline__ T swiglu_one(T gate, T up) {
    const float g = to_float(gate);
    const float silu = round_to<T>(g / (1.f + expf(-g)));
    return from_float<T>(silu * to_float(up));
}

template <typename T, int VEC>
__global__ void swiglu_kernel(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out,
                              int64_t vectors) {
    const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads * kUnroll + threadIdx.x;
    Vec<T, VEC> g[kUnroll], u[kUnroll];
#pragma unroll
    for (int i = 0; i < kUnroll; ++i) {
        const int64_t index = first + i * kThreads;
        if (index < vectors) {
            g[i] = load_vec_stream<T, VEC>(gate + index * VEC);
            u[i] = load_vec_stream<T, VEC>(up + index * VEC);
        }
    }
#pragma unroll
    for (int i = 0; i < kUnroll; ++i) {
        const int64_t index = first + i * kThreads;
        if (index < vectors) {
            Vec<T, VEC> o;
#pragma unroll
            for (int e = 0; e < VEC; ++e) o.v[e] = swiglu_one(g[i].v[e], u[i].v[e]);
            store_vec<T, VEC>(out + index * VEC, o);
        }
    }
}

template <typename T>
cudaError_t launch_swiglu_t(const void* gate, const void* up, void* out, int64_t elements, cudaStream_t stream) {
    if (elements == 0) return cudaSuccess;
    constexpr int kVec = kVec16<T>;
    const T* gp = static_cast<const T*>(gate);
    const T* up_p = static_cast<const T*>(up);
    T* op = static_cast<T*>(out);
    const int64_t per_block = static_cast<int64_t>(kThreads) * kUnroll;
    if (elements % kVec == 0 && aligned16(gate) && aligned16(up) && aligned16(out)) {
        const int64_t vectors = elements / kVec;
        swiglu_kernel<T, kVec><<<(vectors + per_block - 1) / per_block, kThreads, 0, stream>>>(gp, up_p, op, vectors);
    } else {
        swiglu_kernel<T, 1><<<(elements + per_block - 1) / per_block, kThreads, 0, stream>>>(gp, up_p, op, elements);
    }
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_swiglu(const void* gate, const void* up, void* out, int64_t elements, DType dtype,
                          cudaStream_t stream) {
    KBENCH_DISPATCH_FLOAT(dtype, return launch_swiglu_t<scalar_t>(gate, up, out, elements, stream));
    return cudaSuccess;
}

}  // namespace kbench
