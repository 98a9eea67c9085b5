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
from pathlib import Path

from sslkit.errors import UserError
from sslkit.viz.base import READERS, Renderer, Rendering, ShowOptions, image_root, open_artefact  # noqa: F401
from sslkit.viz.regions import render

#: artefact ``format`` → ``"module:function"`` of its renderer (imported only when used)
RENDERERS: dict[str, str] = {
    "sslkit.proposals": "sslkit.viz.proposals:render",
    "sslkit.detections": "sslkit.viz.detections:render",
    "sslkit.views": "sslkit.viz.views:render",
}

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
