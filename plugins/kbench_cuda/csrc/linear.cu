// linear for decode: out = x @ weight^T for at most kLinearMaxTokens rows of x, rounded once to T.
//
// x: [tokens, in_features], weight: [out_features, in_features], out: [tokens, out_features].
// At a few tokens the product is bound by reading the weight, so every weight row is read once
// for all tokens, in 16-byte accesses that bypass L1 (evict-first: nothing reads them again), with
// kLoads accesses a lane in flight. x is staged once a block in shared memory, so each access of
// the weight is multiplied by every token from there.
//
// Two kernels share that plan:
// - linear_simt_kernel (fp32, and 16-bit below kMmaTokens tokens): a warp takes ROWS whole
//   output rows, its lanes striding in_features; fp32 FMAs, one warp-shuffle sum per (row, token).
// - linear_mma_kernel (16-bit from kMmaTokens tokens): a warp takes 8 output rows and multiplies
//   them by x^T on tensor cores (m16n8k16, fp32 accumulators, tokens padded to 16 rows with zeros).
//   Each lane's 16-byte access of a weight row is a whole B fragment of two products, so no data
//   moves between lanes and the sum over in_features stays in the accumulators. On CUDA cores 8
//   tokens cost ~100 instructions a 16-byte access (conversions, FMAs, shared loads), most of the
//   issue slots an SM has at full bandwidth; here 4.
//
// The grid is persistent, kBlocksPerSm blocks an SM: x is staged once a block, not once per
// few rows, and each warp walks its rows with a stride of the grid's warps. Before staging x a
// warp prefetches its first accesses of the weight into L2, so staging overlaps that latency.
#include "common.cuh"
#include "launchers.h"

namespace kbench {
namespace {

// 16 warps, one block an SM: 16 warps x 32 lanes x 8 accesses = 64 KB of the weight in flight
// an SM, several times what HBM's latency needs, in one staging of x an SM.
#ifndef KBENCH_LINEAR_THREADS
#define KBENCH_LINEAR_THREADS 512
#endif
#ifndef KBENCH_LINEAR_BLOCKS_PER_SM
#define KBENCH_LINEAR_BLOCKS_PER_SM 1
#endif
// 16-byte accesses of the weight a lane issues before using the first (CUDA-core kernel).
#ifndef KBENCH_LINEAR_LOADS
#define KBENCH_LINEAR_LOADS 8
#endif
// The same for the tensor-core kernel, whose warps take 8 rows each (fewer warps have work).
#ifndef KBENCH_LINEAR_MMA_LOADS
#define KBENCH_LINEAR_MMA_LOADS 16
#endif
// Rows a warp of the CUDA-core kernel takes (0: by tokens, 1 up to 2 tokens, 2 up to 4, else 4 in
// fp32 and 2 in 16-bit, whose conversions spill past 128 registers at 4): more rows share each
// shared-memory load and conversion of x.
#ifndef KBENCH_LINEAR_ROWS
#define KBENCH_LINEAR_ROWS 0
#endif
// Fewest tokens that take the tensor-core kernel in 16-bit dtypes (past kLinearMaxTokens: never).
#ifndef KBENCH_LINEAR_MMA_TOKENS
#define KBENCH_LINEAR_MMA_TOKENS 3
#endif
// 1: weight loads evict-first (ld.global.cs); 0: read-only path (ld.global.nc).
#ifndef KBENCH_LINEAR_STREAM
#define KBENCH_LINEAR_STREAM 1
#endif
// 1: each warp prefetches its first accesses into L2 before staging x.
#ifndef KBENCH_LINEAR_PREFETCH
#define KBENCH_LINEAR_PREFETCH 1
#endif

constexpr int kThreads = KBENCH_LINEAR_THREADS;
constexpr int kWarps = kThreads / 32;
constexpr int kBlocksPerSm = KBENCH_LINEAR_BLOCKS_PER_SM;
constexpr int kLoads = KBENCH_LINEAR_LOADS;
constexpr int kMmaLoads = KBENCH_LINEAR_MMA_LOADS;
constexpr int kMmaTokens = KBENCH_LINEAR_MMA_TOKENS;
static_assert(kThreads % 32 == 0 && kThreads <= 1024, "whole warps, at most 1024 threads");

template <typename T, int TOKENS>
constexpr int kSimtRows = KBENCH_LINEAR_ROWS > 0 ? KBENCH_LINEAR_ROWS
                          : TOKENS <= 2                      ? 1
                          : TOKENS <= 4 || kPacked16<T>      ? 2
                                                             : 4;

template <typename T, int VEC>
__device__ __forceinline__ Vec<T, VEC> load_weight(const T* p) {
#if KBENCH_LINEAR_STREAM
    return load_vec_stream<T, VEC>(p);
#else
    if constexpr (sizeof(T) * VEC == 16) {
        const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
        return *reinterpret_cast<const Vec<T, VEC>*>(&raw);
    } else {
        return load_vec<T, VEC>(p);
    }
#endif
}

__device__ __forceinline__ void prefetch_l2(const void* p) {
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}

// x [TOKENS, in_features] (rows x_stride apart) -> xs [TOKENS, in_features], dense. Each thread
// issues kStageBatch loads before its first store: one round trip to L2 for up to 8 x 4096 16-bit.
constexpr int kStageBatch = 8;
template <typename T, int VEC, int TOKENS>
__device__ __forceinline__ void stage_x(T* xs, const T* __restrict__ x, int in_features, int64_t x_stride) {
    const int per_row = in_features / VEC, total = TOKENS * per_row;
    for (int base = threadIdx.x; base < total; base += kThreads * kStageBatch) {
        Vec<T, VEC> v[kStageBatch];
#pragma unroll
        for (int j = 0; j < kStageBatch; ++j) {
            const int i = base + j * kThreads;
            if (i < total) {
                const int token = i / per_row;
                v[j] = load_vec<T, VEC>(x + token * x_stride + (i - token * per_row) * VEC);
            }
        }
#pragma unroll
        for (int j = 0; j < kStageBatch; ++j) {
            const int i = base + j * kThreads;
            if (i < total) store_vec<T, VEC>(xs + static_cast<int64_t>(i) * VEC, v[j]);
        }
    }
}

// The weight row of output `row`, clamped to the last: a warp's rows past out_features read a
// real row (its results are not stored) instead of predicating every access.
template <typename T>
__device__ __forceinline__ const T* weight_row(const T* weight, int row, int out_features, int64_t w_stride) {
    return weight + static_cast<int64_t>(min(row, out_features - 1)) * w_stride;
}

// CUDA cores. Warp w takes rows [ROWS * g, ROWS * g + ROWS) for g = w, w + warps, ...; lane l
// reads elements l * VEC + j * 32 * VEC of each row, UNROLL accesses a row at a time.
template <typename T, int VEC, int TOKENS>
__global__ void __launch_bounds__(kThreads) linear_simt_kernel(const T* __restrict__ x, const T* __restrict__ weight,
                                                               T* __restrict__ out, int in_features, int out_features,
                                                               int64_t x_stride, int64_t w_stride) {
    constexpr int kRows = kSimtRows<T, TOKENS>;
    constexpr int kUnroll = kLoads / kRows > 0 ? kLoads / kRows : 1;
    constexpr int kStep = 32 * VEC;  // elements of a row one access of the warp covers
    static_assert(kRows * TOKENS <= 32, "one lane stores each (row, token) sum");
    extern __shared__ uint4 smem[];
    T* xs = reinterpret_cast<T*>(smem);
    const int lane = threadIdx.x & 31;
    const int warp = blockIdx.x * kWarps + (threadIdx.x >> 5), warps = gridDim.x * kWarps;
    const int groups = (out_features + kRows - 1) / kRows;

    if (KBENCH_LINEAR_PREFETCH && warp < groups) {
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            const T* row = weight_row(weight, warp * kRows + r, out_features, w_stride);
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                const int k = lane * VEC + u * kStep;
                if (k < in_features) prefetch_l2(row + k);
            }
        }
    }
    stage_x<T, VEC, TOKENS>(xs, x, in_features, x_stride);
    __syncthreads();

    for (int group = warp; group < groups; group += warps) {
        const int row0 = group * kRows;
        const T* rows[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) rows[r] = weight_row(weight, row0 + r, out_features, w_stride);
        float acc[kRows][TOKENS];
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
#pragma unroll
            for (int m = 0; m < TOKENS; ++m) acc[r][m] = 0.f;
        }
        for (int k0 = lane * VEC; k0 < in_features; k0 += kStep * kUnroll) {
            Vec<T, VEC> w[kRows][kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
                for (int r = 0; r < kRows; ++r) {
                    if (k0 + u * kStep < in_features) w[r][u] = load_weight<T, VEC>(rows[r] + k0 + u * kStep);
                }
            }
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                const int k = k0 + u * kStep;
                if (k < in_features) {
                    float wf[kRows][VEC];
#pragma unroll
                    for (int r = 0; r < kRows; ++r) {
#pragma unroll
                        for (int e = 0; e < VEC; ++e) wf[r][e] = to_float(w[r][u].v[e]);
                    }
#pragma unroll
                    for (int m = 0; m < TOKENS; ++m) {
                        const Vec<T, VEC> xv = load_vec<T, VEC>(xs + m * in_features + k);
#pragma unroll
                        for (int e = 0; e < VEC; ++e) {
                            const float xe = to_float(xv.v[e]);
#pragma unroll
                            for (int r = 0; r < kRows; ++r) acc[r][m] = fmaf(wf[r][e], xe, acc[r][m]);
                        }
                    }
                }
            }
        }
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
#pragma unroll
            for (int m = 0; m < TOKENS; ++m) {
                const float sum = warp_sum(acc[r][m]);
                if (lane == r * TOKENS + m && row0 + r < out_features) {
                    out[static_cast<int64_t>(m) * out_features + row0 + r] = from_float<T>(sum);
                }
            }
        }
    }
}

// Tensor cores, 16-bit T, in_features a multiple of 8. Warp w takes the 8 rows of tile
// g = w, w + warps, ... as B (in_features x 8, column n = row 8 g + n) of m16n8k16 products
// whose A is x (token m in row m, rows TOKENS..15 zero). In each 32-wide step of in_features,
// lane 4 n + i reads elements 8 i .. 8 i + 7 of weight row n and of x row n: the first 4 are
// its B and A fragments of one product, the last 4 of a second. The fragments' k-order differs
// from memory's, alike for A and B, so the products sum the right pairs. D row m, columns 2 i and
// 2 i + 1 then hold out[m][8 g + 2 i], [.. + 1] in lane 4 m + i.
template <typename T, int TOKENS>
__global__ void __launch_bounds__(kThreads) linear_mma_kernel(const T* __restrict__ x, const T* __restrict__ weight,
                                                              T* __restrict__ out, int in_features, int out_features,
                                                              int64_t x_stride, int64_t w_stride) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();  // never launched there (launch_linear checks the device); the body needs bf16 mma
#else
    static_assert(kPacked16<T>, "the tensor-core kernel takes 16-bit T");
    constexpr int kVec = 8;
    constexpr int kStep = 32;  // elements of a row one access of the warp covers
    extern __shared__ uint4 smem[];
    T* xs = reinterpret_cast<T*>(smem);
    const int lane = threadIdx.x & 31, n = lane >> 2, i = lane & 3;
    const int warp = blockIdx.x * kWarps + (threadIdx.x >> 5), warps = gridDim.x * kWarps;
    const int tiles = (out_features + 7) / 8;

    if (KBENCH_LINEAR_PREFETCH && warp < tiles) {
        const T* row = weight_row(weight, warp * 8 + n, out_features, w_stride);
#pragma unroll
        for (int u = 0; u < kMmaLoads; ++u) {
            const int k = i * kVec + u * kStep;
            if (k < in_features) prefetch_l2(row + k);
        }
    }
    stage_x<T, kVec, TOKENS>(xs, x, in_features, x_stride);
    __syncthreads();

    const bool has_token = n < TOKENS;
    const T* x_row = xs + (has_token ? n : 0) * in_features;
    for (int tile = warp; tile < tiles; tile += warps) {
        const T* row = weight_row(weight, tile * 8 + n, out_features, w_stride);
        float d[4] = {0.f, 0.f, 0.f, 0.f};
        // k0 is the same in every lane: mma.sync needs the whole warp
        for (int k0 = 0; k0 < in_features; k0 += kStep * kMmaLoads) {
            uint4 w[kMmaLoads];
#pragma unroll
            for (int u = 0; u < kMmaLoads; ++u) {
                const int k = k0 + u * kStep + i * kVec;
                const Vec<T, kVec> v = k < in_features ? load_weight<T, kVec>(row + k) : Vec<T, kVec>{};
                w[u] = *reinterpret_cast<const uint4*>(&v);
            }
#pragma unroll
            for (int u = 0; u < kMmaLoads; ++u) {
                const int k = k0 + u * kStep + i * kVec;
                uint4 a = make_uint4(0u, 0u, 0u, 0u);
                if (has_token && k < in_features) a = *reinterpret_cast<const uint4*>(x_row + k);
                mma_16816<T>(d, a.x, 0u, a.y, 0u, w[u].x, w[u].y);
                mma_16816<T>(d, a.z, 0u, a.w, 0u, w[u].z, w[u].w);
            }
        }
        const int col = tile * 8 + 2 * i;
        if (has_token) {
            T* dst = out + static_cast<int64_t>(n) * out_features + col;
            if (col < out_features) dst[0] = from_float<T>(d[0]);
            if (col + 1 < out_features) dst[1] = from_float<T>(d[1]);
        }
    }
#endif
}

// What launches need of a device, asked once.
struct DeviceInfo {
    int multiprocessors = 0, smem_optin = 0, major = 0;
};

cudaError_t device_info(int device, DeviceInfo* info) {
    static DeviceInfo cache[kMaxDevices];
    if (device < kMaxDevices && cache[device].multiprocessors > 0) {
        *info = cache[device];
        return cudaSuccess;
    }
    DeviceInfo fresh;
    cudaError_t err = cudaDeviceGetAttribute(&fresh.multiprocessors, cudaDevAttrMultiProcessorCount, device);
    if (err == cudaSuccess) {
        err = cudaDeviceGetAttribute(&fresh.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    }
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&fresh.major, cudaDevAttrComputeCapabilityMajor, device);
    if (err != cudaSuccess) return err;
    if (device < kMaxDevices) cache[device] = fresh;
    *info = fresh;
    return cudaSuccess;
}

// Opts `kernel` in to the device's whole shared memory once, the first time a launch needs
// more than the default 48 KB (not inside a graph capture's first call: tests call eagerly first).
cudaError_t allow_smem(const void* kernel, int device, const DeviceInfo& info, size_t smem,
                       bool (&granted)[kMaxDevices]) {
    constexpr size_t kDefaultSmem = 48 * 1024;
    if (smem <= kDefaultSmem || (device < kMaxDevices && granted[device])) return cudaSuccess;
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, info.smem_optin);
    if (err == cudaSuccess && device < kMaxDevices) granted[device] = true;
    return err;
}

struct LinearArgs {
    const void* x;
    const void* weight;
    void* out;
    int in_features, out_features;
    int64_t x_stride, w_stride;
};

// Blocks for `tasks` warp tasks: the persistent grid, or fewer where the tasks run out.
int grid_blocks(const DeviceInfo& info, int tasks) {
    const int needed = (tasks + kWarps - 1) / kWarps;
    const int resident = info.multiprocessors * kBlocksPerSm;
    return needed < resident ? needed : resident;
}

template <typename T, int VEC, int TOKENS>
cudaError_t launch_simt(const LinearArgs& a, int device, const DeviceInfo& info, size_t smem, cudaStream_t stream) {
    static bool granted[kMaxDevices] = {};
    const auto kernel = linear_simt_kernel<T, VEC, TOKENS>;
    cudaError_t err = allow_smem(reinterpret_cast<const void*>(kernel), device, info, smem, granted);
    if (err != cudaSuccess) return err;
    constexpr int kRows = kSimtRows<T, TOKENS>;
    const int blocks = grid_blocks(info, (a.out_features + kRows - 1) / kRows);
    kernel<<<blocks, kThreads, smem, stream>>>(static_cast<const T*>(a.x), static_cast<const T*>(a.weight),
                                               static_cast<T*>(a.out), a.in_features, a.out_features, a.x_stride,
                                               a.w_stride);
    return cudaGetLastError();
}

template <typename T, int TOKENS>
cudaError_t launch_mma(const LinearArgs& a, int device, const DeviceInfo& info, size_t smem, cudaStream_t stream) {
    static bool granted[kMaxDevices] = {};
    const auto kernel = linear_mma_kernel<T, TOKENS>;
    cudaError_t err = allow_smem(reinterpret_cast<const void*>(kernel), device, info, smem, granted);
    if (err != cudaSuccess) return err;
    const int blocks = grid_blocks(info, (a.out_features + 7) / 8);
    kernel<<<blocks, kThreads, smem, stream>>>(static_cast<const T*>(a.x), static_cast<const T*>(a.weight),
                                               static_cast<T*>(a.out), a.in_features, a.out_features, a.x_stride,
                                               a.w_stride);
    return cudaGetLastError();
}

template <typename T, int TOKENS>
cudaError_t launch_tokens(const LinearArgs& a, cudaStream_t stream) {
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    DeviceInfo info;
    if (err == cudaSuccess) err = device_info(device, &info);
    if (err != cudaSuccess) return err;
    const size_t smem = static_cast<size_t>(TOKENS) * a.in_features * sizeof(T);
    if (smem > static_cast<size_t>(info.smem_optin)) return cudaErrorInvalidValue;
    constexpr int kVec = kVec16<T>;
    // 16-byte accesses need 16-byte aligned rows of x (staged) and of the weight
    const bool whole = a.in_features % kVec == 0 && a.x_stride % kVec == 0 && a.w_stride % kVec == 0 &&
                       aligned16(a.x) && aligned16(a.weight);
    if constexpr (kPacked16<T> && TOKENS >= kMmaTokens) {
        if (whole && info.major >= 8) return launch_mma<T, TOKENS>(a, device, info, smem, stream);
    }
    if (whole) return launch_simt<T, kVec, TOKENS>(a, device, info, smem, stream);
    return launch_simt<T, 1, TOKENS>(a, device, info, smem, stream);
}

template <typename T>
cudaError_t launch_linear_t(const LinearArgs& a, int tokens, cudaStream_t stream) {
    switch (tokens) {
        case 1: return launch_tokens<T, 1>(a, stream);
        case 2: return launch_tokens<T, 2>(a, stream);
        case 3: return launch_tokens<T, 3>(a, stream);
        case 4: return launch_tokens<T, 4>(a, stream);
        case 5: return launch_tokens<T, 5>(a, stream);
        case 6: return launch_tokens<T, 6>(a, stream);
        case 7: return launch_tokens<T, 7>(a, stream);
        case 8: return launch_tokens<T, 8>(a, stream);
        default: return cudaErrorInvalidValue;
    }
}
static_assert(kLinearMaxTokens == 8, "launch_linear_t instantiates 1..kLinearMaxTokens tokens");

}  // namespace

cudaError_t launch_linear(const void* x, const void* weight, void* out, int tokens, int in_features, int out_features,
                          int64_t x_stride, int64_t w_stride, DType dtype, cudaStream_t stream) {
    if (tokens == 0 || out_features == 0) return cudaSuccess;
    const LinearArgs args{x, weight, out, in_features, out_features, x_stride, w_stride};
    KBENCH_DISPATCH_FLOAT(dtype, return launch_linear_t<scalar_t>(args, tokens, stream));
    return cudaSuccess;
}

}  // namespace kbench
