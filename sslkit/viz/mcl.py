"""Renderer for MCL's frozen montages (``sslkit.views``, ``views_kind = mcl-montages``, written by
``sslkit sample-views -m mcl``; :mod:`sslkit.views.mcl_stage`).

One picture per step: a row per view (q, k), a panel per level (ratio 1, 2, 4, 8), each panel the
level's montages on a grid, redrawn from the stored views with the training code's assembly.
Montage borders are dark, tile borders white, and every tile carries the batch slot of the image it
shows (the loss label); the tiles of the image asked for (``--image``, default slot 0) are outlined
in yellow. Captions give the view, the level, the ratio, its pyramid level and the number of montages.
"""

from __future__ import annotations

import math

import numpy as np

from sslkit.views.mcl_stage import montages_from_file
from sslkit.viz.base import Rendering, ShowOptions
from sslkit.viz.draw import caption

HIGHLIGHT = (255, 220, 0)
MONTAGE_BORDER = (20, 20, 20)
TILE_BORDER = (255, 255, 255)
GAP = 8
#: display side of one level-0 tile (px); panels grow with the batch so labels stay readable
TILE_PX = 44


def _label(img: np.ndarray, text: str, x: int, y: int, side: int) -> None:
    import cv2

    scale = min(0.55, max(0.3, side / 110))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x2, y2 = min(img.shape[1], x + tw + 4), min(img.shape[0], y + th + base + 3)
    img[y:y2, x:x2] = (img[y:y2, x:x2].astype(np.float32) * 0.3).astype(np.uint8)
    cv2.putText(img, text, (x + 2, y + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def panel(montages: np.ndarray, sources: np.ndarray, ratio: int, size: int, highlight: int) -> np.ndarray:
    """A level's montages (M, S, S, 3) on a grid of side ``size`` px: tiles outlined and labelled."""
    import cv2

    m = montages.shape[0]
    cols = max(1, math.ceil(math.sqrt(m)))
    rows = max(1, math.ceil(m / cols))
    cell = size // cols
    out = np.full((rows * cell, cols * cell, 3), 40, np.uint8)
    tile = cell / ratio
    for i in range(m):
        r, c = divmod(i, cols)
        y0, x0 = r * cell, c * cell
        up = cell >= montages.shape[1]
        out[y0:y0 + cell, x0:x0 + cell] = cv2.resize(montages[i], (cell, cell),
                                                     interpolation=cv2.INTER_NEAREST if up else cv2.INTER_AREA)
        for k in range(1, ratio):  # tile borders
            p = round(k * tile)
            out[y0:y0 + cell, x0 + p] = TILE_BORDER
            out[y0 + p, x0:x0 + cell] = TILE_BORDER
        for j in range(ratio * ratio):
            a, b = divmod(j, ratio)
            ty, tx = y0 + round(a * tile), x0 + round(b * tile)
            src = int(sources[i * ratio * ratio + j])
            if src == highlight:
                cv2.rectangle(out, (tx + 1, ty + 1), (tx + round(tile) - 2, ty + round(tile) - 2), HIGHLIGHT, 2)
            _label(out, str(src), tx + 1, ty + 1, round(tile))
        cv2.rectangle(out, (x0, y0), (x0 + cell - 1, y0 + cell - 1), MONTAGE_BORDER, 2)
    return out


def render(art, row: int, image: np.ndarray, opts: ShowOptions) -> Rendering:
    a = art.attrs
    levels, b, size = int(a["levels"]), int(a["batch_size"]), int(a["image_size"])
    montages = montages_from_file(art)
    side = max(320, TILE_PX * math.ceil(math.sqrt(b)))
    rows = []
    for v, tag in enumerate(("q", "k")):
        cells = []
        for s in range(levels):
            src = np.asarray(a[f"level{s}_sources_{'qk'[v]}"])
            p = panel(montages[(v, s)], src, 2 ** s, side, row)
            m = montages[(v, s)].shape[0]
            head = caption(p.shape[1], f"{tag} · level {s} · 1/{2 ** s} on P{5 - s} · {m} montage{'s' * (m > 1)}")
            cells.append(np.concatenate([head, p]))
        height = max(c.shape[0] for c in cells)
        padded = [np.pad(c, ((0, height - c.shape[0]), (0, GAP), (0, 0)), constant_values=0) for c in cells]
        rows.append(np.concatenate(padded, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, GAP), (0, width - r.shape[1]), (0, 0)), constant_values=0) for r in rows]
    picture = np.concatenate(rows)
    n = sum(len(np.asarray(a[f"level{s}_sources_q"])) for s in range(levels))
    text = (f"MCL montages of one step: batch {b}, {levels} levels, {n} tiles per view, windows "
            f"{size // 32}x{size // 32}; slot {row} ({art.file_name[row]}) in yellow")
    return Rendering(picture, text)
