"""Testing kbench backends with pytest: the conformance suite (``pytest --kbench-backend NAME``,
or ``assert_conforms`` over ``conformance_cases(NAME)``) and the ``kbench_benchmark`` fixture."""

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
