"""DetCon's unsupervised masks as label maps: Felzenszwalb–Huttenlocher segments and a spatial grid.

Label maps are stored at a reduced resolution and read back at any size with
:func:`resize_labels` (nearest neighbour, ``src = floor(dst * h / H)``), the
one resize rule every reader uses.

* **FH** (spec detcon.md §2.1): DetCon runs ``skimage.segmentation.felzenszwalb
  (scale=s, sigma=0.8, min_size=c)`` on the full-resolution image.  sslkit runs
  the same graph algorithm through OpenCV (``createGraphSegmentation(sigma,
  k=s, min_size)``), 2–5× faster than skimage, on the image downscaled
  to at most ``max_side`` pixels with ``c`` scaled by the area ratio and ``s``
  kept (detcon.md §7 does the same; scaling ``s`` too over-segments — see
  docs/proposals.md for the measurement).  DetCon pools masks onto a 7×7
  feature grid, so a ≤320 px map loses nothing it uses.
* **Grid** (detcon.md §2.1, "spatial heuristic"): cell id
  ``floor(y*n/H)*n + floor(x*n/W)`` on original pixels.  An ``n×n`` map read
  back with :func:`resize_labels` gives exactly that formula at every size,
  so the grid is stored as its ``n×n`` map.
"""

from __future__ import annotations

import numpy as np

from sslkit._env import require_ximgproc
from sslkit.errors import UserError

#: DetCon's FH parameters (detcon.md §2.1): ImageNet s = c = 1000 [P][C]; sigma 0.8 = skimage's default [C]
FH_DEFAULT_SCALE = 1000
FH_DEFAULT_MIN_SIZE = 1000
FH_SIGMA = 0.8
#: COCO in the DetCon paper: s ∈ {500, 1000, 1500} with c = s (detcon.md §2.1)
FH_COCO_SCALES = (500, 1000, 1500)
#: longest side of a stored FH label map (docs/proposals.md, "FH resolution")
FH_DEFAULT_MAX_SIDE = 320
#: DetCon's best spatial grid, 5×5 (detcon.md §2.1, Fig. 7)
GRID_DEFAULT_N = 5

MAX_LABEL = np.iinfo(np.uint16).max


def scaled_min_size(min_size: int, map_hw: tuple[int, int], orig_hw: tuple[int, int]) -> int:
    """FH ``min_size`` for a map of ``map_hw`` pixels standing for ``orig_hw``: scaled by area, at least 1."""
    ratio = (map_hw[0] * map_hw[1]) / max(1, orig_hw[0] * orig_hw[1])
    return max(1, round(min_size * ratio))


def felzenszwalb(rgb: np.ndarray, scale: float, min_size: int, sigma: float = FH_SIGMA) -> np.ndarray:
    """FH segment ids ``0..K-1`` of one RGB uint8 image, as a uint16 ``(H, W)`` map (at the image's size)."""

    cv2 = require_ximgproc()
    gs = cv2.ximgproc.segmentation.createGraphSegmentation(float(sigma), float(scale), int(min_size))
    labels = gs.processImage(np.ascontiguousarray(rgb))
    if labels.size and int(labels.max()) > MAX_LABEL:
        raise UserError(f"FH scale {scale} with min_size {min_size} gives {int(labels.max()) + 1} segments, "
                        f"more than a uint16 label map holds", None, "raise --min-sizes or --scales")
    return labels.astype(np.uint16)


def grid_labels(n: int) -> np.ndarray:
    """The ``n×n`` grid as a uint16 map with ids ``row*n + col`` (read back with :func:`resize_labels`)."""
    if n < 1 or n * n - 1 > MAX_LABEL:
        raise ValueError(f"grid size must be 1..255, got {n}")
    return np.arange(n * n, dtype=np.uint16).reshape(n, n)


def resize_labels(labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to ``hw``: pixel (y, x) takes ``labels[y*h//H, x*w//W]``."""
    h, w = labels.shape
    H, W = int(hw[0]), int(hw[1])
    if (h, w) == (H, W):
        return labels
    rows = (np.arange(H, dtype=np.int64) * h) // H
    cols = (np.arange(W, dtype=np.int64) * w) // W
    return labels[rows[:, None], cols[None, :]]
