"""Drawing helpers shared by the renderers: colours, boxes, label-map overlays, captions, contact sheets.

Images are RGB uint8 ``(H, W, 3)`` arrays; every helper returns a new array.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np

from sslkit.io.atomic import write_bytes_atomic

CAPTION_HEIGHT = 18


def color(i: int) -> tuple[int, int, int]:
    """A bright colour for index ``i``; neighbouring indices get well-separated hues (golden-ratio walk)."""
    h = (i * 0.618033988749895) % 1.0
    s = 0.65 + 0.35 * ((i // 7) % 2)
    r, g, b = colorsys.hsv_to_rgb(h, s, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def line_width(hw: tuple[int, int]) -> int:
    """Stroke width that stays visible on large images and thin on small ones."""
    return max(1, round(max(hw) / 400))


def draw_boxes(image: np.ndarray, boxes: np.ndarray, thickness: int | None = None) -> np.ndarray:
    """Outline xyxy ``boxes`` (image pixels), box ``k`` in :func:`color` ``(k)``; later boxes drawn on top."""
    import cv2

    out = np.ascontiguousarray(image).copy()
    t = thickness or line_width(out.shape[:2])
    for k, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        p1 = (int(round(x1)), int(round(y1)))
        p2 = (max(p1[0], int(round(x2)) - 1), max(p1[1], int(round(y2)) - 1))  # x2/y2 are exclusive edges
        cv2.rectangle(out, p1, p2, color(k), t, lineType=cv2.LINE_AA)
    return out


def label_colors(labels: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` colours of a label map, label ``l`` in :func:`color` ``(l)``."""
    ids, inv = np.unique(labels, return_inverse=True)
    lut = np.array([color(int(i)) for i in ids], np.uint8)
    return lut[inv.reshape(labels.shape)]


def overlay_labels(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5, boundaries: bool = True) -> np.ndarray:
    """Blend the colours of a label map (already at the image's size) over the image; white segment edges."""
    if labels.shape != image.shape[:2]:
        raise ValueError(f"label map {labels.shape} does not match image {image.shape[:2]}")
    out = (image.astype(np.float32) * (1 - alpha) + label_colors(labels).astype(np.float32) * alpha)
    out = out.round().astype(np.uint8)
    if boundaries:
        edge = np.zeros(labels.shape, bool)
        edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
        edge[1:, :] |= labels[1:, :] != labels[:-1, :]
        out[edge] = 255
    return out


def fit(image: np.ndarray, size: int) -> np.ndarray:
    """Scale to fit a ``size × size`` square (aspect kept) and pad with dark grey."""
    import cv2

    h, w = image.shape[:2]
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    out = np.full((size, size, 3), 40, np.uint8)
    y, x = (size - nh) // 2, (size - nw) // 2
    out[y:y + nh, x:x + nw] = small
    return out


def caption(width: int, text: str) -> np.ndarray:
    """A ``CAPTION_HEIGHT``-pixel strip with ``text`` (cut to fit)."""
    import cv2

    strip = np.full((CAPTION_HEIGHT, width, 3), 20, np.uint8)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.4
    shown = text
    while len(shown) > 2 and cv2.getTextSize(shown, font, scale, 1)[0][0] > width - 4:
        text = text[:-1]
        shown = text + ".."
    cv2.putText(strip, shown, (2, CAPTION_HEIGHT - 5), font, scale, (235, 235, 235), 1, cv2.LINE_AA)
    return strip


def contact_sheet(tiles: list[np.ndarray], captions: list[str], tile: int) -> np.ndarray:
    """Tiles (any size, fitted to ``tile``) with captions below, on a grid of ``ceil(sqrt(K))`` columns."""
    k = len(tiles)
    cols = max(1, int(np.ceil(np.sqrt(k))))
    rows = max(1, -(-k // cols))
    cell_h = tile + CAPTION_HEIGHT
    sheet = np.full((rows * cell_h, cols * tile, 3), 0, np.uint8)
    for i, (t, c) in enumerate(zip(tiles, captions, strict=True)):
        r, q = divmod(i, cols)
        sheet[r * cell_h:r * cell_h + tile, q * tile:(q + 1) * tile] = fit(t, tile)
        sheet[r * cell_h + tile:(r + 1) * cell_h, q * tile:(q + 1) * tile] = caption(tile, c)
    return sheet


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB array as PNG, atomically."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise RuntimeError(f"could not encode {path} as PNG")
    write_bytes_atomic(path, buf.tobytes())
