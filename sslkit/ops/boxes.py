"""Box geometry on ``xyxy`` boxes in pixels (x1, y1, x2, y2; width ``x2 - x1``, area ``w * h``, no
``+1``, as ORL's code): IoU and greedy suppression (torchvision's kernels, in float64), whole-pixel
rounding, and ORL's intra-RoI jitter.

IoU and suppression run on float64 tensors: torchvision computes in the boxes' dtype, and in
float32 a pair exactly at the threshold (IoU 1/3, say) can round to the other side of it
(docs/design.md, "Library kernels, where they are exact").
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision

#: ORL stage 3's intra-RoI jitter (paper §3.1 "Stage 3", spec §2.4.2)
JITTER_TRIES = 200  # attempts before the box itself is used [C]
JITTER_AREA = (0.5, 2.0)  # area scaled 50%..200% [P]
JITTER_ASPECT = (0.5, 2.0)  # new absolute aspect w'/h', log-uniform [P range, C sampling]
JITTER_SHIFT = 0.5  # centre shift within ±50% of w / h [P]
JITTER_MIN_IOU = 0.5  # accept only IoU(b', b) > 0.5 [C]


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """``(N, 4)`` x, y, w, h → x1, y1, x2, y2 (float32)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    b[:, 2:] += b[:, :2]
    return b


def _f64(boxes) -> torch.Tensor:
    return torch.from_numpy(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``(len(a), len(b))`` of xyxy boxes (float64); 0 where the union is empty."""
    return torch.nan_to_num(torchvision.ops.box_iou(_f64(a), _f64(b)), nan=0.0).numpy()


def greedy_suppress(boxes: np.ndarray, max_iou: float | None, limit: int | None = None) -> np.ndarray:
    """Indices of boxes kept by greedy suppression *in the given order* (not by score).

    A box is dropped when its IoU with any already-kept box is ``> max_iou`` (orl.md §2.3 (iv)):
    torchvision's NMS with the scores falling in list order. ``limit`` keeps the first that many
    kept boxes. ``max_iou`` None keeps every box.
    """
    b = _f64(boxes)
    if max_iou is None:
        return np.arange(len(b) if not limit else min(len(b), limit), dtype=np.int64)
    keep = torchvision.ops.nms(b, -torch.arange(len(b), dtype=torch.float64), float(max_iou)).numpy()
    return keep[:limit] if limit else keep


def pixel_box(box, height: int, width: int) -> tuple[int, int, int, int]:
    """A float ``xyxy`` box as whole pixels inside the image (at least 1 × 1): what ORL and the view renderers
    crop (RandomResizedCrop's boxes are whole pixels already)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    a = min(max(round(x1), 0), width - 1)
    b = min(max(round(y1), 0), height - 1)
    c = min(max(round(x2), a + 1), width)
    d = min(max(round(y2), b + 1), height)
    return a, b, c, d


def jitter_box(box, height: int, width: int, generator: torch.Generator | None = None,
               tries: int = JITTER_TRIES) -> tuple[np.ndarray, bool]:
    """ORL's intra-RoI box jitter (paper §3.1 "Stage 3"; spec §2.4.2, acceptance rule [C]).

    With ``(x, y, w, h)`` the box in whole pixels, each attempt draws an area ``U(0.5, 2)·w·h``,
    an absolute aspect ``w′/h′ = exp(U(ln ½, ln 2))`` and a centre shift ``U(−½, ½)·(w, h)``,
    rounds to whole pixels, and is accepted iff it lies inside the image and IoU(b′, b) > 0.5.
    All ``tries`` attempts are drawn at once (same distribution as drawing them in turn); the
    first accepted one is returned with True, else the box itself with False. Returns ``xyxy``.
    """
    x1, y1, x2, y2 = pixel_box(box, height, width)
    w, h = x2 - x1, y2 - y1
    u = torch.rand(tries, 4, generator=generator, dtype=torch.float64)
    area = (JITTER_AREA[0] + (JITTER_AREA[1] - JITTER_AREA[0]) * u[:, 0]) * (w * h)
    lo, hi = math.log(JITTER_ASPECT[0]), math.log(JITTER_ASPECT[1])
    r = torch.exp(lo + (hi - lo) * u[:, 1])
    nw = torch.round(torch.sqrt(area * r))
    nh = torch.round(torch.sqrt(area / r))
    cx = x1 + w / 2 + (u[:, 2] - 0.5) * (2 * JITTER_SHIFT) * w
    cy = y1 + h / 2 + (u[:, 3] - 0.5) * (2 * JITTER_SHIFT) * h
    nx = torch.round(cx - nw / 2)
    ny = torch.round(cy - nh / 2)
    iw = (torch.minimum(nx + nw, torch.tensor(float(x2))) - torch.maximum(nx, torch.tensor(float(x1)))).clamp(min=0)
    ih = (torch.minimum(ny + nh, torch.tensor(float(y2))) - torch.maximum(ny, torch.tensor(float(y1)))).clamp(min=0)
    inter = iw * ih
    iou = inter / (nw * nh + w * h - inter)
    ok = (nx >= 0) & (ny >= 0) & (nx + nw <= width) & (ny + nh <= height) & (nw >= 1) & (nh >= 1) & \
        (iou > JITTER_MIN_IOU)
    hit = torch.nonzero(ok).flatten()
    if len(hit) == 0:
        return np.array([x1, y1, x2, y2], np.float32), False
    j = int(hit[0])
    return np.array([nx[j], ny[j], nx[j] + nw[j], ny[j] + nh[j]], np.float32), True


