// attention_decode: one query token per sequence against its KV cache (contiguous or paged).
//
// Grid (splits, kv_heads, batch): a block reads one KV head of one sequence over one slice of
// its context, once, for all `group` query heads that share it (GQA/MQA), so K/V bytes are
// read once per call. Inside the block, a token is read by LANES threads (16 bytes each);
// a warp holds 32 / LANES tokens, and each thread keeps a running softmax (max, sum, output)
// per query head in fp32 over the tokens it sees. K and V stream through a ring of passes in
// shared memory (cp.async), kDecodeStages - 1 passes of kUnroll tokens a slot in flight.
// The block then merges its slots; with one split it writes `out`, otherwise a normalised
// partial output and its log-sum-exp (split-KV). The number of splits depends only on shapes
// known on the host (no read of cache_seqlens, no sync).
//
// On sm_90, where gqa_decode_kernel gives a (sequence, kv head) at most KBENCH_DECODE_CLUSTER
// splits, its split blocks are one thread-block cluster and merge in it (cluster_merge): each
// block leaves its normalised partial in its own shared memory, and after a cluster barrier each
// merges a share of the outputs, reading the others' partials through distributed shared memory.
// No partials go to global memory and there is no second launch.
//
// Otherwise merge_kernel merges them: a second launch made with programmatic dependent launch,
// scheduled while the split pass runs and waiting on the device for its partials (or, with
// KBENCH_DECODE_MERGE_PDL=0, the last block of each (sequence, kv head) to finish, in the same
// launch). Why each merge and plan choice: see docs/kernels.md.
//
// That kernel (decode_kernel) serves MHA and float32. GQA/MQA in bfloat16/float16 runs
// gqa_decode_kernel instead: the same grid and split-KV, but the group's heads attend as one
// tensor-core tile over K/V chunks staged in shared memory (see its comment).
#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <type_traits>

#include <cooperative_groups.h>

#include "common.cuh"
#include "launchers.h"

namespace kbench {
namespace {

constexpr int kWarps = 4;
constexpr int kUnroll = 4;
constexpr float kLog2e = 1.4426950408889634f;
constexpr int kMaxSplits = 256;
constexpr int kDecodeMaxGroup = 8;  // query heads a KV head serves, at most
// Passes of K/V that decode_kernel's ring holds: kDecodeStages - 1 in flight while one is used
// (a tuning knob; depth matters less than the bytes in flight per SM).
#ifndef KBENCH_DECODE_STAGES
#define KBENCH_DECODE_STAGES 4
#endif
constexpr int kDecodeStages = KBENCH_DECODE_STAGES;
static_assert(kDecodeStages >= 1, "at least the stage in use");
// The fewest tokens a split takes (a tuning knob): decode_kernel needs many blocks in flight, so
// short splits; longer ones were slower at batch 1.
#ifndef KBENCH_DECODE_SPLIT_TOKENS
#define KBENCH_DECODE_SPLIT_TOKENS 64
#endif  // slices of one context at most (attention_decode_plan)
// decode_kernel's plan's wave, in percent of the resident blocks (a tuning knob): below 100 it takes fewer,
// longer slices (less to merge), above 100 more, shorter ones (one's start hidden by another's work).
// 67 is 2 of its 3 blocks an SM: at batch 8 x 512 it gives one split and no merge.
#ifndef KBENCH_DECODE_FILL
#define KBENCH_DECODE_FILL 67
#endif
// The same for gqa_decode_kernel (2 blocks an SM by shared memory): 50, a block an SM with twice
// the tokens each; fewer, longer splits pay for this kernel, not for decode_kernel.
#ifndef KBENCH_GQA_FILL
#define KBENCH_GQA_FILL 50
#endif

// How the splits are merged (a tuning knob): 1, by merge_kernel, a second launch made with
// programmatic dependent launch (sm_90): it is scheduled once every split block has started
// and waits on the device (griddepcontrol.wait) for their partials, so neither a launch gap
// nor a fence and atomic per block is paid; 0, by the last block of each (sequence, kv head)
// in the same launch (merge_splits after last_to_arrive).
#ifndef KBENCH_DECODE_MERGE_PDL
#define KBENCH_DECODE_MERGE_PDL 1
#endif
constexpr bool kMergePdl = KBENCH_DECODE_MERGE_PDL != 0;
// The most splits of gqa_decode_kernel whose blocks merge as one thread-block cluster (sm_90; a
// tuning knob, 0: never). Past 8 the cluster is of a non-portable size (the H100 takes 16), asked
// for once per kernel and device; where the device cannot run such a cluster the splits go to
// merge_kernel. Clusters of 16 were slower than merge_kernel (fewer such clusters are resident
// than the plan's blocks).
#ifndef KBENCH_DECODE_CLUSTER
#define KBENCH_DECODE_CLUSTER 8
#endif
// The same for decode_kernel (MHA, float32; 0: never): slower than merge_kernel wherever it applied.
#ifndef KBENCH_DECODE_MHA_CLUSTER
#define KBENCH_DECODE_MHA_CLUSTER 0
#endif
constexpr int kClusterMaxSplits = std::max(KBENCH_DECODE_CLUSTER, KBENCH_DECODE_MHA_CLUSTER);
static_assert(KBENCH_DECODE_CLUSTER >= 0 && KBENCH_DECODE_MHA_CLUSTER >= 0 && kClusterMaxSplits <= 16,
              "a cluster holds at most 16 blocks");
// merge_kernel's shared memory: the weights and 80 rows of head_dim 128 a pass, within the
// 48 KB a block gets without opting in.
constexpr int kMergeSmemBytes = 48 * 1024;

struct DecodeArgs {
    const void* q;             // [batch, heads, head_dim]
    const void* k_cache;       // contiguous [batch, capacity, kv_heads, head_dim] or paged blocks
    const void* v_cache;
    const int* cache_seqlens;  // [batch]
    const int* block_table;    // [batch, max_blocks] or null (contiguous)
    void* out;                 // [batch, heads, head_dim]
    float* partial_out;        // [batch, heads, splits, head_dim] when splits > 1
    float* partial_lse;        // [batch, heads, splits]
    int* counters;             // [batch * kv_heads] blocks done per (sequence, kv head), 0 between calls
    int64_t cache_stride;      // elements between sequences (contiguous) or blocks (paged)
    int heads, kv_heads, group, head_dim;
    int max_blocks, block_size;
    int splits, tokens_per_split;
    float scale_log2;          // scale * log2(e): scores kept in the base-2 domain
    int cluster;               // 1: the splits are one cluster (dims splits x 1 x 1) and merge in it
};

__device__ __forceinline__ uint32_t smem_address(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared without passing through registers. With `valid` false it reads
// nothing and writes 16 zero bytes: rows past the sequence must be finite, since p = 0 times
// a NaN left in shared memory would still be NaN in P.V.
// Before sm_80 (no cp.async) it is a plain copy through registers, and the group calls do nothing.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    const uint4 value = valid ? __ldcg(static_cast<const uint4*>(src)) : make_uint4(0u, 0u, 0u, 0u);
    asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(value.x), "r"(value.y), "r"(value.z),
                 "r"(value.w)
                 : "memory");
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory");
#endif
}

// Programmatic dependent launch (sm_90 on; nothing before): a split kernel lets the merge
// launch be scheduled at once, and the merge waits until the split grid has finished and its
// writes are visible.
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if constexpr (kMergePdl) asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void wait_for_primary_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// 16 bytes of shared memory, written by this thread's own cp.async (once it has waited on it).
template <typename T, int N>
__device__ __forceinline__ Vec<T, N> load_shared_16(uint32_t address) {
    static_assert(sizeof(T) * N == 16, "one 16-byte access");
    uint4 raw;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(raw.x), "=r"(raw.y), "=r"(raw.z), "=r"(raw.w)
                 : "r"(address)
                 : "memory");
    Vec<T, N> out;
    memcpy(&out, &raw, 16);
    return out;
}

#ifdef KBENCH_DECODE_TRACE
__device__ __forceinline__ unsigned long long trace_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
#define TRACE_START() const long long tr0 = clock64(); const unsigned long long trg0 = trace_ns(); long long tr[4] = {};
#define TRACE_AT(i) tr[i] = clock64() - tr0;
// TRACE_AT once the load of `value` has arrived: a branch on it makes the clock read wait.
#define TRACE_AT_AFTER(i, value)         \
    if ((value) == INT_MIN) printf("#"); \
    TRACE_AT(i)
#define TRACE_PRINT(name)                                                                                       \
    if (threadIdx.x == 0) {                                                                                     \
        unsigned smid;                                                                                          \
        asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));                                                       \
        printf("TRACE %s %d %d %d %u %llu %llu %lld %lld %lld %lld\n", name, blockIdx.x, blockIdx.y, blockIdx.z, smid, \
               trg0, trace_ns(), tr[0], tr[1], tr[2], tr[3]);                                                    \
    }
#else
#define TRACE_START()
#define TRACE_AT(i)
#define TRACE_AT_AFTER(i, value)
#define TRACE_PRINT(name)
#endif

__host__ __device__ constexpr int pow2_at_least(int n) {
    int p = 1;
    while (p < n) p <<= 1;
    return p;
}

// Sums v[g] over the LANES lanes of a token for every g, with GROUP - 1 + log2(LANES / GROUP)
// shuffles instead of GROUP * log2(LANES): each exchange on a high lane bit hands half of
// the heads to the partner. Returns the total of head g = (this lane's index within the token)
// / (LANES / GROUP); the lanes of head g are g * LANES / GROUP onwards.
template <int GROUP, int LANES>
__device__ __forceinline__ float reduce_group(float (&v)[GROUP], int lane) {
#pragma unroll
    for (int n = GROUP, offset = LANES / 2; n > 1; n >>= 1, offset >>= 1) {
        const bool upper = lane & offset;
#pragma unroll
        for (int i = 0; i < n / 2; ++i) {
            const float send = upper ? v[i] : v[i + n / 2];
            const float keep = upper ? v[i + n / 2] : v[i];
            v[i] = keep + __shfl_xor_sync(0xffffffffu, send, offset);
        }
    }
    float total = v[0];
#pragma unroll
    for (int offset = LANES / (2 * GROUP); offset > 0; offset >>= 1) total += __shfl_xor_sync(0xffffffffu, total, offset);
    return total;
}

// Whether this block is the last of its (sequence, kv head) to have written its partials (the
// same answer in every thread); the last one puts the pair's counter back to 0 for the next
// call. The partials reach the last block as through a grid barrier: the first barrier orders
// every thread's writes before thread 0's fence and arrival (a release), the last block's fence
// after its arrival (an acquire) orders them before the reads that follow the second barrier.
// __syncthreads_or is that second barrier and the broadcast of `last` at once (no shared flag).
__device__ __forceinline__ bool last_to_arrive(const DecodeArgs& args) {
    __syncthreads();
    bool last = false;
    if (threadIdx.x == 0) {
        int* counter = args.counters + static_cast<int64_t>(blockIdx.z) * args.kv_heads + blockIdx.y;
        __threadfence();
        last = atomicAdd(counter, 1) == args.splits - 1;
        if (last) {
            __threadfence();
            *counter = 0;  // every block of the pair has arrived: no other access in this launch
        }
    }
    return __syncthreads_or(last);
}

// The split-KV merge of `group` query heads of a (sequence, kv head), from its `first_head`-th
// on (merge_kernel: one head a block; the last block of the pair to finish: all of them):
// out = sum_s 2^(lse_s - max) * partial_s / sum_s 2^(lse_s - max), a split with
// lse -inf weighing 0. Other blocks wrote the partials: they are read through L2 (__ldcg and
// cp.async.cg), where those writes are visible (L1 is not coherent).
//
// `scratch` is `scratch_bytes` of the block's shared memory, no longer read: first the
// weights [group][splits], normalised, then a buffer the partials are copied into by cp.async.
// Those heads' partials are one array, rows (g, s) of HEAD_DIM floats in that order; a pass
// copies as many whole rows as the buffer holds, every 16 bytes of them in flight at once, and
// each thread then adds its outputs' share. Loads into registers kept a 128-thread block to
// ~16 KB in flight against the 30-120 KB of a 30-split GQA merge: a memory latency per 16 KB.
// The first pass is in flight while the weights are computed.
template <typename T, int HEAD_DIM, int WARPS>
__device__ void merge_splits(const DecodeArgs& args, int first_head, int group, unsigned char* scratch,
                             int scratch_bytes) {
    constexpr int ROW_BYTES = HEAD_DIM * 4;
    static_assert(ROW_BYTES % 16 == 0, "a row of partial_out is whole 16-byte pieces");
    const int kv_head = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int splits = args.splits;
    // [b, head] of g = 0: the group's heads from first_head on (of the kv head's args.group)
    const int64_t head0 = static_cast<int64_t>(b) * args.heads + kv_head * args.group + first_head;
    const int rows = group * splits;

    float* weights = reinterpret_cast<float*>(scratch);
    const int weight_bytes = (rows * 4 + 15) / 16 * 16;
    unsigned char* buffer = scratch + weight_bytes;
    const int rows_per_pass = (scratch_bytes - weight_bytes) / ROW_BYTES;
    const unsigned char* partials = reinterpret_cast<const unsigned char*>(args.partial_out + head0 * splits * HEAD_DIM);
    auto copy_rows = [&](int first_row) {
        const int pieces = min(rows_per_pass, rows - first_row) * (ROW_BYTES / 16);
        const unsigned char* src = partials + static_cast<int64_t>(first_row) * ROW_BYTES;
        for (int i = threadIdx.x; i < pieces; i += blockDim.x) cp_async_16(smem_address(buffer + i * 16), src + i * 16, true);
        cp_async_commit();
    };
    copy_rows(0);

    // Weights: a warp per head, a lane per split (kMaxSplits / 32 each).
    for (int g = warp; g < group; g += WARPS) {
        const float* lse = args.partial_lse + (head0 + g) * splits;
        float w[kMaxSplits / 32];
        float lse_max = -INFINITY;
#pragma unroll
        for (int k = 0; k < kMaxSplits / 32; ++k) {
            const int s = k * 32 + lane;
            w[k] = s < splits ? __ldcg(lse + s) : -INFINITY;
            lse_max = fmaxf(lse_max, w[k]);
        }
        lse_max = warp_max(lse_max);
        float total = 0.f;
#pragma unroll
        for (int k = 0; k < kMaxSplits / 32; ++k) {
            w[k] = w[k] == -INFINITY ? 0.f : exp2f(w[k] - lse_max);
            total += w[k];
        }
        total = warp_sum(total);
#pragma unroll
        for (int k = 0; k < kMaxSplits / 32; ++k) {
            const int s = k * 32 + lane;
            if (s < splits) weights[g * splits + s] = w[k] / total;
        }
    }

    // Thread i owns outputs i, i + blockDim.x, ... of [group][HEAD_DIM] (at most kMaxOwned).
    constexpr int kMaxOwned = (kDecodeMaxGroup * HEAD_DIM + WARPS * 32 - 1) / (WARPS * 32);
    float sum[kMaxOwned] = {};
    for (int first_row = 0; first_row < rows; first_row += rows_per_pass) {
        cp_async_wait<0>();
        __syncthreads();  // every thread's copies (and, on the first pass, the weights) are visible
        const int last_row = min(first_row + rows_per_pass, rows);
#pragma unroll
        for (int k = 0; k < kMaxOwned; ++k) {
            const int i = threadIdx.x + k * WARPS * 32;
            if (i >= group * HEAD_DIM) break;
            const int g = i / HEAD_DIM, d = i - g * HEAD_DIM;
            const int from = max(first_row, g * splits), to = min(last_row, (g + 1) * splits);
            for (int row = from; row < to; ++row) {
                sum[k] += weights[row] * reinterpret_cast<const float*>(buffer + (row - first_row) * ROW_BYTES)[d];
            }
        }
        if (last_row < rows) {
            __syncthreads();  // the buffer is read before the next pass copies over it
            copy_rows(last_row);
        }
    }
#pragma unroll
    for (int k = 0; k < kMaxOwned; ++k) {
        const int i = threadIdx.x + k * WARPS * 32;
        if (i >= group * HEAD_DIM) break;
        static_cast<T*>(args.out)[head0 * HEAD_DIM + i] = from_float<T>(sum[k]);
    }
}

// A block's partial for cluster_merge, at the end of its shared memory: [kDecodeMaxGroup][HEAD_DIM]
// normalised outputs, then [kDecodeMaxGroup] log-sum-exps (base 2).
template <int HEAD_DIM>
constexpr int kClusterPartialBytes = (kDecodeMaxGroup * HEAD_DIM + kDecodeMaxGroup) * 4;

// The split-KV merge inside a cluster (args.cluster): the block of split s is rank s of the
// cluster of its (sequence, kv head)'s args.splits blocks, and `partial` (kClusterPartialBytes)
// holds its normalised outputs and log-sum-exps, written by its threads. The first cluster
// barrier (a release and an acquire) makes every block's partial visible to the others; each
// block then merges its share of the group's [group][HEAD_DIM] outputs from the partials of every
// rank, read through distributed shared memory, as merge_splits does from global memory; the
// second barrier keeps each block's shared memory until the others have read it.
template <typename T, int HEAD_DIM>
__device__ __forceinline__ void cluster_merge(const DecodeArgs& args, float* partial) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr int kMaxRanks = kClusterMaxSplits > 0 ? kClusterMaxSplits : 1;
    constexpr int kLse = kDecodeMaxGroup * HEAD_DIM;  // where the log-sum-exps start
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    // (cluster.sync() would fence at GPU scope first: a wait on this block's every global write)
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
    const int ranks = args.splits, rank = static_cast<int>(cluster.block_rank());
    const int outputs = args.group * HEAD_DIM;
    const int share = (outputs + ranks - 1) / ranks;
    const int end = min(outputs, (rank + 1) * share);
    const int64_t head0 = static_cast<int64_t>(blockIdx.z) * args.heads + blockIdx.y * args.group;
    for (int i = rank * share + threadIdx.x; i < end; i += blockDim.x) {
        const int g = i / HEAD_DIM;
        float lse[kMaxRanks], value[kMaxRanks];
        float lse_max = -INFINITY;
#pragma unroll
        for (int r = 0; r < kMaxRanks; ++r) {
            if (r < ranks) {
                const float* peer = cluster.map_shared_rank(partial, r);
                lse[r] = peer[kLse + g];
                value[r] = peer[i];
                lse_max = fmaxf(lse_max, lse[r]);
            }
        }
        float total = 0.f, sum = 0.f;
#pragma unroll
        for (int r = 0; r < kMaxRanks; ++r) {
            if (r < ranks) {
                const float w = lse[r] == -INFINITY ? 0.f : exp2f(lse[r] - lse_max);
                total += w;
                sum += w * value[r];
            }
        }
        static_cast<T*>(args.out)[head0 * HEAD_DIM + i] = from_float<T>(sum / total);
    }
    // every read of this block's partial has returned its value before its reader arrives
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\nbarrier.cluster.wait.aligned;\n" ::: "memory");
#endif
}

// Merges the running softmax states of a block's warps and writes the block's result: `out`
// with one split, else the normalised partial output and its log-sum-exp (base 2). Warp w's
// max and sum of query head g are m[w * ml_stride + g], l[w * ml_stride + g]; its unnormalised
// output is acc[w * acc_stride + g * HEAD_DIM + d]. A warp that saw no token has m = -inf,
// l = 0 and acc = 0; a block that saw none (a split past the sequence's end) writes lse -inf.
// With several splits, the last block of its (sequence, kv head) to get here then merges them
// (merge_splits) in the block's `smem_bytes` of shared memory from `smem` on, which holds `m`,
// `l` and `acc`: last_to_arrive's barrier comes after every thread has read them. With the
// splits as one cluster (args.cluster) the partial goes to the last kClusterPartialBytes of that
// shared memory instead (clear of `m`, `l` and `acc`) and the cluster merges (cluster_merge).
template <typename T, int HEAD_DIM, int WARPS>
__device__ __forceinline__ void store_merged(const DecodeArgs& args, const float* m, const float* l, int ml_stride,
                                             const float* acc, int acc_stride, unsigned char* smem, int smem_bytes) {
    const int split = blockIdx.x, kv_head = blockIdx.y, b = blockIdx.z;
    float* cluster_partial = reinterpret_cast<float*>(smem + smem_bytes - kClusterPartialBytes<HEAD_DIM>);
    for (int i = threadIdx.x; i < args.group * HEAD_DIM; i += blockDim.x) {
        const int g = i / HEAD_DIM, d = i - g * HEAD_DIM;
        float m_all = -INFINITY;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) m_all = fmaxf(m_all, m[w * ml_stride + g]);
        float l_all = 0.f, a_all = 0.f;
        if (m_all != -INFINITY) {
#pragma unroll
            for (int w = 0; w < WARPS; ++w) {
                const float c = exp2f(m[w * ml_stride + g] - m_all);
                l_all += l[w * ml_stride + g] * c;
                a_all += acc[w * acc_stride + g * HEAD_DIM + d] * c;
            }
        }
        const int head = kv_head * args.group + g;
        const int64_t bh = static_cast<int64_t>(b) * args.heads + head;
        if (args.splits == 1) {
            static_cast<T*>(args.out)[bh * HEAD_DIM + d] = from_float<T>(a_all / l_all);
        } else if (args.cluster) {
            cluster_partial[i] = l_all > 0.f ? a_all / l_all : 0.f;
            if (d == 0) {
                cluster_partial[kDecodeMaxGroup * HEAD_DIM + g] = l_all > 0.f ? m_all + log2f(l_all) : -INFINITY;
            }
        } else {
            args.partial_out[(bh * args.splits + split) * HEAD_DIM + d] = l_all > 0.f ? a_all / l_all : 0.f;
            if (d == 0) args.partial_lse[bh * args.splits + split] = l_all > 0.f ? m_all + log2f(l_all) : -INFINITY;
        }
    }
    if (args.cluster) {
        cluster_merge<T, HEAD_DIM>(args, cluster_partial);
        return;
    }
    if constexpr (!kMergePdl) {
        if (args.splits > 1 && last_to_arrive(args)) {
            merge_splits<T, HEAD_DIM, WARPS>(args, 0, args.group, smem, smem_bytes);
        }
    }
}

// The split-KV merge as its own launch (KBENCH_DECODE_MERGE_PDL), grid (group, kv_heads,
// batch): merge_splits for each query head, once the split kernel's partials are visible (a
// block a head rather than a group: GQA-8 at batch 1 then has 32 blocks merging, not 8).
template <typename T, int HEAD_DIM, int WARPS>
__global__ void __launch_bounds__(WARPS * 32) merge_kernel(DecodeArgs args) {
    static_assert(kMergeSmemBytes >= (kDecodeMaxGroup * kMaxSplits + HEAD_DIM) * 4,
                  "merge_splits' weights and a row of partials fit");
    extern __shared__ __align__(16) unsigned char smem[];
    wait_for_primary_grid();
    merge_splits<T, HEAD_DIM, WARPS>(args, blockIdx.x, 1, smem, kMergeSmemBytes);
}

// decode_kernel's lane layout, from the dtype and head_dim: LANES threads read a token (16
// bytes each), a warp holds SLOTS_PER_WARP tokens, the block SLOTS, and a pass kUnroll times that.
template <typename T, int HEAD_DIM, int GROUP>
struct DecodeLayout {
    static constexpr int VEC = kVec16<T>;
    static constexpr int LANES = pow2_at_least(HEAD_DIM / VEC);
    static constexpr int SLOTS_PER_WARP = 32 / LANES;
    static constexpr int SLOTS = SLOTS_PER_WARP * kWarps;
    static constexpr int PASS_TOKENS = SLOTS * kUnroll;
    // One pass of K then V in shared memory (a slot's row is HEAD_DIM wide; lanes past it copy nothing).
    static constexpr int STAGE_BYTES = 2 * PASS_TOKENS * HEAD_DIM * static_cast<int>(sizeof(T));
    // The block's merge state [kWarps][GROUP][HEAD_DIM + 2] goes over the ring afterwards, and
    // merge_splits needs its weights and at least one row of partials.
    static constexpr int MERGE_BYTES = kWarps * GROUP * (HEAD_DIM + 2) * 4;
    static constexpr int SPLIT_MERGE_BYTES = (GROUP * kMaxSplits + HEAD_DIM) * 4;
    // cluster_merge's partial comes after the merge state.
    static constexpr int SMEM_BYTES = std::max(
            {kDecodeStages * STAGE_BYTES, MERGE_BYTES + kClusterPartialBytes<HEAD_DIM>, SPLIT_MERGE_BYTES});
};

template <typename T, int HEAD_DIM, int GROUP>
__global__ void __launch_bounds__(kWarps * 32) decode_kernel(DecodeArgs args) {
    using Layout = DecodeLayout<T, HEAD_DIM, GROUP>;
    constexpr int VEC = Layout::VEC, LANES = Layout::LANES;
    static_assert(LANES <= 32, "head_dim too large for one warp per token");
    constexpr int SLOTS_PER_WARP = Layout::SLOTS_PER_WARP, SLOTS = Layout::SLOTS;
    constexpr int PASS_TOKENS = Layout::PASS_TOKENS;
    extern __shared__ __align__(16) unsigned char smem[];
    TRACE_START()
    allow_dependent_launch();

    const int split = blockIdx.x, kv_head = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int dim_lane = lane % LANES, slot = warp * SLOTS_PER_WARP + lane / LANES;
    const int dim = dim_lane * VEC;
    const int token_lane0 = lane - dim_lane;  // first lane of this thread's token
    const bool has_dim = dim < HEAD_DIM;
    const int seqlen = args.cache_seqlens[b];
    TRACE_AT_AFTER(0, seqlen)
    const int start = split * args.tokens_per_split;
    const int end = min(start + args.tokens_per_split, seqlen);

    float qf[GROUP][VEC];
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
        const bool real = g < args.group && has_dim;
        Vec<T, VEC> qv;
        if (real) qv = load_vec<T, VEC>(static_cast<const T*>(args.q) +
                                        (static_cast<int64_t>(b) * args.heads + kv_head * args.group + g) * HEAD_DIM + dim);
#pragma unroll
        for (int e = 0; e < VEC; ++e) qf[g][e] = real ? to_float(qv.v[e]) * args.scale_log2 : 0.f;
    }
    float m[GROUP], l[GROUP], acc[GROUP][VEC];
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.f;
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[g][e] = 0.f;
    }

    const T* k_base = static_cast<const T*>(args.k_cache);
    const T* v_base = static_cast<const T*>(args.v_cache);
    const int64_t row_stride = static_cast<int64_t>(args.kv_heads) * HEAD_DIM;
    const int64_t head_offset = static_cast<int64_t>(kv_head) * HEAD_DIM + dim;
    const int* table =
        args.block_table != nullptr ? args.block_table + static_cast<int64_t>(b) * args.max_blocks : nullptr;
    // The passes run on the warp's first slot, so every lane of a warp makes the same number of
    // them: its full-mask shuffles would hang with lanes that had left the loop (a slice whose
    // token count leaves one slot of a warp a pass more than the other did exactly that).
    const int first_slot = warp * SLOTS_PER_WARP;
    const int first = start + first_slot;
    const int passes = end > first ? (end - first + PASS_TOKENS - 1) / PASS_TOKENS : 0;

    // Pass i's tokens t = first + i * PASS_TOKENS + (slot - first_slot) + u * SLOTS, u < kUnroll,
    // go to ring stage i % kDecodeStages by cp.async: each thread copies its own 16 bytes of each
    // token's K and V and reads back only those, so no barrier is needed, and kDecodeStages - 1
    // passes stay in flight while the thread computes one (a load then a compute per pass kept a
    // block to one pass's 16 KB in flight and a full memory latency a pass). A token past the
    // slice copies nothing and its bytes are zeros (they are masked out of the scores too).
    const uint32_t ring = smem_address(smem) + ((slot * HEAD_DIM + dim) * static_cast<int>(sizeof(T)));
    constexpr uint32_t kRowBytes = HEAD_DIM * sizeof(T);
    auto load_pass = [&](int i) {
        const uint32_t k_dst = ring + (i % kDecodeStages) * Layout::STAGE_BYTES;
        const uint32_t v_dst = k_dst + PASS_TOKENS * kRowBytes;
        const int t0 = first + i * PASS_TOKENS + (slot - first_slot);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int t = t0 + u * SLOTS;
            const bool valid = t < end && has_dim;
            int64_t offset = 0;  // an invalid copy reads nothing, from an address that exists
            if (valid) {
                if (table != nullptr) {
                    offset = static_cast<int64_t>(__ldg(table + t / args.block_size)) * args.cache_stride +
                             (t % args.block_size) * row_stride + head_offset;
                } else {
                    offset = b * args.cache_stride + t * row_stride + head_offset;
                }
            }
            if (has_dim) {
                cp_async_16(k_dst + u * SLOTS * kRowBytes, k_base + offset, valid);
                cp_async_16(v_dst + u * SLOTS * kRowBytes, v_base + offset, valid);
            }
        }
    };

    // Pass i is cp.async group i; empty groups are committed past the last pass so that "all but
    // kDecodeStages - 1 groups done" always means pass i is.
#pragma unroll
    for (int i = 0; i < kDecodeStages - 1; ++i) {
        if (i < passes) load_pass(i);
        cp_async_commit();
    }
    for (int i = 0; i < passes; ++i) {
        if (i + kDecodeStages - 1 < passes) load_pass(i + kDecodeStages - 1);  // into the stage pass i - 1 read
        cp_async_commit();
        cp_async_wait<kDecodeStages - 1>();
        const int t0 = first + i * PASS_TOKENS + (slot - first_slot);
        const uint32_t k_src = ring + (i % kDecodeStages) * Layout::STAGE_BYTES;
        const uint32_t v_src = k_src + PASS_TOKENS * kRowBytes;
        Vec<T, VEC> kv[kUnroll], vv[kUnroll];
        bool valid[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            valid[u] = t0 + u * SLOTS < end;
            if (has_dim) {
                kv[u] = load_shared_16<T, VEC>(k_src + u * SLOTS * kRowBytes);
                vv[u] = load_shared_16<T, VEC>(v_src + u * SLOTS * kRowBytes);
            } else {
#pragma unroll
                for (int e = 0; e < VEC; ++e) kv[u].v[e] = vv[u].v[e] = from_float<T>(0.f);
            }
        }
        // Scores of every (head, token): partial dots reduced across the token's lanes.
        float scores[GROUP][kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            float part[GROUP];
#pragma unroll
            for (int g = 0; g < GROUP; ++g) {
                part[g] = 0.f;
#pragma unroll
                for (int e = 0; e < VEC; ++e) part[g] += qf[g][e] * to_float(kv[u].v[e]);
            }
            const float held = reduce_group<GROUP, LANES>(part, lane);
#pragma unroll
            for (int g = 0; g < GROUP; ++g) {
                const float score = GROUP == 1 ? held : __shfl_sync(0xffffffffu, held, token_lane0 + g * (LANES / GROUP));
                scores[g][u] = valid[u] ? score : -INFINITY;
            }
        }
#pragma unroll
        for (int g = 0; g < GROUP; ++g) {
            float s_max = m[g];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) s_max = fmaxf(s_max, scores[g][u]);
            if (s_max == -INFINITY) continue;  // nothing seen yet by this slot
            const float correction = exp2f(m[g] - s_max);
            m[g] = s_max;
            l[g] *= correction;
#pragma unroll
            for (int e = 0; e < VEC; ++e) acc[g][e] *= correction;
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                const float p = exp2f(scores[g][u] - s_max);
                l[g] += p;
#pragma unroll
                for (int e = 0; e < VEC; ++e) acc[g][e] += p * to_float(vv[u].v[e]);
            }
        }
    }
    cp_async_wait<0>();  // only empty groups can be pending
    TRACE_AT(1)

    // Merge the slots of each warp (lanes with the same dim_lane), then the warps.
#pragma unroll
    for (int offset = LANES; offset < 32; offset <<= 1) {
#pragma unroll
        for (int g = 0; g < GROUP; ++g) {
            const float m_other = __shfl_xor_sync(0xffffffffu, m[g], offset);
            const float l_other = __shfl_xor_sync(0xffffffffu, l[g], offset);
            const float m_new = fmaxf(m[g], m_other);
            const float c_self = m_new == -INFINITY ? 0.f : exp2f(m[g] - m_new);
            const float c_other = m_new == -INFINITY ? 0.f : exp2f(m_other - m_new);
            l[g] = l[g] * c_self + l_other * c_other;
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                const float a_other = __shfl_xor_sync(0xffffffffu, acc[g][e], offset);
                acc[g][e] = acc[g][e] * c_self + a_other * c_other;
            }
            m[g] = m_new;
        }
    }
    // The block's merge state goes over the ring, once every thread is done reading it.
    constexpr int ACC_FLOATS = kWarps * GROUP * HEAD_DIM;
    float* merge_acc = reinterpret_cast<float*>(smem);  // [kWarps][GROUP][HEAD_DIM]
    float* merge_m = merge_acc + ACC_FLOATS;            // [kWarps][GROUP]
    float* merge_l = merge_m + kWarps * GROUP;
    __syncthreads();
    if (lane < LANES) {
#pragma unroll
        for (int g = 0; g < GROUP; ++g) {
            if (has_dim) {
#pragma unroll
                for (int e = 0; e < VEC; ++e) merge_acc[(warp * GROUP + g) * HEAD_DIM + dim + e] = acc[g][e];
            }
            if (lane == 0) {
                merge_m[warp * GROUP + g] = m[g];
                merge_l[warp * GROUP + g] = l[g];
            }
        }
    }
    __syncthreads();
    TRACE_AT(2)
    store_merged<T, HEAD_DIM, kWarps>(args, merge_m, merge_l, GROUP, merge_acc, GROUP * HEAD_DIM, smem,
                                      Layout::SMEM_BYTES);
    TRACE_AT(3)
    TRACE_PRINT("mha")
}

// --- GQA on tensor cores (16-bit dtypes, group > 1) ---------------------------------------
//
// The group's query heads attend one KV head as a matrix: scores S = Q K^T and the output
// O^T = V^T P^T are m16n8k16 tensor-core products, with Q padded to 16 rows (heads 0..7 live in
// rows 0..7; rows 8..15 are zero and their results are dropped). The grid is the same as
// decode_kernel's. Each warp streams chunks of kChunk tokens of K and V into its own
// shared-memory ring of kGqaStages chunks with cp.async (warp w takes chunks w, w + 4, ... of
// the block's slice), so a warp never waits on another until the final merge and 2 of its 3
// chunks stay in flight while it computes the third. Per chunk and warp: 2 x HEAD_DIM / 16
// mma for S (two 8-token tiles), HEAD_DIM / 16 mma for P.V, one online-softmax step.
//
// Fragment bookkeeping (lane = 4 * r + c, PTX ISA "Matrix Fragments for mma.m16n8k16"):
// - S's accumulator holds S[head r][token 2c, 2c + 1] (tile 0: tokens 0-7, tile 1: 8-15), so
//   each head's running max/sum lives in the 4 lanes 4r..4r+3.
// - P^T as the B operand of O^T = V^T P^T needs P^T[token 2c, 2c + 1][head r] (+8 for the
//   second register): exactly the S accumulator, packed to 16 bits, with no data movement.
// - O^T's accumulator holds O[head 2c, 2c + 1][dim 16 mt + r, + 8], so rescaling it by a head's
//   correction takes that value from lane 4 * head.
constexpr int kGqaWarps = 4;
// Chunks in a warp's ring (a tuning knob: 3 keeps 2 blocks an SM at head_dim 128).
#ifndef KBENCH_GQA_STAGES
#define KBENCH_GQA_STAGES 3
#endif
constexpr int kGqaStages = KBENCH_GQA_STAGES;
constexpr int kChunk = 16;
constexpr int kGqaMaxGroup = kDecodeMaxGroup;

// A row of K or V in shared memory: head_dim 16-bit values, padded by 16 bytes so that the 8
// rows one ldmatrix reads start in 8 different 4-bank groups (for 128, 80 and 64 alike).
template <int HEAD_DIM>
constexpr int kGqaRowBytes = HEAD_DIM * 2 + 16;
template <int HEAD_DIM>
constexpr int kGqaStageBytes = 2 * kChunk * kGqaRowBytes<HEAD_DIM>;  // K then V of one chunk
template <int HEAD_DIM>
constexpr int kGqaWarpBytes = kGqaStages * kGqaStageBytes<HEAD_DIM>;
template <int HEAD_DIM>
constexpr int kGqaSmemBytes = kGqaWarps * kGqaWarpBytes<HEAD_DIM>;

// Four 8x8 16-bit matrices; lanes 8j..8j+7 give the row addresses of matrix j, and lane
// 4r + c receives row r, columns 2c and 2c + 1 of each (with .trans: column r, rows 2c, 2c + 1).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address)
                 : "memory");
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address)
                 : "memory");
}

// Two floats rounded to T in one 32-bit register, `lo` in the low half (the lower index).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    uint32_t out;
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
        const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        memcpy(&out, &v, 4);
    } else {
        const __half2 v = __floats2half2_rn(lo, hi);
        memcpy(&out, &v, 4);
    }
    return out;
}

template <typename T, int HEAD_DIM>
__global__ void __launch_bounds__(kGqaWarps * 32) gqa_decode_kernel(DecodeArgs args) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();  // never launched there (gqa_kernel_ready); the body needs cp.async and bf16 mma
#else
    static_assert(sizeof(T) == 2, "the tensor-core kernel takes 16-bit K/V");
    static_assert(HEAD_DIM % 16 == 0, "head_dim is a whole number of 16-wide mma steps");
    constexpr int ROW = kGqaRowBytes<HEAD_DIM>;
    constexpr int PIECES = HEAD_DIM * 2 / 16;  // 16-byte pieces of a row
    static_assert(kChunk * PIECES % 32 == 0, "a chunk's pieces spread evenly over the lanes");
    constexpr int PIECES_PER_LANE = kChunk * PIECES / 32;
    constexpr int STEPS = HEAD_DIM / 16;  // k-steps of S, m-tiles of O^T
    constexpr int WARP_FLOATS = kGqaWarpBytes<HEAD_DIM> / 4;
    static_assert((kGqaMaxGroup * HEAD_DIM + 2 * kGqaMaxGroup) * 4 <= kGqaWarpBytes<HEAD_DIM>,
                  "a warp's merge state fits in its ring");
    static_assert((kGqaMaxGroup * HEAD_DIM + 2 * kGqaMaxGroup) * 4 + kClusterPartialBytes<HEAD_DIM> <=
                          kGqaWarpBytes<HEAD_DIM>,
                  "cluster_merge's partial fits in the last warp's ring after its merge state");
    extern __shared__ __align__(16) unsigned char smem[];
    TRACE_START()
    allow_dependent_launch();

    const int split = blockIdx.x, kv_head = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = lane >> 2;        // fragment row: the query head of S's rows and P^T's columns
    const int c2 = (lane & 3) * 2;  // first of the fragment's two columns
    const int seqlen = args.cache_seqlens[b];
    TRACE_AT_AFTER(0, seqlen)
    const int start = split * args.tokens_per_split;
    const int end = min(start + args.tokens_per_split, seqlen);
    unsigned char* ring = smem + warp * kGqaWarpBytes<HEAD_DIM>;

    // Q as the A operand of S, rows 8..15 (registers 1 and 3) zero: q[head r][16 ks + c2, + 1]
    // and [16 ks + 8 + c2, + 1]. Heads past the group are zero rows too.
    uint32_t qa[STEPS][2];
    {
        const bool real = r < args.group;
        const int64_t head = static_cast<int64_t>(b) * args.heads + kv_head * args.group + r;
        const T* q_row = static_cast<const T*>(args.q) + head * HEAD_DIM;
#pragma unroll
        for (int ks = 0; ks < STEPS; ++ks) {
            qa[ks][0] = real ? *reinterpret_cast<const uint32_t*>(q_row + ks * 16 + c2) : 0u;
            qa[ks][1] = real ? *reinterpret_cast<const uint32_t*>(q_row + ks * 16 + 8 + c2) : 0u;
        }
    }

    const T* k_base = static_cast<const T*>(args.k_cache);
    const T* v_base = static_cast<const T*>(args.v_cache);
    const int64_t row_stride = static_cast<int64_t>(args.kv_heads) * HEAD_DIM;
    const int64_t head_offset = static_cast<int64_t>(kv_head) * HEAD_DIM;
    const int* table =
        args.block_table != nullptr ? args.block_table + static_cast<int64_t>(b) * args.max_blocks : nullptr;

    // Tokens first .. first + kChunk - 1 into ring slot `slot`. Each token is addressed on its
    // own (its page from the block table), so a chunk may straddle pages of any block_size.
    auto load_chunk = [&](int first, int slot) {
        const uint32_t k_dst = smem_address(ring + slot * kGqaStageBytes<HEAD_DIM>);
        const uint32_t v_dst = k_dst + kChunk * ROW;
#pragma unroll
        for (int j = 0; j < PIECES_PER_LANE; ++j) {
            const int piece = lane + 32 * j;
            const int row = piece / PIECES, col = piece - row * PIECES;
            const int t = first + row;
            const bool valid = t < end;
            int64_t offset = 0;  // an invalid piece reads nothing, from an address that exists
            if (valid) {
                if (table != nullptr) {
                    offset = static_cast<int64_t>(__ldg(table + t / args.block_size)) * args.cache_stride +
                             (t % args.block_size) * row_stride;
                } else {
                    offset = static_cast<int64_t>(b) * args.cache_stride + t * row_stride;
                }
                offset += head_offset + col * (16 / static_cast<int>(sizeof(T)));
            }
            const uint32_t dst = row * ROW + col * 16;
            cp_async_16(k_dst + dst, k_base + offset, valid);
            cp_async_16(v_dst + dst, v_base + offset, valid);
        }
    };

    // This warp's chunks start at start + warp * kChunk + i * kGqaWarps * kChunk, i < chunks:
    // the same count for every lane of the warp, so its shuffles and ldmatrix see all 32.
    constexpr int kStride = kGqaWarps * kChunk;
    const int first0 = start + warp * kChunk;
    const int chunks = end > first0 ? (end - first0 + kStride - 1) / kStride : 0;

    // Lane's row address for the four 8x8 matrices of ldmatrix: tokens 0-7 / 8-15 (j >> 1) x
    // columns 0-7 / 8-15 (j & 1) of a 16 x 16 block.
    const uint32_t lm_offset = (((lane >> 4) << 3) | (lane & 7)) * ROW + ((lane >> 3) & 1) * 16;

    float m = -INFINITY, l = 0.f;  // of head r, the same in lanes 4r..4r+3 (l: this lane's tokens)
    float acc[STEPS][4];
#pragma unroll
    for (int mt = 0; mt < STEPS; ++mt) acc[mt][0] = acc[mt][1] = acc[mt][2] = acc[mt][3] = 0.f;

    // Chunk i lives in slot i % kGqaStages and is cp.async group i: empty groups are committed
    // past the last chunk so that "all but kGqaStages - 1 groups done" always means chunk i is.
#pragma unroll
    for (int i = 0; i < kGqaStages - 1; ++i) {
        if (i < chunks) load_chunk(first0 + i * kStride, i);
        cp_async_commit();
    }
    for (int i = 0; i < chunks; ++i) {
        const int ahead = i + kGqaStages - 1;  // into the slot chunk i - 1 used, freed below
        if (ahead < chunks) load_chunk(first0 + ahead * kStride, ahead % kGqaStages);
        cp_async_commit();
        cp_async_wait<kGqaStages - 1>();
        __syncwarp();  // every lane's copies of chunk i are visible to the whole warp

        const uint32_t k_tile = smem_address(ring + (i % kGqaStages) * kGqaStageBytes<HEAD_DIM>) + lm_offset;
        const uint32_t v_tile = k_tile + kChunk * ROW;
        float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
        for (int ks = 0; ks < STEPS; ++ks) {
            uint32_t kf[4];  // K[tokens 0-7][16 ks ..], [..][16 ks + 8 ..], then tokens 8-15
            ldmatrix_x4(kf, k_tile + ks * 32);
            mma_16816<T>(s[0], qa[ks][0], 0u, qa[ks][1], 0u, kf[0], kf[1]);
            mma_16816<T>(s[1], qa[ks][0], 0u, qa[ks][1], 0u, kf[2], kf[3]);
        }
        // This lane's scores: head r at chunk tokens c2, c2 + 1, 8 + c2, 9 + c2. Token 0 of a
        // chunk is always in the slice, so each head's chunk max is finite.
        const int left = end - (first0 + i * kStride);
        float x[4] = {s[0][0], s[0][1], s[1][0], s[1][1]};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int token = (e >> 1) * 8 + c2 + (e & 1);
            x[e] = token < left ? x[e] * args.scale_log2 : -INFINITY;
        }
        float chunk_max = fmaxf(fmaxf(x[0], x[1]), fmaxf(x[2], x[3]));
        chunk_max = fmaxf(chunk_max, __shfl_xor_sync(0xffffffffu, chunk_max, 1));
        chunk_max = fmaxf(chunk_max, __shfl_xor_sync(0xffffffffu, chunk_max, 2));
        const float m_new = fmaxf(m, chunk_max);
        const float correction = exp2f(m - m_new);  // 0 on the first chunk (m = -inf)
        float p[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) p[e] = exp2f(x[e] - m_new);
        l = l * correction + ((p[0] + p[1]) + (p[2] + p[3]));
        m = m_new;
        // O^T columns c2, c2 + 1 are heads c2, c2 + 1, whose corrections lanes 4 c2, 4 c2 + 4 hold.
        const float correction_lo = __shfl_sync(0xffffffffu, correction, 4 * c2);
        const float correction_hi = __shfl_sync(0xffffffffu, correction, 4 * c2 + 4);
        const uint32_t pb0 = pack2<T>(p[0], p[1]), pb1 = pack2<T>(p[2], p[3]);
#pragma unroll
        for (int mt = 0; mt < STEPS; ++mt) {
            uint32_t vf[4];  // V^T[dims 16 mt + 0-7 / 8-15][tokens 0-7 / 8-15]
            ldmatrix_x4_trans(vf, v_tile + mt * 32);
            acc[mt][0] *= correction_lo;
            acc[mt][1] *= correction_hi;
            acc[mt][2] *= correction_lo;
            acc[mt][3] *= correction_hi;
            mma_16816<T>(acc[mt], vf[0], vf[1], vf[2], vf[3], pb0, pb1);
        }
        __syncwarp();  // the slot is read before the next pass copies chunk i + kGqaStages into it
    }
    cp_async_wait<0>();  // only empty groups can be pending; the ring is reused below
    TRACE_AT(1)
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);

    // The warp's state into its own ring: acc as [head][HEAD_DIM], then m[8], l[8].
    float* merge_acc = reinterpret_cast<float*>(ring);
    float* merge_m = merge_acc + kGqaMaxGroup * HEAD_DIM;
    float* merge_l = merge_m + kGqaMaxGroup;
    __syncwarp();
#pragma unroll
    for (int mt = 0; mt < STEPS; ++mt) {
        const int d = mt * 16 + r;
        merge_acc[c2 * HEAD_DIM + d] = acc[mt][0];
        merge_acc[(c2 + 1) * HEAD_DIM + d] = acc[mt][1];
        merge_acc[c2 * HEAD_DIM + d + 8] = acc[mt][2];
        merge_acc[(c2 + 1) * HEAD_DIM + d + 8] = acc[mt][3];
    }
    if ((lane & 3) == 0) {
        merge_m[r] = m;
        merge_l[r] = l;
    }
    __syncthreads();
    static_assert(kGqaSmemBytes<HEAD_DIM> >= (kGqaMaxGroup * kMaxSplits + HEAD_DIM) * 4,
                  "merge_splits' weights and a row of partials fit in the rings");
    const float* base = reinterpret_cast<const float*>(smem);
    const float* warp0_m = base + kGqaMaxGroup * HEAD_DIM;
    TRACE_AT(2)
    store_merged<T, HEAD_DIM, kGqaWarps>(args, warp0_m, warp0_m + kGqaMaxGroup, WARP_FLOATS, base, WARP_FLOATS, smem,
                                         kGqaSmemBytes<HEAD_DIM>);
    TRACE_AT(3)
    TRACE_PRINT("gqa")
#endif
}

// Whether `kernel` can run on `device` with `smem_bytes` of dynamic shared memory a block: a
// compute capability of `min_major` or more, and the shared memory opted into here (beyond the
// 48 KB a kernel gets by default), with the max-shared carveout so that the kernel's occupancy
// is what the shared memory per SM allows. Asked once per device and kept in `state` (0: not
// asked yet, 1: ready, 2: not on this device): the driver calls cost about what a launch does.
bool smem_kernel_ready(const void* kernel, int smem_bytes, int min_major, int device, int (&state)[kMaxDevices]) {
    if (device < kMaxDevices && state[device] != 0) return state[device] == 1;
    int major = 0, optin = 0;
    const bool ready =
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) == cudaSuccess &&
        major >= min_major && optin >= smem_bytes &&
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes) == cudaSuccess &&
        cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                             cudaSharedmemCarveoutMaxShared) == cudaSuccess;
    if (!ready) (void)cudaGetLastError();  // a refusal is an answer, not an error for the next launch
    if (device < kMaxDevices) state[device] = ready ? 1 : 2;
    return ready;
}

// gqa_decode_kernel needs sm_80 (cp.async, bf16 mma) and its rings (2 blocks an SM at head_dim
// 128); elsewhere GQA stays on decode_kernel.
template <typename T, int HEAD_DIM>
bool gqa_kernel_ready(int device) {
    static int state[kMaxDevices] = {};
    return smem_kernel_ready(reinterpret_cast<const void*>(gqa_decode_kernel<T, HEAD_DIM>), kGqaSmemBytes<HEAD_DIM>,
                             8, device, state);
}

// decode_kernel runs anywhere its ring fits in a block's shared memory (cp.async is a plain
// copy before sm_80); where it does not, its launch fails with the driver's error.
template <typename T, int HEAD_DIM, int GROUP>
bool decode_kernel_ready(int device) {
    static int state[kMaxDevices] = {};
    return smem_kernel_ready(reinterpret_cast<const void*>(decode_kernel<T, HEAD_DIM, GROUP>),
                             DecodeLayout<T, HEAD_DIM, GROUP>::SMEM_BYTES, 0, device, state);
}

// The kernel a call runs, as the host launches it. MHA (nothing to share between query heads)
// and float32 (no 16-bit tensor-core product) stay on decode_kernel; GQA/MQA in 16-bit dtypes
// go to gqa_decode_kernel where the device can run it.
struct DecodeKernel {
    const void* fn;
    int threads, smem_bytes;
    int fill;         // the plan's wave, in percent of the resident blocks
    int cluster_max;  // the most splits that merge in a cluster (cluster_merge), 0: none
};

template <typename T, int HEAD_DIM, int GROUP>
DecodeKernel plain_decode_kernel(int device) {
    (void)decode_kernel_ready<T, HEAD_DIM, GROUP>(device);  // its shared memory opted into, for the occupancy query
    return {reinterpret_cast<const void*>(decode_kernel<T, HEAD_DIM, GROUP>), kWarps * 32,
            DecodeLayout<T, HEAD_DIM, GROUP>::SMEM_BYTES, KBENCH_DECODE_FILL, KBENCH_DECODE_MHA_CLUSTER};
}

template <typename T, int HEAD_DIM>
bool uses_gqa_kernel(int group, int device) {
    if constexpr (sizeof(T) == 2) return group > 1 && gqa_kernel_ready<T, HEAD_DIM>(device);
    return false;
}

template <typename T, int HEAD_DIM>
DecodeKernel decode_kernel_for(int group, int device) {
    if constexpr (sizeof(T) == 2) {
        if (uses_gqa_kernel<T, HEAD_DIM>(group, device)) {
            return {reinterpret_cast<const void*>(gqa_decode_kernel<T, HEAD_DIM>), kGqaWarps * 32,
                    kGqaSmemBytes<HEAD_DIM>, KBENCH_GQA_FILL, KBENCH_DECODE_CLUSTER};
        }
    }
    switch (pow2_at_least(group)) {
        case 1: return plain_decode_kernel<T, HEAD_DIM, 1>(device);
        case 2: return plain_decode_kernel<T, HEAD_DIM, 2>(device);
        case 4: return plain_decode_kernel<T, HEAD_DIM, 4>(device);
        default: return plain_decode_kernel<T, HEAD_DIM, 8>(device);
    }
}

template <typename T>
DecodeKernel decode_kernel_for(int head_dim, int group, int device) {
    switch (head_dim) {
        case 64: return decode_kernel_for<T, 64>(group, device);
        case 80: return decode_kernel_for<T, 80>(group, device);
        default: return decode_kernel_for<T, 128>(group, device);
    }
}

// merge_kernel after the split pass, launched to overlap it (programmatic stream serialization:
// on sm_90 the merge may start once every split block has called allow_dependent_launch; it
// waits for their results itself).
template <typename T, int HEAD_DIM>
cudaError_t launch_merge(const DecodeArgs& args, int batch, cudaStream_t stream) {
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(args.group, args.kv_heads, batch);
    config.blockDim = dim3(kWarps * 32);
    config.dynamicSmemBytes = kMergeSmemBytes;
    config.stream = stream;
    cudaLaunchAttribute attribute[1];
    attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[0].val.programmaticStreamSerializationAllowed = 1;
    config.attrs = attribute;
    config.numAttrs = 1;
    return cudaLaunchKernelEx(&config, merge_kernel<T, HEAD_DIM, kWarps>, args);
}

// The split pass's launch of `kernel` (decode_kernel_for) on `grid`; with `cluster`, the splits
// of a (sequence, kv head) as one cluster (dims grid.x x 1 x 1).
cudaLaunchConfig_t split_config(const DecodeKernel& kernel, const dim3& grid, bool cluster, cudaStream_t stream,
                                cudaLaunchAttribute* attribute) {
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = dim3(kernel.threads);
    config.dynamicSmemBytes = kernel.smem_bytes;
    config.stream = stream;
    if (cluster) {
        attribute->id = cudaLaunchAttributeClusterDimension;
        attribute->val.clusterDim.x = grid.x;
        attribute->val.clusterDim.y = 1;
        attribute->val.clusterDim.z = 1;
        config.attrs = attribute;
        config.numAttrs = 1;
    }
    return config;
}

// Whether `kernel`'s blocks can run `splits` to a cluster on `device`: sm_90 or later, the
// non-portable size allowed past 8, and at least one such cluster resident (the driver's
// occupancy answer, with the kernel's shared memory). Asked once per kernel, device and size.
bool cluster_ready(const DecodeKernel& kernel, int splits, int device) {
    struct Answer {
        const void* fn;
        int device, splits;
        bool ready;
    };
    static Answer answers[256];
    static int count = 0;
    for (int i = 0; i < count; ++i) {
        const Answer& a = answers[i];
        if (a.fn == kernel.fn && a.device == device && a.splits == splits) return a.ready;
    }
    int major = 0, clusters = 0;
    cudaLaunchAttribute attribute;
    const cudaLaunchConfig_t config = split_config(kernel, dim3(splits, 1, 1), true, nullptr, &attribute);
    const bool ready =
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess && major >= 9 &&
        (splits <= 8 ||
         cudaFuncSetAttribute(kernel.fn, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) == cudaSuccess) &&
        cudaOccupancyMaxActiveClusters(&clusters, kernel.fn, &config) == cudaSuccess && clusters > 0;
    if (!ready) (void)cudaGetLastError();  // a refusal is an answer, not an error for the next launch
    if (count < 256) answers[count++] = {kernel.fn, device, splits, ready};
    return ready;
}

// The split pass on the kernel decode_kernel_for chooses (its shared memory opted into there;
// where it could not be, the launch reports why), merging in a cluster where that kernel can;
// otherwise merge_kernel follows it.
template <typename T, int HEAD_DIM>
cudaError_t launch_head_dim(const DecodeArgs& args, int batch, cudaStream_t stream) {
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) return err;
    const DecodeKernel kernel = decode_kernel_for<T, HEAD_DIM>(args.group, device);
    DecodeArgs launched = args;
    launched.cluster = args.splits > 1 && args.splits <= kernel.cluster_max && cluster_ready(kernel, args.splits, device);
    cudaLaunchAttribute attribute;
    const cudaLaunchConfig_t config =
            split_config(kernel, dim3(args.splits, args.kv_heads, batch), launched.cluster, stream, &attribute);
    void* params[] = {&launched};
    err = cudaLaunchKernelExC(&config, kernel.fn, params);
    if (err != cudaSuccess || launched.cluster || !kMergePdl || args.splits == 1) return err;
    return launch_merge<T, HEAD_DIM>(args, batch, stream);
}

template <typename T>
cudaError_t launch_decode_t(const DecodeArgs& args, int batch, cudaStream_t stream) {
    switch (args.head_dim) {
        case 64: return launch_head_dim<T, 64>(args, batch, stream);
        case 80: return launch_head_dim<T, 80>(args, batch, stream);
        case 128: return launch_head_dim<T, 128>(args, batch, stream);
        default: return cudaErrorInvalidValue;
    }
}

}  // namespace

bool attention_decode_counts_arrivals() { return !kMergePdl; }

bool attention_decode_supported(int head_dim, int group) {
    return (head_dim == 64 || head_dim == 80 || head_dim == 128) && group >= 1 && group <= kGqaMaxGroup;
}

cudaError_t attention_decode_plan(int batch, int heads, int kv_heads, int head_dim, int capacity, DType dtype,
                                  int* splits, int* tokens_per_split) {
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) return err;
    DecodeKernel kernel{};
    const int group = heads / kv_heads;
    KBENCH_DISPATCH_FLOAT(dtype, kernel = decode_kernel_for<scalar_t>(head_dim, group, device));
    // Resident blocks of each kernel on each device, asked once (the query costs microseconds,
    // as much as a decode step's kernel).
    static int resident_cache[kMaxDevices][3][4][4];  // [device][dtype][head_dim 64/80/128][log2 group]
    const int bucket = pow2_at_least(group);
    const int dtype_index = static_cast<int>(dtype);
    const int hd_index = head_dim == 64 ? 0 : head_dim == 80 ? 1 : 2;
    const int group_index = bucket == 1 ? 0 : bucket == 2 ? 1 : bucket == 4 ? 2 : 3;
    int* cached = device < kMaxDevices ? &resident_cache[device][dtype_index][hd_index][group_index] : nullptr;
    int resident_blocks = cached ? *cached : 0;
    if (resident_blocks == 0) {
        int multiprocessors = 0, per_sm = 0;
        err = cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device);
        if (err == cudaSuccess) {
            err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel.fn, kernel.threads, kernel.smem_bytes);
        }
        if (err != cudaSuccess) return err;
        resident_blocks = (per_sm > 0 ? per_sm : 1) * multiprocessors;
        if (cached) *cached = resident_blocks;
    }
    // Blocks do equal work (a full slice each), so they run in waves of `resident`: take the
    // fewest splits whose last wave is at least 90% full, else the most (each >=
    // KBENCH_DECODE_SPLIT_TOKENS tokens).
    const int64_t resident = std::max<int64_t>(1, static_cast<int64_t>(resident_blocks) * kernel.fill / 100);
    const int64_t base = static_cast<int64_t>(batch) * kv_heads;
    int most = (capacity + KBENCH_DECODE_SPLIT_TOKENS - 1) / KBENCH_DECODE_SPLIT_TOKENS;
    most = most < kMaxSplits ? most : kMaxSplits;
    most = most < 1 ? 1 : most;
    int chosen = most;
    for (int s = 1; s <= most; ++s) {
        const int64_t blocks = base * s;
        const int64_t waves = (blocks + resident - 1) / resident;
        if (blocks * 10 >= waves * resident * 9) {
            chosen = s;
            break;
        }
    }
    int tokens = (capacity + chosen - 1) / chosen;
    tokens = (tokens + 31) / 32 * 32;
    *tokens_per_split = tokens;
    *splits = (capacity + tokens - 1) / tokens;  // no slice left empty by the rounding
    return cudaSuccess;
}

cudaError_t launch_attention_decode(const void* q, const void* k_cache, const void* v_cache, const int* cache_seqlens,
                                    const int* block_table, void* out, float* partial_out, float* partial_lse,
                                    int* counters, int batch, int heads, int kv_heads, int head_dim,
                                    int64_t cache_stride, int max_blocks, int block_size, int splits,
                                    int tokens_per_split, float scale, DType dtype, cudaStream_t stream) {
    if (batch == 0) return cudaSuccess;
    DecodeArgs args{q, k_cache, v_cache, cache_seqlens, block_table, out, partial_out, partial_lse, counters,
                    cache_stride, heads, kv_heads, heads / kv_heads, head_dim, max_blocks, block_size, splits,
                    tokens_per_split, scale * kLog2e, 0};
    KBENCH_DISPATCH_FLOAT(dtype, return launch_decode_t<scalar_t>(args, batch, stream));
    return cudaSuccess;
}

}  // namespace kbench
