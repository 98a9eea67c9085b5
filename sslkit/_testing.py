"""Fault injection for the test suite: the one place production code reads a test setting.

Tests that must kill a job at a precise point (``kill -9`` between two committed chunks, then
resume) run the real CLI in a subprocess with ``SSLKIT_TEST_KILL_AT=POINT:N`` in its environment;
the process then SIGKILLs itself when it reaches the named point for the ``N``-th time. Points
are named by the code that calls :func:`reached`, and only two places in the library do:
:mod:`sslkit.io.chunks`, ``commit:<stage name>`` after each chunk it commits (``commit:propose``,
``commit:orl-pairs``, …), and :func:`sslkit.io.atomic.commit`, ``rename:<file name>`` between writing
a file's temporary and renaming it into place (``rename:last.pth``, ``rename:props.h5``, …).
Without the variable, :func:`reached` does nothing.
"""

from __future__ import annotations

import os
import signal

#: ``POINT:N``, e.g. ``commit:orl-pairs:1``: SIGKILL after the first pair chunk of ORL stage 2 is committed
KILL_AT_ENV = "SSLKIT_TEST_KILL_AT"

_counts: dict[str, int] = {}


def kill_at(point: str, n: int = 1) -> dict[str, str]:
    """The environment entry that makes a process kill itself the ``n``-th time it reaches ``point``."""
    return {KILL_AT_ENV: f"{point}:{n}"}


def reached(point: str) -> None:
    """Count one arrival at ``point``; SIGKILL this process if ``SSLKIT_TEST_KILL_AT`` names it and the count."""
    spec = os.environ.get(KILL_AT_ENV)
    if not spec:
        return
    target, _, n = spec.rpartition(":")
    if target != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] >= int(n):
        os.kill(os.getpid(), signal.SIGKILL)
