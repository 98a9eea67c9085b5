"""Conversions between the two kinds of regions sslkit's object-level methods consume: boxes (ORL,
UniVIP) and label maps (DetCon). Pure array functions; the loaders (:mod:`sslkit.views.candidates`,
:mod:`sslkit.views.detcon`) apply them per image, docs/swap.md states the rules.

* :func:`boxes_to_labels` paints ``xyxy`` boxes into a uint16 label map: box ``k`` of the list gets id
  ``k + 1``, pixels no box covers keep the background id 0. A pixel ``(x, y)`` (covering
  ``[x, x+1) × [y, y+1)``) belongs to a box when its centre ``(x + ½, y + ½)`` lies in ``[x1, x2) × [y1, y2)``,
  so an integer box covers exactly its ``(x2 − x1) · (y2 − y1)`` pixels. Where boxes overlap, the one
  painted last wins; :func:`paint_order` says which that is ([I], sslkit's rule: DetCon's papers never
  rasterise boxes).
* :func:`segment_boxes` is the other way: the bounding box of every segment of a label map, in the
  pixels of the image the map stands for. A map stored smaller than its image is read with the
  readers' nearest-neighbour rule (:func:`sslkit.proposals.masks.resize_labels`: image pixel ``(y, x)``
  takes ``map[y·h // H, x·w // W]``), and the boxes are exactly those of the resized map, computed
  without resizing it. Each segment also gets its size in image pixels (for ordering).
"""

from __future__ import annotations

import numpy as np
import torch

#: how overlapping boxes are painted: which box ends up on top
BOX_ORDERS = ("large-first", "small-first", "rank")
#: most boxes one uint16 label map can hold (ids 1..65535; 0 is the background)
MAX_BOXES = int(np.iinfo(np.uint16).max)


def paint_order(boxes: np.ndarray, order: str = "large-first") -> np.ndarray:
    """Indices of ``boxes`` in the order they are painted (the last one painted is on top).

    * ``large-first``: by decreasing area, so smaller boxes lie on top of larger ones and a box nested
      in another stays visible (ties: list order);
    * ``small-first``: by increasing area, larger boxes on top (ties: list order);
    * ``rank``: the list's own order with its *first* box on top (painted in reverse): for selective
      search its ranking, for COCO boxes the annotation order.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    if order not in BOX_ORDERS:
        raise ValueError(f"box order {order!r} is not one of {', '.join(BOX_ORDERS)}")
    if order == "rank":
        return np.arange(len(b) - 1, -1, -1, dtype=np.int64)
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    key = -area if order == "large-first" else area
    return np.argsort(key, kind="stable").astype(np.int64)


def pixel_span(lo: float, hi: float, size: int) -> tuple[int, int]:
    """The pixels ``[a, b)`` of a row of ``size`` whose centres ``p + ½`` lie in ``[lo, hi)``."""
    a = int(np.ceil(lo - 0.5))
    b = int(np.ceil(hi - 0.5))
    return max(0, a), min(size, b)


def boxes_to_labels(boxes: np.ndarray, height: int, width: int, order: str = "large-first") -> np.ndarray:
    """A ``(height, width)`` uint16 label map of ``boxes`` (``xyxy``, in the map's pixels): box ``k`` → id
    ``k + 1``, uncovered pixels 0, overlaps resolved by :func:`paint_order`."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(b) > MAX_BOXES:
        raise ValueError(f"{len(b)} boxes do not fit a uint16 label map (at most {MAX_BOXES})")
    out = np.zeros((int(height), int(width)), np.uint16)
    for k in paint_order(b, order):
        x1, x2 = pixel_span(b[k, 0], b[k, 2], out.shape[1])
        y1, y2 = pixel_span(b[k, 1], b[k, 3], out.shape[0])
        if x2 > x1 and y2 > y1:
            out[y1:y2, x1:x2] = k + 1
    return out


def _edges(n_map: int, n_image: int) -> np.ndarray:
    """``e[c]`` = first image pixel whose nearest-neighbour source is map pixel ``c`` or later
    (``ceil(c · n_image / n_map)``), for ``c = 0..n_map``."""
    c = np.arange(n_map + 1, dtype=np.int64)
    return -((-c * n_image) // n_map)


def segment_boxes(labels: np.ndarray, image_hw: tuple[int, int] | None = None,
                  background: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The segments of a label map: ``(ids (K,) int64, boxes (K, 4) float32, sizes (K,) int64)``.

    ``boxes`` are the ``xyxy`` bounding boxes of each segment in the pixels of an image of ``image_hw``
    (default: the map's own size) after the nearest-neighbour resize, ``sizes`` their pixel counts
    there; ``ids`` ascend. A segment that no image pixel reads (possible only when the map is larger
    than the image) is left out, as is ``background``.
    """
    lab = np.asarray(labels)
    h, w = lab.shape
    H, W = (h, w) if image_hw is None else (int(image_hw[0]), int(image_hw[1]))
    if lab.size == 0 or H == 0 or W == 0:
        return np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    ey, ex = _edges(h, H), _edges(w, W)
    rows, cols = np.diff(ey), np.diff(ex)  # image pixels each map row / column stands for
    t = torch.from_numpy(lab.astype(np.int64, copy=False)).reshape(-1)
    n = int(t.max()) + 1
    # a map pixel that no image pixel reads (rows/cols 0) must not widen its segment's box
    used = torch.from_numpy(((rows[:, None] > 0) & (cols[None, :] > 0)).reshape(-1))
    weight = torch.from_numpy((rows[:, None] * cols[None, :]).reshape(-1))
    sizes = torch.zeros(n, dtype=torch.int64).scatter_add_(0, t, weight)
    tu = t[used]
    ys = torch.arange(h).repeat_interleave(w)[used]
    xs = torch.arange(w).repeat(h)[used]

    def reduce(v: torch.Tensor, how: str, fill: int) -> np.ndarray:
        return torch.full((n,), fill, dtype=torch.int64).scatter_reduce_(0, tu, v, how).numpy()

    ids = np.flatnonzero(sizes.numpy() > 0)
    if background is not None:
        ids = ids[ids != background]
    y0, y1 = reduce(ys, "amin", h)[ids], reduce(ys, "amax", -1)[ids]
    x0, x1 = reduce(xs, "amin", w)[ids], reduce(xs, "amax", -1)[ids]
    boxes = np.stack([ex[x0], ey[y0], ex[x1 + 1], ey[y1 + 1]], 1).astype(np.float32)
    return ids.astype(np.int64), boxes.reshape(-1, 4), sizes.numpy()[ids]
