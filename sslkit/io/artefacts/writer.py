"""Writing an artefact: records streamed into a temporary file beside the target, which is renamed
into place when the writer closes (a killed writer never leaves a file under the final name)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np

from sslkit import __version__
from sslkit.io.artefacts.schema import FORMAT_VERSIONS, STANDARD_ATTRS, Record, command_line
from sslkit.io.atomic import commit, describe_os_error, disk_full_now, ensure_space, temp_path_for

_STR = h5py.string_dtype("utf-8")
_MASK_CHUNK = 1 << 18


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


class ArtefactWriter:
    """Stream per-image records into a new artefact, committed atomically by :meth:`close`.

    ``ragged`` maps a field name to ``(dtype, trailing_shape)``, e.g.
    ``{"boxes": ("float32", (4,))}``; ``label_maps`` names uint16 map fields.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fmt: str,
        *,
        params: dict | None = None,
        ragged: dict[str, tuple[str, Sequence[int]]] | None = None,
        label_maps: Sequence[str] = (),
        attrs: dict | None = None,
        command: str | None = None,
        flush_every: int = 256,
        expected_bytes: int | None = None,
    ):
        """``expected_bytes`` (about the size of the finished file, if the caller knows it) is checked
        against the free space before anything is written."""
        if fmt not in FORMAT_VERSIONS:
            raise ValueError(f"unknown artefact format {fmt!r}")
        if expected_bytes:
            ensure_space(path, expected_bytes)
        self.path = Path(path)
        self.fmt = fmt
        self.ragged_spec = {k: (np.dtype(d), tuple(s)) for k, (d, s) in (ragged or {}).items()}
        self.map_names = tuple(label_maps)
        self.flush_every = flush_every
        self._tmp = temp_path_for(self.path)
        self._f = h5py.File(self._tmp, "w")
        self._closed = False
        a = self._f.attrs
        a["format"] = fmt
        a["format_version"] = FORMAT_VERSIONS[fmt]
        a["sslkit_version"] = __version__
        a["command"] = command if command is not None else command_line()
        a["params"] = json.dumps(params or {}, sort_keys=True, default=str)
        a["created"] = _utcnow()
        a["complete"] = False
        for k, v in (attrs or {}).items():
            a[k] = v
        g = self._f.create_group("images")
        g.create_dataset("image_id", (0,), np.int64, maxshape=(None,), chunks=(4096,))
        g.create_dataset("file_name", (0,), _STR, maxshape=(None,), chunks=(4096,))
        g.create_dataset("height", (0,), np.int32, maxshape=(None,), chunks=(4096,))
        g.create_dataset("width", (0,), np.int32, maxshape=(None,), chunks=(4096,))
        for name, (dt, trail) in self.ragged_spec.items():
            rg = self._f.create_group(name)
            rows = max(1, 65536 // max(1, int(np.prod(trail)) * dt.itemsize) * 16)
            rg.create_dataset("data", (0, *trail), dt, maxshape=(None, *trail), chunks=(rows, *trail),
                              compression="gzip", compression_opts=1, shuffle=True)
            rg.create_dataset("offsets", (1,), np.int64, maxshape=(None,), chunks=(4096,), data=[0])
        for name in self.map_names:
            mg = self._f.create_group(name)
            mg.create_dataset("data", (0,), np.uint16, maxshape=(None,), chunks=(_MASK_CHUNK,),
                              compression="gzip", compression_opts=4, shuffle=True)
            mg.create_dataset("offsets", (1,), np.int64, maxshape=(None,), chunks=(4096,), data=[0])
            mg.create_dataset("hw", (0, 2), np.int32, maxshape=(None, 2), chunks=(4096, 2))
        sk = self._f.create_group("skipped")
        sk.create_dataset("file_name", (0,), _STR, maxshape=(None,), chunks=(1024,))
        sk.create_dataset("reason", (0,), _STR, maxshape=(None,), chunks=(1024,))
        self._buf: list[Record] = []
        self._skipped: list[tuple[str, str]] = []
        self.num_images = 0

    # -- writing ---------------------------------------------------------------------------------
    def add(self, rec: Record) -> None:
        for name, (dt, trail) in self.ragged_spec.items():
            arr = np.asarray(rec.ragged.get(name, np.zeros((0, *trail), dt)), dtype=dt)
            if arr.shape[1:] != trail:
                raise ValueError(f"{name}: rows of shape {arr.shape[1:]}, expected {trail}")
            rec.ragged[name] = arr
        for name in self.map_names:
            m = rec.label_maps.get(name)
            if m is None or m.ndim != 2:
                raise ValueError(f"label map {name!r} missing or not 2-D for {rec.file_name}")
            if m.dtype != np.uint16:
                if m.size and (m.min() < 0 or m.max() > 65535):
                    raise ValueError(f"label map {name!r} has ids outside uint16 for {rec.file_name}")
                rec.label_maps[name] = m.astype(np.uint16)
        self._buf.append(rec)
        if len(self._buf) >= self.flush_every:
            self.flush()

    def set_attrs(self, **attrs) -> None:
        """Set kind-specific attributes (e.g. counts known only at the end); the standard ones are the writer's."""
        clash = STANDARD_ATTRS & set(attrs)
        if clash:
            raise ValueError(f"{', '.join(sorted(clash))}: standard attributes are set by the writer")
        self._f.attrs.update(attrs)

    def add_skipped(self, file_name: str, reason: str) -> None:
        self._skipped.append((file_name, reason))

    def add_many(self, records: Iterable[Record], skipped: Iterable[tuple[str, str]] = ()) -> None:
        for r in records:
            self.add(r)
        for fn, why in skipped:
            self.add_skipped(fn, why)

    @staticmethod
    def _append(ds: h5py.Dataset, values) -> None:
        n = len(values)
        if n == 0:
            return
        old = ds.shape[0]
        ds.resize(old + n, axis=0)
        ds[old:old + n] = values

    @contextlib.contextmanager
    def _guard(self):
        """A failed HDF5 write (h5py often gives no errno) aborts the file; a full disk is one line."""
        try:
            yield
        except (OSError, RuntimeError) as e:
            self.abort()
            if isinstance(e, OSError) and e.errno:
                raise describe_os_error(e, self.path) from e
            if disk_full_now(self.path):
                raise describe_os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), self.path) from e
            raise

    def flush(self) -> None:
        with self._guard():
            self._flush()

    def _flush(self) -> None:
        buf, self._buf = self._buf, []
        if buf:
            g = self._f["images"]
            self._append(g["image_id"], np.array([r.image_id for r in buf], np.int64))
            self._append(g["file_name"], [r.file_name for r in buf])
            self._append(g["height"], np.array([r.height for r in buf], np.int32))
            self._append(g["width"], np.array([r.width for r in buf], np.int32))
            for name, (dt, _trail) in self.ragged_spec.items():
                rg = self._f[name]
                base = int(rg["offsets"][-1])
                arrs = [r.ragged[name] for r in buf]
                counts = np.array([len(a) for a in arrs], np.int64)
                self._append(rg["offsets"], base + np.cumsum(counts))
                if counts.sum():
                    self._append(rg["data"], np.concatenate(arrs).astype(dt, copy=False))
            for name in self.map_names:
                mg = self._f[name]
                base = int(mg["offsets"][-1])
                maps = [r.label_maps[name] for r in buf]
                sizes = np.array([m.size for m in maps], np.int64)
                self._append(mg["offsets"], base + np.cumsum(sizes))
                self._append(mg["hw"], np.array([m.shape for m in maps], np.int32).reshape(-1, 2))
                if sizes.sum():
                    self._append(mg["data"], np.concatenate([m.ravel() for m in maps]))
            self.num_images += len(buf)
        if self._skipped:
            sk, self._skipped = self._skipped, []
            self._append(self._f["skipped"]["file_name"], [s[0] for s in sk])
            self._append(self._f["skipped"]["reason"], [s[1] for s in sk])

    def close(self) -> Path:
        """Flush, mark complete and rename into place. Returns the final path."""
        if self._closed:
            return self.path
        with self._guard():
            self._flush()
            self._f.attrs["num_images"] = self.num_images
            self._f.attrs["complete"] = True
            self._f.close()
            self._closed = True
            commit(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._f.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)

    def __enter__(self) -> ArtefactWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
