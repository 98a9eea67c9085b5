"""Box filters used on selective-search proposals: pure NumPy functions of one image's boxes.

All boxes are ``xyxy`` (x1, y1, x2, y2) in pixels of the original image, with
``x2 = x + w`` and ``y2 = y + h`` for an OpenCV ``(x, y, w, h)`` rectangle, so
width is ``x2 - x1`` and area is ``w * h`` exactly as in ORL's code (no ``+1``).

:func:`orl_filter` is the candidate filter of ORL stage 2 (spec orl.md §2.3
(iv); ORL ``openselfsup/datasets/correspondence.py: box_filter``), also used by
UniVIP (spec univip.md §2.1).  Its defaults are ORL's numbers
(:data:`ORL_DEFAULTS`).  Every function keeps the input order: selective
search's output order *is* the ranking those methods rely on.
"""

from __future__ import annotations

import numpy as np

#: ORL's candidate filter (orl.md §2.3 (iv), Table "Stage 2"; CorrespondenceDataset defaults)
ORL_DEFAULTS = {"min_size": 96.0, "max_ratio": 3.0, "max_iou": 0.5, "top_n": 100}


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """``(N, 4)`` x, y, w, h → x1, y1, x2, y2 (float32)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    b[:, 2:] += b[:, :2]
    return b


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``(len(a), len(b))`` of xyxy boxes; 0 where the union is empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def min_size_mask(boxes: np.ndarray, min_size: float | None) -> np.ndarray:
    """True where both sides are ``>= min_size`` (ORL: drop if ``w < 96 or h < 96``). None/0: all True."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not min_size:
        return np.ones(len(b), bool)
    return ((b[:, 2] - b[:, 0]) >= min_size) & ((b[:, 3] - b[:, 1]) >= min_size)


def ratio_mask(boxes: np.ndarray, max_ratio: float | None) -> np.ndarray:
    """True where ``w/h <= max_ratio`` and ``h/w <= max_ratio``; degenerate boxes fail. None/0: all True."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not max_ratio:
        return np.ones(len(b), bool)
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    ok = (w > 0) & (h > 0)
    return ok & (np.maximum(w, h) <= max_ratio * np.minimum(w, h))


def greedy_suppress(boxes: np.ndarray, max_iou: float | None, limit: int | None = None) -> np.ndarray:
    """Indices of boxes kept by greedy suppression *in the given order* (not by score).

    A box is dropped when its IoU with any already-kept box is ``> max_iou``
    (orl.md §2.3 (iv)).  ``limit`` stops after that many kept boxes, which
    gives the same first ``limit`` boxes as suppressing everything and
    truncating.  ``max_iou`` None keeps every box.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(b) if not limit else min(len(b), limit)
    if max_iou is None:
        return np.arange(n, dtype=np.int64)
    kept = np.empty(len(b), np.int64)
    k = 0
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    for i in range(len(b)):
        if k:
            kb = b[kept[:k]]
            iw = np.minimum(kb[:, 2], b[i, 2]) - np.maximum(kb[:, 0], b[i, 0])
            ih = np.minimum(kb[:, 3], b[i, 3]) - np.maximum(kb[:, 1], b[i, 1])
            inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
            union = area[kept[:k]] + area[i] - inter
            with np.errstate(divide="ignore", invalid="ignore"):
                iou = np.where(union > 0, inter / union, 0.0)
            if iou.max() > max_iou:
                continue
        kept[k] = i
        k += 1
        if limit and k >= limit:
            break
    return kept[:k].copy()


def orl_filter(
    boxes: np.ndarray,
    min_size: float | None = ORL_DEFAULTS["min_size"],
    max_ratio: float | None = ORL_DEFAULTS["max_ratio"],
    max_iou: float | None = ORL_DEFAULTS["max_iou"],
    top_n: int | None = ORL_DEFAULTS["top_n"],
    fallback: bool = True,
) -> np.ndarray:
    """Indices (into ``boxes``) of ORL's filtered candidates, in selective-search order.

    Per box in order: drop if a side is ``< min_size``; drop if the aspect
    ratio exceeds ``max_ratio``; drop if IoU with an already-kept box is
    ``> max_iou``; keep the first ``top_n`` survivors.  With ``fallback``
    (ORL) an image where nothing survives keeps ``boxes[0]``; UniVIP allows
    an empty list instead (univip.md §2.1), ``fallback=False``.  An image
    with no boxes at all gives an empty result either way.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(b) == 0:
        return np.zeros(0, np.int64)
    cand = np.flatnonzero(min_size_mask(b, min_size) & ratio_mask(b, max_ratio))
    keep = cand[greedy_suppress(b[cand], max_iou, top_n)]
    if len(keep) == 0 and fallback:
        keep = np.zeros(1, np.int64)
    return keep.astype(np.int64)
