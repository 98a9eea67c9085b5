"""A view's random parameters, drawn exactly as its ``torchvision.transforms.v2`` pipeline draws them.

The planned data paths (``data_path: cpu`` and ``gpu``, :mod:`sslkit.views.plan`) split a view into
*what* it is and *how* its pixels are made. What it is: one row of numbers per view (the crop box,
flip, colour-jitter order and factors, grayscale, blur σ, solarize), drawn in the loader worker from
the image's size alone (read from the file header). How: the pixels are decoded and transformed
later, per sample with OpenCV in the worker (:mod:`sslkit.transforms.render_cpu`) or batched on the
training device (:mod:`sslkit.transforms.render_device`).

:class:`ViewDrawer` walks the very pipeline :func:`~sslkit.transforms.build_view` builds and calls
each random step's own ``make_params`` in the order and under the conditions its ``forward`` does
(``RandomApply`` / ``_RandomApplyTransform``: one ``torch.rand(1)`` first). So for the same torch
seed the rows are the parameters the reference (``data_path: pil``) pipeline applies, on any
torchvision version: the three data paths show the network the same crops, flips and factors, and
differ only in the rounding of their resampling and colour kernels. Steps it does not know raise
``ValueError`` (a planned path must never silently drop an augmentation).
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from sslkit.transforms.pipelines import GaussianBlur, ViewAug, blur_kernel_size, build_view

#: the fields of a view row, in order (boxes are xyxy in original-image pixels, right/bottom exclusive)
ROW_FIELDS = ("src", "x1", "y1", "x2", "y2", "flip", "jitter", "order0", "order1", "order2", "order3",
              "brightness", "contrast", "saturation", "hue", "gray", "blur", "sigma", "solarize")
ROW = {name: i for i, name in enumerate(ROW_FIELDS)}
ROW_SIZE = len(ROW_FIELDS)
#: colour-jitter ops in ColorJitter's numbering (its ``fn_idx``): the row's order0..3 are these ids
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
#: the factor that leaves the image unchanged, per op
JITTER_IDENTITY = (1.0, 1.0, 1.0, 0.0)

_DETERMINISTIC = (v2.ToImage, v2.ToDtype, v2.Normalize, v2.ToPureTensor)


def _make_params(t: v2.Transform, inputs: list) -> dict:
    """``t.make_params`` (torchvision ≥ 0.21) or its older name ``_get_params``."""
    fn = getattr(t, "make_params", None) or t._get_params
    return fn(inputs)


def _shape_only(height: int, width: int) -> tv_tensors.Image:
    """A (3, height, width) image with no memory behind it: what ``make_params`` reads is the shape."""
    return tv_tensors.Image(torch.empty((1, 1, 1), dtype=torch.uint8).expand(3, height, width))


def empty_row() -> np.ndarray:
    row = np.zeros(ROW_SIZE, np.float64)
    row[ROW["order0"]:ROW["order3"] + 1] = range(4)
    row[ROW["brightness"]:ROW["hue"] + 1] = JITTER_IDENTITY
    return row


class ViewDrawer:
    """Rows for one :class:`ViewAug`, drawn from torch's global generator as ``build_view(aug)`` draws.

    ``crop=False`` is the pipeline without its RandomResizedCrop (ORL's RoI patches, UniVIP's scenes
    and instances: the box is given and the crop is that box).
    """

    def __init__(self, aug: ViewAug, crop: bool = True):
        steps = list(build_view(aug).transforms)
        if not isinstance(steps[0], v2.RandomResizedCrop):
            raise RuntimeError("build_view no longer starts with RandomResizedCrop; update ViewDrawer")
        self.aug = aug
        self.crop = crop
        self.steps = steps if crop else steps[1:]
        for step in self.steps:
            self._check(step)

    def _check(self, t) -> None:
        if isinstance(t, v2.RandomApply):
            for inner in t.transforms:
                self._check(inner)
        elif not isinstance(t, (v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.ColorJitter, v2.RandomGrayscale,
                                v2.GaussianBlur, v2.RandomSolarize) + _DETERMINISTIC):
            raise ValueError(f"the planned data paths cannot render {type(t).__name__}")
        if isinstance(t, v2.GaussianBlur) and not isinstance(t, GaussianBlur):
            raise ValueError("the planned data paths expect sslkit's GaussianBlur")

    def draw(self, height: int, width: int, box=None, src: int = 0) -> np.ndarray:
        """One row for an image of ``height × width`` (upright); ``box`` (xyxy) when ``crop=False``."""
        row = empty_row()
        row[ROW["src"]] = src
        if not self.crop:
            if box is None:
                raise ValueError("a view without its crop needs the box")
            row[ROW["x1"]:ROW["y2"] + 1] = box
        image = _shape_only(height, width)
        for step in self.steps:
            self._walk(step, image, row)
        return row

    def _walk(self, t, image, row: np.ndarray) -> None:
        if isinstance(t, _DETERMINISTIC):
            return
        if isinstance(t, v2.RandomApply):
            if torch.rand(1) >= t.p:
                return
            for inner in t.transforms:
                self._walk(inner, image, row)
            return
        if isinstance(t, v2.RandomResizedCrop):
            p = _make_params(t, [image])
            row[ROW["x1"]:ROW["y2"] + 1] = (p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"])
        elif isinstance(t, (v2.RandomHorizontalFlip, v2.RandomGrayscale, v2.RandomSolarize)):
            if torch.rand(1) >= t.p:  # _RandomApplyTransform.forward; their make_params draw nothing
                return
            field = "flip" if isinstance(t, v2.RandomHorizontalFlip) else \
                "gray" if isinstance(t, v2.RandomGrayscale) else "solarize"
            row[ROW[field]] = 1.0
        elif isinstance(t, v2.ColorJitter):
            p = _make_params(t, [image])
            row[ROW["jitter"]] = 1.0
            row[ROW["order0"]:ROW["order3"] + 1] = p["fn_idx"].tolist()
            for name, identity in zip(JITTER_OPS, JITTER_IDENTITY, strict=True):
                value = p[f"{name}_factor"]
                row[ROW[name]] = identity if value is None else value
        elif isinstance(t, v2.GaussianBlur):
            p = _make_params(t, [image])
            row[ROW["blur"]] = 1.0
            row[ROW["sigma"]] = p["sigma"][0]


def row_box(row: np.ndarray) -> tuple[float, float, float, float]:
    return tuple(float(v) for v in row[ROW["x1"]:ROW["y2"] + 1])


def blur_kernel(aug: ViewAug) -> int:
    """The blur kernel side of the tensor pipelines (10% of the view side, odd; 23 px at 224)."""
    return blur_kernel_size(aug.size)


def aug_key(aug: ViewAug) -> tuple:
    """Views whose augs share this key are rendered as one batch (same size and static settings)."""
    return (aug.size, aug.interpolation, blur_kernel(aug), aug.solarize_threshold, tuple(aug.mean), tuple(aug.std))
