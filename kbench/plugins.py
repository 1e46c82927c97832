"""The plugin manager: the core's reference backend, then every ``kbench`` entry point."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import traceback

import pluggy

from kbench import hookspecs
from kbench.registry import Implementation, Registry

ENTRY_POINT_GROUP = "kbench"
ENV_PLUGINS = "KBENCH_PLUGINS"


def _wanted_names() -> set[str] | None:
    """The plugin names ``KBENCH_PLUGINS`` allows, or None when it is unset (every plugin)."""
    allowed = os.environ.get(ENV_PLUGINS)
    if allowed is None:
        return None
    return {n.strip() for n in allowed.split(",") if n.strip()}


def _dist_version(entry_point: importlib.metadata.EntryPoint) -> str | None:
    dist = getattr(entry_point, "dist", None)
    return dist.version if dist is not None else None


def make_plugin_manager(registry: Registry) -> pluggy.PluginManager:
    """The core ops and every wanted entry point; one that fails to import, or a ``KBENCH_PLUGINS``
    name no installed plugin has, goes to ``plugin_errors``."""
    from kbench import ops as core_ops

    pm = pluggy.PluginManager("kbench")
    pm.add_hookspecs(hookspecs)
    pm.register(core_ops, name="kbench-core")
    registry.plugins["kbench-core"] = None
    registry.plugin_filter = os.environ.get(ENV_PLUGINS)
    wanted = _wanted_names()
    entry_points = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    installed = sorted({entry_point.name for entry_point in entry_points})
    for name in sorted((wanted or set()) - set(installed) - {"kbench-core"}):
        registry.plugin_errors[name] = (f"{ENV_PLUGINS} names {name!r}, but no installed plugin has that name "
                                        f"(installed: {', '.join(installed) or 'none'})")
    for entry_point in entry_points:
        if (wanted is not None and entry_point.name not in wanted) or pm.has_plugin(entry_point.name):
            continue
        try:
            module = entry_point.load()
            pm.register(module, name=entry_point.name)
        except Exception as error:
            registry.plugin_errors[entry_point.name] = _error_line(error)
            continue
        registry.plugins[entry_point.name] = _dist_version(entry_point)
    return pm


def _error_line(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}: {error}{where}"


def build_registry() -> Registry:
    registry = Registry()
    pm = make_plugin_manager(registry)
    for hookimpl in pm.hook.register_ops.get_hookimpls():
        name = hookimpl.plugin_name
        try:
            hookimpl.function(register=lambda op, _name=name: registry.add_op(op, _name))
        except Exception as error:
            registry.plugin_errors[name] = _error_line(error)
    for hookimpl in pm.hook.register_backends.get_hookimpls():
        name = hookimpl.plugin_name

        def register(op, backend, fn, *, supports=None, available=None, cuda_graphs=True,
                     version=None, description="", slow_setup=None, runs_as=None, _name=name):
            registry.add_implementation(Implementation(
                op=op, backend=backend, fn=fn, plugin=_name, supports=supports, available=available,
                cuda_graphs=cuda_graphs, version=version, description=description, slow_setup=slow_setup,
                runs_as=runs_as,
            ))

        try:
            hookimpl.function(register=register)
        except Exception as error:
            registry.plugin_errors[name] = _error_line(error)
    for hookimpl in pm.hook.record_details.get_hookimpls():
        registry.detail_hooks[hookimpl.plugin_name] = hookimpl.function
    return registry


@functools.cache
def get_registry() -> Registry:
    """The process-wide registry (built once; ``get_registry.cache_clear()`` rebuilds it)."""
    return build_registry()
