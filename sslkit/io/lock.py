"""One writer per output: an exclusive lock held for the whole job.

``with exclusive(path): ...`` takes an ``flock`` on ``path`` + ``.lock`` (a run folder: ``RUN/.lock``),
a file that records who holds it. A second writer of the same output fails at once with one line
naming the live process; the operating system releases the lock when its holder exits, however it
exits (``kill -9`` included), so a lock is never stale. The lock file itself stays (it is tiny).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from sslkit.errors import UserError
from sslkit.io.atomic import describe_os_error


def lock_path(output: str | os.PathLike) -> Path:
    """Where the lock of ``output`` lives: inside it for a folder, beside it (``.NAME.lock``) for a file."""
    p = Path(output)
    return p / ".lock" if p.is_dir() else p.parent / f".{p.name}.lock"


@contextlib.contextmanager
def exclusive(output: str | os.PathLike, what: str = "output") -> Iterator[None]:
    """Hold the lock of ``output`` for the body; a UserError if another live process holds it."""
    path = lock_path(output)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise describe_os_error(e, path) from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            raise UserError(f"this {what} is being written by another process ({holder})", output,
                            "wait for it to finish, stop it, or choose another output") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                 "command": " ".join(sys.argv)}).encode())
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 65536).decode() or "{}")
    except (OSError, ValueError):
        return "unknown process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    cmd = info.get("command", "")
    return f"pid {info.get('pid')} on {info.get('host')}, since {since}" + (f": {cmd[:200]}" if cmd else "")
