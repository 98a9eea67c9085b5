"""Atomic file writes: write under a temporary name in the same folder, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def temp_path_for(path: str | os.PathLike) -> Path:
    """A fresh temporary name beside ``path`` (same filesystem, so rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """fsync ``tmp`` and rename it onto ``path``; readers see the old file or the new one, never half.

    The file gets the permissions a plain ``open(path, "w")`` would give (mkstemp makes it 0600).
    """
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
        os.fchmod(f.fileno(), _default_mode())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        dfd = os.open(Path(path).parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed."""
    tmp = temp_path_for(path)
    try:
        yield tmp
        commit(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))
