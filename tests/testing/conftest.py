"""Fake plugin distributions: a module plus a ``*.dist-info`` with a ``kbench`` entry point.

Put on ``sys.path`` (and ``PYTHONPATH`` for subprocesses), they are found by
``importlib.metadata.entry_points`` exactly as an installed plugin is.
"""

import sys

import pytest
from fake_plugins import WRONG_RMSNORM

from kbench.plugins import get_registry
from kbench.testing.environment import write_plugin_dist


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """``plugin_dist(name, source)``: install module ``kbench_fake_<name>`` as plugin ``name``."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    get_registry.cache_clear()

    modules = []

    def install(name, source):
        modules.append(write_plugin_dist(site, name, source))
        return modules[-1]

    yield install
    for module in modules:  # the next test's plugin of the same name must be imported afresh
        sys.modules.pop(module, None)
    get_registry.cache_clear()


@pytest.fixture
def wrong_plugin(plugin_dist):
    return plugin_dist("wrongnorm", WRONG_RMSNORM)
