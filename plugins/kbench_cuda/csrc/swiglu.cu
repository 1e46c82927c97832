// swiglu: out = silu(gate) * up, 16-byte accesses, several in flight per thread.
//
// Rounded as the reference `F.silu(gate) * up` in T: silu in fp32 rounded to T, then the
// product of the two T values in fp32 rounded to T.
#include "common.cuh"
#include "launchers.h"

namespace kbench {
namespace {

// Large tensors: 256 threads a block, four 16-byte loads of each input in flight a thread.
#ifndef KBENCH_SWIGLU_THREADS
#define KBENCH_SWIGLU_THREADS 256
#endif
#ifndef KBENCH_SWIGLU_UNROLL
#define KBENCH_SWIGLU_UNROLL 4
#endif
#ifndef KBENCH_SWIGLU_SMALL_THREADS
#define KBENCH_SWIGLU_SMALL_THREADS 64
#endif
constexpr int kThreads = KBENCH_SWIGLU_THREADS;
constexpr int kUnroll = KBENCH_SWIGLU_UNROLL;
// Below two such blocks per SM (270,336 accesses on a 132-SM H100, ~196 tokens of 11008 in
// bf16) the grid of 1024-access blocks leaves SMs idle: one token of 11008 was 2 blocks,
// streamed by 2 SMs. There blocks of 64 threads, one access each: one token of 11008 is 22
// blocks, and at the threshold the 64-thread blocks are the 32 each SM holds at once, so the
// small grid is never more than one wave (2048 threads x 32 bytes in flight an SM, enough to
// cover HBM latency).
constexpr int kSmallThreads = KBENCH_SWIGLU_SMALL_THREADS;
constexpr int64_t kSmallAccessesPerSm = 2 * kThreads * kUnroll;

template <typename T>
__device__ __forceinline__ T swiglu_one(T gate, T up) {
    const float g = to_float(gate);
    const float silu = round_to<T>(g / (1.f + expf(-g)));
    return from_float<T>(silu * to_float(up));
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
            g[i] = load_vec_stream<T, VEC>(gate + index * VEC);
            u[i] = load_vec_stream<T, VEC>(up + index * VEC);
        }
    }
#pragma unroll
    for (int i = 0; i < UNROLL; ++i) {
        const int64_t index = first + i * THREADS;
        if (index < vectors) {
            Vec<T, VEC> o;
#pragma unroll
            for (int e = 0; e < VEC; ++e) o.v[e] = swiglu_one(g[i].v[e], u[i].v[e]);
            store_vec<T, VEC>(out + index * VEC, o);
        }
    }
}

// `vectors` accesses of VEC elements.
template <typename T, int VEC>
void launch_with_vec(const T* gate, const T* up, T* out, int64_t vectors, int multiprocessors, cudaStream_t stream) {
    if (vectors < kSmallAccessesPerSm * multiprocessors) {
        const int64_t blocks = (vectors + kSmallThreads - 1) / kSmallThreads;
        swiglu_kernel<T, VEC, kSmallThreads, 1><<<blocks, kSmallThreads, 0, stream>>>(gate, up, out, vectors);
        return;
    }
    const int64_t per_block = static_cast<int64_t>(kThreads) * kUnroll;
    swiglu_kernel<T, VEC, kThreads, kUnroll><<<(vectors + per_block - 1) / per_block, kThreads, 0, stream>>>(
        gate, up, out, vectors);
}

template <typename T>
cudaError_t launch_swiglu_t(const void* gate, const void* up, void* out, int64_t elements, cudaStream_t stream) {
    if (elements == 0) return cudaSuccess;
    constexpr int kVec = kVec16<T>;
    const T* gp = static_cast<const T*>(gate);
    const T* up_p = static_cast<const T*>(up);
    T* op = static_cast<T*>(out);
    int multiprocessors = 0;
    const cudaError_t err = multiprocessor_count(&multiprocessors);
    if (err != cudaSuccess) return err;
    if (elements % kVec == 0 && aligned16(gate) && aligned16(up) && aligned16(out)) {
        launch_with_vec<T, kVec>(gp, up_p, op, elements / kVec, multiprocessors, stream);
    } else {
        launch_with_vec<T, 1>(gp, up_p, op, elements, multiprocessors, stream);
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
