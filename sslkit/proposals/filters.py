"""The one box filter of selective-search candidates: ORL's, also UniVIP's (spec orl.md §2.3 (iv);
ORL ``openselfsup/datasets/correspondence.py: box_filter``; spec univip.md §2.1).

All boxes are ``xyxy`` (x1, y1, x2, y2) in pixels of the original image, with ``x2 = x + w`` and
``y2 = y + h`` for an OpenCV ``(x, y, w, h)`` rectangle, so width is ``x2 - x1`` and area is
``w * h`` exactly as in ORL's code (no ``+1``). Its defaults are ORL's numbers
(:data:`ORL_DEFAULTS`). Every step keeps the input order: selective search's output order *is*
the ranking those methods rely on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sslkit.config import Key
from sslkit.errors import UserError
from sslkit.ops.boxes import greedy_suppress

#: ORL's candidate filter (orl.md §2.3 (iv), Table "Stage 2"; CorrespondenceDataset defaults)
ORL_DEFAULTS = {"min_size": 96.0, "max_ratio": 3.0, "max_iou": 0.5, "top_n": 100}

#: the filter as settings of a stage (``--min-size`` … ``--top-n`` of ``sslkit sample-views``)
FILTER_KEYS = {
    "min_size": Key(ORL_DEFAULTS["min_size"], float, "filter: drop boxes with a side < this (px)"),
    "max_ratio": Key(ORL_DEFAULTS["max_ratio"], float, "filter: drop boxes with w/h or h/w > this"),
    "max_iou": Key(ORL_DEFAULTS["max_iou"], float, "filter: drop boxes with IoU > this against a kept box"),
    "top_n": Key(ORL_DEFAULTS["top_n"], int, "filter: keep the first N survivors (0 = all)"),
}


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


@dataclass(frozen=True)
class BoxFilter:
    """ORL's candidate filter; 0 disables min_size/max_ratio/top_n, max_iou 1 disables IoU.

    Per box in order: drop if a side is ``< min_size``; drop if the aspect ratio exceeds
    ``max_ratio``; drop if IoU with an already-kept box is ``> max_iou``; keep the first ``top_n``
    survivors. With ``fallback`` (ORL) an image where nothing survives keeps ``boxes[0]``; UniVIP
    allows an empty list instead (univip.md §2.1), ``fallback=False``. An image with no boxes at
    all gives an empty result either way.
    """

    min_size: float = ORL_DEFAULTS["min_size"]
    max_ratio: float = ORL_DEFAULTS["max_ratio"]
    max_iou: float = ORL_DEFAULTS["max_iou"]
    top_n: int = ORL_DEFAULTS["top_n"]
    fallback: bool = True

    @classmethod
    def from_settings(cls, settings: dict, fallback: bool) -> BoxFilter:
        """The filter of a stage's resolved :data:`FILTER_KEYS`; a UserError for values out of range."""
        f = cls(**{k: settings[k] for k in FILTER_KEYS}, fallback=fallback)
        if f.min_size < 0 or f.max_ratio < 0 or f.top_n < 0 or not 0 <= f.max_iou <= 1:
            raise UserError("filter values: --min-size, --max-ratio, --top-n >= 0 and 0 <= --max-iou <= 1")
        return f

    def apply(self, boxes: np.ndarray) -> np.ndarray:
        """Indices (into ``boxes``) of the kept boxes, in their order."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(b) == 0:
            return np.zeros(0, np.int64)
        cand = np.flatnonzero(min_size_mask(b, self.min_size) & ratio_mask(b, self.max_ratio))
        keep = cand[greedy_suppress(b[cand], self.max_iou if self.max_iou < 1 else None, self.top_n or None)]
        if len(keep) == 0 and self.fallback:
            keep = np.zeros(1, np.int64)
        return keep.astype(np.int64)

    def same_as(self, stored: dict | None) -> bool:
        """Whether ``stored`` (a ``params["filter"]`` of a proposals file) holds exactly these values."""
        stored = dict(stored or {})
        return bool(stored) and all(float(stored.get(k, -1)) == float(getattr(self, k)) for k in ORL_DEFAULTS) \
            and bool(stored.get("fallback", True)) == self.fallback


def orl_filter(boxes: np.ndarray, min_size: float | None = ORL_DEFAULTS["min_size"],
               max_ratio: float | None = ORL_DEFAULTS["max_ratio"], max_iou: float | None = ORL_DEFAULTS["max_iou"],
               top_n: int | None = ORL_DEFAULTS["top_n"], fallback: bool = True) -> np.ndarray:
    """:meth:`BoxFilter.apply` with None for a step that is off."""
    return BoxFilter(min_size or 0, max_ratio or 0, 1.0 if max_iou is None else max_iou, top_n or 0,
                     fallback).apply(boxes)
