"""Device check: the two-stage top-k and the sample built on it, on tie-heavy float32 logits
(the case of tests/plugins/test_triton.py::test_sample_top_k_ties_past_the_scratch_row_...,
which failed on the H100 with the two-stage path as the GPU default). Prints what differs."""
import torch
from kbench_triton.sampling import sample, topk

from kbench.ops.sampling import sample_reference, topk_reference

torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    for vocab, k in ((3000, 10), (3000, 50), (32000, 50)):
        logits = torch.randint(0, 5, (2, vocab), generator=torch.Generator().manual_seed(1)).to(dtype).cuda()
        expected_values, expected_indices = topk_reference(logits, k)
        for two_stage in (False, True):
            values, indices = topk(logits, k, two_stage=two_stage)
            bad = (indices != expected_indices).sum().item()
            print(f"topk {dtype} vocab={vocab} k={k} two_stage={two_stage}: {bad} indices differ, "
                  f"values equal {torch.equal(values, expected_values)}; k-th {values[:, -1].tolist()} "
                  f"expected {expected_values[:, -1].tolist()}")
            if bad:
                print("   got", indices[0, :12].tolist(), "\n   exp", expected_indices[0, :12].tolist())
        uniforms = torch.tensor([0.25, 0.75], device="cuda")
        for top_p in (1.0, 0.5):
            expected = sample_reference(logits, uniforms, 0.7, k, top_p)
            for two_stage in (False, True):
                got = sample(logits, uniforms, 0.7, k, top_p, two_stage=two_stage)
                print(f"sample {dtype} vocab={vocab} k={k} top_p={top_p} two_stage={two_stage}: "
                      f"{got.tolist()} expected {expected.tolist()}")
