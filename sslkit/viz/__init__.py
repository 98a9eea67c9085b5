"""Pictures of artefacts for ``sslkit show``: drawing helpers and a registry of renderers by file format.

A renderer draws one image's content of an artefact over that image::

    def render(artefact: Artefact, row: int, image: np.ndarray, opts: ShowOptions) -> Rendering

``image`` is the decoded RGB image at its original size (the frame artefacts
store coordinates in); the returned picture may be any size.  ``show`` picks
the renderer from the artefact's ``format`` attribute through
:data:`RENDERERS`, so adding one for a new artefact kind is: a module
``sslkit/viz/<kind>.py`` with a ``render`` function (drawing with
:mod:`sslkit.viz.draw`), one line in :data:`RENDERERS`, and a test that
``sslkit show`` writes a picture of the expected size for such a file.
Files that are not HDF5 (COCO detection results ``.json``) are opened by a
reader registered by suffix in :data:`READERS` that offers the same interface.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslkit.errors import UserError

#: artefact ``format`` → ``"module:function"`` of its renderer (imported only when used)
RENDERERS: dict[str, str] = {
    "sslkit.proposals": "sslkit.viz.proposals:render",
    "sslkit.detections": "sslkit.viz.detections:render",
    "sslkit.views": "sslkit.viz.views:render",
}

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
        from sslkit.io.artefacts import Artefact

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


#: ``--views METHOD``: renderers that sample a method's training views from an artefact
VIEW_RENDERERS: dict[str, str] = {
    "detcon-s": "sslkit.viz.detcon:render",
    "detcon-b": "sslkit.viz.detcon:render",
    "univip": "sslkit.viz.univip:render_views",
}


def renderer_for(fmt: str, path: str | Path | None = None, views: str | None = None,
                 regions_for: str | None = None) -> Renderer:
    """The renderer registered for artefact kind ``fmt`` (or for ``--views`` / ``--for``); one clear line if
    there is none."""
    if regions_for is not None:
        if fmt != "sslkit.proposals" and fmt != "sslkit.views":
            raise UserError(f"--for draws region files (sslkit.proposals, UniVIP candidates), not {fmt}", path)
        from sslkit.viz.regions import render

        return render
    if views is not None:
        target = VIEW_RENDERERS.get(views)
        if target is None:
            raise UserError(f"--views {views!r} is not one of {', '.join(VIEW_RENDERERS)}", path)
        module, func = target.split(":")
        return getattr(importlib.import_module(module), func)
    target = RENDERERS.get(fmt)
    if target is None:
        raise UserError(f"sslkit show cannot draw {fmt} files yet", path,
                        f"it draws: {', '.join(sorted(RENDERERS))}")
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def image_root(params: dict, override: str | Path | None = None, image_root_arg: str | Path | None = None) -> Path:
    """Folder holding the artefact's images: ``override`` (a folder or COCO json) or the recorded source root."""
    if override is not None:
        from sslkit.io.images import ImageSource

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
