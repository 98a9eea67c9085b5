"""View pipelines of the image-level methods, built from ``torchvision.transforms.v2``.

v2 transforms take an image together with ``tv_tensors.BoundingBoxes`` and
``tv_tensors.Mask`` and move them with the pixels (crop, resize, flip), while
photometric steps (colour jitter, grayscale, blur, solarize) touch pixels only.
The object-level methods reuse these pipelines on (image, boxes, masks) tuples.

A pipeline takes a PIL image or a ``tv_tensors.Image`` (CHW uint8, see
:func:`to_image`) and returns a normalised float32 CHW tensor.  :class:`MultiView`
feeds PIL images: PIL's resampling, colour and blur kernels are what the
reference implementations used (OpenSelfSup for ORL, the MoCo repo) and are
~30% faster than the tensor kernels at these sizes; tensor inputs (e.g. with a
``tv_tensors.Mask``) take the same steps.  Every random draw comes from torch's
global generator, so seeding torch before the call fixes the view (the engine
seeds per sample from ``(seed, epoch, index)``).

Parameters and their sources (see also docs/pretrain.md):

* BYOL (the ORL/OpenSelfSup COCO recipe, ORL spec §2.2): RandomResizedCrop
  scale (0.08, 1), bilinear; flip 0.5; ColorJitter(0.4, 0.4, 0.2, 0.1) with
  p=0.8; grayscale 0.2; Gaussian blur σ∈[0.1, 2] with p=1.0 (view 1) / 0.1
  (view 2); solarize (threshold 128) with p=0 / 0.2.
* MoCo v2 (Chen et al. 2020, "Improved Baselines…", and the MoCo repo's
  ``main_moco.py --aug-plus``): crop scale (0.2, 1); ColorJitter(0.4, 0.4, 0.4,
  0.1) p=0.8; grayscale 0.2; blur p=0.5; flip 0.5; the same for both views.
* SimCLR (Chen et al. 2020, appendix A; TF ``data_util.py``): crop scale
  (0.08, 1) resized bicubically; flip 0.5; colour distortion strength 1.0 =
  ColorJitter(0.8, 0.8, 0.8, 0.2) p=0.8; grayscale 0.2; blur p=0.5; the same
  for both views.

Blur: σ is drawn per view from U[0.1, 2.0]; PIL images get
``ImageFilter.GaussianBlur(radius=σ)`` (exactly OpenSelfSup's and MoCo's blur),
tensors a sampled Gaussian kernel of 10% of the output side, made odd (23 px at
224, BYOL's and SimCLR's TF kernel).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torchvision import tv_tensors
from torchvision.transforms import v2

from sslkit.io.images import IMAGENET_MEAN, IMAGENET_STD

_INTERPOLATION = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
}


def to_image(array: np.ndarray) -> tv_tensors.Image:
    """An HWC uint8 RGB array (as :func:`sslkit.io.images.load_rgb` returns) as a CHW ``tv_tensors.Image``."""
    if not array.flags.writeable:  # PIL-backed arrays are read-only; torch wants to own writable memory
        array = array.copy()
    return tv_tensors.Image(torch.from_numpy(array).permute(2, 0, 1).contiguous())


def blur_kernel_size(size: int, fraction: float = 0.1) -> int:
    """``fraction`` of the image side, rounded down to an odd number, at least 3 (23 for 224)."""
    k = int(size * fraction)
    if k % 2 == 0:
        k += 1
    return max(3, k)


def separable_gaussian_blur(image: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """The blur of ``torchvision.transforms.v2.functional.gaussian_blur`` as two 1-D passes.

    Same kernel (a sampled Gaussian with standard deviation ``sigma`` pixels,
    normalised to sum 1), same reflect padding and same uint8 rounding, but
    ``2k`` instead of ``k²`` multiply-adds per pixel: ~10× faster at k=23.
    """
    if image.numel() == 0:
        return image
    shape, dtype = image.shape, image.dtype
    fp = torch.is_floating_point(image)
    x = image.reshape((-1,) + shape[-3:]) if image.ndim != 3 else image.unsqueeze(0)
    x = x if fp else x.to(torch.float32)
    half = kernel_size // 2
    pos = torch.arange(kernel_size, dtype=x.dtype, device=x.device) - half
    k1d = torch.softmax(-(pos**2) / (2.0 * sigma**2), dim=0)
    c = x.shape[1]
    x = F.pad(x, [half, half, half, half], mode="reflect")
    x = F.conv2d(x, k1d.view(1, 1, 1, -1).expand(c, 1, 1, kernel_size), groups=c)
    x = F.conv2d(x, k1d.view(1, 1, -1, 1).expand(c, 1, kernel_size, 1), groups=c)
    x = x.reshape(shape)
    if not fp:
        x = x.round_().to(dtype)
    return x


class GaussianBlur(v2.GaussianBlur):
    """``v2.GaussianBlur`` (σ ~ U[σmin, σmax] per call) with faster kernels.

    PIL images: ``ImageFilter.GaussianBlur(radius=σ)`` (σ is PIL's standard deviation; the
    kernel size is PIL's choice). Image tensors: :func:`separable_gaussian_blur` with
    ``kernel_size``. Boxes, masks and other inputs pass through unchanged, as with ``v2.GaussianBlur``.
    """

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, Image.Image):
            return inpt.filter(ImageFilter.GaussianBlur(radius=params["sigma"][0]))
        if isinstance(inpt, tv_tensors.Image) or type(inpt) is torch.Tensor:
            out = separable_gaussian_blur(inpt.as_subclass(torch.Tensor), self.kernel_size[0], params["sigma"][0])
            return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.Image) else out
        return super().transform(inpt, params)


@dataclass(frozen=True)
class ViewAug:
    """One view's augmentation recipe; :func:`build_view` turns it into a v2 pipeline."""

    size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bilinear"
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    solarize_threshold: int = 128
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def scale_blur(views: Sequence[ViewAug], reference: int | None) -> tuple[ViewAug, ...]:
    """The views with their blur σ range rescaled from ``reference``-px views to each view's own side.

    The papers give σ ∈ [0.1, 2.0] in pixels of 224-px views; at 64 px the same pixels blur ~3.5×
    more of the picture (CIFAR-scale recipes such as solo-learn's drop the blur instead). With
    ``reference=224`` a view of side ``s`` draws σ from [0.1, 2.0]·s/224. ``None``/0: unchanged.
    """
    if not reference:
        return tuple(views)
    return tuple(replace(v, blur_sigma=(v.blur_sigma[0] * v.size / reference, v.blur_sigma[1] * v.size / reference))
                 for v in views)


#: ViewAug fields ``view_aug`` may set: (kind, low, high) — "range" fields take ``lo:hi``
VIEW_AUG_FIELDS: dict[str, tuple[str, float, float]] = {
    "crop_scale": ("range", 0.0, 1.0), "crop_ratio": ("range", 0.0, math.inf),
    "interpolation": ("str", 0, 0), "flip_p": ("float", 0.0, 1.0), "jitter_p": ("float", 0.0, 1.0),
    "brightness": ("float", 0.0, math.inf), "contrast": ("float", 0.0, math.inf),
    "saturation": ("float", 0.0, math.inf), "hue": ("float", 0.0, 0.5), "grayscale_p": ("float", 0.0, 1.0),
    "blur_p": ("float", 0.0, 1.0), "blur_sigma": ("range", 0.0, math.inf), "solarize_p": ("float", 0.0, 1.0),
    "solarize_threshold": ("int", 0, 256),
}


def parse_view_aug(spec: str | None) -> dict[int | None, dict]:
    """``"saturation=0.8 hue=0.2 2.solarize_p=0 crop_scale=0.2:1"`` → per-view ViewAug overrides.

    Items are separated by spaces or commas; ``FIELD=VALUE`` sets the field in every view, ``1.FIELD``
    / ``2.FIELD`` in the first / second view of each pair only (a view-specific item wins over a
    general one). ``crop_scale``, ``crop_ratio`` and ``blur_sigma`` take ``LO:HI``. Raises
    ValueError with the offending item."""
    out: dict[int | None, dict] = {}
    for item in (spec or "").replace(",", " ").split():
        key, eq, value = item.partition("=")
        view: int | None = None
        if key[:2] in ("1.", "2."):
            view, key = int(key[0]), key[2:]
        if not eq or not value:
            raise ValueError(f"{item!r} is not [1.|2.]FIELD=VALUE")
        if key not in VIEW_AUG_FIELDS:
            close = difflib.get_close_matches(key, VIEW_AUG_FIELDS, 1)
            hint = f" (did you mean {close[0]}?)" if close else f" (one of {', '.join(VIEW_AUG_FIELDS)})"
            raise ValueError(f"unknown view field {key!r}{hint}")
        kind, lo, hi = VIEW_AUG_FIELDS[key]
        try:
            if kind == "str":
                if value not in _INTERPOLATION:
                    raise ValueError
                parsed = value
            elif kind == "range":
                a, b = (float(x) for x in value.split(":"))
                if not lo < a <= b <= hi:
                    raise ValueError
                parsed = (a, b)
            else:
                parsed = int(value) if kind == "int" else float(value)
                if not lo <= parsed <= hi:
                    raise ValueError
        except ValueError:
            want = {"str": f"one of {', '.join(_INTERPOLATION)}", "range": f"LO:HI with {lo} < LO <= HI <= {hi}",
                    "float": f"a number in [{lo}, {hi}]", "int": f"an integer in [{lo}, {hi}]"}[kind]
            raise ValueError(f"{item!r}: {key} must be {want}") from None
        out.setdefault(view, {})[key] = parsed
    return out


def tune_views(views: Sequence[ViewAug], blur_reference: int | None = None,
               view_aug: str | None = None) -> tuple[ViewAug, ...]:
    """A method's views with the user's ``view_aug`` overrides (:func:`parse_view_aug`) applied, then
    the blur σ range rescaled by :func:`scale_blur`."""
    overrides = parse_view_aug(view_aug)
    tuned = tuple(replace(v, **(overrides.get(None, {}) | overrides.get(i + 1, {}))) for i, v in enumerate(views))
    return scale_blur(tuned, blur_reference)


def byol_views(size: int) -> tuple[ViewAug, ViewAug]:
    """BYOL's asymmetric pair (ORL spec §2.2): blur 1.0 / 0.1, solarize 0.0 / 0.2."""
    v1 = ViewAug(size=size, blur_p=1.0, solarize_p=0.0)
    return v1, replace(v1, blur_p=0.1, solarize_p=0.2)


def mocov2_views(size: int) -> tuple[ViewAug, ViewAug]:
    """MoCo v2's symmetric pair (``--aug-plus``)."""
    v = ViewAug(size=size, crop_scale=(0.2, 1.0), brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                blur_p=0.5)
    return v, v


def simclr_views(size: int) -> tuple[ViewAug, ViewAug]:
    """SimCLR's symmetric pair (colour strength 1.0, bicubic resize, blur 0.5)."""
    v = ViewAug(size=size, interpolation="bicubic", brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
                blur_p=0.5)
    return v, v


def build_view(aug: ViewAug, crop: bool = True) -> v2.Compose:
    """The v2 pipeline for one view: crop, flip, colour jitter, grayscale, blur, solarize, normalise.

    ``crop=False`` leaves out the RandomResizedCrop, for a region already cut out and resized to the
    view size (:func:`crop_resize`): ORL's RoI patches and UniVIP's scenes and instances, where "the
    crop is the box" (ORL §3.2, UniVIP §4 "Image augmentations")."""
    steps: list[Callable] = []
    if crop:
        steps.append(v2.RandomResizedCrop(aug.size, scale=aug.crop_scale, ratio=aug.crop_ratio,
                                          interpolation=_INTERPOLATION[aug.interpolation], antialias=True))
    steps.append(v2.RandomHorizontalFlip(p=aug.flip_p))
    if aug.jitter_p > 0:
        steps.append(v2.RandomApply([v2.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue)],
                                    p=aug.jitter_p))
    if aug.grayscale_p > 0:
        steps.append(v2.RandomGrayscale(p=aug.grayscale_p))
    if aug.blur_p > 0:
        blur = GaussianBlur(blur_kernel_size(aug.size), sigma=aug.blur_sigma)
        steps.append(blur if aug.blur_p >= 1.0 else v2.RandomApply([blur], p=aug.blur_p))
    if aug.solarize_p > 0:
        steps.append(v2.RandomSolarize(threshold=aug.solarize_threshold, p=aug.solarize_p))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=aug.mean, std=aug.std),
              v2.ToPureTensor()]
    return v2.Compose(steps)


def crop_resize(image: Image.Image, box, size: int) -> Image.Image:
    """``box`` (xyxy, fractional allowed) of a PIL image resized to ``size × size``: bilinear, aspect
    not kept (ORL's RoI patches [C], UniVIP spec §6.20). PIL resamples from the whole image, so
    pixels just outside the box weigh in at its edges (why this is not torchvision's
    ``resized_crop``: docs/design.md, "Library kernels, where they are exact")."""
    return image.resize((size, size), Image.Resampling.BILINEAR, box=tuple(float(v) for v in box))


class MultiView:
    """Decoded HWC uint8 array → one tensor per view pipeline (a tuple, collated to a tuple of batches)."""

    def __init__(self, views: Sequence[ViewAug]):
        self.views = tuple(views)
        self.pipelines = [build_view(v) for v in self.views]

    def __call__(self, array: np.ndarray) -> tuple[torch.Tensor, ...]:
        image = Image.fromarray(array)
        return tuple(p(image) for p in self.pipelines)

    def __repr__(self) -> str:
        return f"MultiView({list(self.views)})"
