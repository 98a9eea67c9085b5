"""The one error type users see.

A :class:`UserError` is a problem with the user's input (a missing file, a
wrong artefact kind, a bad flag combination).  The CLI prints it as one line::

    error: <file>: <what> — <what to do>

and exits with status 2, without a traceback (``--verbose`` shows one).  Any
other exception is a failure while running and exits with status 1.
"""

from __future__ import annotations

import os


class UserError(Exception):
    """A bad input, reported as one line naming the file, the problem and the fix."""

    exit_code = 2

    def __init__(self, what: str, path: str | os.PathLike | None = None, hint: str | None = None):
        self.what = what
        self.path = None if path is None else str(path)
        self.hint = hint
        super().__init__(self.line())

    def line(self) -> str:
        parts = []
        if self.path:
            parts.append(f"{self.path}: ")
        parts.append(self.what)
        if self.hint:
            parts.append(f" — {self.hint}")
        return "".join(parts)


class FormatError(UserError):
    """An artefact file of the wrong kind or version, or one left incomplete."""


class DiskFullError(UserError):
    """A write that found no space left: one line naming the file and the space, exit 1 (a failure while
    running, not a bad input); nothing under the final name was changed."""

    exit_code = 1
