"""Selective search (Uijlings et al. 2013) through OpenCV's ``cv2.ximgproc.segmentation``.

This is what ORL's released code runs (spec orl.md §2.3 (iii);
``openselfsup/datasets/selective_search.py``): ``setBaseImage(BGR)``,
``switchToSelectiveSearchFast()`` (or ``...Quality()``), ``process()``.

Determinism: OpenCV ranks the hierarchical-grouping regions by
``rand() * level`` using the C library's global ``rand()``
(``selectivesearchsegmentation.cpp``, "Compute regions' rank"), so the
*order* of the boxes — which ORL's filter depends on — changes from call to
call.  :func:`selective_search` seeds that generator (``srand(seed)``) right
before each search, which makes the output a function of the image alone, in
any worker and any process.  Seed 1 is the C library's initial state, so the
first image of a fresh unseeded process gets the same order.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np

from sslkit._env import require_ximgproc
from sslkit.ops.boxes import xywh_to_xyxy

MODES = ("fast", "quality")


def _libc():
    """The C runtime whose ``rand()`` OpenCV calls, or None where it cannot be found."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else ctypes.CDLL(None)
    except OSError:
        return None


_LIBC = _libc()


def seed_c_rand(seed: int) -> bool:
    """``srand(seed)`` in this process; False where the C runtime is not reachable."""
    if _LIBC is None or not hasattr(_LIBC, "srand"):
        return False
    _LIBC.srand(ctypes.c_uint(seed))
    return True


def selective_search(rgb: np.ndarray, mode: str = "fast", seed: int = 1) -> np.ndarray:
    """Boxes of one RGB uint8 image as ``(N, 4)`` float32 xyxy in that image's pixels, in SS order."""

    cv2 = require_ximgproc()
    if mode not in MODES:
        raise ValueError(f"selective search mode must be one of {MODES}, got {mode!r}")
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV wants BGR, as ORL passes it
    if mode == "fast":
        ss.switchToSelectiveSearchFast()
    else:
        ss.switchToSelectiveSearchQuality()
    seed_c_rand(seed)
    rects = ss.process()
    if rects is None or len(rects) == 0:
        return np.zeros((0, 4), np.float32)
    return xywh_to_xyxy(rects)


def to_original_pixels(boxes: np.ndarray, searched_hw: tuple[int, int], orig_hw: tuple[int, int]) -> np.ndarray:
    """Map xyxy boxes found on a resized ``searched_hw`` image back to ``orig_hw`` pixels, clipped."""
    (h, w), (H, W) = searched_hw, orig_hw
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if (h, w) != (H, W):
        b = b * np.array([W / w, H / h, W / w, H / h])
    b[:, 0::2] = np.clip(b[:, 0::2], 0, W)
    b[:, 1::2] = np.clip(b[:, 1::2], 0, H)
    return b.astype(np.float32)
