"""Fake plugin distributions: a module plus a ``*.dist-info`` with a ``kbench`` entry point.

Put on ``sys.path`` (and ``PYTHONPATH`` for subprocesses), they are found by
``importlib.metadata.entry_points`` exactly as an installed plugin is.
"""

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

    yield lambda name, source: write_plugin_dist(site, name, source)
    get_registry.cache_clear()


@pytest.fixture
def wrong_plugin(plugin_dist):
    return plugin_dist("wrongnorm", WRONG_RMSNORM)
