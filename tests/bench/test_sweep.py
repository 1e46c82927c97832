import math
from types import SimpleNamespace

import pytest
import torch

from kbench.bench import sweep
from kbench.bench.sweep import op_rows
from kbench.ops.norm import ADD_RMSNORM, RMSNORM, rmsnorm_reference
from kbench.registry import Implementation, Registry

BENCH = SimpleNamespace(warmup_ms=0.0, rep_ms=1.0, flush_l2=True, cuda_graphs=False)
CASES = [RMSNORM.test_cases[0], RMSNORM.test_cases[1]]


def _registry(**backends) -> Registry:
    registry = Registry()
    registry.add_op(RMSNORM, "test")
    registry.add_op(ADD_RMSNORM, "test")
    for name, (op, fn) in backends.items():
        registry.add_implementation(Implementation(op, name, fn, plugin="test"))
    return registry


def test_rows_check_and_time_every_backend_and_case():
    registry = _registry(good=("rmsnorm", lambda x, weight, eps: rmsnorm_reference(x, weight, eps)))
    rows = op_rows(registry, "rmsnorm", ["reference", "good"], CASES, torch.float32, "cpu", BENCH)
    assert [(r["backend"], r["case"]) for r in rows] == [
        ("reference", CASES[0].label), ("good", CASES[0].label), ("reference", CASES[1].label), ("good", CASES[1].label)]
    for row, case in zip(rows, [CASES[0], CASES[0], CASES[1], CASES[1]], strict=True):
        assert row["kind"] == "op" and row["status"] == "PASS" and row["max_abs_err"] == 0.0
        assert row["method"] == "perf_counter" and row["latency_us"] > 0 and row["graph_latency_us"] is None
        assert row["dtype"] == "float32" and row["device"] == "cpu" and row["shape"] == case.as_dict()
        tokens, hidden = case["tokens"], case["hidden"]
        assert row["flops"] == 4 * tokens * hidden
        assert row["tflops"] == pytest.approx(4 * tokens * hidden / (row["latency_us"] * 1e-6) / 1e12)
        assert row["gbps"] == pytest.approx((2 * tokens * hidden + hidden) * 4 / (row["latency_us"] * 1e-6) / 1e9)
        assert row["frac_peak_bw"] is None  # no ceilings measured on a CPU


def test_wrong_backend_is_a_timed_fail_and_raising_backend_is_untimed_fail():
    def broken(x, weight, eps):
        return x * weight

    def raising(x, weight, eps):
        raise RuntimeError("kernel exploded")

    registry = _registry(broken=("rmsnorm", broken), raising=("rmsnorm", raising))
    rows = op_rows(registry, "rmsnorm", ["broken", "raising"], CASES[:1], torch.float32, "cpu", BENCH)
    broken_row, raising_row = rows
    assert broken_row["status"] == "FAIL" and broken_row["max_abs_err"] > 0 and broken_row["latency_us"] > 0
    assert raising_row["status"] == "FAIL" and math.isinf(raising_row["max_abs_err"])
    assert "kernel exploded" in raising_row["note"] and raising_row["latency_us"] is None


def test_unsupported_case_is_a_skip_row_with_the_reason():
    registry = _registry()
    registry.add_implementation(Implementation("rmsnorm", "picky", rmsnorm_reference, plugin="test",
                                               supports=lambda case, dtype, device: "hidden must be 4096"))
    (row,) = op_rows(registry, "rmsnorm", ["picky"], CASES[:1], torch.float32, "cpu", BENCH)
    assert row["status"] == "SKIP" and row["note"] == "hidden must be 4096" and row["latency_us"] is None


def test_inplace_inputs_are_restored_before_every_timed_call():
    seen_sums = []

    def add_rmsnorm_in_place(x, residual, weight, eps):
        seen_sums.append(residual.double().sum().item())
        residual.add_(x)
        return rmsnorm_reference(residual, weight, eps), residual

    registry = _registry(inplace=("add_rmsnorm", add_rmsnorm_in_place))
    case = ADD_RMSNORM.test_cases[1]
    (row,) = op_rows(registry, "add_rmsnorm", ["inplace"], [case], torch.float32, "cpu", BENCH)
    assert row["status"] == "PASS"
    inputs = ADD_RMSNORM.make_inputs(case, torch.float32, torch.device("cpu"), 0)
    pristine = inputs["residual"].double().sum().item()
    # the check calls (the case's inputs, then the hard sets) come first, the call on refilled
    # inputs after the timing last; every timed call in between sees the pristine residual
    hard_sets = len(ADD_RMSNORM.hard_inputs(case, torch.float32, torch.device("cpu"), 0))
    timed = seen_sums[1 + hard_sets:-1]
    assert len(timed) > 10
    assert all(s == pytest.approx(pristine) for s in timed)
    assert seen_sums[-1] != pytest.approx(pristine), "the last call sees refilled values"


@pytest.mark.gpu
def test_gpu_rows_report_kernel_time_beside_time_as_called():
    registry = _registry()
    bench = SimpleNamespace(warmup_ms=2.0, rep_ms=10.0, flush_l2=True, cuda_graphs=True)
    (row,) = op_rows(registry, "rmsnorm", ["reference"], CASES[:1], torch.bfloat16, "cuda", bench)
    assert row["method"] == "cuda-events" and row["graph_method"] == "cuda-graph"
    assert row["graph_latency_us"] > 0 and row["graph_calls"] >= 1 and row["throughput_basis"] == "graph"


def _decode_inputs():
    """attention_decode, a test case's inputs, and the bytes of its KV cache (the cold inputs)."""
    from kbench.ops.attention import ATTENTION_DECODE

    case = ATTENTION_DECODE.test_cases[1]
    inputs = ATTENTION_DECODE.make_inputs(case, torch.float32, torch.device("cpu"), 0)
    cache_bytes = sum(inputs[name].numel() * inputs[name].element_size() for name in ("k_cache", "v_cache"))
    return ATTENTION_DECODE, inputs, cache_bytes


def test_cold_inputs_rotate_through_copies_spanning_twice_the_l2():
    """A graph of back-to-back decode calls must not find the KV cache in L2: the calls cycle
    through ceil(2 x L2 / cache bytes) copies of k_cache and v_cache, and share the rest."""
    op, inputs, cache_bytes = _decode_inputs()
    impl = lambda **kw: (kw["k_cache"], kw["v_cache"], kw["q"].data_ptr())  # noqa: E731
    fn, reset, sets = sweep.cycled_calls(impl, op, inputs, copies=20, l2_bytes=2 * cache_bytes)  # needs 4 sets
    assert sets == 4 and reset is None
    seen = [fn() for _ in range(8)]
    pointers = [(k.data_ptr(), v.data_ptr(), q) for k, v, q in seen]
    assert len({k for k, _, _ in pointers}) == 4 and len({v for _, v, _ in pointers}) == 4
    assert pointers[:4] == pointers[4:], "the calls cycle through the sets in order"
    assert len({q for _, _, q in pointers}) == 1, "inputs that are not cold are shared"
    assert inputs["k_cache"].data_ptr() not in {k for k, _, _ in pointers}
    for k, v, _ in seen:  # every copy holds the cache: the calls compute the same thing
        assert torch.equal(k, inputs["k_cache"]) and torch.equal(v, inputs["v_cache"])


@pytest.mark.parametrize(("copies", "l2_factor", "expected"), [
    (1, 2, 1),      # one call per replay: nothing to rotate
    (20, 0.5, 1),   # the cache alone is twice the L2: every call reads HBM anyway
    (3, 8, 3),      # at most one set per captured call
])
def test_cold_inputs_are_copied_only_where_a_graph_would_cache_them(copies, l2_factor, expected):
    op, inputs, cache_bytes = _decode_inputs()
    impl = lambda **kw: kw["k_cache"].data_ptr()  # noqa: E731
    fn, _, sets = sweep.cycled_calls(impl, op, inputs, copies=copies, l2_bytes=int(l2_factor * cache_bytes))
    assert sets == expected
    assert len({fn() for _ in range(2 * copies)}) == expected


def test_cold_copies_stay_within_the_memory_budget(monkeypatch):
    op, inputs, cache_bytes = _decode_inputs()
    monkeypatch.setattr(sweep, "INPLACE_COPY_BUDGET_BYTES", 3 * cache_bytes)
    _, _, sets = sweep.cycled_calls(lambda **kw: None, op, inputs, copies=50, l2_bytes=10 * cache_bytes)
    assert sets == 3


def _add_rmsnorm_inputs(tokens, hidden=4096):
    from kbench.ops.base import Case

    case = Case("add_rmsnorm", tokens=tokens, hidden=hidden, eps=1e-5)
    inputs = ADD_RMSNORM.make_inputs(case, torch.bfloat16, torch.device("cpu"), 0)
    return inputs, inputs["residual"].numel() * inputs["residual"].element_size()


@pytest.mark.parametrize("tokens", [64, 128])
def test_in_place_copies_span_twice_the_l2_whatever_the_launch_overhead(tokens):
    """A fast launcher (20 µs a call: 100 calls fill a replay) and a slow one (53 µs: 37) get
    the same number of calls, and their residual copies span twice the L2: from the estimate
    alone the slow one's 37 copies of 64 x 4096 (18 MB) stayed in a 50 MB L2."""
    inputs, residual_bytes = _add_rmsnorm_inputs(tokens)
    l2 = 50 * 2**20
    fast, slow = (sweep.graph_call_count(ADD_RMSNORM, inputs, estimate, l2) for estimate in (20.0, 53.0))
    assert fast == slow
    assert fast * residual_bytes >= 2 * l2
    _, _, sets = sweep.cycled_calls(lambda **kw: None, ADD_RMSNORM, inputs, copies=slow, l2_bytes=l2)
    assert sets == slow


def test_in_place_spanning_calls_stay_within_the_budget_and_the_call_cap(monkeypatch):
    inputs, residual_bytes = _add_rmsnorm_inputs(1)  # 8 KB: 12800 copies would span 2 x 50 MB
    assert sweep.graph_call_count(ADD_RMSNORM, inputs, 20.0, 50 * 2**20) == sweep.MAX_COPIED_GRAPH_CALLS
    monkeypatch.setattr(sweep, "INPLACE_COPY_BUDGET_BYTES", 300 * residual_bytes)
    assert sweep.graph_call_count(ADD_RMSNORM, inputs, 20.0, 50 * 2**20) == 300
    assert sweep.graph_call_count(ADD_RMSNORM, inputs, 20.0, 0) == 100, "no L2 given: the estimate alone"


def test_out_of_place_ops_keep_the_estimate_alone():
    from kbench.ops.base import Case

    inputs = RMSNORM.make_inputs(Case("rmsnorm", tokens=64, hidden=4096, eps=1e-5), torch.bfloat16,
                                 torch.device("cpu"), 0)
    assert [sweep.graph_call_count(RMSNORM, inputs, e, 50 * 2**20) for e in (20.0, 53.0, 5000.0)] == [100, 37, 1]


@pytest.mark.parametrize(("tokens", "kept"), [(64, 200), (32768, 0)])
def test_graphs_keep_an_output_per_input_set(monkeypatch, tokens, kept):
    """An out-of-place backend's calls get their own output buffers wherever the calls get
    their own input copies (as many as an in-place backend writes), and share one elsewhere:
    64 x 4096 takes 200 residual copies to span 2 x 50 MB; 32768 x 4096 fits one."""
    inputs, _ = _add_rmsnorm_inputs(tokens)
    seen = {}

    def fake_measure(fn, **kwargs):
        seen.update(kwargs)
        return sweep.Timing(1.0, 1.0, 1.0, 1.0, 1.0, 5, "cuda-graph", kwargs["graph_calls"])

    monkeypatch.setattr(sweep, "measure", fake_measure)
    monkeypatch.setattr(sweep, "l2_cache_bytes", lambda device: 50 * 2**20)
    timing = sweep.time_op(lambda **kw: None, ADD_RMSNORM, inputs, torch.device("cuda"), BENCH,
                           cuda_graph=True, estimate_us=20.0)
    assert seen["keep_outputs"] == kept
    assert timing.input_sets == max(kept, 1)


def test_cold_copies_span_twice_the_l2_whatever_the_launch_overhead():
    """A slow launcher (250 µs a call: 8 calls fill a replay) and a fast one (20 µs: 100) get
    the same number of KV-cache copies, enough to span twice the L2: from the estimate alone
    the slow one's 8 copies of a cache a tenth of the L2 stayed in it."""
    op, inputs, cache_bytes = _decode_inputs()
    l2 = 10 * cache_bytes  # 20 copies span 2 x L2
    sets = []
    for estimate in (20.0, 250.0):
        calls = sweep.graph_call_count(op, inputs, estimate, l2)
        sets.append(sweep.cycled_calls(lambda **kw: None, op, inputs, copies=calls, l2_bytes=l2)[2])
    assert sets == [20, 20]


@pytest.mark.parametrize(("graph", "share", "called_rep_ms"), [(True, 0.25, 25.0), (False, 0.25, 100.0), (True, 1.0, 100.0)])
def test_called_share_cuts_the_as_called_budget_only_where_a_graph_replay_times_the_kernel(monkeypatch, graph,
                                                                                           share, called_rep_ms):
    """kbench tune costs backends by their replayed kernel time: the as-called timing beside it
    gets ``called_share`` of the budget, and all of it where it is the only timing."""
    from kbench.bench.timing import Timing

    budgets = []

    def time_op(impl, op, inputs, device, bench, *, cuda_graph=False, **rest):
        budgets.append((cuda_graph, bench.warmup_ms, bench.rep_ms))
        return Timing(median_us=1.0, p20_us=1.0, p80_us=1.0, min_us=1.0, mean_us=1.0, reps=5, method="stub")

    monkeypatch.setattr(sweep, "time_op", time_op)
    monkeypatch.setattr(sweep, "graph_unavailable", lambda impl, device: None if graph else "no graphs here")
    from kbench.config import BenchConfig

    bench = BenchConfig(warmup_ms=20.0, rep_ms=100.0)
    sweep.op_results(_registry(), "rmsnorm", ["reference"], CASES[:1], torch.float32, "cpu", bench,
                     called_share=share)
    assert budgets[0] == (False, 20.0 * called_rep_ms / 100.0, called_rep_ms)
    assert budgets[1:] == ([(True, 20.0, 100.0)] if graph else [])
