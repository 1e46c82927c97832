"""The consoles kbench prints to. Off a terminal rich would cut tables to 80 columns (``rmsn…``),
so there a console is as wide as its content (``kbench --width``, ``KBENCH_WIDTH`` or ``COLUMNS``
set a width)."""

from __future__ import annotations

import os
import sys

from rich.console import Console

UNBOUNDED_WIDTH = 1000
WIDTH_ENV = "KBENCH_WIDTH"


def make_console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width = os.environ.get(WIDTH_ENV) or os.environ.get("COLUMNS")
    if width and width.isdigit():
        return Console(stderr=stderr, width=int(width))
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=UNBOUNDED_WIDTH)
