"""Testing kbench backends with pytest: the conformance suite and a benchmark fixture.

Installed as a pytest plugin (entry point ``pytest11``), so in any project::

    pytest --kbench-backend mybackend            # conformance of every op mybackend registers
    pytest --kbench-backend mybackend --kbench-device cpu

and in a plugin's own tests::

    from kbench.testing import assert_conforms, conformance_cases

    @pytest.mark.parametrize("item", conformance_cases("mybackend"), ids=str)
    def test_mybackend_conforms(item):
        assert_conforms(item)

The ``kbench_benchmark`` fixture times an op with kbench's GPU timer and stores the result
in pytest-benchmark's storage (see ``kbench.testing.benchmark``).
"""

from kbench.testing.conformance import (
    ConformanceCase,
    ConformanceFailure,
    assert_conforms,
    conformance_cases,
    default_device,
    run_conformance,
    skip_reason,
)

__all__ = [
    "ConformanceCase",
    "ConformanceFailure",
    "assert_conforms",
    "conformance_cases",
    "default_device",
    "run_conformance",
    "skip_reason",
]
