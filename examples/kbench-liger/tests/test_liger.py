"""kbench's conformance suite on backend 'liger' (needs liger-kernel and a CUDA device; skips otherwise)."""

import pytest

from kbench.plugins import get_registry
from kbench.testing import assert_conforms, conformance_cases


def test_liger_registers_its_four_ops():
    registry = get_registry()
    assert {op for (op, backend) in registry.implementations if backend == "liger"} == {
        "rmsnorm", "add_rmsnorm", "rope", "swiglu",
    }, registry.plugin_errors


@pytest.mark.parametrize("item", conformance_cases("liger"), ids=str)
def test_liger_conforms(item):
    assert_conforms(item)


@pytest.mark.parametrize(("op", "dims"), [
    ("rmsnorm", {"tokens": 4096, "hidden": 4096}),
    ("swiglu", {"tokens": 4096, "intermediate": 11008}),
])
def test_liger_at_llama_shapes(kbench_benchmark, op, dims):
    kbench_benchmark(op, "liger", dims, dtype="bfloat16")
