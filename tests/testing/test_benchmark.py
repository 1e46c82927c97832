"""The kbench_benchmark fixture: kbench's timer, pytest-benchmark's storage, kbench compare's reader."""

import json

import pytest

from kbench.results import load
from kbench.results.pytest_benchmark import benchmark_row, is_pytest_benchmark

pytest_plugins = ["pytester"]

BENCH_TEST = """
    def test_torch_rmsnorm(kbench_benchmark):
        timing = kbench_benchmark("rmsnorm", "torch", {"tokens": 8, "hidden": 128}, warmup_ms=1, rep_ms=5)
        assert timing.method == "perf_counter" and timing.reps >= 5
"""


@pytest.fixture
def saved_benchmark(pytester, monkeypatch):
    monkeypatch.setenv("KBENCH_PLUGINS", "torch")
    pytester.makepyfile(BENCH_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider", "--kbench-device", "cpu", "--benchmark-json=out.json")
    result.assert_outcomes(passed=1)
    return pytester.path / "out.json"


def test_samples_stored_are_kbench_timer_samples(saved_benchmark):
    data = json.loads(saved_benchmark.read_text())
    (bench,) = data["benchmarks"]
    info, stats = bench["extra_info"], bench["stats"]
    assert info["op"] == "rmsnorm" and info["backend"] == "torch" and info["correct"] is True
    assert info["case"] == {"tokens": 8, "hidden": 128, "eps": 1e-5} and info["dtype"] == "float32"
    # pytest-benchmark's statistics are computed from exactly the repetitions kbench timed.
    assert stats["rounds"] == info["reps"] == len(stats["data"]) and stats["iterations"] == 1
    assert stats["median"] * 1e6 == pytest.approx(info["median_us"])
    assert stats["min"] * 1e6 == pytest.approx(info["min_us"])
    assert bench["group"] == "rmsnorm tokens=8 hidden=128 eps=1e-05 float32"


def test_kbench_results_load_reads_the_saved_file(saved_benchmark):
    frame = load([saved_benchmark])
    (row,) = frame.to_dict("records")
    info = json.loads(saved_benchmark.read_text())["benchmarks"][0]["extra_info"]
    assert (row["kind"], row["op"], row["backend"], row["dtype"], row["status"]) == ("op", "rmsnorm", "torch", "float32", "PASS")
    assert row["case"] == "tokens=8 hidden=128 eps=1e-05"
    assert row["latency_us"] == pytest.approx(info["median_us"])
    assert row["p20_us"] == pytest.approx(info["p20_us"]) and row["p80_us"] == pytest.approx(info["p80_us"])
    assert row["run_id"] == "out" and row["spec_name"] == "pytest-benchmark"


def test_a_wrong_kernel_is_not_timed(pytester, monkeypatch, wrong_plugin):
    monkeypatch.setenv("KBENCH_PLUGINS", "wrongnorm")
    pytester.makepyfile("""
        def test_wrong(kbench_benchmark):
            kbench_benchmark("rmsnorm", "wrongnorm", warmup_ms=1, rep_ms=5)
    """)
    result = pytester.runpytest("-p", "no:cacheprovider", "--kbench-device", "cpu", "--benchmark-json=out.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*rmsnorm/wrongnorm tokens=1 hidden=64 eps=1e-05 float32 on cpu: FAIL max_abs=*"])
    saved = pytester.path / "out.json"
    text = saved.read_text() if saved.exists() else ""
    assert not text or json.loads(text)["benchmarks"] == []  # nothing was timed, nothing stored


def test_plain_pytest_benchmark_entries_become_rows_named_after_the_test():
    entry = {
        "name": "test_sort", "fullname": "tests/test_x.py::test_sort", "param": None, "extra_info": {},
        "stats": {"min": 1e-6, "max": 5e-6, "mean": 2.5e-6, "median": 2e-6, "rounds": 4, "iterations": 10,
                  "data": [1e-6, 2e-6, 2e-6, 5e-6]},
    }
    row = benchmark_row(entry)
    assert (row["op"], row["backend"], row["status"], row["reps"]) == ("test_sort", "pytest", None, 4)
    # seconds per round of 10 iterations -> µs per call
    assert row["latency_us"] == pytest.approx(0.2) and row["min_us"] == pytest.approx(0.1)
    # 20th percentile of [1, 2, 2, 5] by linear interpolation: rank 0.6 -> 1 + 0.6 * (2 - 1)
    assert row["p20_us"] == pytest.approx(0.16)


def test_only_pytest_benchmark_files_are_detected():
    assert is_pytest_benchmark({"machine_info": {}, "benchmarks": []})
    assert not is_pytest_benchmark({"schema_version": 1, "rows": [], "run_id": "x"})


def test_kbench_compare_reads_pytest_benchmark_files(pytester, monkeypatch):
    from click.testing import CliRunner

    from kbench.cli import cli

    monkeypatch.setenv("KBENCH_PLUGINS", "torch")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.parametrize("backend", ["reference", "torch"])
        def test_rmsnorm(kbench_benchmark, backend):
            kbench_benchmark("rmsnorm", backend, {"tokens": 8, "hidden": 128}, warmup_ms=1, rep_ms=5)
    """)
    pytester.runpytest("-p", "no:cacheprovider", "--kbench-device", "cpu", "--benchmark-json=out.json").assert_outcomes(passed=2)
    result = CliRunner().invoke(cli, ["compare", "--baseline", "reference", "--format", "csv",
                                      str(pytester.path / "out.json")])
    assert result.exit_code in (0, 1), result.output  # 1: torch slower than reference on this machine
    assert "row,op,rmsnorm,torch,reference,tokens=8 hidden=128 eps=1e-05,float32," in result.output
