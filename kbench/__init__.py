"""kbench: correctness and speed of LLaMA kernels, op by op and end to end.

The public API a plugin uses:

- ``kbench.hookimpl``: the marker for hook implementations (``@kbench.hookimpl``);
- ``kbench.KbenchError``: the one error type for user mistakes;
- ``kbench.ops``: the op contracts (``Op``, ``Case``, ``Tolerance``) and their references.
"""

import pluggy

from kbench.errors import KbenchError

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("kbench")

__all__ = ["KbenchError", "hookimpl", "__version__"]
