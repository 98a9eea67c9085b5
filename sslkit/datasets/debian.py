"""Fetching Debian packages offline-safe: ``apt-get download`` (no installation), unpack only the files
a builder uses into a shared cache, once, under a lock, with a marker written last.

Used by the demo scenes (:mod:`sslkit.datasets.sources`) and the Fashion-MNIST scenes
(:mod:`sslkit.datasets.fmnist`); which photos of the unpacked files are used is theirs to say.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from sslkit.io.atomic import write_text_atomic

#: Debian packages of the ``debian`` source set, in the order they are fetched
DEBIAN_PACKAGES = ("tuxpaint-stamps-default", "mate-backgrounds", "opencv-doc")

#: per package: the unpacked files kept in the cache (path prefix, allowed suffixes); copyright files always
_KEEP = {
    "tuxpaint-stamps-default": ("usr/share/tuxpaint/stamps/", (".png",)),
    "mate-backgrounds": ("usr/share/backgrounds/mate/nature/", (".jpg",)),
    "opencv-doc": ("usr/share/doc/opencv-doc/examples/data/", (".jpg",)),
    # the items of the fmnist-scenes preset (sslkit.datasets.fmnist), fetched on their own
    "dataset-fashion-mnist": ("usr/share/datasets/fashion-mnist/", ("-ubyte.gz",)),
}

#: bumped when _KEEP changes, so that older caches are unpacked again
_CACHE_LAYOUT = 1


class SourceUnavailable(Exception):
    """A source set cannot be used on this machine; the message says why in a few words."""


def default_cache() -> Path:
    """``$SSLKIT_CACHE`` or ``~/.cache/sslkit/sources``."""
    env = os.environ.get("SSLKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sslkit" / "sources"


# --------------------------------------------------------------------------- Debian packages


def fetch_debian(cache: Path, log: Callable[[str], None], packages: tuple[str, ...] = DEBIAN_PACKAGES,
                 folder: str = "debian", size: str = "about 300 MB") -> tuple[Path, dict[str, str]]:
    """Unpack the files of ``packages`` (default :data:`DEBIAN_PACKAGES`) that :data:`_KEEP` names
    into ``<cache>/<folder>/root`` (once).

    Returns the root and the package versions.  A ``complete.json`` marker
    written last makes an interrupted fetch start over; a lock file keeps two
    builds from fetching into the same cache at once.  ``size`` is only said.
    """
    base = cache / folder
    marker = base / "complete.json"
    versions = _read_marker(marker, packages)
    if versions is not None:
        return base / "root", versions
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise SourceUnavailable(f"{tool} not found")
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SourceUnavailable(f"cannot create the cache folder {base}: {e.strerror}") from e
    with _locked(base / ".lock"):
        versions = _read_marker(marker, packages)  # another process may have finished meanwhile
        if versions is not None:
            return base / "root", versions
        log(f"fetching {', '.join(packages)} with apt-get download ({size}, once) into {base}")
        download = Path(tempfile.mkdtemp(prefix=".download-", dir=base))
        staging = Path(tempfile.mkdtemp(prefix=".root-", dir=base))
        try:
            _apt_download(download, packages, log)
            versions = {}
            for pkg in packages:
                debs = sorted(download.glob(f"{pkg}_*.deb"))
                if len(debs) != 1:
                    raise SourceUnavailable(f"apt-get download left {len(debs)} files for {pkg}")
                versions[pkg] = _deb_version(debs[0])
                _extract(debs[0], staging, pkg)
            shutil.rmtree(base / "root", ignore_errors=True)
            os.replace(staging, base / "root")

            write_text_atomic(marker, json.dumps({"layout": _CACHE_LAYOUT, "packages": versions}, indent=2) + "\n")
        finally:
            shutil.rmtree(download, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)
    log(f"unpacked {', '.join(f'{p} {v}' for p, v in versions.items())} into {base / 'root'}")
    return base / "root", versions


def _read_marker(marker: Path, packages: tuple[str, ...]) -> dict[str, str] | None:
    try:
        done = json.loads(marker.read_text())
        layout, versions = done["layout"], done["packages"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ok = layout == _CACHE_LAYOUT and isinstance(versions, dict) and set(versions) == set(packages)
    return versions if ok else None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def _apt_download(folder: Path, packages: tuple[str, ...], log: Callable[[str], None]) -> None:
    """``apt-get download`` ``packages`` into ``folder``; as root, refresh the package lists once on failure."""
    cmd = ["apt-get", "download", *packages]
    p = _run(cmd, cwd=folder)
    if p.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        log("apt-get download failed; running apt-get update once and retrying")
        _run(["apt-get", "update", "-qq"])
        p = _run(cmd, cwd=folder)
    if p.returncode != 0:
        lines = [ln.strip() for ln in (p.stderr or p.stdout).splitlines() if ln.strip()]
        raise SourceUnavailable(f"apt-get download failed: {lines[-1] if lines else f'exit status {p.returncode}'}")


def _deb_version(deb: Path) -> str:
    p = _run(["dpkg-deb", "-f", str(deb), "Version"])
    if p.returncode != 0:
        raise SourceUnavailable(f"dpkg-deb cannot read {deb.name}")
    return p.stdout.strip()


def _extract(deb: Path, dest: Path, package: str) -> None:
    """Unpack the regular files of ``deb`` that :data:`_KEEP` names (plus its copyright file) into ``dest``."""
    prefix, suffixes = _KEEP[package]
    copyright_file = f"usr/share/doc/{package}/copyright"
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                wanted = name == copyright_file or (name.startswith(prefix) and name.lower().endswith(suffixes))
                if not (member.isfile() and wanted) or ".." in Path(name).parts:
                    continue
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except BaseException as e:
        proc.kill()  # stop the stream rather than drain it
        proc.communicate()
        if isinstance(e, tarfile.TarError):
            raise SourceUnavailable(f"cannot unpack {deb.name}: {e}") from e
        raise
    stderr = proc.communicate()[1]
    if proc.returncode != 0:
        raise SourceUnavailable(f"dpkg-deb cannot unpack {deb.name}: {stderr.decode(errors='replace').strip()}")
