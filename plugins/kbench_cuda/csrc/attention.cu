// attention_decode: one query token per sequence against its KV cache (contiguous or paged).
//
// Grid (splits, kv_heads, batch): a block reads one KV head of one sequence over one slice of
// its context, once, for all `group` query heads that share it (GQA/MQA), so K/V bytes are
// read once per call. Inside the block, a token is read by LANES threads (16 bytes each);
// a warp holds 32 / LANES tokens, and each thread keeps a running softmax (max, sum, output)
// per query head in fp32 over the tokens it sees, UNROLL tokens' K and V in flight at once.
// The block then merges its slots; with one split it writes `out`, otherwise a normalised
// partial output and its log-sum-exp, which `combine_kernel` merges (split-KV). The number of
// splits depends only on shapes known on the host (no read of cache_seqlens, no sync).
#include "common.cuh"
#include "launchers.h"

namespace kbench {
namespace {

constexpr int kWarps = 4;
constexpr int kUnroll = 4;
constexpr float kLog2e = 1.4426950408889634f;

struct DecodeArgs {
    const void* q;             // [batch, heads, head_dim]
    const void* k_cache;       // contiguous [batch, capacity, kv_heads, head_dim] or paged blocks
    const void* v_cache;
    const int* cache_seqlens;  // [batch]
    const int* block_table;    // [batch, max_blocks] or null (contiguous)
    void* out;                 // [batch, heads, head_dim]
    float* partial_out;        // [batch, heads, splits, head_dim] when splits > 1
    float* partial_lse;        // [batch, heads, splits]
    int64_t cache_stride;      // elements between sequences (contiguous) or blocks (paged)
    int heads, kv_heads, group, head_dim;
    int max_blocks, block_size;
    int splits, tokens_per_split;
    float scale_log2;          // scale * log2(e): scores kept in the base-2 domain
};

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

// Merges the running softmax states of a block's warps and writes the block's result: `out`
// with one split, else the normalised partial output and its log-sum-exp (base 2). Warp w's
// max and sum of query head g are m[w * ml_stride + g], l[w * ml_stride + g]; its unnormalised
// output is acc[w * acc_stride + g * HEAD_DIM + d]. A warp that saw no token has m = -inf,
// l = 0 and acc = 0; a block that saw none (a split past the sequence's end) writes lse -inf.
template <typename T, int HEAD_DIM, int WARPS>
__device__ __forceinline__ void store_merged(const DecodeArgs& args, const float* m, const float* l, int ml_stride,
                                             const float* acc, int acc_stride) {
    const int split = blockIdx.x, kv_head = blockIdx.y, b = blockIdx.z;
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
        } else {
            args.partial_out[(bh * args.splits + split) * HEAD_DIM + d] = l_all > 0.f ? a_all / l_all : 0.f;
            if (d == 0) args.partial_lse[bh * args.splits + split] = l_all > 0.f ? m_all + log2f(l_all) : -INFINITY;
        }
    }
}

template <typename T, int HEAD_DIM, int GROUP>
__global__ void __launch_bounds__(kWarps * 32) decode_kernel(DecodeArgs args) {
    constexpr int VEC = kVec16<T>;
    constexpr int LANES = pow2_at_least(HEAD_DIM / VEC);  // threads per token
    static_assert(LANES <= 32, "head_dim too large for one warp per token");
    constexpr int SLOTS_PER_WARP = 32 / LANES;
    constexpr int SLOTS = SLOTS_PER_WARP * kWarps;
    __shared__ float merge_acc[kWarps][GROUP][HEAD_DIM];
    __shared__ float merge_m[kWarps][GROUP], merge_l[kWarps][GROUP];

    const int split = blockIdx.x, kv_head = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int dim_lane = lane % LANES, slot = warp * SLOTS_PER_WARP + lane / LANES;
    const int dim = dim_lane * VEC;
    const int token_lane0 = lane - dim_lane;  // first lane of this thread's token
    const bool has_dim = dim < HEAD_DIM;
    const int seqlen = args.cache_seqlens[b];
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
    // The loop runs on the warp's first slot, so every lane of a warp makes the same number of
    // passes: its full-mask shuffles would hang with lanes that had left the loop (a slice whose
    // token count leaves one slot of a warp a pass more than the other did exactly that).
    const int first_slot = warp * SLOTS_PER_WARP;
    for (int w0 = start + first_slot; w0 < end; w0 += SLOTS * kUnroll) {
        const int t0 = w0 + (slot - first_slot);
        Vec<T, VEC> kv[kUnroll], vv[kUnroll];
        bool valid[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int t = t0 + u * SLOTS;
            valid[u] = t < end;
            if (valid[u] && has_dim) {
                int64_t offset;
                if (args.block_table != nullptr) {
                    const int block = args.block_table[static_cast<int64_t>(b) * args.max_blocks + t / args.block_size];
                    offset = block * args.cache_stride + (t % args.block_size) * row_stride + head_offset;
                } else {
                    offset = b * args.cache_stride + t * row_stride + head_offset;
                }
                kv[u] = load_vec_stream<T, VEC>(k_base + offset);
                vv[u] = load_vec_stream<T, VEC>(v_base + offset);
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
    if (lane < LANES) {
#pragma unroll
        for (int g = 0; g < GROUP; ++g) {
            if (has_dim) {
#pragma unroll
                for (int e = 0; e < VEC; ++e) merge_acc[warp][g][dim + e] = acc[g][e];
            }
            if (lane == 0) {
                merge_m[warp][g] = m[g];
                merge_l[warp][g] = l[g];
            }
        }
    }
    __syncthreads();
    store_merged<T, HEAD_DIM, kWarps>(args, &merge_m[0][0], &merge_l[0][0], GROUP, &merge_acc[0][0][0], GROUP * HEAD_DIM);
}

// out[b, h] = sum_s 2^(lse_s - max) * partial_s / sum_s 2^(lse_s - max). Grid (heads, batch).
constexpr int kMaxSplits = 256;

template <typename T>
__global__ void combine_kernel(const float* __restrict__ partial_out, const float* __restrict__ partial_lse,
                               T* __restrict__ out, int heads, int head_dim, int splits) {
    __shared__ float weights[kMaxSplits + 4];  // + 4: room for a vectorised read past the end
    __shared__ float scratch[32];
    const int64_t bh = static_cast<int64_t>(blockIdx.y) * heads + blockIdx.x;
    const float* lse = partial_lse + bh * splits;
    float local_max = -INFINITY;
    for (int s = threadIdx.x; s < splits; s += blockDim.x) local_max = fmaxf(local_max, lse[s]);
    const float lse_max = block_max(local_max, scratch);
    float local_sum = 0.f;
    for (int s = threadIdx.x; s < splits; s += blockDim.x) {
        const float w = lse[s] == -INFINITY ? 0.f : exp2f(lse[s] - lse_max);
        weights[s] = w;
        local_sum += w;
    }
    const float total = block_sum(local_sum, scratch);  // its barriers publish `weights`
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float value = 0.f;
        for (int s = 0; s < splits; ++s) value += weights[s] * partial_out[(bh * splits + s) * head_dim + d];
        out[bh * head_dim + d] = from_float<T>(value / total);
    }
}

template <typename T, int HEAD_DIM>
cudaError_t launch_head_dim(const DecodeArgs& args, int batch, int group_bucket, cudaStream_t stream) {
    const dim3 grid(args.splits, args.kv_heads, batch);
    const int threads = kWarps * 32;
    switch (group_bucket) {
        case 1: decode_kernel<T, HEAD_DIM, 1><<<grid, threads, 0, stream>>>(args); break;
        case 2: decode_kernel<T, HEAD_DIM, 2><<<grid, threads, 0, stream>>>(args); break;
        case 4: decode_kernel<T, HEAD_DIM, 4><<<grid, threads, 0, stream>>>(args); break;
        case 8: decode_kernel<T, HEAD_DIM, 8><<<grid, threads, 0, stream>>>(args); break;
        default: return cudaErrorInvalidValue;
    }
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess || args.splits == 1) return err;
    combine_kernel<T><<<dim3(args.heads, batch), 128, 0, stream>>>(
        args.partial_out, args.partial_lse, static_cast<T*>(args.out), args.heads, HEAD_DIM, args.splits);
    return cudaGetLastError();
}

template <typename T>
cudaError_t launch_decode_t(const DecodeArgs& args, int batch, cudaStream_t stream) {
    const int bucket = pow2_at_least(args.group);
    switch (args.head_dim) {
        case 64: return launch_head_dim<T, 64>(args, batch, bucket, stream);
        case 80: return launch_head_dim<T, 80>(args, batch, bucket, stream);
        case 128: return launch_head_dim<T, 128>(args, batch, bucket, stream);
        default: return cudaErrorInvalidValue;
    }
}

}  // namespace

bool attention_decode_supported(int head_dim, int group) {
    return (head_dim == 64 || head_dim == 80 || head_dim == 128) && group >= 1 && group <= 8;
}

namespace {

template <typename T, int HEAD_DIM>
const void* decode_kernel_for(int group_bucket) {
    switch (group_bucket) {
        case 1: return reinterpret_cast<const void*>(decode_kernel<T, HEAD_DIM, 1>);
        case 2: return reinterpret_cast<const void*>(decode_kernel<T, HEAD_DIM, 2>);
        case 4: return reinterpret_cast<const void*>(decode_kernel<T, HEAD_DIM, 4>);
        default: return reinterpret_cast<const void*>(decode_kernel<T, HEAD_DIM, 8>);
    }
}

template <typename T>
const void* decode_kernel_for(int head_dim, int group_bucket) {
    switch (head_dim) {
        case 64: return decode_kernel_for<T, 64>(group_bucket);
        case 80: return decode_kernel_for<T, 80>(group_bucket);
        default: return decode_kernel_for<T, 128>(group_bucket);
    }
}

}  // namespace

cudaError_t attention_decode_plan(int batch, int heads, int kv_heads, int head_dim, int capacity, DType dtype,
                                  int* splits, int* tokens_per_split) {
    const void* kernel = nullptr;
    const int bucket = pow2_at_least(heads / kv_heads);
    KBENCH_DISPATCH_FLOAT(dtype, kernel = decode_kernel_for<scalar_t>(head_dim, bucket));
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) return err;
    // Resident blocks of each kernel on each device, asked once (the query costs microseconds,
    // as much as a decode step's kernel).
    static int resident_cache[16][3][4][4];  // [device][dtype][head_dim 64/80/128][log2 group]
    const int dtype_index = static_cast<int>(dtype);
    const int hd_index = head_dim == 64 ? 0 : head_dim == 80 ? 1 : 2;
    const int group_index = bucket == 1 ? 0 : bucket == 2 ? 1 : bucket == 4 ? 2 : 3;
    int* cached = device < 16 ? &resident_cache[device][dtype_index][hd_index][group_index] : nullptr;
    int resident_blocks = cached ? *cached : 0;
    if (resident_blocks == 0) {
        int multiprocessors = 0, per_sm = 0;
        err = cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device);
        if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kWarps * 32, 0);
        if (err != cudaSuccess) return err;
        resident_blocks = (per_sm > 0 ? per_sm : 1) * multiprocessors;
        if (cached) *cached = resident_blocks;
    }
    // Blocks do equal work (a full slice each), so they run in waves of `resident`: take the
    // fewest splits whose last wave is at least 90% full, else the most (each >= 64 tokens).
    const int64_t resident = resident_blocks;
    const int64_t base = static_cast<int64_t>(batch) * kv_heads;
    int most = (capacity + 63) / 64;
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
                                    int batch, int heads, int kv_heads, int head_dim, int64_t cache_stride,
                                    int max_blocks, int block_size, int splits, int tokens_per_split, float scale,
                                    DType dtype, cudaStream_t stream) {
    if (batch == 0) return cudaSuccess;
    DecodeArgs args{q, k_cache, v_cache, cache_seqlens, block_table, out, partial_out, partial_lse, cache_stride,
                    heads, kv_heads, heads / kv_heads, head_dim, max_blocks, block_size, splits, tokens_per_split,
                    scale * kLog2e};
    KBENCH_DISPATCH_FLOAT(dtype, return launch_decode_t<scalar_t>(args, batch, stream));
    return cudaSuccess;
}

}  // namespace kbench
