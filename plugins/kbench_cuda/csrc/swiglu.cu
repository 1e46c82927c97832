// swiglu: out = silu(gate) * up, vectorised accesses (KBENCH_SWIGLU_VEC elements).
//
// Rounded as the reference `F.silu(gate) * up` in T: silu in fp32 rounded to T, then the
// product of the two T values in fp32 rounded to T.
#include "common.cuh"
#include "launchers.h"

namespace kbench {
namespace {

// Blocks of 256 threads, one access of 4 elements of each input a thread (8 bytes in 16-bit
// types): near the shape Inductor gives this pointwise kernel (256 threads of 2 elements at
// 128 x 11008), and faster than both 128 threads of 16-byte accesses and 2-element accesses at
// few tokens (see docs/kernels.md).
#ifndef KBENCH_SWIGLU_THREADS
#define KBENCH_SWIGLU_THREADS 256
#endif
#ifndef KBENCH_SWIGLU_UNROLL
#define KBENCH_SWIGLU_UNROLL 1
#endif
// Elements an access, at most 16 bytes' worth.
#ifndef KBENCH_SWIGLU_VEC
#define KBENCH_SWIGLU_VEC 4
#endif
constexpr int kThreads = KBENCH_SWIGLU_THREADS;
constexpr int kUnroll = KBENCH_SWIGLU_UNROLL;
// 1: silu through __expf and __fdividef, as Triton's sigmoid is computed (ex2.approx and an
// approximate division: a few ulp in fp32, almost always the same value once rounded to a 16-bit
// T, within every dtype's tolerance) instead of expf and an IEEE division. Where the data sits in
// L2 the kernel is bound by those instructions, not by bytes.
#ifndef KBENCH_FAST_SILU
#define KBENCH_FAST_SILU 1
#endif

// silu(gate) in fp32; the caller rounds it to T.
__device__ __forceinline__ float silu(float g) {
#if KBENCH_FAST_SILU
    return __fdividef(g, 1.f + __expf(-g));
#else
    return g / (1.f + expf(-g));
#endif
}

// THREADS threads a block, UNROLL accesses of VEC elements a thread, THREADS apart.
template <typename T, int VEC, int THREADS, int UNROLL>
__global__ void swiglu_kernel(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out,
                              int64_t vectors) {
    const int64_t first = static_cast<int64_t>(blockIdx.x) * THREADS * UNROLL + threadIdx.x;
    Vec<T, VEC> g[UNROLL], u[UNROLL];
#pragma unroll
    for (int i = 0; i < UNROLL; ++i) {
        const int64_t index = first + i * THREADS;
        if (index < vectors) {
            g[i] = load_vec<T, VEC>(gate + index * VEC);
            u[i] = load_vec<T, VEC>(up + index * VEC);
        }
    }
#pragma unroll
    for (int i = 0; i < UNROLL; ++i) {
        const int64_t index = first + i * THREADS;
        if (index < vectors) {
            float activated[VEC];
#pragma unroll
            for (int e = 0; e < VEC; ++e) activated[e] = silu(to_float(g[i].v[e]));
            store_vec<T, VEC>(out + index * VEC, mul_vec<T, VEC>(to_vec<T, VEC>(activated), u[i]));
        }
    }
}

// `vectors` accesses of VEC elements.
template <typename T, int VEC>
void launch_with_vec(const T* gate, const T* up, T* out, int64_t vectors, cudaStream_t stream) {
    const int64_t per_block = static_cast<int64_t>(kThreads) * kUnroll;
    swiglu_kernel<T, VEC, kThreads, kUnroll><<<(vectors + per_block - 1) / per_block, kThreads, 0, stream>>>(
        gate, up, out, vectors);
}

template <typename T>
cudaError_t launch_swiglu_t(const void* gate, const void* up, void* out, int64_t elements, cudaStream_t stream) {
    if (elements == 0) return cudaSuccess;
    constexpr int kVec = KBENCH_SWIGLU_VEC < kVec16<T> ? KBENCH_SWIGLU_VEC : kVec16<T>;
    const T* gp = static_cast<const T*>(gate);
    const T* up_p = static_cast<const T*>(up);
    T* op = static_cast<T*>(out);
    if (elements % kVec == 0 && aligned16(gate) && aligned16(up) && aligned16(out)) {
        launch_with_vec<T, kVec>(gp, up_p, op, elements / kVec, stream);
    } else {
        launch_with_vec<T, 1>(gp, up_p, op, elements, stream);
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
