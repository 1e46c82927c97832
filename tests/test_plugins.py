import importlib.metadata
import sys
import types

import pytest

import kbench
from kbench import plugins
from kbench.ops.norm import rmsnorm_reference


def _entry_point(name, module):
    return importlib.metadata.EntryPoint(name=name, value=module, group="kbench")


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Replace the installed entry points with the given fake ones."""

    def install(*entry_points):
        monkeypatch.setattr(importlib.metadata, "entry_points",
                            lambda group=None: [e for e in entry_points if e.group == group])
    return install


@pytest.fixture
def good_plugin(monkeypatch):
    module = types.ModuleType("kbench_test_good_plugin")

    @kbench.hookimpl
    def register_backends(register):
        register("rmsnorm", "good", rmsnorm_reference, version="1.2.3")

    module.register_backends = register_backends
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


def test_entry_point_plugin_registers_a_backend(fake_entry_points, good_plugin):
    fake_entry_points(_entry_point("good", "kbench_test_good_plugin"))
    registry = plugins.build_registry()
    impl = registry.get("rmsnorm", "good")
    assert impl.plugin == "good" and impl.version == "1.2.3"


def test_plugin_that_fails_to_import_is_reported_not_fatal(fake_entry_points, good_plugin):
    fake_entry_points(_entry_point("broken", "kbench_no_such_module_xyz"), _entry_point("good", "kbench_test_good_plugin"))
    registry = plugins.build_registry()
    assert "broken" in registry.plugin_errors
    assert "ModuleNotFoundError" in registry.plugin_errors["broken"]
    assert registry.get("rmsnorm", "good")


def test_plugin_whose_hook_raises_is_reported(fake_entry_points, monkeypatch):
    module = types.ModuleType("kbench_test_raising_plugin")

    @kbench.hookimpl
    def register_backends(register):
        raise RuntimeError("boom")

    module.register_backends = register_backends
    monkeypatch.setitem(sys.modules, module.__name__, module)
    fake_entry_points(_entry_point("raising", module.__name__))
    registry = plugins.build_registry()
    assert "RuntimeError: boom" in registry.plugin_errors["raising"]
    assert registry.backends("rmsnorm") == ["reference"]


def test_kbench_plugins_env_limits_what_loads(fake_entry_points, good_plugin, monkeypatch):
    fake_entry_points(_entry_point("good", "kbench_test_good_plugin"))
    monkeypatch.setenv("KBENCH_PLUGINS", "")
    registry = plugins.build_registry()
    assert registry.backends("rmsnorm") == ["reference"]
    assert list(registry.plugins) == ["kbench-core"]
    monkeypatch.setenv("KBENCH_PLUGINS", "good")
    assert "good" in plugins.build_registry().backends("rmsnorm")


def test_builtin_plugins_load_through_entry_points():
    names = {e.name for e in importlib.metadata.entry_points(group="kbench")}
    assert {"torch", "triton", "cuda", "flash"} <= names
    registry = plugins.build_registry()
    assert "torch" in registry.plugins
    assert registry.get("rmsnorm", "torch").plugin == "torch"


def test_record_details_hook_is_collected_and_its_errors_contained(fake_entry_points, monkeypatch):
    module = types.ModuleType("kbench_test_details_plugin")

    @kbench.hookimpl
    def record_details():
        return {"tuned_configs": {"rmsnorm": {"4096": "BLOCK 1024, 8 warps"}}}

    module.record_details = record_details
    broken = types.ModuleType("kbench_test_broken_details")

    @kbench.hookimpl
    def record_details_broken():
        raise RuntimeError("no state")

    broken.record_details = record_details_broken
    for m in (module, broken):
        monkeypatch.setitem(sys.modules, m.__name__, m)
    fake_entry_points(_entry_point("tuned", module.__name__), _entry_point("broken", broken.__name__))
    details = plugins.build_registry().plugin_details()
    assert details["tuned"] == {"tuned_configs": {"rmsnorm": {"4096": "BLOCK 1024, 8 warps"}}}
    assert "RuntimeError: no state" in details["broken"]
