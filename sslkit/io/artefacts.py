"""sslkit's HDF5 artefact files: one schema for every per-image artefact.

Layout (documented in docs/artefacts.md; this module and that page agree)::

    attrs: format, format_version, sslkit_version, command, params (JSON),
           created (UTC ISO time), complete (True), num_images, + kind-specific
    /images/image_id   (N,)   int64
    /images/file_name  (N,)   vlen utf-8 str (relative to the source root)
    /images/height     (N,)   int32   (original image, upright frame)
    /images/width      (N,)   int32
    /<name>/data       (M, *trailing)   ragged per-image rows, concatenated
    /<name>/offsets    (N+1,) int64     rows of image i: data[offsets[i]:offsets[i+1]]
    /<map>/data        (sum h_i*w_i,) uint16, gzip+shuffle chunked   label maps
    /<map>/offsets     (N+1,) int64
    /<map>/hw          (N, 2) int32     stored size of each label map
    /skipped/file_name (S,) str, /skipped/reason (S,) str

Writers stream to a temporary file beside the target and rename it into place
at the end, so a killed writer never leaves a file under the final name;
readers also refuse a file whose ``complete`` attribute is not set.  Long jobs
stage their progress as atomically written chunk files (:class:`ChunkStage`)
so that a rerun resumes where a killed one stopped.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shlex
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from sslkit import __version__
from sslkit.errors import FormatError, UserError
from sslkit.io.atomic import commit, temp_path_for

#: every HDF5 artefact kind and the newest version of it this code reads and writes
FORMAT_VERSIONS: dict[str, int] = {
    "sslkit.proposals": 1,
    "sslkit.views": 1,
    "sslkit.features": 1,
}

_STR = h5py.string_dtype("utf-8")
_MASK_CHUNK = 1 << 18


def command_line() -> str:
    """The command that is running, as a shell would need it to run it again."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("__main__.py", "/sslkit")):
        argv[0] = "sslkit"
    return " ".join(shlex.quote(a) for a in argv)


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class Record:
    """Everything an artefact stores for one image."""

    image_id: int
    file_name: str
    height: int
    width: int
    ragged: dict[str, np.ndarray] = field(default_factory=dict)
    label_maps: dict[str, np.ndarray] = field(default_factory=dict)


def check_output(path: str | os.PathLike, fmt: str, overwrite: bool) -> None:
    """Refuse to replace a file that is not an sslkit artefact of kind ``fmt`` unless ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise UserError("is a folder, expected an output file name", path)
    if not path.exists() or overwrite:
        return
    try:
        with h5py.File(path, "r") as f:
            existing = f.attrs.get("format")
    except OSError:
        existing = None
    if existing != fmt:
        what = f"a {existing} file" if existing else "not an sslkit artefact"
        raise UserError(f"already exists and is {what}", path, "choose another -o or pass --overwrite")


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
    ):
        if fmt not in FORMAT_VERSIONS:
            raise ValueError(f"unknown artefact format {fmt!r}")
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

    def flush(self) -> None:
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
        self.flush()
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


class Artefact:
    """A validated, read-only view of an sslkit HDF5 artefact.

    ``Artefact(path, "sslkit.proposals")`` fails with one clear line when the
    file is missing, not HDF5, not an sslkit artefact, of another kind, of a
    newer format version, or incomplete.
    """

    def __init__(self, path: str | os.PathLike, expect: str | Sequence[str] | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise UserError("no such file", self.path)
        if self.path.is_dir():
            raise UserError("is a folder, expected an sslkit .h5 artefact", self.path)
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            raise FormatError("not an HDF5 file (or damaged)", self.path,
                              "pass a file written by sslkit") from e
        try:
            self._validate(expect)
            g = self._f["images"]
            self.image_id = g["image_id"][:]
            self.file_name = [s.decode() if isinstance(s, bytes) else s for s in g["file_name"][:]]
            self.height = g["height"][:]
            self.width = g["width"][:]
        except BaseException:
            self._f.close()
            raise
        self._index_by_name = {n: i for i, n in enumerate(self.file_name)}
        self._index_by_id = {int(v): i for i, v in enumerate(self.image_id)}
        self._offsets: dict[str, np.ndarray] = {}

    def _validate(self, expect) -> None:
        a = self._f.attrs
        fmt = a.get("format")
        if fmt is None:
            raise FormatError("not an sslkit artefact (no 'format' attribute)", self.path)
        fmt = str(fmt)
        if fmt not in FORMAT_VERSIONS:
            raise FormatError(f"unknown artefact kind {fmt!r}", self.path, "upgrade sslkit")
        if expect is not None:
            allowed = (expect,) if isinstance(expect, str) else tuple(expect)
            if fmt not in allowed:
                raise FormatError(f"is a {fmt} file, expected {' or '.join(allowed)}", self.path)
        ver = int(a.get("format_version", 0))
        if ver > FORMAT_VERSIONS[fmt]:
            raise FormatError(
                f"{fmt} format_version {ver} is newer than this sslkit reads ({FORMAT_VERSIONS[fmt]})",
                self.path, f"upgrade sslkit (this is {__version__})")
        if ver < 1:
            raise FormatError(f"invalid format_version {ver}", self.path)
        if not bool(a.get("complete", False)):
            raise FormatError("incomplete artefact (its writer did not finish)", self.path,
                              "rerun the command that makes it")
        if "images" not in self._f:
            raise FormatError("damaged artefact (no /images table)", self.path)
        self.format = fmt
        self.format_version = ver

    # -- metadata ---------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        out = {}
        for k, v in self._f.attrs.items():
            if isinstance(v, np.generic):
                v = v.item()
            elif isinstance(v, np.ndarray):
                v = v.tolist()
            out[k] = v
        return out

    @property
    def params(self) -> dict:
        return json.loads(self._f.attrs.get("params", "{}"))

    @property
    def command(self) -> str:
        return str(self._f.attrs.get("command", ""))

    def __len__(self) -> int:
        return len(self.image_id)

    @property
    def ragged_names(self) -> list[str]:
        return [k for k, g in self._f.items()
                if isinstance(g, h5py.Group) and "offsets" in g and "hw" not in g]

    @property
    def map_names(self) -> list[str]:
        return [k for k, g in self._f.items() if isinstance(g, h5py.Group) and "hw" in g]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        if "skipped" not in self._f:
            return []
        g = self._f["skipped"]
        dec = lambda s: s.decode() if isinstance(s, bytes) else s  # noqa: E731
        return [(dec(a), dec(b)) for a, b in zip(g["file_name"][:], g["reason"][:], strict=True)]

    def index_of(self, key: int | str) -> int:
        """Row of an image given its file name or image id (a string of digits is tried as an id)."""
        if isinstance(key, str) and key in self._index_by_name:
            return self._index_by_name[key]
        try:
            return self._index_by_id[int(key)]
        except (KeyError, ValueError):
            raise UserError(f"no image {key!r} in this artefact", self.path,
                            "pass an image id or a file name listed by 'sslkit info'") from None

    def offsets(self, name: str) -> np.ndarray:
        if name not in self._offsets:
            if name not in self._f:
                raise FormatError(f"has no field {name!r}", self.path)
            self._offsets[name] = self._f[name]["offsets"][:]
        return self._offsets[name]

    def counts(self, name: str) -> np.ndarray:
        return np.diff(self.offsets(name))

    def ragged(self, name: str, i: int) -> np.ndarray:
        off = self.offsets(name)
        return self._f[name]["data"][off[i]:off[i + 1]]

    def label_map(self, name: str, i: int) -> np.ndarray:
        off = self.offsets(name)
        h, w = self._f[name]["hw"][i]
        return self._f[name]["data"][off[i]:off[i + 1]].reshape(int(h), int(w))

    def iter_ragged(self, name: str, block: int = 4096) -> Iterator[tuple[int, np.ndarray]]:
        """(row, array) for every image, reading ``block`` images' data at a time (bounded memory)."""
        off = self.offsets(name)
        ds = self._f[name]["data"]
        for s in range(0, len(self), block):
            e = min(len(self), s + block)
            chunk = ds[off[s]:off[e]]
            for i in range(s, e):
                yield i, chunk[off[i] - off[s]:off[i + 1] - off[s]]

    def records(self, fields: Sequence[str] | None = None, maps: Sequence[str] | None = None) -> Iterator[Record]:
        fields = self.ragged_names if fields is None else fields
        maps = self.map_names if maps is None else maps
        for i in range(len(self)):
            yield Record(int(self.image_id[i]), self.file_name[i], int(self.height[i]), int(self.width[i]),
                         {k: self.ragged(k, i) for k in fields}, {k: self.label_map(k, i) for k in maps})

    def field_spec(self, name: str) -> tuple[str, tuple[int, ...]]:
        ds = self._f[name]["data"]
        return ds.dtype.str, tuple(ds.shape[1:])

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Artefact:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def peek_format(path: str | os.PathLike) -> str | None:
    """The ``format`` attribute of an HDF5 file, or None if it is not one."""
    try:
        with h5py.File(path, "r") as f:
            v = f.attrs.get("format")
            return None if v is None else str(v)
    except OSError:
        return None


class ChunkStage:
    """Resumable progress for a long job: numbered chunk files, each written atomically.

    A job splits its work into chunks of consecutive images; each finished
    chunk is saved as ``<dir>/chunk-<k>.npz`` (temporary name + rename), so a
    ``kill -9`` loses at most the chunks in flight.  ``fingerprint`` (the
    inputs and parameters) is stored in ``<dir>/stage.json``; resuming with a
    different fingerprint is refused rather than mixing results.
    """

    def __init__(self, directory: str | os.PathLike, fingerprint: dict):
        self.dir = Path(directory)
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        meta = self.dir / "stage.json"
        if meta.exists():
            old = json.loads(meta.read_text())
            if old != self.fingerprint:
                raise UserError("an interrupted run with different inputs or parameters left this folder",
                                self.dir, "rerun with the same command, or delete the folder to start over")
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            from sslkit.io.atomic import write_text_atomic

            write_text_atomic(meta, json.dumps(self.fingerprint, sort_keys=True))

    def _path(self, k: int) -> Path:
        return self.dir / f"chunk-{k:06d}.npz"

    def done(self) -> set[int]:
        out = set()
        for p in self.dir.glob("chunk-*.npz"):
            with contextlib.suppress(ValueError):
                out.add(int(p.stem.split("-")[1]))
        return out

    def save(self, k: int, records: Sequence[Record], skipped: Sequence[tuple[str, str]]) -> None:
        arrays: dict[str, np.ndarray] = {
            "image_id": np.array([r.image_id for r in records], np.int64),
            "file_name": np.array([r.file_name for r in records], dtype=np.str_),
            "height": np.array([r.height for r in records], np.int32),
            "width": np.array([r.width for r in records], np.int32),
            "skipped_file": np.array([s[0] for s in skipped], dtype=np.str_),
            "skipped_reason": np.array([s[1] for s in skipped], dtype=np.str_),
        }
        names = sorted({k for r in records for k in r.ragged})
        maps = sorted({k for r in records for k in r.label_maps})
        for n in names:
            arrs = [np.asarray(r.ragged[n]) for r in records]
            arrays[f"r:{n}:counts"] = np.array([len(a) for a in arrs], np.int64)
            arrays[f"r:{n}:data"] = np.concatenate(arrs) if arrs else np.zeros((0,))
        for n in maps:
            ms = [r.label_maps[n] for r in records]
            arrays[f"m:{n}:hw"] = np.array([m.shape for m in ms], np.int64).reshape(-1, 2)
            arrays[f"m:{n}:data"] = (np.concatenate([m.ravel() for m in ms]) if ms else np.zeros((0,))).astype(np.uint16)
        tmp = temp_path_for(self._path(k))
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            commit(tmp, self._path(k))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def load(self, k: int) -> tuple[list[Record], list[tuple[str, str]]]:
        with np.load(self._path(k), allow_pickle=False) as z:
            n = len(z["image_id"])
            recs = [Record(int(z["image_id"][i]), str(z["file_name"][i]), int(z["height"][i]), int(z["width"][i]))
                    for i in range(n)]
            for key in z.files:
                if key.startswith("r:") and key.endswith(":counts"):
                    name = key[2:-7]
                    data = z[f"r:{name}:data"]
                    off = np.concatenate([[0], np.cumsum(z[key])])
                    for i in range(n):
                        recs[i].ragged[name] = data[off[i]:off[i + 1]]
                elif key.startswith("m:") and key.endswith(":hw"):
                    name = key[2:-3]
                    data = z[f"m:{name}:data"]
                    hw = z[key]
                    sizes = hw[:, 0] * hw[:, 1]
                    off = np.concatenate([[0], np.cumsum(sizes)])
                    for i in range(n):
                        recs[i].label_maps[name] = data[off[i]:off[i + 1]].reshape(int(hw[i, 0]), int(hw[i, 1]))
            skipped = list(zip(map(str, z["skipped_file"]), map(str, z["skipped_reason"]), strict=True))
        return recs, skipped

    def remove(self) -> None:
        for p in self.dir.glob("chunk-*.npz"):
            p.unlink()
        for p in self.dir.glob(".*.tmp"):
            p.unlink()
        with contextlib.suppress(OSError):
            (self.dir / "stage.json").unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()
