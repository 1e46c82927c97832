"""kbench: correctness and speed of LLaMA kernels, op by op and end to end. A plugin uses
``kbench.hookimpl``, ``kbench.KbenchError`` and the op contracts of ``kbench.ops``."""

import pluggy

from kbench.errors import KbenchError

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("kbench")

__all__ = ["KbenchError", "hookimpl", "__version__"]
