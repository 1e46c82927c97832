"""The pytest plugin (entry point ``pytest11``): ``--kbench-backend`` and the kbench fixtures.
``--kbench-backend NAME`` adds one item per (op, test case, dtype) of every op NAME registers;
a failure is reported as one line of figures, no traceback (the figures are the diagnosis).
"""

from __future__ import annotations

import importlib.util

import pytest

# Every pytest run in an environment with kbench installed loads this module: torch and the
# plugins are imported only once a kbench option, item or fixture is used.

MARKER = "kbench_conformance"


def pytest_addoption(parser):
    group = parser.getgroup("kbench", "kbench backend conformance")
    group.addoption("--kbench-backend", action="append", default=[], metavar="NAME",
                    help="Run kbench's conformance suite on every op this backend registers (repeatable).")
    group.addoption("--kbench-device", default=None, metavar="DEVICE",
                    help="Device for the conformance suite and kbench fixtures (default: cuda if present, else cpu).")


def pytest_configure(config):
    config.addinivalue_line("markers", f"{MARKER}: an item of kbench's conformance suite (--kbench-backend)")


class ConformanceItem(pytest.Item):

    def __init__(self, *, item, device: str, **kwargs):
        super().__init__(**kwargs)
        self.conformance = item
        self.device = device
        self.add_marker(MARKER)

    def runtest(self):
        from kbench.plugins import get_registry
        from kbench.testing.conformance import run_conformance, skip_reason

        registry = get_registry()
        reason = skip_reason(registry, self.conformance, self.device)
        if reason:
            pytest.skip(reason)
        run_conformance(registry, self.conformance, self.device)

    def repr_failure(self, excinfo, style=None):
        from kbench.testing.conformance import ConformanceFailure

        if isinstance(excinfo.value, ConformanceFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"kbench conformance {self.conformance.description}"


class ConformanceSuite(pytest.Collector):
    """The suite of one backend: a collector hung off the session, not off a file."""

    def __init__(self, *, cases: list, device: str, **kwargs):
        super().__init__(**kwargs)
        self.cases = cases
        self.device = device

    def collect(self):
        return [ConformanceItem.from_parent(self, name=item.id, item=item, device=self.device) for item in self.cases]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    # tryfirst: our items must exist before -k/-m deselection and --lf filtering look at the list.
    if not config.getoption("kbench_backend"):
        return
    from kbench.errors import KbenchError
    from kbench.plugins import get_registry
    from kbench.testing.conformance import conformance_cases, default_device

    device = config.getoption("kbench_device") or default_device()
    for backend in config.getoption("kbench_backend"):
        try:
            cases = conformance_cases(backend, get_registry())
        except KbenchError as error:
            raise pytest.UsageError(f"--kbench-backend: {error}") from None
        name = f"kbench[{backend}]"
        suite = ConformanceSuite.from_parent(session, name=name, nodeid=name, cases=cases, device=device)
        # genitems reports the collection as for a test file ("collected N items" counts these).
        items.extend(session.genitems(suite))


@pytest.fixture(scope="session")
def kbench_registry():
    """The registry of every installed kbench plugin (built once per process)."""
    from kbench.plugins import get_registry

    return get_registry()


@pytest.fixture(scope="session")
def kbench_device(pytestconfig) -> str:
    """``--kbench-device``, else ``cuda`` if present, else ``cpu``."""
    from kbench.testing.conformance import default_device

    return pytestconfig.getoption("kbench_device") or default_device()


def _with_pytest_benchmark(kbench_registry, kbench_device, benchmark):
    from kbench.testing.benchmark import KbenchBenchmark

    return KbenchBenchmark(kbench_registry, kbench_device, benchmark)


def _without_pytest_benchmark(kbench_registry, kbench_device):
    return _with_pytest_benchmark(kbench_registry, kbench_device, None)


# With pytest-benchmark installed, ``benchmark`` is a declared dependency, so its options
# apply to tests using this fixture as to its own (--benchmark-only runs them, --benchmark-skip
# skips them); without it the fixture still times and returns the Timing.
_fixture = _with_pytest_benchmark if importlib.util.find_spec("pytest_benchmark") else _without_pytest_benchmark
_fixture.__doc__ = """Time a kbench op with kbench's timer; stored by pytest-benchmark when it is installed.

    ``kbench_benchmark(op, backend, case=None, *, dtype=None, warmup_ms=25, rep_ms=100,
    cuda_graph=False) -> Timing``; ``case`` is a ``Case`` or a dict of dims overriding the
    op's first test case. See ``kbench.testing.benchmark``.
    """
kbench_benchmark = pytest.fixture(_fixture, name="kbench_benchmark")
