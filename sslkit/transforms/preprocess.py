"""Evaluation-style network input: the whole image (shorter side to ``round(S / 0.875)``, centre
crop ``S``) or box crops resized to ``S × S`` (aspect not kept), bilinear with antialiasing, then
``/255`` and ImageNet mean/std normalisation (RGB). Linear probes (:mod:`sslkit.eval.features`) and
ORL stage 2's image embedding use it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _chw(arr: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 array → (3, H, W) tensor (copied when the array is read-only)."""
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy()).permute(2, 0, 1)


@dataclass(frozen=True)
class Preprocess:
    """Pixels → normalised network input (see the module docstring)."""

    image_size: int
    box_scale: float = 1.0
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    @property
    def resize(self) -> int:
        return round(self.image_size / 0.875)

    def describe(self) -> dict:
        return {"image_size": self.image_size, "resize_short_side": self.resize, "box_scale": self.box_scale,
                "interpolation": "bilinear+antialias", "pixel_mean": list(self.mean), "pixel_std": list(self.std),
                "input_format": "RGB"}

    def _normalise(self, t: torch.Tensor) -> torch.Tensor:
        m = torch.tensor(self.mean).view(-1, 3, 1, 1)
        s = torch.tensor(self.std).view(-1, 3, 1, 1)
        return (t.float() / 255.0 - m) / s

    def image(self, arr: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 → (1, 3, S, S): shorter side to ``resize``, centre crop ``image_size``."""
        from torchvision.transforms.v2 import functional as TF

        t = _chw(arr)
        t = TF.resize(t, [self.resize], antialias=True)
        t = TF.center_crop(t, [self.image_size, self.image_size])
        return self._normalise(t[None])

    def crops(self, arr: np.ndarray, boxes: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 and (k, 4) xyxy boxes → (k, 3, S, S) box crops."""
        from torchvision.transforms.v2 import functional as TF

        h, w = arr.shape[:2]
        t = _chw(arr)
        out = []
        for x0, y0, x1, y1 in np.asarray(boxes, np.float64):
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            bw, bh = (x1 - x0) * self.box_scale, (y1 - y0) * self.box_scale
            a = int(np.clip(np.floor(cx - bw / 2), 0, w - 1))
            b = int(np.clip(np.floor(cy - bh / 2), 0, h - 1))
            c = int(np.clip(np.ceil(cx + bw / 2), a + 1, w))
            d = int(np.clip(np.ceil(cy + bh / 2), b + 1, h))
            out.append(TF.resize(t[:, b:d, a:c], [self.image_size, self.image_size], antialias=True))
        return self._normalise(torch.stack(out))
