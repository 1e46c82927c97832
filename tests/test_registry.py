import pytest
import torch

from kbench.errors import KbenchError
from kbench.ops.base import Case
from kbench.ops.norm import RMSNORM
from kbench.registry import Implementation, Registry


@pytest.fixture
def small_registry():
    registry = Registry()
    registry.add_op(RMSNORM, "kbench-core")
    return registry


def test_reference_backend_is_registered_with_every_op(small_registry):
    assert small_registry.backends("rmsnorm") == ["reference"]
    assert small_registry.get("rmsnorm", "reference").fn is RMSNORM.reference


def test_unknown_op_names_the_closest_match(small_registry):
    with pytest.raises(KbenchError, match="Did you mean 'rmsnorm'"):
        small_registry.op("rmsnrom")


def test_unknown_backend_lists_what_exists(small_registry):
    with pytest.raises(KbenchError, match="Known backend for rmsnorms: reference"):
        small_registry.get("rmsnorm", "trtion")


def test_unavailable_backend_reports_reason_and_alternatives(small_registry):
    small_registry.add_implementation(Implementation(
        "rmsnorm", "gpu-only", RMSNORM.reference, "test",
        supports=lambda case, dtype, device: None if device.type == "cuda" else "needs a CUDA device"))
    case = Case("rmsnorm", tokens=2, hidden=8, eps=1e-5)
    with pytest.raises(KbenchError) as error:
        small_registry.resolve("rmsnorm", "gpu-only", case, torch.float32, "cpu")
    assert "needs a CUDA device" in str(error.value)
    assert "Backends that can: reference" in str(error.value)


def test_require_refuses_a_backend_that_cannot_run_here_and_names_those_that_can(small_registry):
    small_registry.add_implementation(Implementation("rmsnorm", "absent", RMSNORM.reference, "t",
                                                     available=lambda: "needs a library"))
    small_registry.add_implementation(Implementation("rmsnorm", "present", RMSNORM.reference, "t",
                                                     available=lambda: None))
    assert small_registry.require("rmsnorm", "present").backend == "present"
    with pytest.raises(KbenchError) as error:
        small_registry.require("rmsnorm", "absent")
    assert "rmsnorm: backend 'absent' cannot run here: needs a library" in str(error.value)
    assert "these can: reference, present" in str(error.value)


def test_availability_probe_that_raises_becomes_a_reason(small_registry):
    def probe():
        raise ImportError("no module named fancy")

    small_registry.add_implementation(Implementation("rmsnorm", "fancy", RMSNORM.reference, "t", available=probe))
    reason = small_registry.get("rmsnorm", "fancy").unavailable_reason()
    assert "ImportError" in reason and "fancy" in reason


def test_duplicate_registration_is_an_error(small_registry):
    impl = Implementation("rmsnorm", "x", RMSNORM.reference, "a")
    small_registry.add_implementation(impl)
    with pytest.raises(KbenchError, match="already registered"):
        small_registry.add_implementation(Implementation("rmsnorm", "x", RMSNORM.reference, "b"))


def test_backend_for_unknown_op_is_an_error(small_registry):
    with pytest.raises(KbenchError, match="unknown op 'rmsnrm'"):
        small_registry.add_implementation(Implementation("rmsnrm", "x", RMSNORM.reference, "a"))


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (lambda i: i | {"x": i["x"].to(torch.int32)}, "x has dtype int32"),
        (lambda i: i | {"x": i["x"][None]}, "x must have 2 dimensions"),
        (lambda i: i | {"weight": i["weight"][:-1]}, "weight has shape"),
        (lambda i: i | {"x": [1, 2]}, "x must be a torch.Tensor"),
    ],
)
def test_call_with_wrong_inputs_is_a_one_line_error(small_registry, inputs, message):
    good = RMSNORM.make_inputs(Case("rmsnorm", tokens=3, hidden=16, eps=1e-5), torch.float32, "cpu", 0)
    with pytest.raises(KbenchError, match=message):
        small_registry.call("rmsnorm", "reference", **inputs(good))


def test_only_the_prefill_attention_reference_is_not_graph_capturable(registry):
    # the prefill reference loops over cu_seqlens on the host; the decode reference masks the
    # whole capacity on the device, so an all-reference decode step can be captured
    assert registry.get("attention_prefill", "reference").cuda_graphs is False
    assert registry.get("attention_decode", "reference").cuda_graphs is True
    assert registry.get("rmsnorm", "reference").cuda_graphs is True
