"""Renderer for UniVIP candidate files (``sslkit.views``, ``views_kind = univip-candidates``).

One draw of the data loader's scene-pair sampler (:class:`sslkit.views.univip.PairSampler`, the
same code, seeded by ``--seed`` and the image's row, so a picture is reproducible) on the image's
candidates:

* left: the image with every candidate (thin grey), the two scene crops (white, black), their
  overlap (tinted) and the K instance boxes (box ``k`` in colour ``k``);
* right: the two scene crops at 224 px and the K instance crops at 96 px, cropped from the original
  image exactly as training does, before the photometric augmentations (which would hide them).

``--top K`` sets the number of instances (default 4, the paper's K).

``sslkit show FILE --views univip`` draws the same for any region file UniVIP's ``--views`` takes (a
proposals file of boxes or label maps, converted with the method's settings or ``--set``;
:func:`render_views`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sslkit.errors import UserError
from sslkit.transforms import crop_resize
from sslkit.views.dataset import sample_seed
from sslkit.views.univip import PairSampler
from sslkit.viz.base import Rendering, ShowOptions
from sslkit.viz.draw import color, draw_boxes, line_width
from sslkit.viz.regions import consumer

SCENE_SIZE = 224
INSTANCE_SIZE = 96
DEFAULT_K = 4
SCENE_COLORS = ((255, 255, 255), (0, 0, 0))
CANDIDATE_COLOR = (150, 150, 150)


def _rect(image: np.ndarray, box, rgb, thickness: int) -> None:
    import cv2

    x1, y1, x2, y2 = (int(round(v)) for v in box)
    cv2.rectangle(image, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), rgb, thickness, lineType=cv2.LINE_AA)


def _bordered(tile: np.ndarray, rgb, width: int = 3) -> np.ndarray:
    out = tile.copy()
    out[:width], out[-width:], out[:, :width], out[:, -width:] = rgb, rgb, rgb, rgb
    return out


def render(art, row: int, image: np.ndarray, opts: ShowOptions) -> Rendering:
    """A univip-candidates file: its stored boxes."""
    return _draw(image, row, art.file_name[row], np.asarray(art.ragged("boxes", row), np.float32).reshape(-1, 4), opts)


def render_views(art, row: int, image: np.ndarray, opts: ShowOptions) -> Rendering:
    """``--views univip``: any region file, read as ``pretrain -m univip --views FILE`` reads it."""

    store, _ = consumer("univip", art.path, opts.sets)
    name = art.file_name[row]
    if store.rows.get(name) is None:
        raise UserError(f"has no regions for {name}", art.path)
    return _draw(image, row, name, store.boxes_for_image(name, *image.shape[:2]), opts)


def _draw(image: np.ndarray, row: int, name: str, cands: np.ndarray, opts: ShowOptions) -> Rendering:
    import cv2
    from PIL import Image

    k = opts.top or DEFAULT_K
    h, w = image.shape[:2]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sample_seed(opts.seed, row))
        pair = PairSampler(k=k).sample(h, w, cands)

    # drawn after scaling the image to the panel height, so strokes stay thin on small images
    panel_h = 2 * SCENE_SIZE
    scale = panel_h / h
    left = cv2.resize(image, (max(1, round(w * scale)), panel_h),
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    t = line_width(left.shape[:2])
    for box in cands:
        _rect(left, box * scale, CANDIDATE_COLOR, 1)
    x1, y1, x2, y2 = (int(round(v * scale)) for v in pair.region)
    left[y1:y2, x1:x2] = (0.8 * left[y1:y2, x1:x2] + 0.2 * np.array([255, 220, 0])).astype(np.uint8)
    for crop, rgb in zip(pair.crops, SCENE_COLORS, strict=True):
        _rect(left, crop * scale, rgb, t + 1)
    left = draw_boxes(left, pair.boxes * scale, t + 1)
    pil = Image.fromarray(image)
    scenes = np.concatenate([_bordered(np.asarray(crop_resize(pil, c, SCENE_SIZE)), rgb)
                             for c, rgb in zip(pair.crops, SCENE_COLORS, strict=True)])
    per_col = panel_h // INSTANCE_SIZE
    cols = max(1, math.ceil(k / per_col))
    instances = np.full((panel_h, cols * INSTANCE_SIZE, 3), 40, np.uint8)
    for i, box in enumerate(pair.boxes):
        c, r = divmod(i, per_col)
        tile = _bordered(np.asarray(crop_resize(pil, box, INSTANCE_SIZE)), color(i))
        instances[r * INSTANCE_SIZE:(r + 1) * INSTANCE_SIZE, c * INSTANCE_SIZE:(c + 1) * INSTANCE_SIZE] = tile
    picture = np.concatenate([left, scenes, instances], axis=1)
    naive = len(pair.boxes) - pair.from_candidates
    fallback = ", whole-image fallback" if pair.whole_image else ""
    text = (f"{name}: {len(cands)} candidates; {pair.from_candidates} of K={k} in the overlap, "
            f"{naive} naive{fallback}")
    return Rendering(picture, text)
