"""Renderer for ``sslkit.views`` files, by their ``views_kind`` attribute.

* ``orl-pairs`` (ORL stage 2): the query image (left) beside one of its kNN images (right), the
  RoI pairs of that neighbour drawn as boxes of one colour per pair joined by a line, best pair
  first. The neighbour slot is ``--neighbor K`` (or ``--field neighbor=K``); default 0, the nearest. ``--top`` limits
  the pairs drawn (default: all of that neighbour's pairs, ``max(1, int(0.1·B_q))``).
* ``univip-candidates``: drawn by :func:`sslkit.viz.univip.render`.
* ``regioncl-swaps``: drawn by :func:`sslkit.viz.regioncl.render`.
* ``mcl-montages``: one step's MCL montages, drawn by :func:`sslkit.viz.mcl.render`.

The neighbour image is read from the image folder ``show`` resolved (``--images`` or the
source recorded in the file).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from sslkit.errors import UserError
from sslkit.io.images import ImageDecodeError, load_rgb
from sslkit.viz.base import Rendering, ShowOptions, image_root
from sslkit.viz.draw import color, line_width

#: views_kind → "module:function" of the renderer of that kind
KINDS = {
    "orl-pairs": "sslkit.viz.views:render_orl_pairs",
    "univip-candidates": "sslkit.viz.univip:render",
    "regioncl-swaps": "sslkit.viz.regioncl:render",
    "mcl-montages": "sslkit.viz.mcl:render",
}


def render(art, row: int, image: np.ndarray, opts: ShowOptions) -> Rendering:
    kind = art.attrs.get("views_kind")
    target = KINDS.get(kind)
    if target is None:
        raise UserError(f"sslkit show cannot draw views of kind {kind!r}", art.path, f"it draws: {', '.join(KINDS)}")
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)(art, row, image, opts)


def neighbor_slot(opts: ShowOptions, k: int, path) -> int:
    """The neighbour slot to draw: ``--neighbor K``, else ``--field [neighbor=]K``, else 0."""
    slot = opts.neighbor
    if slot is None and opts.field:
        text = opts.field.split("=", 1)[1] if opts.field.startswith(("neighbor=", "neighbour=")) else opts.field
        try:
            slot = int(text)
        except ValueError:
            raise UserError(f"--field {opts.field!r}: orl-pairs files take a neighbour slot", path,
                            f"--field neighbor=K with 0 <= K < {k}") from None
    slot = 0 if slot is None else slot
    if not 0 <= slot < k:
        raise UserError(f"neighbour slot {slot} does not exist", path, f"choose 0 <= K < {k}")
    return slot


def _fit_height(image: np.ndarray, height: int) -> tuple[np.ndarray, float]:
    import cv2

    s = height / image.shape[0]
    w = max(1, round(image.shape[1] * s))
    return cv2.resize(image, (w, height), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR), s


def render_orl_pairs(art, row: int, image: np.ndarray, opts: ShowOptions) -> Rendering:
    import cv2

    k = int(art.field_spec("knn_ids")[1][0])
    slot = neighbor_slot(opts, k, art.path)
    nrow = int(art.ragged("knn_ids", row)[0, slot])
    sim = float(art.ragged("knn_sims", row)[0, slot])
    pairs = art.ragged("pairs", row)
    scores = art.ragged("pair_scores", row)
    sel = pairs[:, 0] == slot
    pairs, scores = pairs[sel], scores[sel]
    if opts.top:
        pairs, scores = pairs[:opts.top], scores[:opts.top]
    qboxes, nboxes = art.ragged("boxes", row), art.ragged("boxes", nrow)

    path = Path(opts.images or image_root(art.params)) / art.file_name[nrow]
    try:
        neighbour, _ = load_rgb(path)
    except ImageDecodeError as e:
        raise UserError(f"cannot read the neighbour image ({e.reason})", path,
                        "the renderer reads neighbours from the image root recorded in the views file") from e
    height = max(image.shape[0], neighbour.shape[0])
    left, sl = _fit_height(image, height)
    right, sr = _fit_height(neighbour, height)
    gap = 8
    canvas = np.full((height, left.shape[1] + gap + right.shape[1], 3), 30, np.uint8)
    canvas[:, :left.shape[1]] = left
    off = left.shape[1] + gap
    canvas[:, off:] = right
    t = line_width(canvas.shape[:2])
    # worst pair first, so the best is drawn on top
    for i in reversed(range(len(pairs))):
        _, qi, ni = (int(v) for v in pairs[i])
        c = color(i)
        qa = np.asarray(qboxes[qi], np.float64) * sl
        nb = np.asarray(nboxes[ni], np.float64) * sr + [off, 0, off, 0]
        for x1, y1, x2, y2 in (qa, nb):
            cv2.rectangle(canvas, (int(round(x1)), int(round(y1))), (int(round(x2)) - 1, int(round(y2)) - 1), c, t,
                          lineType=cv2.LINE_AA)
        p1 = (int(round((qa[0] + qa[2]) / 2)), int(round((qa[1] + qa[3]) / 2)))
        p2 = (int(round((nb[0] + nb[2]) / 2)), int(round((nb[1] + nb[3]) / 2)))
        cv2.line(canvas, p1, p2, c, t, lineType=cv2.LINE_AA)
    best = f", best {scores[0]:.3f}" if len(scores) else ""
    caption = (f"{art.file_name[row]} <-> {art.file_name[nrow]} (neighbour {slot}, sim {sim:.3f}): "
               f"{len(pairs)} pairs{best}")
    return Rendering(canvas, caption)
