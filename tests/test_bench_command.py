"""`kbench bench`: shape sweeps from the command line, the run record it writes, its exit status."""

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kbench.cli import cli
from kbench.commands.bench import parse_dim_args, parse_value, sweep_cases
from kbench.errors import KbenchError
from kbench.ops.base import Case
from kbench.plugins import get_registry
from kbench.testing.environment import write_plugin_dist

FAST = ["--warmup-ms", "1", "--rep-ms", "2", "--device", "cpu"]

HALF_SCALED_RMSNORM = """
    import kbench
    from kbench.ops.norm import rmsnorm_reference


    def rmsnorm(x, weight, eps):
        return rmsnorm_reference(x, weight, eps) * 0.5  # the bug


    @kbench.hookimpl
    def register_backends(register):
        register("rmsnorm", "halfnorm", rmsnorm)
"""


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """Install fake plugins for this test only; KBENCH_PLUGINS limits loading to them and torch."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("KBENCH_PLUGINS", "torch,halfnorm,broken")
    get_registry.cache_clear()
    modules = []
    yield lambda name, source: modules.append(write_plugin_dist(site, name, source))
    for module in modules:  # the next test's plugin of the same name must be imported afresh
        sys.modules.pop(module, None)
    get_registry.cache_clear()


def bench(*args, out=None):
    extra = ["--out", str(out)] if out else ["--no-record"]
    return CliRunner().invoke(cli, ["bench", *args, *FAST, *extra])


def text(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def only_record(out):
    (path,) = out.glob("*.json")
    return json.loads(path.read_text())


def test_sweep_is_the_cross_product_over_the_first_test_case(plugins, tmp_path):
    result = bench("rmsnorm", "--backend", "torch", "--vs", "reference", "--tokens", "1,5", "--hidden=64,96", out=tmp_path)
    assert result.exit_code == 0, result.output
    record = only_record(tmp_path)
    cases = [(row["shape"]["tokens"], row["shape"]["hidden"], row["backend"]) for row in record["rows"]]
    assert cases == [(t, h, b) for t in (1, 5) for h in (64, 96) for b in ("torch", "reference")]
    assert {row["shape"]["eps"] for row in record["rows"]} == {1e-5}  # from the op's first test case
    assert {row["status"] for row in record["rows"]} == {"PASS"} and record["status"] == "PASS"
    assert all(row["latency_us"] > 0 and row["method"] == "perf_counter" for row in record["rows"])
    assert record["spec"]["name"] == "bench-rmsnorm" and record["backends"]["norm"]["backend"] == "torch"
    assert "speedup" in text(result)  # the --vs comparison table


def test_record_is_read_by_kbench_results(plugins, tmp_path):
    from kbench.results import load

    bench("rmsnorm", "--backend", "torch", "--tokens", "3", "--hidden", "64", out=tmp_path)
    frame = load([tmp_path])
    assert list(frame["backend"]) == ["torch"] and list(frame["case"]) == ["tokens=3 hidden=64 eps=1e-05"]


def test_a_wrong_kernel_is_reported_fail_with_its_figures_and_exit_1(plugins, tmp_path):
    plugins("halfnorm", HALF_SCALED_RMSNORM)
    result = bench("rmsnorm", "--backend", "halfnorm", "--vs", "torch", "--tokens", "4", "--hidden", "64", out=tmp_path)
    assert result.exit_code == 1, result.output
    assert "FAIL" in text(result) and "100.000% of elements out of tolerance" in text(result)
    (row, _) = only_record(tmp_path)["rows"]
    assert row["backend"] == "halfnorm" and row["status"] == "FAIL"
    assert row["max_abs_err"] > 0.1 and row["max_rel_err"] == pytest.approx(0.5, rel=1e-3)


def test_a_plugin_that_raises_on_import_is_listed_and_the_others_still_run(plugins, tmp_path):
    plugins("broken", "raise RuntimeError('cannot import me')\n")
    listed = CliRunner().invoke(cli, ["list", "--json", "--op", "rmsnorm"])
    data = json.loads(listed.output)
    assert "RuntimeError: cannot import me" in data["plugin_errors"]["broken"]
    assert {"reference", "torch"} <= {row["backend"] for row in data["implementations"]}
    table = CliRunner().invoke(cli, ["list", "--op", "rmsnorm"])
    assert "plugin 'broken' failed to load" in text(table)
    result = bench("rmsnorm", "--backend", "torch", "--tokens", "2", "--hidden", "64", out=tmp_path)
    assert result.exit_code == 0, result.output
    assert only_record(tmp_path)["plugin_errors"]["broken"].startswith("RuntimeError")


def test_a_backend_that_can_run_none_of_the_cases_is_an_error_with_its_reason(plugins):
    plugins("halfnorm", HALF_SCALED_RMSNORM.replace("rmsnorm)", "rmsnorm, supports=lambda c, d, v: 'float32 only')"))
    result = bench("rmsnorm", "--backend", "halfnorm", "--vs", "torch", "--tokens", "4", "--hidden", "64")
    assert result.exit_code == 2, result.output
    assert "Backend 'halfnorm' cannot run rmsnorm" in text(result) and "float32 only" in text(result)
    assert "Backends that can: reference" in text(result)


def test_unknown_backend_of_a_broken_plugin_names_the_import_error(plugins):
    plugins("broken", "raise RuntimeError('cannot import me')\n")
    result = bench("rmsnorm", "--backend", "broken")
    assert result.exit_code == 2
    assert "plugin 'broken' failed to load: RuntimeError: cannot import me" in text(result)


@pytest.mark.parametrize(("args", "message"), [
    (["rmsnrom", "--backend", "torch"], "Did you mean 'rmsnorm'?"),
    (["rmsnorm", "--backend", "trch"], "Did you mean 'torch'?"),
    (["rmsnorm", "--backend", "torch", "--vs", "refrence"], "Did you mean 'reference'?"),
    (["rmsnorm", "--backend", "torch", "--tokns", "4"], "Did you mean 'tokens'?"),
    (["rmsnorm", "--backend", "torch", "--tokens", "four"], "'four' is not an integer"),
    (["rmsnorm", "--backend", "torch", "--tokens"], "--tokens needs values"),
    (["rmsnorm", "--backend", "torch", "stray"], "Unexpected argument 'stray'"),
    (["rmsnorm", "--backend", "torch", "--dtype", "bf17"], "Unknown dtype 'bf17'"),
    (["rmsnorm", "--backend", "torch", "--hidden", "-5"], "--hidden -5: a dimension cannot be negative"),
    (["topk", "--backend", "reference", "--k", "100000"], "topk: k is 100000 for a vocab of 1000"),
])
def test_command_line_mistakes_exit_2_with_the_fix(plugins, tmp_path, args, message):
    out = tmp_path / "records"
    result = bench(*args, out=out)
    assert result.exit_code == 2, result.output
    assert message in text(result)
    assert not out.exists() or not list(out.iterdir())  # no record, not even a partial one


def test_dimension_arguments_parse_both_spellings():
    assert parse_dim_args(["--tokens", "1,16", "--kv-heads=8", "--hidden", "4096"]) == {
        "tokens": ["1", "16"], "kv_heads": ["8"], "hidden": ["4096"],
    }


def test_values_take_the_type_of_the_default():
    assert parse_value("3", 1, "tokens") == 3
    assert parse_value("1e-6", 1e-5, "eps") == 1e-6
    assert parse_value("false", True, "causal") is False
    assert parse_value("128/512", (64, 64), "seq_lens") == (128, 512)
    assert parse_value("half", "interleaved", "style") == "half"
    with pytest.raises(KbenchError):
        parse_value("1.5", 1, "tokens")


def test_sweep_cases_keep_dimensions_not_given():
    op = get_registry().op("rmsnorm")
    cases = sweep_cases(op, {"tokens": ["2", "3"]})
    first = op.test_cases[0]
    assert cases == [first.replace(tokens=2), first.replace(tokens=3)]
    assert sweep_cases(op, {}) == [first] and isinstance(cases[0], Case)


def test_cases_from_a_spec_are_the_shapes_the_model_runs(plugins, tmp_path):
    from kbench.plan import model_cases
    from kbench.spec import load_spec

    spec_path = Path(__file__).resolve().parent.parent / "model_specs" / "tiny-llama.yaml"
    result = bench("rmsnorm", "--backend", "torch", "--spec", str(spec_path), out=tmp_path)
    assert result.exit_code == 0, result.output
    record = only_record(tmp_path)
    expected = model_cases(load_spec(spec_path), get_registry().op("rmsnorm"))
    assert [row["case"] for row in record["rows"]] == [case.label for case in expected]
    assert record["spec"]["name"] == "tiny-llama"


def test_spec_and_dimension_flags_together_are_refused(plugins):
    spec_path = Path(__file__).resolve().parent.parent / "model_specs" / "tiny-llama.yaml"
    result = bench("rmsnorm", "--backend", "torch", "--spec", str(spec_path), "--tokens", "3")
    assert result.exit_code == 2 and "either --spec or --DIM values" in text(result)
