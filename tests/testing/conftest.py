"""Fake plugin distributions: a module plus a ``*.dist-info`` with a ``kbench`` entry point.

Put on ``sys.path`` (and ``PYTHONPATH`` for subprocesses), they are found by
``importlib.metadata.entry_points`` exactly as an installed plugin is.
"""

import textwrap

import pytest
from fake_plugins import WRONG_RMSNORM

from kbench.plugins import get_registry


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """``plugin_dist(name, source)``: install module ``kbench_fake_<name>`` as plugin ``name``."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    get_registry.cache_clear()

    def install(name: str, source: str) -> str:
        module = f"kbench_fake_{name.replace('-', '_')}"
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        dist_info = site / f"{module}-0.1.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
        (dist_info / "entry_points.txt").write_text(f"[kbench]\n{name} = {module}\n")
        return module

    yield install
    get_registry.cache_clear()


@pytest.fixture
def wrong_plugin(plugin_dist):
    return plugin_dist("wrongnorm", WRONG_RMSNORM)
