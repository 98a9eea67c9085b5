"""Atomic file writes: write under a temporary name in the same folder, fsync, rename.

Promises (docs/design.md, "Crash safety"):

* a reader sees the old file or the new one under the final name, never half of one;
* a temporary file is named ``.NAME.HOST-PID.RANDOM.tmp``: the next write of ``NAME`` removes the
  temporaries of writers on this host that are no longer running (a ``kill -9`` leaves one behind);
* a full disk, a read-only file system or a missing permission is one line naming the file and the
  fix (:class:`~sslkit.errors.DiskFullError`, exit 1; :class:`~sslkit.errors.UserError`, exit 2),
  the temporary is removed and the previous file under the final name is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sslkit import _testing
from sslkit.errors import DiskFullError, UserError

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:32] or "host"
_FULL = (errno.ENOSPC, errno.EDQUOT)
_DENIED = (errno.EROFS, errno.EACCES, errno.EPERM)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``path`` left by dead writers on this host; returns what was removed."""
    path = Path(path)
    removed = []
    pat = re.compile(rf"^\.{re.escape(path.name)}\.{re.escape(_HOST)}-(\d+)\.[^.]+\.tmp$")
    with contextlib.suppress(OSError):
        for p in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
            m = pat.match(p.name)
            if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    if p.is_dir():
                        shutil.rmtree(p)
                    else:
                        p.unlink()
                    removed.append(p)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def describe_os_error(e: OSError, path: str | os.PathLike, needed: int | None = None) -> UserError:
    """The one-line error for a failed write of ``path`` (disk full, read-only, no permission, …)."""
    where = Path(path)
    if e.errno in _FULL:
        free = _free_bytes(where.parent)
        need = f"about {_mb(needed)} needed, " if needed else ""
        return DiskFullError(f"no space left on the device ({need}{_mb(free)} free)", where,
                             "free some space or write somewhere else; nothing under this name was changed")
    if e.errno in _DENIED:
        why = "read-only file system" if e.errno == errno.EROFS else "permission denied"
        return UserError(f"cannot write here ({why})", where, "choose an output in a writable folder")
    if e.errno == errno.ENOENT:
        return UserError("cannot write here (the folder does not exist)", where, "create the folder first")
    return UserError(f"cannot write ({e.strerror or e})", where, "check the path and the disk")


def _free_bytes(folder: Path) -> int | None:
    with contextlib.suppress(OSError):
        return shutil.disk_usage(folder if folder.exists() else Path.cwd()).free
    return None


def _mb(n: int | None) -> str:
    return "? MB" if n is None else f"{n / 2**20:.1f} MB"


def ensure_space(path: str | os.PathLike, needed: int, margin: float = 1.05) -> None:
    """Fail before writing when the folder of ``path`` has less than ``needed`` bytes free."""
    free = _free_bytes(Path(path).parent)
    if free is not None and free < needed * margin:
        raise describe_os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path, needed)


def temp_path_for(path: str | os.PathLike) -> Path:
    """A fresh temporary name beside ``path`` (same filesystem, so rename is atomic); stale ones of
    dead writers are removed first."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise describe_os_error(e, path) from e
    os.close(fd)
    return Path(tmp)


def check_writable(*paths: str | os.PathLike | None) -> None:
    """Check, before any work, that a file can be written at each of ``paths`` (None: skipped): not a
    folder, and its folder exists or can be made and takes a new file."""
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            raise UserError("is a folder, expected a file name", path)
        tmp = temp_path_for(path)
        with contextlib.suppress(OSError):
            os.unlink(tmp)


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
    _testing.reached(f"rename:{Path(path).name}")
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        dfd = os.open(Path(path).parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed.

    ``needed`` (bytes, if known) is checked against the free space first. A write that fails for
    lack of space (also when the writer reports it as something else, e.g. torch.save's "unexpected
    pos") or permission becomes the one-line error of :func:`describe_os_error`."""
    if needed:
        ensure_space(path, needed)
    tmp = temp_path_for(path)
    try:
        yield tmp
        commit(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and not isinstance(e, UserError):
            raise describe_os_error(e, path, needed) from e
        if isinstance(e, (RuntimeError, OSError)) and disk_full_now(path):
            raise describe_os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path, needed) from e
        raise


def disk_full_now(path: str | os.PathLike) -> bool:
    """Whether the folder of ``path`` is (nearly) out of space: what a write error that names no errno meant."""
    free = _free_bytes(Path(path).parent)
    return free is not None and free < 1 << 20


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path, needed=len(data)) as tmp:
        Path(tmp).write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))
