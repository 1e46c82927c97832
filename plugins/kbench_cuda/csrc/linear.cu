// linear for decode: out = x @ weight^T (+ bias) for at most kLinearMaxTokens rows of x, summed in
// fp32 (the bias too) and rounded once to T, as cuBLAS's bias epilogue.
//
// x: [tokens, in_features], weight: [out_features, in_features], bias: [out_features] or null,
// out: [tokens, out_features].
// At a few tokens the product is bound by reading the weight, so every weight row is read once
// for all tokens, in 16-byte evict-first accesses (nothing reads them again), several a lane in
// flight. x is staged once a block in shared memory and each access of the weight is multiplied
// by every token from there; sums are fp32.
//
// Two kernels share that plan:
// - linear_mma_kernel (16-bit): a team of 1-4 warps takes 8 output rows and multiplies them by x^T
//   on tensor cores (m16n8k16, tokens padded to 16 rows with zeros), each warp over a slice of
//   in_features. Each lane's 16-byte access of a weight row is a whole B fragment of two products,
//   so nothing moves between lanes and the sum over in_features stays in the accumulators. On CUDA
//   cores 4 or more tokens cost more instructions a 16-byte access than an SM can issue at full
//   bandwidth (see docs/kernels.md).
// - linear_simt_kernel (fp32, and 16-bit rows that are not 16-byte aligned): a warp takes kRows
//   whole output rows, its lanes striding in_features; fp32 FMAs, one warp-shuffle sum per (row,
//   token).
//
// The grid is persistent, kBlocksPerSm blocks an SM: x is staged once a block, not once per
// few rows; tasks are dealt round-robin across the blocks, so every SM has work, and each warp
// walks its rows with a stride of the grid's warps. Before staging x a warp prefetches its first
// accesses of the weight into L2, so staging overlaps that latency.
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
// The same for the tensor-core kernel, in each of its two buffers (one in flight while the other
// is multiplied).
#ifndef KBENCH_LINEAR_MMA_LOADS
#define KBENCH_LINEAR_MMA_LOADS 8
#endif
// Rows a warp of the CUDA-core kernel takes: each shared-memory load of x serves them all, but
// fewer warps have rows (see docs/kernels.md).
#ifndef KBENCH_LINEAR_ROWS
#define KBENCH_LINEAR_ROWS 2
#endif
// Fewest tokens that take the tensor-core kernel in 16-bit dtypes (past kLinearMaxTokens: never,
// the CUDA-core kernel then takes them).
#ifndef KBENCH_LINEAR_MMA_TOKENS
#define KBENCH_LINEAR_MMA_TOKENS 1
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
constexpr int kRows = KBENCH_LINEAR_ROWS;
static_assert(kThreads % 32 == 0 && kThreads <= 1024, "whole warps, at most 1024 threads");

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

// CUDA cores. Warp w takes rows [kRows * g, kRows * g + kRows) for g = w, w + warps, ...; lane l
// reads elements l * VEC + j * 32 * VEC of each row, kUnroll accesses a row at a time.
template <typename T, int VEC, int TOKENS>
__global__ void __launch_bounds__(kThreads) linear_simt_kernel(const T* __restrict__ x, const T* __restrict__ weight,
                                                               const T* __restrict__ bias, T* __restrict__ out,
                                                               int in_features, int out_features, int64_t x_stride,
                                                               int64_t w_stride) {
    constexpr int kUnroll = kLoads / kRows > 0 ? kLoads / kRows : 1;
    constexpr int kStep = 32 * VEC;  // elements of a row one access of the warp covers
    static_assert(kRows * TOKENS <= 32, "one lane stores each (row, token) sum");
    extern __shared__ uint4 smem[];
    T* xs = reinterpret_cast<T*>(smem);
    const int lane = threadIdx.x & 31;
    const int warp = (threadIdx.x >> 5) * gridDim.x + blockIdx.x, warps = gridDim.x * kWarps;  // dealt across blocks
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
                    const float b = bias ? to_float(bias[row0 + r]) : 0.f;
                    out[static_cast<int64_t>(m) * out_features + row0 + r] = from_float<T>(sum + b);
                }
            }
        }
    }
}

// The tensor-core kernel: chains of dependent mma a warp interleaves, and the most warps that
// split one tile's in_features (a power of two; more where tiles alone leave warps idle).
constexpr int kMmaChains = 4;
constexpr int kMaxSplits = 4;
constexpr int kMmaStep = 32;                     // elements of a row one access of the warp covers
[[maybe_unused]] constexpr int kMmaBatch = kMmaStep * kMmaLoads;  // elements of a row one batch of accesses covers
// Shared memory ahead of x: each warp's two partial sums a lane, for splits > 1.
constexpr int kPartialBytes = kWarps * 32 * static_cast<int>(sizeof(float2));

// One batch of a lane's weight accesses, from element k of its row (zero past k_end).
template <typename T>
__device__ __forceinline__ void load_batch(uint4 (&w)[kMmaLoads], const T* row, int k, int k_end) {
#pragma unroll
    for (int u = 0; u < kMmaLoads; ++u) {
        const int kk = k + u * kMmaStep;
        const Vec<T, 8> v = kk < k_end ? load_weight<T, 8>(row + kk) : Vec<T, 8>{};
        w[u] = *reinterpret_cast<const uint4*>(&v);
    }
}

// The products of one batch: each access and the same 8 elements of x (zero for padding tokens and
// past k_end) make two m16n8k16 products, into two of the independent chains.
template <typename T>
__device__ __forceinline__ void mma_batch(float (&d)[kMmaChains][4], const uint4 (&w)[kMmaLoads], const T* x_row,
                                          bool has_token, int k, int k_end) {
#pragma unroll
    for (int u = 0; u < kMmaLoads; ++u) {
        const int kk = k + u * kMmaStep;
        uint4 a = make_uint4(0u, 0u, 0u, 0u);
        if (has_token && kk < k_end) a = *reinterpret_cast<const uint4*>(x_row + kk);
        mma_16816<T>(d[(2 * u) % kMmaChains], a.x, 0u, a.y, 0u, w[u].x, w[u].y);
        mma_16816<T>(d[(2 * u + 1) % kMmaChains], a.z, 0u, a.w, 0u, w[u].z, w[u].w);
    }
}

// The `splits` warps of team `team` wait for each other (named barrier 1 + team; 0 is __syncthreads).
[[maybe_unused]] __device__ __forceinline__ void team_barrier(int team, int splits) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(1 + team), "r"(splits * 32) : "memory");
}

// Tensor cores, 16-bit T, in_features a multiple of 8. A team of `splits` warps takes the 8 rows
// of tile g = team, team + teams, ... as B (in_features x 8, column n = row 8 g + n) of m16n8k16
// products whose A is x (token m in row m, rows TOKENS..15 zero); warp s of the team takes slice s
// of in_features, and the team sums its partials through shared memory. In each 32-wide step,
// lane 4 n + i reads elements 8 i .. 8 i + 7 of weight row n and of x row n: the first 4 are its B
// and A fragments of one product, the last 4 of a second. The fragments' k-order differs from
// memory's, alike for A and B, so the products sum the right pairs. D row m, columns 2 i and
// 2 i + 1 then hold out[m][8 g + 2 i], [.. + 1] in lane 4 m + i. Loads are double-buffered: a
// batch is in flight while the previous one is multiplied.
template <typename T, int TOKENS>
__global__ void __launch_bounds__(kThreads) linear_mma_kernel(const T* __restrict__ x, const T* __restrict__ weight,
                                                              const T* __restrict__ bias, T* __restrict__ out,
                                                              int in_features, int out_features, int64_t x_stride,
                                                              int64_t w_stride, int splits) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();  // never launched there (launch_linear checks the device); the body needs bf16 mma
#else
    static_assert(kPacked16<T>, "the tensor-core kernel takes 16-bit T");
    extern __shared__ uint4 smem[];
    float2* partials = reinterpret_cast<float2*>(smem);
    T* xs = reinterpret_cast<T*>(smem + kPartialBytes / sizeof(uint4));
    const int lane = threadIdx.x & 31, n = lane >> 2, i = lane & 3;
    const int warp = threadIdx.x >> 5, slice = warp % splits, team = warp / splits;
    const int first_tile = team * gridDim.x + blockIdx.x, tile_stride = gridDim.x * (kWarps / splits);
    const int tiles = (out_features + 7) / 8;
    // this warp's slice of in_features: whole steps, the last slice takes what remains
    const int per_slice = ((in_features + splits - 1) / splits + kMmaStep - 1) / kMmaStep * kMmaStep;
    const int k_begin = min(slice * per_slice, in_features), k_end = min(k_begin + per_slice, in_features);
    const int lane_k = k_begin + i * 8;

    if (KBENCH_LINEAR_PREFETCH && first_tile < tiles) {
        const T* row = weight_row(weight, first_tile * 8 + n, out_features, w_stride);
#pragma unroll
        for (int u = 0; u < kMmaLoads; ++u) {
            if (lane_k + u * kMmaStep < k_end) prefetch_l2(row + lane_k + u * kMmaStep);
        }
    }
    stage_x<T, 8, TOKENS>(xs, x, in_features, x_stride);
    __syncthreads();

    const bool has_token = n < TOKENS;
    const T* x_row = xs + (has_token ? n : 0) * in_features;
    for (int tile = first_tile; tile < tiles; tile += tile_stride) {
        const T* row = weight_row(weight, tile * 8 + n, out_features, w_stride);
        float d[kMmaChains][4] = {};
        uint4 wa[kMmaLoads], wb[kMmaLoads];
        load_batch<T>(wa, row, lane_k, k_end);
        // k is the same in every lane of the warp: mma.sync needs the whole warp
        for (int k = 0; k_begin + k < k_end; k += 2 * kMmaBatch) {
            const bool second = k_begin + k + kMmaBatch < k_end;
            if (second) load_batch<T>(wb, row, lane_k + k + kMmaBatch, k_end);
            mma_batch<T>(d, wa, x_row, has_token, lane_k + k, k_end);
            if (second) {
                if (k_begin + k + 2 * kMmaBatch < k_end) load_batch<T>(wa, row, lane_k + k + 2 * kMmaBatch, k_end);
                mma_batch<T>(d, wb, x_row, has_token, lane_k + k + kMmaBatch, k_end);
            }
        }
        if (KBENCH_LINEAR_PREFETCH && tile + tile_stride < tiles) {
            const T* next = weight_row(weight, (tile + tile_stride) * 8 + n, out_features, w_stride);
#pragma unroll
            for (int u = 0; u < kMmaLoads; ++u) {
                if (lane_k + u * kMmaStep < k_end) prefetch_l2(next + lane_k + u * kMmaStep);
            }
        }
        float2 sum = make_float2(0.f, 0.f);
#pragma unroll
        for (int c = 0; c < kMmaChains; ++c) {
            sum.x += d[c][0];
            sum.y += d[c][1];
        }
        if (splits > 1) {
            partials[warp * 32 + lane] = sum;
            team_barrier(team, splits);
            if (slice == 0) {
                for (int s = 1; s < splits; ++s) {
                    const float2 other = partials[(warp + s) * 32 + lane];
                    sum.x += other.x;
                    sum.y += other.y;
                }
            }
        }
        const int col = tile * 8 + 2 * i;
        if (slice == 0 && has_token) {
            T* dst = out + static_cast<int64_t>(n) * out_features + col;
            if (col < out_features) dst[0] = from_float<T>(sum.x + (bias ? to_float(bias[col]) : 0.f));
            if (col + 1 < out_features) dst[1] = from_float<T>(sum.y + (bias ? to_float(bias[col + 1]) : 0.f));
        }
        if (splits > 1) team_barrier(team, splits);  // partials are free for the next tile
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
    const void* bias;  // null: none
    void* out;
    int in_features, out_features;
    int64_t x_stride, w_stride;
};

// Blocks for `tasks` tasks (a warp's rows, or a team's tile), dealt round-robin across the blocks:
// the persistent grid, or one block a task where fewer. Filling blocks one after another instead
// left SMs idle (llama2-7b's qkv: 1536 tiles in 96 of 132 blocks).
int grid_blocks(const DeviceInfo& info, int tasks) {
    const int resident = info.multiprocessors * kBlocksPerSm;
    return tasks < resident ? tasks : resident;
}

template <typename T, int VEC, int TOKENS>
cudaError_t launch_simt(const LinearArgs& a, int device, const DeviceInfo& info, size_t smem, cudaStream_t stream) {
    static bool granted[kMaxDevices] = {};
    const auto kernel = linear_simt_kernel<T, VEC, TOKENS>;
    cudaError_t err = allow_smem(reinterpret_cast<const void*>(kernel), device, info, smem, granted);
    if (err != cudaSuccess) return err;
    const int blocks = grid_blocks(info, (a.out_features + kRows - 1) / kRows);
    kernel<<<blocks, kThreads, smem, stream>>>(static_cast<const T*>(a.x), static_cast<const T*>(a.weight),
                                               static_cast<const T*>(a.bias), static_cast<T*>(a.out), a.in_features,
                                               a.out_features, a.x_stride, a.w_stride);
    return cudaGetLastError();
}

// Splits of in_features a tile takes: doubled while the tiles would still fill at most half of
// the grid's warps (llama2-7b's o projection, 512 tiles: 4 warps a tile), at least a step each.
[[maybe_unused]] int mma_splits(const DeviceInfo& info, int tiles, int in_features) {
    const int warps = info.multiprocessors * kBlocksPerSm * kWarps;
    int splits = 1;
    while (splits < kMaxSplits && 2 * splits * tiles <= warps && 2 * splits * kMmaStep <= in_features) splits *= 2;
    return splits;
}

template <typename T, int TOKENS>
cudaError_t launch_mma(const LinearArgs& a, int device, const DeviceInfo& info, size_t smem, cudaStream_t stream) {
    static bool granted[kMaxDevices] = {};
    const auto kernel = linear_mma_kernel<T, TOKENS>;
    cudaError_t err = allow_smem(reinterpret_cast<const void*>(kernel), device, info, smem, granted);
    if (err != cudaSuccess) return err;
    const int tiles = (a.out_features + 7) / 8;
    const int splits = mma_splits(info, tiles, a.in_features);
    const int blocks = grid_blocks(info, tiles);
    kernel<<<blocks, kThreads, smem, stream>>>(static_cast<const T*>(a.x), static_cast<const T*>(a.weight),
                                               static_cast<const T*>(a.bias), static_cast<T*>(a.out), a.in_features,
                                               a.out_features, a.x_stride, a.w_stride, splits);
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
        const size_t mma_smem = smem + kPartialBytes;
        if (whole && info.major >= 8 && mma_smem <= static_cast<size_t>(info.smem_optin)) {
            return launch_mma<T, TOKENS>(a, device, info, mma_smem, stream);
        }
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

cudaError_t launch_linear(const void* x, const void* weight, const void* bias, void* out, int tokens, int in_features,
                          int out_features, int64_t x_stride, int64_t w_stride, DType dtype, cudaStream_t stream) {
    if (tokens == 0 || out_features == 0) return cudaSuccess;
    const LinearArgs args{x, weight, bias, out, in_features, out_features, x_stride, w_stride};
    KBENCH_DISPATCH_FLOAT(dtype, return launch_linear_t<scalar_t>(args, tokens, stream));
    return cudaSuccess;
}

}  // namespace kbench
