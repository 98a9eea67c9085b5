"""What every sslkit HDF5 artefact shares: the kinds and versions, the per-image record, the
standard attributes, and the checks made before writing one."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from sslkit.errors import UserError

#: every HDF5 artefact kind and the newest version of it this code reads and writes
FORMAT_VERSIONS: dict[str, int] = {
    "sslkit.proposals": 1,
    "sslkit.views": 1,
    "sslkit.features": 1,
}

#: attributes every artefact has; any other attribute is specific to its kind (e.g. ``views_kind``)
STANDARD_ATTRS = frozenset({"format", "format_version", "sslkit_version", "command", "params", "created",
                            "complete", "num_images"})


def command_line() -> str:
    """The command that is running, as a shell would need it to run it again."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("__main__.py", "/sslkit")):
        argv[0] = "sslkit"
    return " ".join(shlex.quote(a) for a in argv)


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
    """Refuse to replace an existing file (of any kind) unless ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise UserError("is a folder, expected an output file name", path)
    if not path.exists() or overwrite:
        return
    existing = peek_format(path)
    what = f"a {existing} file" if existing else "not an sslkit artefact"
    raise UserError(f"already exists and is {what}", path, "choose another -o or pass --overwrite")


def peek_format(path: str | os.PathLike) -> str | None:
    """The ``format`` attribute of an HDF5 file, or None if it is not one."""
    try:
        with h5py.File(path, "r") as f:
            v = f.attrs.get("format")
            return None if v is None else str(v)
    except OSError:
        return None
