"""Views rendered in batch on the training device from their rows (:mod:`sslkit.transforms.params`):
the ``data_path: gpu`` renderer (it runs on CPU tensors too, which is how it is tested).

Per view, crop + resize is one antialiased ``F.interpolate`` of the crop (the kernel torchvision's
tensor pipelines use; crops differ in size, so this is the one per-view loop, one kernel a view). Everything after it
runs on the whole batch with per-sample parameters, through kornia's functional ops, which take a
factor per sample and match torchvision's definitions: flip; colour jitter with each sample's own
op order (for each of the four positions and each op, the samples that have that op there);
grayscale; Gaussian blur with per-sample σ (kernel 10% of the view side, reflect borders, as the
tensor pipelines); solarize; normalise. Pixels stay float32 in [0, 1] throughout, so, unlike the
uint8 pipelines, nothing is rounded between steps.
"""

from __future__ import annotations

import math

import kornia
import numpy as np
import torch
import torch.nn.functional as F

from sslkit.ops.boxes import pixel_box
from sslkit.transforms.params import JITTER_IDENTITY, ROW, blur_kernel
from sslkit.transforms.pipelines import ViewAug


def _hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return kornia.enhance.adjust_hue(x, f * (2 * math.pi))  # torchvision's turns → kornia's radians


_JITTER = (kornia.enhance.adjust_brightness_accumulative, kornia.enhance.adjust_contrast_with_mean_subtraction,
           kornia.enhance.adjust_saturation_with_gray_subtraction, _hue)


def _stats(aug: ViewAug, device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(aug.mean, device=device, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(aug.std, device=device, dtype=torch.float32).view(3, 1, 1)
    return mean, std


def _to(a: np.ndarray, device: torch.device, dtype=None) -> torch.Tensor:
    t = torch.as_tensor(a, dtype=dtype)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def _apply_subset(out: torch.Tensor, rows_idx: np.ndarray, fn, *args) -> None:
    """``out[idx] = fn(out[idx], *args)`` for the views ``rows_idx`` (host indices, device tensor)."""
    if len(rows_idx) == 0:
        return
    idx = _to(rows_idx, out.device, torch.long)
    out.index_copy_(0, idx, fn(out.index_select(0, idx), *args))


def crop_resize(images: list[torch.Tensor], rows: np.ndarray, which: np.ndarray, aug: ViewAug) -> torch.Tensor:
    """(N, 3, S, S) float32 in [0, 255]: row ``i``'s box of ``images[which[i]]`` ((3, H, W) uint8,
    upright) resized to the aug's size, antialiased. One interpolation per view (the crops differ in
    size), each image made float once for its consecutive views, one concatenation at the end."""
    n, s = len(rows), aug.size
    if n == 0:
        device = images[0].device if images else torch.device("cpu")
        return torch.empty((0, 3, s, s), device=device, dtype=torch.float32)
    outs, last, img = [], -1, None
    for i in range(n):
        k = int(which[i])
        if k != last:
            img, last = images[k].float(), k
        x1, y1, x2, y2 = pixel_box(rows[i, ROW["x1"]:ROW["y2"] + 1], img.shape[1], img.shape[2])
        crop = img[None, :, y1:y2, x1:x2]
        outs.append(crop if crop.shape[-2:] == (s, s) else
                    F.interpolate(crop, size=(s, s), mode=aug.interpolation, antialias=True, align_corners=False))
    out = torch.cat(outs)
    if aug.interpolation != "bilinear":
        out.clamp_(0.0, 255.0)  # bicubic overshoots; the uint8 pipelines saturate
    return out


def render_views(images: list[torch.Tensor], rows: np.ndarray, which: np.ndarray, aug: ViewAug) -> torch.Tensor:
    """(N, 3, S, S) normalised float32 views, one per row, on the images' device."""
    out = crop_resize(images, rows, which, aug).div_(255.0)
    if len(rows) == 0:
        return out
    device = out.device
    flip = rows[:, ROW["flip"]] > 0
    if flip.any():
        out = torch.where(_to(flip, device).view(-1, 1, 1, 1), out.flip(-1), out)
    jitter = rows[:, ROW["jitter"]] > 0
    if jitter.any():
        for slot in range(4):
            order = rows[:, ROW["order0"] + slot]
            for op, fn in enumerate(_JITTER):
                factor = rows[:, ROW["brightness"] + op]
                idx = np.flatnonzero(jitter & (order == op) & (factor != JITTER_IDENTITY[op]))
                _apply_subset(out, idx, fn, torch.as_tensor(factor[idx], dtype=torch.float32))
    gray = rows[:, ROW["gray"]] > 0
    if gray.any():
        g = kornia.color.rgb_to_grayscale(out).expand_as(out)
        out = torch.where(_to(gray, device).view(-1, 1, 1, 1), g, out)
    blur = np.flatnonzero(rows[:, ROW["blur"]] > 0)
    if len(blur):
        k = blur_kernel(aug)
        sigma = torch.as_tensor(rows[blur, ROW["sigma"]], dtype=torch.float32)[:, None].repeat(1, 2)
        _apply_subset(out, blur, kornia.filters.gaussian_blur2d, (k, k), sigma, "reflect")
    solarize = rows[:, ROW["solarize"]] > 0
    if solarize.any():
        thresholds = np.where(solarize, aug.solarize_threshold / 255.0, 2.0)  # 2: above every pixel
        out = kornia.enhance.solarize(out, torch.as_tensor(thresholds, dtype=torch.float32))
    mean, std = _stats(aug, device)
    return (out - mean) / std
