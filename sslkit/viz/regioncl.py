"""Renderer for RegionCL swap files (``sslkit.views``, ``views_kind = regioncl-swaps``, written by
``sslkit sample-views -m regioncl``; schema in docs/artefacts.md).

One image of one frozen step, as three panels of the same size (views upscaled with nearest
neighbour so the pixels stay visible):

* **canvas source**: this image's query view, the paste box outlined in blue (the part replaced);
* **paste source**: its partner's query view, the box outlined in orange (the part pasted in);
* **composite**: what the online encoder sees, the pasted region outlined in orange, the stride-R
  feature grid drawn thin (an aligned box sits on it; ``official`` origins may not).

Each panel is titled with the file it comes from; the caption gives the step, the box in pixels
and cells, and flags an image that pairs with itself (odd batch: its region terms are masked).
"""

from __future__ import annotations

import numpy as np

from sslkit.viz.base import Rendering, ShowOptions

PANEL = 256
TITLE_H = 20
CANVAS_COLOR = (60, 140, 255)
PASTE_COLOR = (255, 150, 0)
GRID_COLOR = (235, 235, 235)


def _panel(view: np.ndarray, box_xyxy, rgb, title: str, stride: int, grid: bool) -> np.ndarray:
    import cv2

    size = view.shape[0]
    scale = max(1, PANEL // size)
    big = np.ascontiguousarray(view.repeat(scale, 0).repeat(scale, 1))
    if grid:
        for p in range(stride, size, stride):
            big[p * scale, :] = (0.6 * big[p * scale, :] + 0.4 * np.array(GRID_COLOR)).astype(np.uint8)
            big[:, p * scale] = (0.6 * big[:, p * scale] + 0.4 * np.array(GRID_COLOR)).astype(np.uint8)
    x1, y1, x2, y2 = (int(v) * scale for v in box_xyxy)
    t = max(2, big.shape[0] // 128)
    cv2.rectangle(big, (x1, y1), (x2 - 1, y2 - 1), rgb, t)
    strip = np.full((TITLE_H, big.shape[1], 3), 20, np.uint8)
    text = title
    while len(text) > 4 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.42, 1)[0][0] > big.shape[1] - 8:
        text = text[:-4] + ".."
    cv2.putText(strip, text, (4, TITLE_H - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.42, rgb, 1, cv2.LINE_AA)
    return np.concatenate([strip, big])


def render(art, row: int, image: np.ndarray, opts: ShowOptions) -> Rendering:
    swaps = np.asarray(art._f["swap"]["data"]).reshape(-1, 4)
    step, slot, partner_slot, valid = (int(v) for v in swaps[row])
    same_step = np.flatnonzero(swaps[:, 0] == step)
    prow = int(same_step[swaps[same_step, 1] == partner_slot][0])
    query = art.ragged("query", row)
    partner_query = art.ragged("query", prow)
    composite = art.ragged("composite", row)
    box = tuple(int(v) for v in art.ragged("paste_box", row)[0])
    cells = tuple(int(v) for v in art.ragged("paste_cells", row)[0])
    stride = int(art.attrs.get("stride", 32))
    me, other = art.file_name[row], art.file_name[prow]
    panels = [_panel(query, box, CANVAS_COLOR, f"canvas: {me}", stride, False),
              _panel(partner_query, box, PASTE_COLOR, f"paste: {other}", stride, False),
              _panel(composite, box, PASTE_COLOR, f"composite: step {step}, image {slot}", stride, True)]
    h = max(p.shape[0] for p in panels)
    panels = [np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0))) for p in panels]
    gap = np.zeros((h, 8, 3), np.uint8)
    picture = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    x1, y1, x2, y2 = box
    caption = (f"step {step}, image {slot}: canvas {me} + paste {other} (image {partner_slot}); "
               f"box {x2 - x1}x{y2 - y1} px at ({x1}, {y1}), cells x {cells[0]}:{cells[2]} y {cells[1]}:{cells[3]}")
    if not valid:
        caption += "; pairs with itself (odd batch): region terms masked"
    return Rendering(picture, caption)
