"""What every renderer of ``sslkit show`` shares: the options it reads, what it returns, where the
artefact's images are, and opening a file to draw from (the registry of renderers: :mod:`sslkit.viz`)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslkit.errors import UserError
from sslkit.io.artefacts import Artefact
from sslkit.io.images import ImageSource

#: files that are not HDF5 artefacts: suffix → ``"module:class"`` of a reader with the artefact
#: interface ``show`` uses (``format``, ``params``, ``file_name``/``height``/``width``, ``index_of``),
#: constructed as ``cls(path, images, image_root)``
READERS: dict[str, str] = {
    ".json": "sslkit.viz.detections:DetectionsFile",  # COCO detection results
}


def open_artefact(path: str | Path, images: str | Path | None = None, image_root: str | Path | None = None):
    """What ``sslkit show`` draws from: a reader from :data:`READERS` by suffix, else an HDF5 artefact."""
    target = READERS.get(Path(path).suffix.lower())
    if target is None:
        return Artefact(path)
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(path, images, image_root)


@dataclass(frozen=True)
class ShowOptions:
    """What to draw; each renderer documents how it reads these."""

    field: str | None = None  # which field of the artefact; None: the renderer's default
    top: int = 0  # at most this many items (e.g. boxes); 0: the renderer's default
    alpha: float = 0.5  # opacity of filled overlays such as label maps
    views: str | None = None  # draw a method's augmented training views instead (see VIEW_RENDERERS)
    size: int = 0  # view size for `views` (0: the method's default)
    seed: int = 0  # seed of the sampled views
    neighbor: int | None = None  # views files with neighbours (ORL pairs): which neighbour slot
    images: Path | None = None  # the image folder `show` resolved (renderers that open other images use it)
    regions_for: str | None = None  # draw a region file as this method reads it (sslkit.viz.regions)
    sets: dict | None = None  # that method's conversion settings (--set KEY=VALUE), also for `views`


@dataclass
class Rendering:
    image: np.ndarray  # RGB uint8
    caption: str  # one line for contact sheets


Renderer = Callable[..., Rendering]


def image_root(params: dict, override: str | Path | None = None, image_root_arg: str | Path | None = None) -> Path:
    """Folder holding the artefact's images: ``override`` (a folder or COCO json) or the recorded source root."""
    if override is not None:
        p = Path(override)
        if p.is_file() and p.suffix.lower() == ".json":
            return ImageSource.from_coco(p, image_root_arg).root
        if not p.is_dir():
            raise UserError("not a folder or a COCO json", p, "pass --images FOLDER")
        return p
    root = (params.get("source") or {}).get("root")
    if not root:
        raise UserError("this artefact does not record where its images are", None, "pass --images FOLDER")
    return Path(root)
