import pytest
import torch

from kbench.ops.base import Case, Tolerance, compare_close

TOL = Tolerance(atol=1e-3, rtol=1e-3)


def test_one_wrong_element_fails_and_is_counted():
    ref = torch.randn(64, 33)
    out = ref.clone()
    out[3, 7] += 0.5
    check = compare_close(out, ref, TOL)
    assert not check.ok and "1 of 2112" in check.detail
    assert check.max_abs_err == pytest.approx(0.5, rel=1e-6)


def test_within_tolerance_passes_with_its_error():
    ref = torch.randn(16, 16, dtype=torch.float64)
    check = compare_close(ref + 5e-4, ref, TOL)
    assert check.ok and check.max_abs_err == pytest.approx(5e-4)


def test_nan_or_inf_where_reference_is_finite_fails():
    ref = torch.randn(8)
    for bad in (float("nan"), float("inf")):
        out = ref.clone()
        out[2] = bad
        check = compare_close(out, ref, TOL)
        assert not check.ok and "non-finite" in check.detail


@pytest.mark.parametrize(("out", "words"), [
    (torch.zeros(4, 3), "shape"), (torch.zeros(3, 4, dtype=torch.float64), "dtype"), ([1.0], "not a tensor"),
])
def test_wrong_shape_dtype_or_type_fails(out, words):
    check = compare_close(out, torch.zeros(3, 4), TOL)
    assert not check.ok and words in check.detail


def test_exact_outputs_count_mismatches_against_the_allowance():
    ref = torch.arange(1000)
    out = ref.clone()
    out[0] = 5
    assert not compare_close(out, ref, Tolerance(exact=True)).ok
    assert compare_close(out, ref, Tolerance(exact=True, max_mismatch_frac=0.002)).ok


def test_tuple_outputs_are_compared_element_by_element():
    a, b = torch.randn(4), torch.randn(4)
    assert compare_close((a, b), (a, b), TOL).ok
    assert not compare_close((a, b + 1), (a, b), TOL).ok
    assert not compare_close((a,), (a, b), TOL).ok


def test_case_reads_dims_and_labels():
    case = Case("rmsnorm", tokens=4, hidden=8)
    assert case["tokens"] == 4 and case.get("missing", 1) == 1
    assert case.replace(tokens=5)["tokens"] == 5 and case.label == "tokens=4 hidden=8"
    with pytest.raises(KeyError):
        case["heads"]
