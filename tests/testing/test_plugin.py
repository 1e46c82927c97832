"""`pytest --kbench-backend NAME` (kbench.testing.plugin), run through pytester."""

import pytest
from fake_plugins import BROKEN_ON_IMPORT, PICKY_RMSNORM, SCRIBBLING_RMSNORM

pytest_plugins = ["pytester"]


@pytest.fixture
def run_suite(pytester, monkeypatch):
    def run(*args):
        # Only the fake plugins and torch load: keeps the runs fast and independent of other backends.
        monkeypatch.setenv("KBENCH_PLUGINS", "wrongnorm,scribbler,picky,broken,torch")
        return pytester.runpytest("-p", "no:cacheprovider", "--kbench-device", "cpu", *args)
    return run


def test_a_correct_backend_passes_every_case_and_dtype(run_suite):
    result = run_suite("--kbench-backend", "torch", "-v")
    # torch registers rmsnorm: 2 test cases x 3 dtypes
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["*kbench?torch?::rmsnorm-tokens=1,hidden=64,eps=1e-05-float32 PASSED*"])


def test_a_wrong_kernel_fails_naming_op_case_dtype_and_error_figures(run_suite, wrong_plugin):
    result = run_suite("--kbench-backend", "wrongnorm")
    result.assert_outcomes(failed=6)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*rmsnorm/wrongnorm tokens=37 hidden=320 eps=1e-06 bfloat16 on cpu: FAIL max_abs=* max_rel=* (output 0: *% of elements out of tolerance (* of 11840))*",
    ])


def test_writing_an_input_the_contract_does_not_allow_fails(run_suite, plugin_dist):
    plugin_dist("scribbler", SCRIBBLING_RMSNORM)
    result = run_suite("--kbench-backend", "scribbler")
    result.assert_outcomes(failed=6)
    result.stdout.fnmatch_lines(["*rmsnorm/scribbler * FAIL *wrote input(s) x in place (the rmsnorm contract allows: none)*"])


def test_cases_a_backend_declines_are_skipped_with_its_reason(run_suite, plugin_dist):
    plugin_dist("picky", PICKY_RMSNORM)
    result = run_suite("--kbench-backend", "picky", "-rs")
    result.assert_outcomes(passed=2, skipped=4)
    result.stdout.fnmatch_lines(["*float32 only*"])


def test_unknown_backend_is_a_usage_error_with_the_closest_match(run_suite):
    result = run_suite("--kbench-backend", "trch")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*Unknown backend 'trch'. Did you mean 'torch'?*"])


def test_a_backend_whose_plugin_fails_to_import_says_why(run_suite, plugin_dist):
    plugin_dist("broken", BROKEN_ON_IMPORT)
    result = run_suite("--kbench-backend", "broken")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*plugin 'broken' failed to load: RuntimeError: this plugin cannot be imported*"])


def test_suite_items_can_be_selected_by_keyword_and_marker(run_suite, wrong_plugin):
    result = run_suite("--kbench-backend", "torch", "--kbench-backend", "wrongnorm", "-m", "kbench_conformance",
                       "-k", "torch and float32")
    result.assert_outcomes(passed=2)


def test_assert_conforms_in_a_plugins_own_tests(pytester, wrong_plugin):
    pytester.makepyfile("""
        import pytest
        from kbench.testing import assert_conforms, conformance_cases

        @pytest.mark.parametrize("item", conformance_cases("wrongnorm"), ids=str)
        def test_wrongnorm_conforms(item):
            assert_conforms(item, device="cpu")
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=6)
    result.stdout.fnmatch_lines(["*ConformanceFailure: rmsnorm/wrongnorm tokens=1 hidden=64 eps=1e-05 float32 on cpu: FAIL*"])
