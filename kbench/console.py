"""The consoles kbench prints to: tables never cut to 80 columns when the output is a file.

Rich draws to 80 columns when stdout is not a terminal (CI logs, ``| tee``, a remote GPU job),
which cut names to ``rmsn…`` and split a case over several lines. There a console is as wide as
its content (``KBENCH_WIDTH`` or ``COLUMNS`` set a width explicitly).
"""

from __future__ import annotations

import os
import sys

from rich.console import Console

UNBOUNDED_WIDTH = 1000


def make_console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr) whose tables keep their natural width off a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    width = os.environ.get("KBENCH_WIDTH") or os.environ.get("COLUMNS")
    if width and width.isdigit():
        return Console(stderr=stderr, width=int(width))
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=UNBOUNDED_WIDTH)
