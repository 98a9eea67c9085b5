"""Reading an artefact: :class:`Artefact`, a validated read-only view of one file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from sslkit import __version__
from sslkit.errors import FormatError, UserError
from sslkit.io.artefacts.schema import FORMAT_VERSIONS, STANDARD_ATTRS, Record


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
    def kind_attrs(self) -> dict:
        """The attributes specific to this kind of artefact (all but the standard ones every artefact has)."""
        return {k: v for k, v in self.attrs.items() if k not in STANDARD_ATTRS}

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

    def row(self, file_name: str) -> int | None:
        """Row of the image ``file_name``, or None when the artefact has no such image."""
        return self._index_by_name.get(file_name)

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

    def ragged_data(self, name: str) -> np.ndarray:
        """Every image's rows of a ragged field, concatenated (rows of image i: ``offsets(name)[i:i+2]``)."""
        self.offsets(name)
        return self._f[name]["data"][:]

    def map_sizes(self, name: str) -> np.ndarray:
        """(N, 2) stored height and width of every label map of field ``name``."""
        self.offsets(name)
        return self._f[name]["hw"][:]

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

    def record(self, i: int, fields: Sequence[str] | None = None, maps: Sequence[str] | None = None) -> Record:
        """Row ``i`` with the given ragged fields and label maps (default: all of them)."""
        fields = self.ragged_names if fields is None else fields
        maps = self.map_names if maps is None else maps
        return Record(int(self.image_id[i]), self.file_name[i], int(self.height[i]), int(self.width[i]),
                      {k: self.ragged(k, i) for k in fields}, {k: self.label_map(k, i) for k in maps})

    def records(self, fields: Sequence[str] | None = None, maps: Sequence[str] | None = None,
                rows: Iterable[int] | None = None) -> Iterator[Record]:
        """The records of ``rows`` (default: every row), in that order."""
        fields = self.ragged_names if fields is None else fields
        maps = self.map_names if maps is None else maps
        for i in range(len(self)) if rows is None else rows:
            yield self.record(i, fields, maps)

    def field_spec(self, name: str) -> tuple[str, tuple[int, ...]]:
        ds = self._f[name]["data"]
        return ds.dtype.str, tuple(ds.shape[1:])

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Artefact:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
