"""Resumable progress of long jobs (``sslkit propose``, ORL stage 2): numbered chunk files.

A job cuts its work into chunks of consecutive items (:func:`chunk_ranges`); each finished chunk
is committed as one file, atomically, so a ``kill -9`` loses at most the chunk in flight and a
rerun computes only :meth:`ChunkStage.pending` chunks. Every commit passes the fault point
``commit:<stage name>`` of :mod:`sslkit._testing` (how the tests kill a job between two chunks).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sslkit import _testing
from sslkit.errors import UserError
from sslkit.io.artefacts import Record
from sslkit.io.atomic import commit, temp_path_for, write_text_atomic


def partial_dir(output: str | os.PathLike) -> Path:
    """Where a job writing ``output`` keeps its progress until it is done: ``OUTPUT.partial/``."""
    output = Path(output)
    return output.with_name(output.name + ".partial")


def chunk_ranges(start: int, stop: int, size: int) -> list[range]:
    """``[start, stop)`` cut into consecutive ranges of ``size`` items (the last may be shorter)."""
    return [range(s, min(stop, s + size)) for s in range(start, stop, size)]


class ChunkStage:
    """Resumable progress for a long job: numbered chunk files, each written atomically.

    Each finished chunk is saved as ``<dir>/chunk-<key>-<k>.npz`` (temporary name + rename), ``key``
    a hash of ``fingerprint`` (the inputs and parameters), which is also stored in ``<dir>/stage.json``.
    Resuming with a different fingerprint is refused rather than mixing results, unless ``overwrite``,
    which discards the stale chunks and starts over; a chunk whose name carries another key (left by
    another job, whatever happened to ``stage.json``) is never adopted: it is removed. ``name`` names
    the stage's fault point.
    """

    def __init__(self, directory: str | os.PathLike, fingerprint: dict, *, name: str = "chunks",
                 overwrite: bool = False):
        self.dir = Path(directory)
        self.name = name
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        self.key = hashlib.sha1(json.dumps(self.fingerprint, sort_keys=True).encode()).hexdigest()[:12]
        meta = self.dir / "stage.json"
        if meta.exists() and json.loads(meta.read_text()) != self.fingerprint:
            if not overwrite:
                raise UserError("an interrupted run with different inputs or parameters left this folder",
                                self.dir, "rerun the same command, or pass --overwrite to start over")
            self.remove()
        if not meta.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(meta, json.dumps(self.fingerprint, sort_keys=True))
        for p in self.dir.glob("chunk-*.npz"):  # another job's chunks: never adopted
            if not p.name.startswith(f"chunk-{self.key}-"):
                with contextlib.suppress(OSError):
                    p.unlink()

    def _path(self, k: int) -> Path:
        return self.dir / f"chunk-{self.key}-{k:06d}.npz"

    def done(self) -> set[int]:
        out = set()
        for p in self.dir.glob(f"chunk-{self.key}-*.npz"):
            with contextlib.suppress(ValueError):
                out.add(int(p.stem.rsplit("-", 1)[1]))
        return out

    def nbytes(self) -> int:
        """Bytes of the committed chunks (about what the finished artefact needs)."""
        return sum(p.stat().st_size for p in self.dir.glob(f"chunk-{self.key}-*.npz"))

    def pending(self, count: int) -> list[int]:
        """The chunks among ``0 … count-1`` not committed yet, in order."""
        done = self.done()
        return [k for k in range(count) if k not in done]

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
        _testing.reached(f"commit:{self.name}")

    def count(self, k: int) -> int:
        """How many records chunk ``k`` holds (read without loading them)."""
        with np.load(self._path(k), allow_pickle=False) as z:
            return len(z["image_id"])

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
