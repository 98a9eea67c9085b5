"""One view's pixels from its row (:mod:`sslkit.transforms.params`), on uint8 BGR arrays in the loader
worker: the ``data_path: cpu`` renderer.

Steps, in the reference pipeline's order: crop + resize in one call (torch's uint8 antialiased
bilinear/bicubic kernel, the one PIL-compatible resampler in torch, ~4× faster than PIL's), flip,
colour jitter in the drawn order (OpenCV uint8 kernels: brightness and contrast as one
multiply-add, saturation a blend with the grayscale image, hue a shift of the 8-bit HSV hue as PIL
does), grayscale, Gaussian blur (the tensor pipelines' kernel: σ as drawn, side 10% of the view,
reflect-101 borders), solarize (a lookup table). No PIL round trips; normalisation happens on the
training device (:func:`normalize`), so workers ship uint8.

The image may be a JPEG decoded at ``1/reduction`` of its size (libjpeg DCT scaling,
:func:`sslkit.io.encoded.decode_bgr`): boxes are given in full-image pixels and scaled here.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from sslkit.ops.boxes import pixel_box
from sslkit.transforms.params import ROW, blur_kernel
from sslkit.transforms.pipelines import ViewAug


def _brightness(x: np.ndarray, f: float) -> np.ndarray:
    return cv2.addWeighted(x, f, x, 0.0, 0.0)


def _contrast(x: np.ndarray, f: float) -> np.ndarray:
    mean = float(cv2.cvtColor(x, cv2.COLOR_BGR2GRAY).mean())
    return cv2.addWeighted(x, f, x, 0.0, (1.0 - f) * mean)


def _saturation(x: np.ndarray, f: float) -> np.ndarray:
    gray = cv2.cvtColor(cv2.cvtColor(x, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    return cv2.addWeighted(x, f, gray, 1.0 - f, 0.0)


def _hue(x: np.ndarray, h: float) -> np.ndarray:
    hsv = cv2.cvtColor(x, cv2.COLOR_BGR2HSV_FULL)  # hue 0..255 for 0..360°, as PIL's HSV
    hsv[..., 0] += np.uint8(round(h * 256) % 256)  # uint8 arithmetic wraps around the colour circle
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR_FULL)


_JITTER = (_brightness, _contrast, _saturation, _hue)
_IDENTITY = (1.0, 1.0, 1.0, 0.0)


def solarize_lut(threshold: int) -> np.ndarray:
    v = np.arange(256)
    return np.where(v >= threshold, 255 - v, v).astype(np.uint8)


def resize_crop(image: np.ndarray, box, size: int, interpolation: str) -> np.ndarray:
    """``box`` (xyxy, this image's pixels) of an (H, W, 3) uint8 image resized to ``size²``,
    antialiased (torch's uint8 kernel); returns (size, size, 3) uint8."""
    x1, y1, x2, y2 = pixel_box(box, image.shape[0], image.shape[1])
    crop = np.ascontiguousarray(image[y1:y2, x1:x2])
    if crop.shape[:2] == (size, size):
        return crop
    x = torch.from_numpy(crop).permute(2, 0, 1).unsqueeze(0)  # channels-last NCHW, no copy
    out = F.interpolate(x, size=(size, size), mode=interpolation, antialias=True, align_corners=False)
    return cv2.merge(list(out[0].numpy()))  # planar → HWC (OpenCV's copy is ~30× torch's permute)


def normalize(x: torch.Tensor, aug: ViewAug) -> torch.Tensor:
    """(…, 3, S, S) uint8 views → float32 normalised with the aug's mean/std (on the views' device)."""
    mean = torch.tensor(aug.mean, device=x.device, dtype=torch.float32).view(3, 1, 1) * 255.0
    scale = 1.0 / (torch.tensor(aug.std, device=x.device, dtype=torch.float32).view(3, 1, 1) * 255.0)
    return x.float().sub_(mean).mul_(scale)


def render_view(image: np.ndarray, row: np.ndarray, aug: ViewAug, reduction: int = 1) -> torch.Tensor:
    """One view as a (3, S, S) uint8 RGB tensor; ``image`` is BGR (H, W, 3) uint8, decoded at
    ``1/reduction`` of the size the row's box refers to."""
    box = row[ROW["x1"]:ROW["y2"] + 1] / reduction
    x = resize_crop(image, box, aug.size, aug.interpolation)
    if row[ROW["flip"]]:
        x = cv2.flip(x, 1)
    if row[ROW["jitter"]]:
        for k in row[ROW["order0"]:ROW["order3"] + 1].astype(int):
            f = float(row[ROW["brightness"] + k])
            if f != _IDENTITY[k]:
                x = _JITTER[k](x, f)
    if row[ROW["gray"]]:
        x = cv2.cvtColor(cv2.cvtColor(x, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if row[ROW["blur"]]:
        s = float(row[ROW["sigma"]])
        # the tensor pipelines' kernel side, cut at ±3σ: the taps beyond hold < 0.3% of the weight
        k = min(blur_kernel(aug), 2 * math.ceil(3 * s) + 1)
        x = cv2.GaussianBlur(x, (k, k), sigmaX=s, sigmaY=s, borderType=cv2.BORDER_REFLECT_101)
    if row[ROW["solarize"]]:
        x = cv2.LUT(x, solarize_lut(aug.solarize_threshold))
    b, g, r = cv2.split(x)
    return torch.from_numpy(np.stack([r, g, b]))
