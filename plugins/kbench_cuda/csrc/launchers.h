// The plain C++ launchers of the kbench CUDA kernels, called by bindings.cpp.
//
// Pointers are device pointers of contiguous tensors unless strides are passed (in
// elements); each launcher enqueues its kernels on `stream`, never synchronises, and returns
// the launch's cudaError_t.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace kbench {

// The element type of a tensor, as the torch binding passes it to a launcher.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Devices whose per-device state (kernel attributes, occupancy, attention's split counters) is
// kept across calls; past it, that state is asked for or allocated again on every call.
constexpr int kMaxDevices = 16;

// x, out: [tokens, hidden]; weight: [hidden].
cudaError_t launch_rmsnorm(const void* x, const void* weight, void* out, int tokens, int hidden, float eps,
                           DType dtype, cudaStream_t stream);

// residual += x (rounded to the dtype) in place, then out = rmsnorm(residual).
cudaError_t launch_add_rmsnorm(const void* x, void* residual, const void* weight, void* out, int tokens, int hidden,
                               float eps, DType dtype, cudaStream_t stream);

// q: [tokens, heads, head_dim], k: [tokens, kv_heads, head_dim], rotated in place; head_dim
// contiguous. positions: [tokens] int64, inv_freq: [head_dim / 2] float32.
cudaError_t launch_rope(void* q, void* k, const int64_t* positions, const float* inv_freq, int tokens, int heads,
                        int kv_heads, int head_dim, int64_t q_token_stride, int64_t q_head_stride,
                        int64_t k_token_stride, int64_t k_head_stride, bool interleaved, DType dtype,
                        cudaStream_t stream);

// out = silu(gate) * up over `elements` contiguous elements.
cudaError_t launch_swiglu(const void* gate, const void* up, void* out, int64_t elements, DType dtype,
                          cudaStream_t stream);

// out = x @ weight^T (+ bias), summed in fp32 and rounded once to the dtype. x: [tokens,
// in_features], rows x_stride elements apart; weight: [out_features, in_features], rows w_stride
// apart; bias: [out_features] or null; out: [tokens, out_features].
// tokens <= kLinearMaxTokens, and x must fit one block's shared memory (tokens * in_features
// elements); otherwise cudaErrorInvalidValue.
constexpr int kLinearMaxTokens = 8;
cudaError_t launch_linear(const void* x, const void* weight, const void* bias, void* out, int tokens, int in_features,
                          int out_features, int64_t x_stride, int64_t w_stride, DType dtype, cudaStream_t stream);

// logits: [batch, vocab]; uniforms: [batch] float32; tokens: [batch] int64.
cudaError_t launch_sample(const void* logits, const float* uniforms, int64_t* tokens, int batch, int vocab,
                          float temperature, int top_k, float top_p, DType dtype, cudaStream_t stream);

// logits: [batch, vocab]; values: [batch, k] in the logits' dtype; indices: [batch, k] int64.
// k <= 2048.
cudaError_t launch_topk(const void* logits, void* values, int64_t* indices, int batch, int vocab, int k, DType dtype,
                        cudaStream_t stream);

// attention_decode. q, out: [batch, heads, head_dim]; caches with their last three dims
// contiguous, `cache_stride` elements apart along dim 0 (sequences, or blocks when
// block_table [batch, max_blocks] is given); cache_seqlens: [batch] int32. With splits > 1,
// partial_out [batch, heads, splits, head_dim] and partial_lse [batch, heads, splits] float32
// are scratch, and counters [batch * kv_heads] int32 must be zero (the launch leaves them zero)
// where attention_decode_counts_arrivals(), else may be null.
bool attention_decode_supported(int head_dim, int group);
// Whether a launch with splits > 1 uses `counters`: only the same-launch merge of a build with
// KBENCH_DECODE_MERGE_PDL=0 does (by default a second launch merges, and needs none).
bool attention_decode_counts_arrivals();
// How many slices of the context each (sequence, kv head) is split into, and their length,
// from shapes alone: enough blocks to fill the GPU's resident slots in near-full waves.
cudaError_t attention_decode_plan(int batch, int heads, int kv_heads, int head_dim, int capacity, DType dtype,
                                  int* splits, int* tokens_per_split);
cudaError_t launch_attention_decode(const void* q, const void* k_cache, const void* v_cache, const int* cache_seqlens,
                                    const int* block_table, void* out, float* partial_out, float* partial_lse,
                                    int* counters, int batch, int heads, int kv_heads, int head_dim,
                                    int64_t cache_stride, int max_blocks, int block_size, int splits,
                                    int tokens_per_split, float scale, DType dtype, cudaStream_t stream);

}  // namespace kbench
