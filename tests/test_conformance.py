"""Every registered implementation, on every op's small test cases, against the reference.

On a CPU this runs the reference, the torch plugin and (under TRITON_INTERPRET=1) the
Triton kernels; on a GPU machine everything available there. An implementation that
cannot run a case here is skipped with its reason.
"""

import pytest
import torch

from kbench.bench.check import check_implementation
from kbench.plugins import get_registry

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _params():
    registry = get_registry()
    for op_name, backend in sorted(registry.implementations):
        op = registry.ops[op_name]
        for case in op.test_cases:
            for dtype in op.dtypes:
                yield pytest.param(op_name, backend, case, dtype, id=f"{op_name}-{backend}-{case.label}-{dtype}".replace(" ", ","))


@pytest.mark.parametrize(("op_name", "backend", "case", "dtype"), list(_params()))
def test_implementation_matches_reference(op_name, backend, case, dtype):
    registry = get_registry()
    reason = registry.implementations[(op_name, backend)].reason(case, dtype, DEVICE)
    if reason:
        pytest.skip(reason)
    check = check_implementation(registry, op_name, backend, case, dtype, DEVICE, seed=1)
    assert check.ok, f"{op_name}/{backend} {case.label} {dtype}: {check.summary()}"
