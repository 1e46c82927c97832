"""The verdict of scripts/device/compile_pairs.py (the GPU script's arithmetic, on the CPU)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "device" / "compile_pairs.py"


@pytest.fixture(scope="module")
def pairs():
    spec = importlib.util.spec_from_file_location("compile_pairs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_process_is_slower_only_where_its_best_round_is(pairs):
    # compile / triton per round: 0.9, 1.0, 0.95 -> median 0.95, best round 1.0: not slower
    case = {"compile": [0.9, 1.0, 0.95], "triton": [1.0, 1.0, 1.0], "cuda": [1.0, 1.25, 1.0]}
    assert pairs.summary([case], "triton") == pytest.approx((1.0, 0.95, 0.9, 1.0, 0))
    # compile / cuda: 0.9, 0.8, 0.95: every round below 1
    assert pairs.summary([case], "cuda")[1:] == pytest.approx((0.9, 0.8, 0.95, 1))


def test_several_processes_report_the_spread_of_their_medians_and_count_the_slower(pairs):
    fast = {"compile": [2.2, 2.2, 2.2], "cuda": [2.4, 2.4, 2.2]}  # best round 1.0: not slower
    faster = {"compile": [2.2, 2.2, 2.2], "cuda": [2.4, 2.4, 2.4]}  # slower in every round
    slow = {"compile": [2.9, 2.9, 2.9], "cuda": [2.4, 2.4, 2.4]}
    own_us, ratio, low, high, slower = pairs.summary([fast, faster, slow], "cuda")
    assert slower == 1
    assert (low, ratio, high) == pytest.approx((2.2 / 2.4, 2.2 / 2.4, 2.9 / 2.4))
    assert own_us == pytest.approx(2.4)


def test_a_backend_missing_from_a_case_has_no_summary(pairs):
    assert pairs.summary([{"compile": [1.0], "cuda": []}], "cuda") is None
    assert pairs.summary([{"compile": [1.0]}], "compile-inplace") is None


def test_the_table_marks_the_slower_cases(pairs, capsys):
    per_process = [{"a": {"compile": [1.0], "cuda": [2.0]}, "b": {"compile": [2.0], "cuda": [1.0]}},
                   {"a": {"compile": [1.0], "cuda": [0.5]}, "b": {"compile": [2.0], "cuda": [1.0]}}]
    lines = pairs.print_table("rope", per_process, rounds=1)
    row_a, row_b = lines[-2:]
    assert row_a.startswith("| a |") and "slower in 1 of 2" in row_a
    assert row_b.startswith("| b |") and "slower" not in row_b
    assert "slower in 1 of 2" in capsys.readouterr().out
    one = pairs.print_table("rope", per_process[:1], rounds=1, echo=False)
    assert one[-2] == "| a | 1.00 | 2.00 | **0.50 [0.50, 0.50] slower** |" and "slower" not in one[-1]


def test_the_markdown_says_over_how_many_processes(pairs):
    from types import SimpleNamespace

    runs = [{"rope": {"a": {"compile": [1.0], "cuda": [2.0]}}}] * 2
    lines = pairs.markdown_lines(SimpleNamespace(rounds=1, processes=3, compile_configs=0), runs)
    assert "Over 2 fresh processes (of 3 asked for)" in lines[0]
    assert lines[-1].startswith("| a | 1.00 | 2.00 |") and "slower in 2 of 2" in lines[-1]


def test_spec_cases_keep_the_chosen_token_counts_once_each(pairs, monkeypatch):
    from kbench.plugins import get_registry

    monkeypatch.chdir(SCRIPT.parent.parent.parent)  # the specs are model_specs/NAME.yaml
    registry = get_registry()
    small = pairs.spec_cases(registry, "rope", ["llama2-7b", "llama2-13b"], lambda tokens: tokens <= 64)
    assert small and all(case["tokens"] <= 64 for case in small.values())
    assert {case["heads"] for case in small.values()} == {32, 40}
    once = pairs.spec_cases(registry, "rope", ["llama2-7b"])
    assert pairs.spec_cases(registry, "rope", ["llama2-7b", "llama2-7b"]) == once
    assert set(small) < set(once) | set(pairs.spec_cases(registry, "rope", ["llama2-13b"]))


def fake_launcher(block: int, warps: int):
    from types import SimpleNamespace

    return SimpleNamespace(config=SimpleNamespace(kwargs={"XBLOCK": block}, num_warps=warps))


@pytest.fixture
def restored_autotuner(monkeypatch):
    """CachingAutotuner.bench and Inductor's cache switch as they were, after the test. (Not
    monkeypatch for the switch: it is an alias in Inductor's config module, and monkeypatch's
    undo deleted it, which broke every later torch.compile of the session.)"""
    import torch
    from torch._inductor.runtime.triton_heuristics import CachingAutotuner

    monkeypatch.setattr(CachingAutotuner, "bench", CachingAutotuner.bench)
    caches_off = torch._inductor.config.force_disable_caches
    yield CachingAutotuner
    torch._inductor.config.force_disable_caches = caches_off


def test_a_forced_config_is_the_one_the_autotuner_times_fastest(pairs, restored_autotuner):
    from types import SimpleNamespace

    import torch

    chosen = []
    pairs.force_compile_config(3, chosen)
    launchers = [fake_launcher(1024, 4), fake_launcher(512, 8)]
    tuner = SimpleNamespace(launchers=launchers, fn=SimpleNamespace(__name__="triton_poi_fused_0"))
    timings = {index: restored_autotuner.bench(tuner, launcher) for index, launcher in enumerate(launchers)}
    assert min(timings, key=timings.get) == 1  # config 3 of 2 candidates: the second
    assert chosen == ["triton_poi_fused_0: XBLOCK=512 num_warps=8 (2 of 2)"]
    assert torch._inductor.config.force_disable_caches  # no cached choice may skip the timing


def test_the_forcing_leaves_torch_compile_working_after_it(pairs):
    # runs after the forcing tests: the fixture's undo must leave Inductor's config whole
    import torch

    assert isinstance(torch._inductor.config.force_disable_caches, bool)
    assert torch.compile(lambda t: t * 2 + 1)(torch.ones(3)).tolist() == [3.0, 3.0, 3.0]


def test_the_markdown_lists_the_config_each_process_ran(pairs):
    from types import SimpleNamespace

    runs = [{"rope": {"a": {"compile": [1.0], "cuda": [2.0]}}}] * 2
    configs = [{"rope": {"a": ["k: XBLOCK=512 warps=4 (1 of 2)"]}}, {"rope": {"a": ["k: XBLOCK=256 warps=4 (2 of 2)"]}}]
    lines = pairs.markdown_lines(SimpleNamespace(rounds=1, processes=2, compile_configs=2), runs, configs)
    assert "k-th candidate config" in lines[0]
    assert lines[-2:] == ["| rope | a | 1 | k: XBLOCK=512 warps=4 (1 of 2) |", "| rope | a | 2 | k: XBLOCK=256 warps=4 (2 of 2) |"]
    assert pairs.config_lines([{}, {}]) == []


@pytest.mark.gpu
def test_forced_configs_run_on_the_gpu(pairs, restored_autotuner):
    """Each forced index gives torch.compile's pointwise kernel a different launcher, and the
    compiled function still computes the reference."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    ran = []
    for index in range(2):
        chosen = []
        pairs.force_compile_config(index, chosen)
        torch._dynamo.reset()
        x = torch.randn(64 + index, 4096, device="cuda")  # a kernel of its own: a loaded one is tuned already
        out = torch.compile(lambda t: torch.sin(t) * 2.0 + 1.0, dynamic=False)(x)
        torch.testing.assert_close(out, torch.sin(x) * 2.0 + 1.0)
        assert len(chosen) == 1 and f"({index + 1} of 2)" in chosen[0]
        ran.append(chosen[0].split(":", 1)[1])
    assert ran[0] != ran[1]
