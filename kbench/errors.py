"""The one error type for user mistakes, the closest-match helper its messages use, and the exit
statuses every command shares (``EXIT_STATUSES``; the CLI maps what escapes a command onto them)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_STATUSES = {
    EXIT_OK: "everything passed",
    EXIT_FAILED: "a check failed, a row is suspect, or compare found a regression",
    EXIT_BAD_INPUT: "bad input: a mistake in the spec, the flags or the files given",
    EXIT_BUG: "an internal error of kbench (a bug: the traceback is printed, please report it)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); no partial record is written",
}


class KbenchError(Exception):
    """A mistake of the user's, not a bug: ``message`` says what was wrong, ``fix`` what to do.
    The CLI prints both and exits with status 2; any other exception keeps its traceback."""

    def __init__(self, message: str, fix: str | None = None):
        self.message = message
        self.fix = fix
        super().__init__(message if not fix else f"{message} {fix}")


def closest(name: str, options: Iterable[str]) -> str | None:
    """The option closest to ``name`` (difflib ratio >= 0.6), or None."""
    matches = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """"Did you mean 'x'? " for the option closest to ``name``, or "" when none is close."""
    guess = closest(name, options)
    return f"Did you mean {guess!r}? " if guess else ""


def unknown_name(kind: str, name: str, options: Iterable[str]) -> KbenchError:
    """A ``KbenchError`` for an unknown name: says the closest match and what exists."""
    options = sorted(set(options))
    hint = did_you_mean(name, options)
    return KbenchError(
        f"Unknown {kind} {name!r}.",
        f"{hint}Known {kind}s: {', '.join(options) if options else '(none)'}.",
    )
