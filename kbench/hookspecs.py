"""The whole plugin contract of kbench: three hooks.

A plugin is a module with ``@kbench.hookimpl`` functions named after the hooks below,
found through the ``kbench`` entry-point group::

    [project.entry-points.kbench]
    mybackend = "my_package.plugin"

The built-in plugins (``plugins/kbench_*``) are registered exactly this way.
``KBENCH_PLUGINS=name,name`` limits which entry points load (empty: none but the
reference backend, which is part of the core).
"""

import pluggy

hookspec = pluggy.HookspecMarker("kbench")


@hookspec
def register_ops(register):
    """Declare new ops (rarely needed: the core defines every op of the design).

    Call ``register(op)`` with a ``kbench.ops.Op``. The core registers the op's
    ``reference`` as backend ``reference`` automatically.
    """


@hookspec
def register_backends(register):
    """Register implementations of ops under a backend name.

    Call, once per op::

        register(
            op,            # op name, e.g. "rmsnorm"
            backend,       # short lowercase name, e.g. "triton"
            fn,            # callable: fn(**inputs) with the op's keyword arguments
            supports=None, # supports(case, dtype, device) -> reason string, or None if it can run
            available=None,# available() -> reason string, or None; called once, lazily
                           #   (e.g. "flash_attn not installed", "no CUDA device")
            cuda_graphs=True,  # False if a call syncs the host or allocates data-dependently
            version=None,  # version string of the package doing the work, for run records
            description="",
            slow_setup=None,  # why a first call at each new shape is slow (compiles per shape):
                              #   kbench tune then leaves it out unless --candidates names it
            runs_as=None,     # runs_as(case, dtype, device) -> the other backend of the op whose
                              #   kernel this one runs at the case (it picks among them), or None:
                              #   kbench tune times that one in its place
        )

    Never raise from here for a missing dependency: register and return the reason from
    ``available`` instead, so ``kbench list`` can show it.
    """


@hookspec
def record_details():
    """Optional: what this plugin chose while the run ran, for the run record.

    Called once at the end of ``kbench run`` / ``kbench bench``; return a JSON-able dict
    (e.g. ``{"tuned_configs": {kernel: {shape key: config}}}`` for autotuned kernels) or
    None. It is stored under ``record["plugin_details"][plugin name]``. An exception here is
    recorded as the plugin's detail, never fatal.
    """
