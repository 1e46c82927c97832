// torch binding of the kbench CUDA kernels: the `kbench_cuda` op library.
//
// Each op checks its tensors, picks the current CUDA stream and calls the plain C++ launcher
// of launchers.h. Outputs are allocated from shapes alone and nothing reads device memory
// back, so every op can be captured in a CUDA graph; the schemas declare which inputs an op
// writes, so torch.compile treats them as it does its own in-place ops.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <mutex>
#include <optional>
#include <tuple>
#include <vector>

#include "launchers.h"

namespace kbench {
namespace {

DType dtype_of(const at::Tensor& t, const char* op) {
    switch (t.scalar_type()) {
        case at::kFloat: return DType::kFloat32;
        case at::kHalf: return DType::kFloat16;
        case at::kBFloat16: return DType::kBFloat16;
        default: TORCH_CHECK(false, op, ": dtype ", t.scalar_type(), " not supported (float32, float16, bfloat16)");
    }
}

void check_launch(cudaError_t err, const char* op) {
    TORCH_CHECK(err == cudaSuccess, op, ": kernel launch failed: ", cudaGetErrorString(err));
}

void check_cuda_tensor(const at::Tensor& t, const char* name, const char* op) {
    TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor");
}

void check_same(const at::Tensor& a, const at::Tensor& b, const char* name, const char* op) {
    check_cuda_tensor(b, name, op);
    TORCH_CHECK(b.scalar_type() == a.scalar_type(), op, ": ", name, " has dtype ", b.scalar_type(), ", expected ",
                a.scalar_type());
    TORCH_CHECK(b.device() == a.device(), op, ": ", name, " is on ", b.device(), ", expected ", a.device());
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

at::Tensor rmsnorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
    check_cuda_tensor(x, "x", "rmsnorm");
    check_same(x, weight, "weight", "rmsnorm");
    TORCH_CHECK(x.dim() == 2 && weight.dim() == 1 && weight.size(0) == x.size(1), "rmsnorm: x must be [tokens, hidden] "
                "and weight [hidden]");
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
    at::Tensor out = at::empty_like(xc);
    check_launch(launch_rmsnorm(xc.data_ptr(), wc.data_ptr(), out.data_ptr(), static_cast<int>(xc.size(0)),
                                static_cast<int>(xc.size(1)), static_cast<float>(eps), dtype_of(x, "rmsnorm"), stream()),
                 "rmsnorm");
    return out;
}

at::Tensor add_rmsnorm(const at::Tensor& x, at::Tensor& residual, const at::Tensor& weight, double eps) {
    check_cuda_tensor(x, "x", "add_rmsnorm");
    check_same(x, residual, "residual", "add_rmsnorm");
    check_same(x, weight, "weight", "add_rmsnorm");
    TORCH_CHECK(x.dim() == 2 && residual.sizes() == x.sizes() && weight.dim() == 1 && weight.size(0) == x.size(1),
                "add_rmsnorm: x and residual must be [tokens, hidden] and weight [hidden]");
    TORCH_CHECK(residual.is_contiguous(), "add_rmsnorm: residual is written in place and must be contiguous");
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
    at::Tensor out = at::empty_like(xc);
    check_launch(launch_add_rmsnorm(xc.data_ptr(), residual.data_ptr(), wc.data_ptr(), out.data_ptr(),
                                    static_cast<int>(xc.size(0)), static_cast<int>(xc.size(1)), static_cast<float>(eps),
                                    dtype_of(x, "add_rmsnorm"), stream()),
                 "add_rmsnorm");
    return out;
}

void rope(at::Tensor& q, at::Tensor& k, const at::Tensor& positions, const at::Tensor& inv_freq, bool interleaved) {
    check_cuda_tensor(q, "q", "rope");
    check_same(q, k, "k", "rope");
    check_cuda_tensor(positions, "positions", "rope");
    check_cuda_tensor(inv_freq, "inv_freq", "rope");
    TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && k.size(0) == q.size(0) && k.size(2) == q.size(2) && q.size(2) % 2 == 0,
                "rope: q must be [tokens, heads, head_dim] and k [tokens, kv_heads, head_dim], head_dim even");
    TORCH_CHECK(q.stride(2) == 1 && k.stride(2) == 1, "rope: q and k are rotated in place and need a contiguous "
                "last dimension");
    TORCH_CHECK(positions.scalar_type() == at::kLong && positions.numel() == q.size(0), "rope: positions must be "
                "[tokens] int64");
    TORCH_CHECK(inv_freq.scalar_type() == at::kFloat && inv_freq.numel() == q.size(2) / 2, "rope: inv_freq must be "
                "[head_dim / 2] float32");
    const c10::cuda::CUDAGuard guard(q.device());
    const at::Tensor pc = positions.contiguous(), fc = inv_freq.contiguous();
    check_launch(launch_rope(q.data_ptr(), k.data_ptr(), pc.data_ptr<int64_t>(), fc.data_ptr<float>(),
                             static_cast<int>(q.size(0)), static_cast<int>(q.size(1)), static_cast<int>(k.size(1)),
                             static_cast<int>(q.size(2)), q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                             interleaved, dtype_of(q, "rope"), stream()),
                 "rope");
}

at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up) {
    check_cuda_tensor(gate, "gate", "swiglu");
    check_same(gate, up, "up", "swiglu");
    TORCH_CHECK(gate.sizes() == up.sizes(), "swiglu: gate and up must have the same shape");
    const c10::cuda::CUDAGuard guard(gate.device());
    const at::Tensor gc = gate.contiguous(), uc = up.contiguous();
    at::Tensor out = at::empty_like(gc);
    check_launch(launch_swiglu(gc.data_ptr(), uc.data_ptr(), out.data_ptr(), gc.numel(), dtype_of(gate, "swiglu"),
                               stream()),
                 "swiglu");
    return out;
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
    const char* op = "linear";
    check_cuda_tensor(x, "x", op);
    check_same(x, weight, "weight", op);
    TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && weight.size(1) == x.size(1), op,
                ": x must be [tokens, in_features] and weight [out_features, in_features]");
    if (bias.has_value()) {
        check_same(x, *bias, "bias", op);
        TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must be [out_features]");
    }
    TORCH_CHECK(x.size(0) <= kLinearMaxTokens, op, ": at most ", kLinearMaxTokens, " tokens (a decode kernel), got ",
                x.size(0));
    const c10::cuda::CUDAGuard guard(x.device());
    const int64_t in_features = x.size(1);
    // Rows may be strided (a layer's slice of a fused weight); elements within a row must be dense.
    const at::Tensor xc = x.stride(1) == 1 ? x : x.contiguous();
    const at::Tensor wc = weight.stride(1) == 1 ? weight : weight.contiguous();
    const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
    at::Tensor out = at::empty({x.size(0), weight.size(0)}, x.options());
    if (in_features == 0) return bc.defined() ? out.copy_(bc.expand_as(out)) : out.zero_();
    const cudaError_t err = launch_linear(xc.data_ptr(), wc.data_ptr(), bc.defined() ? bc.data_ptr() : nullptr,
                                          out.data_ptr(), static_cast<int>(x.size(0)), static_cast<int>(in_features),
                                          static_cast<int>(weight.size(0)), xc.stride(0), wc.stride(0), dtype_of(x, op),
                                          stream());
    // the launcher refuses (invalid value) an x larger than a block's shared memory, which it
    // knows from its per-device cache: asking the device here would cost every call
    TORCH_CHECK(err != cudaErrorInvalidValue, op, ": x (", x.size(0), " x ", in_features,
                ") does not fit one block's shared memory");
    check_launch(err, op);
    return out;
}

at::Tensor sample(const at::Tensor& logits, const at::Tensor& uniforms, double temperature, int64_t top_k,
                  double top_p) {
    check_cuda_tensor(logits, "logits", "sample");
    check_cuda_tensor(uniforms, "uniforms", "sample");
    TORCH_CHECK(logits.dim() == 2, "sample: logits must be [batch, vocab]");
    TORCH_CHECK(uniforms.scalar_type() == at::kFloat && uniforms.numel() == logits.size(0),
                "sample: uniforms must be [batch] float32");
    const c10::cuda::CUDAGuard guard(logits.device());
    const at::Tensor lc = logits.contiguous(), uc = uniforms.contiguous();
    at::Tensor tokens = at::empty({logits.size(0)}, logits.options().dtype(at::kLong));
    const int64_t vocab = logits.size(1);
    const int k = top_k <= 0 || top_k >= vocab ? 0 : static_cast<int>(top_k);
    check_launch(launch_sample(lc.data_ptr(), uc.data_ptr<float>(), tokens.data_ptr<int64_t>(),
                               static_cast<int>(logits.size(0)), static_cast<int>(vocab),
                               static_cast<float>(temperature), k, static_cast<float>(top_p),
                               dtype_of(logits, "sample"), stream()),
                 "sample");
    return tokens;
}

std::tuple<at::Tensor, at::Tensor> topk(const at::Tensor& logits, int64_t k) {
    check_cuda_tensor(logits, "logits", "topk");
    TORCH_CHECK(logits.dim() == 2 && k >= 1 && k <= logits.size(1), "topk: logits must be [batch, vocab] with "
                "1 <= k <= vocab");
    TORCH_CHECK(k <= 2048, "topk: k must be at most 2048, got ", k);
    const c10::cuda::CUDAGuard guard(logits.device());
    const at::Tensor lc = logits.contiguous();
    at::Tensor values = at::empty({logits.size(0), k}, logits.options());
    at::Tensor indices = at::empty({logits.size(0), k}, logits.options().dtype(at::kLong));
    check_launch(launch_topk(lc.data_ptr(), values.data_ptr(), indices.data_ptr<int64_t>(),
                             static_cast<int>(logits.size(0)), static_cast<int>(logits.size(1)), static_cast<int>(k),
                             dtype_of(logits, "topk"), stream()),
                 "topk");
    return {values, indices};
}

// attention_decode's split-KV arrival counters, [batch * kv_heads] int32 (launchers.h), for the
// same-launch merge of a KBENCH_DECODE_MERGE_PDL=0 build (attention_decode_counts_arrivals). The
// kernel leaves them zero, so they are zeroed once, when allocated, and kept per device: a call
// adds no memset, and a CUDA graph that captured one replays with no extra node. Calls running
// at once on two streams of one device would share them and race (a known limitation: the
// benchmark and the pipeline use one stream). A buffer outgrown by a larger batch * kv_heads
// stays allocated, since a graph captured earlier may still use it. One needed during a capture
// is not kept, since its memset would run at the graph's replays and not before the next eager
// call: it serves that call alone, its memset a node of the graph (as past kMaxDevices).
at::Tensor split_counters(const at::Tensor& q, int64_t pairs) {
    constexpr int64_t kFirstSize = 4096;  // batch x kv_heads: 512 x 8, 128 x 32
    static std::mutex mutex;
    // Never destroyed: tensors freed during static destruction could outlive the CUDA allocator.
    static auto& kept = *new std::array<std::vector<at::Tensor>, kMaxDevices>();
    const int device = q.get_device();
    const std::lock_guard<std::mutex> lock(mutex);
    if (device < kMaxDevices && !kept[device].empty() && kept[device].back().numel() >= pairs) {
        return kept[device].back();
    }
    const at::TensorOptions options = q.options().dtype(at::kInt);
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    const cudaError_t err = cudaStreamIsCapturing(stream(), &capture);
    TORCH_CHECK(err == cudaSuccess, "attention_decode: ", cudaGetErrorString(err));
    if (device >= kMaxDevices || capture != cudaStreamCaptureStatusNone) return at::zeros({pairs}, options);
    kept[device].push_back(at::zeros({std::max(pairs, kFirstSize)}, options));
    return kept[device].back();
}

at::Tensor attention_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& cache_seqlens, const std::optional<at::Tensor>& block_table,
                            double scale) {
    const char* op = "attention_decode";
    check_cuda_tensor(q, "q", op);
    check_same(q, k_cache, "k_cache", op);
    check_same(q, v_cache, "v_cache", op);
    check_cuda_tensor(cache_seqlens, "cache_seqlens", op);
    TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes() &&
                    k_cache.size(3) == q.size(2),
                op, ": q must be [batch, heads, head_dim] and the caches [*, *, kv_heads, head_dim]");
    TORCH_CHECK(cache_seqlens.scalar_type() == at::kInt && cache_seqlens.numel() == q.size(0),
                op, ": cache_seqlens must be [batch] int32");
    const int batch = static_cast<int>(q.size(0)), heads = static_cast<int>(q.size(1));
    const int head_dim = static_cast<int>(q.size(2)), kv_heads = static_cast<int>(k_cache.size(2));
    TORCH_CHECK(kv_heads > 0 && heads % kv_heads == 0, op, ": heads must be a multiple of kv_heads");
    TORCH_CHECK(attention_decode_supported(head_dim, heads / kv_heads), op, ": head_dim ", head_dim, " with ",
                heads / kv_heads, " query heads per kv head is not supported (head_dim 64/80/128, at most 8)");
    // The last three dims of each cache must be dense; dim 0 may be strided (a layer's view).
    for (const at::Tensor* cache : {&k_cache, &v_cache}) {
        TORCH_CHECK(cache->stride(3) == 1 && cache->stride(2) == head_dim && cache->stride(1) == kv_heads * head_dim,
                    op, ": the caches need dense [*, kv_heads, head_dim] rows");
    }
    TORCH_CHECK(k_cache.stride(0) == v_cache.stride(0), op, ": k_cache and v_cache must have the same strides");
    const c10::cuda::CUDAGuard guard(q.device());
    const at::Tensor qc = q.contiguous(), lens = cache_seqlens.contiguous();
    int max_blocks = 0, block_size = 0, capacity = static_cast<int>(k_cache.size(1));
    at::Tensor table;
    if (block_table.has_value()) {
        table = block_table->contiguous();
        TORCH_CHECK(table.is_cuda() && table.scalar_type() == at::kInt && table.dim() == 2 && table.size(0) == batch,
                    op, ": block_table must be [batch, max_blocks] int32 on the GPU");
        max_blocks = static_cast<int>(table.size(1));
        block_size = static_cast<int>(k_cache.size(1));
        capacity = max_blocks * block_size;
    } else {
        TORCH_CHECK(k_cache.size(0) == batch, op, ": a contiguous cache is [batch, max_seq_len, kv_heads, head_dim]");
    }
    int splits = 1, tokens_per_split = capacity;
    check_launch(attention_decode_plan(batch, heads, kv_heads, head_dim, capacity, dtype_of(q, op), &splits,
                                       &tokens_per_split),
                 op);
    at::Tensor out = at::empty_like(qc);
    at::Tensor partial_out, partial_lse, counters;
    if (splits > 1) {
        partial_out = at::empty({batch, heads, splits, head_dim}, q.options().dtype(at::kFloat));
        partial_lse = at::empty({batch, heads, splits}, q.options().dtype(at::kFloat));
        if (attention_decode_counts_arrivals()) counters = split_counters(q, static_cast<int64_t>(batch) * kv_heads);
    }
    check_launch(launch_attention_decode(qc.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), lens.data_ptr<int>(),
                                         table.defined() ? table.data_ptr<int>() : nullptr, out.data_ptr(),
                                         splits > 1 ? partial_out.data_ptr<float>() : nullptr,
                                         splits > 1 ? partial_lse.data_ptr<float>() : nullptr,
                                         counters.defined() ? counters.data_ptr<int>() : nullptr, batch, heads, kv_heads,
                                         head_dim, k_cache.stride(0), max_blocks, block_size, splits, tokens_per_split,
                                         static_cast<float>(scale), dtype_of(q, op), stream()),
                 op);
    return out;
}

}  // namespace
}  // namespace kbench

TORCH_LIBRARY(kbench_cuda, m) {
    m.def("rmsnorm(Tensor x, Tensor weight, float eps) -> Tensor");
    m.def("add_rmsnorm(Tensor x, Tensor(a!) residual, Tensor weight, float eps) -> Tensor");
    m.def("rope(Tensor(a!) q, Tensor(b!) k, Tensor positions, Tensor inv_freq, bool interleaved) -> ()");
    m.def("swiglu(Tensor gate, Tensor up) -> Tensor");
    m.def("linear(Tensor x, Tensor weight, Tensor? bias=None) -> Tensor");
    m.def("sample(Tensor logits, Tensor uniforms, float temperature, int top_k, float top_p) -> Tensor");
    m.def("topk(Tensor logits, int k) -> (Tensor, Tensor)");
    m.def("attention_decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_seqlens, Tensor? block_table, "
          "float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(kbench_cuda, CUDA, m) {
    m.impl("rmsnorm", &kbench::rmsnorm);
    m.impl("add_rmsnorm", &kbench::add_rmsnorm);
    m.impl("rope", &kbench::rope);
    m.impl("swiglu", &kbench::swiglu);
    m.impl("linear", &kbench::linear);
    m.impl("sample", &kbench::sample);
    m.impl("topk", &kbench::topk);
    m.impl("attention_decode", &kbench::attention_decode);
}
