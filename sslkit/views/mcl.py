"""MCL's montage assembly (Multi-Level Contrastive Learning, ../shared/papers/mcl.txt §3.1, Alg. 1;
spec ../shared/specs/mcl.md §2.1–2.2): pure functions, plus the per-image 8-view transform.

Per image, 2·L independent augmentations (L = 4 levels × 2 views; view q uses pipeline T, view k
T′; each level has its own crop [C]). Per view and level ``s`` (ratio ``r = 2^s``):

* level 0: the B augmented images themselves, tile = image, source index = ``arange(B)``;
* level s ≥ 1: every level-s image downsampled by ``r`` (nearest by default [C]); ``M_s`` montages
  of ``r × r`` tiles, tile sources ``randperm(r²·M_s) mod B`` [C], tiled row-major
  (``[M, r, r, C, h, w] → permute(0, 3, 1, 4, 2, 5) → [M, C, H, W]``, Alg. 1);
* ``M_s = B · f_s`` with ``f = (1, 1/4, 1/16, 1/32)`` [C]: B tiles at s = 1, 2 (a permutation of
  the batch) and 2B at s = 3 (every image twice);
* the levels concatenated into one batch per view: ``Σ M_s`` images (B = 128: 172) [C].

A tile of level ``s`` covers exactly one ``(S/32)²`` window of the pyramid level ``P_{5−s}``
(stride ``2^{5−s}``): :func:`windows` cuts a montage's feature map into those windows in the same
row-major order as the sources, so window ``j`` of montage ``m`` belongs to ``sources[m·r² + j]``.

Randomness: the views are drawn per sample from torch's generator (seeded per sample by
:class:`sslkit.views.dataset.ImageDataset`), and each sample also draws a 62-bit ``seed``; the
collate (:func:`mcl_collate`) hashes a batch's seeds into one (:func:`batch_seed`), which seeds the
CPU generator of its tile permutations: they are a function of (run seed, step, rank) like the
views, and a resumed run draws the same ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import default_collate

from sslkit.transforms.pipelines import ViewAug, build_view
from sslkit.views.dataset import sample_seed

#: pyramid levels the montages can use: ratio 1, 2, 4, 8 → P5, P4, P3, P2 [C] (MCL.py downsample_ratios)
MAX_LEVELS = 4
#: montages per level as a fraction of the batch per rank [C] (MCL.py batch_sizes = [B, B/4, B/16, B/32])
MONTAGE_FRACTIONS = "1,1/4,1/16,1/32"
DOWNSAMPLE_MODES = ("nearest", "area", "bilinear")


def parse_fractions(spec: str, levels: int) -> list[Fraction]:
    """``"1,1/4,1/16,1/32"`` → the first ``levels`` fractions. ValueError names what is wrong."""
    try:
        fr = [Fraction(x.strip()) for x in spec.replace(" ", ",").split(",") if x.strip()]
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"montage_fractions {spec!r} is not a comma-separated list of fractions like 1/4") from None
    if len(fr) < levels:
        raise ValueError(f"montage_fractions {spec!r} has {len(fr)} entries for {levels} levels")
    fr = fr[:levels]
    if fr[0] != 1:
        raise ValueError(f"montage_fractions must start with 1 (level 0 is the batch itself), got {fr[0]}")
    if any(f <= 0 for f in fr):
        raise ValueError(f"montage_fractions must be positive (got {spec!r})")
    return fr


def batch_rule(fractions: Sequence[Fraction]) -> int:
    """The batch per rank must be a multiple of this for every ``B·f_s`` to be a whole number of montages."""
    return math.lcm(*(f.denominator for f in fractions))


def montage_counts(batch: int, fractions: Sequence[Fraction]) -> list[int]:
    """``M_s = B·f_s`` montages per level; ValueError with the rule when ``B`` does not divide."""
    rule = batch_rule(fractions)
    if batch % rule:
        shown = ", ".join("B" if f == 1 else f"B·{f}" for f in fractions)
        raise ValueError(f"MCL needs a batch per rank that is a multiple of {rule} (montages per level: {shown}); "
                         f"got {batch}")
    return [int(batch * f) for f in fractions]


def level_weights(spec: str, levels: int) -> list[float]:
    """Loss weight per level: ``auto`` = 1/2, 1/4, …, the last two equal, summing to 1 — the code's
    (1/2, 1/4, 1/8, 1/8) at 4 levels [C]; (1/2, 1/4, 1/4) at 3 [I]. Or an explicit comma list."""
    if spec.strip() == "auto":
        return [2.0 ** -(s + 1) for s in range(levels - 1)] + [2.0 ** -(levels - 1)]
    try:
        w = [float(Fraction(x.strip())) for x in spec.replace(" ", ",").split(",") if x.strip()]
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"level_weights {spec!r} is not 'auto' or a comma-separated list of numbers") from None
    if len(w) != levels or any(x < 0 for x in w) or not any(w):
        raise ValueError(f"level_weights {spec!r} needs {levels} non-negative numbers, not all 0")
    return w


def downsample(x: torch.Tensor, ratio: int, mode: str = "nearest") -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, C, H/r, W/r)``. ``nearest`` [C] keeps the top-left pixel of each r×r block
    (``F.interpolate``'s default, as the authors' code); ``area`` averages it; ``bilinear`` is antialiased."""
    if ratio == 1:
        return x
    h, w = x.shape[-2:]
    if h % ratio or w % ratio:
        raise ValueError(f"a {h}x{w} image does not split into {ratio}x{ratio} tiles")
    if mode == "nearest":
        return F.interpolate(x, size=(h // ratio, w // ratio), mode="nearest")
    if mode == "area":
        return F.avg_pool2d(x, ratio)
    if mode == "bilinear":
        return F.interpolate(x, size=(h // ratio, w // ratio), mode="bilinear", align_corners=False, antialias=True)
    raise ValueError(f"downsample must be one of {', '.join(DOWNSAMPLE_MODES)} (got {mode!r})")


def draw_sources(batch: int, ratio: int, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Source image of every tile of ``count`` montages: ``randperm(r²·count) mod B`` [C], int64 (CPU)."""
    return torch.randperm(ratio * ratio * count, generator=generator) % batch


def assemble(images: torch.Tensor, sources: torch.Tensor, ratio: int, mode: str = "nearest") -> torch.Tensor:
    """Montages of ``ratio × ratio`` downsampled ``images`` (B, C, H, W): tile ``j`` of montage ``m``
    (row ``j // r``, column ``j % r``) is image ``sources[m·r² + j]``. Returns (M, C, H, W)."""
    b, c, h, w = images.shape
    if ratio == 1:
        return images[sources]
    if len(sources) % (ratio * ratio):
        raise ValueError(f"{len(sources)} tiles do not fill {ratio}x{ratio} montages")
    m = len(sources) // (ratio * ratio)
    tiles = downsample(images, ratio, mode)[sources.to(images.device)]
    th, tw = tiles.shape[-2:]
    return tiles.reshape(m, ratio, ratio, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(m, c, ratio * th, ratio * tw)


def windows(feature: torch.Tensor, ratio: int) -> torch.Tensor:
    """Cut a level's feature map of montages (M, D, r·k, r·k) into its tiles' windows (M·r², D, k, k),
    in the order of :func:`assemble`'s sources (montage-major, then row, then column)."""
    m, d, h, w = feature.shape
    if h % ratio or w % ratio:
        raise ValueError(f"a {h}x{w} feature map does not split into {ratio}x{ratio} windows")
    kh, kw = h // ratio, w // ratio
    return feature.reshape(m, d, ratio, kh, ratio, kw).permute(0, 2, 4, 1, 3, 5).reshape(m * ratio * ratio, d, kh, kw)


def batch_seed(seeds: torch.Tensor) -> int:
    """The seed of a batch's tile permutations: a hash of its samples' seeds (order included)."""
    return sample_seed(*(int(s) for s in seeds.reshape(-1).tolist()))


def mcl_collate(samples) -> tuple[torch.Tensor, int]:
    """``[(views (2L, C, H, W), seed), …]`` → ``(views (B, 2L, C, H, W), batch seed)``. The seed is hashed
    here, in the loader, so the training step needs no device-to-host read."""
    views, seeds = default_collate(samples)
    return views, batch_seed(seeds)


def _to(src: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Indices to the views' device; to a GPU from pinned memory, asynchronously (no stream sync)."""
    if device.type == "cuda":
        return src.pin_memory().to(device, non_blocking=True)
    return src.to(device)


def montage_batch(level_views: Sequence[torch.Tensor], counts: Sequence[int], generator: torch.Generator,
                  mode: str = "nearest") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One view's montage batch: ``level_views[s]`` (B, C, H, W) are the level-s augmentations.

    Returns the concatenated montages (Σ M_s, C, H, W) and, per level, the source index of every
    tile (``n_s = r²·M_s`` entries, level 0: ``arange(B)``), on the views' device.
    """
    b = level_views[0].shape[0]
    parts, sources = [], []
    for s, (x, count) in enumerate(zip(level_views, counts, strict=True)):
        ratio = 2 ** s
        src = torch.arange(b) if s == 0 else draw_sources(b, ratio, count, generator)
        src = _to(src, x.device)
        parts.append(x if s == 0 else assemble(x, src, ratio, mode))
        sources.append(src)
    return torch.cat(parts), sources


def montage_views(views: torch.Tensor, seed: int, counts: Sequence[int], mode: str = "nearest"):
    """A collated MCL batch (:func:`mcl_collate`) → both views' montages: ``views`` (B, 2L, C, H, W)
    (q levels 0..L−1, then k levels), ``seed`` the batch seed. Returns ``((q_montages, q_sources),
    (k_montages, k_sources))``; the q permutations are drawn before the k ones, on the CPU."""
    levels = len(counts)
    if views.shape[1] != 2 * levels:
        raise ValueError(f"a batch of {views.shape[1]} views per image does not hold 2x{levels} levels")
    g = torch.Generator().manual_seed(int(seed))
    q = montage_batch([views[:, s] for s in range(levels)], counts, g, mode)
    k = montage_batch([views[:, levels + s] for s in range(levels)], counts, g, mode)
    return q, k


def mcl_view_augs(size: int) -> tuple[ViewAug, ViewAug]:
    """T and T′ [C] (MCL.py ``train_pipeline1/2``): BYOL's pipelines with RandomResizedCrop scale (0.2, 1)
    (BYOL: 0.08); blur p 1.0 / 0.1, solarize p 0 / 0.2; ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8; grayscale 0.2."""
    t = ViewAug(size=size, crop_scale=(0.2, 1.0), blur_p=1.0, solarize_p=0.0)
    return t, ViewAug(size=size, crop_scale=(0.2, 1.0), blur_p=0.1, solarize_p=0.2)


class MCLViews:
    """Decoded HWC uint8 image → ``(views (2L, 3, S, S) float32, seed int64)``: L draws of T (view q,
    levels 0..L−1), then L draws of T′ (view k), each with its own crop, flip and colours [C]
    (MCL.py ``img_pyramid_pipe_idxs_1/2``); ``seed`` seeds the batch's tile permutations."""

    def __init__(self, views: tuple[ViewAug, ViewAug], levels: int):
        self.views = tuple(views)
        self.levels = levels
        self.pipelines = [build_view(v) for v in self.views]

    def __call__(self, array: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        image = Image.fromarray(array)
        out = [self.pipelines[v](image) for v in (0, 1) for _ in range(self.levels)]
        seed = torch.randint(0, 2**62, (), dtype=torch.int64)
        return torch.stack(out), seed

    def __repr__(self) -> str:
        return f"MCLViews(levels={self.levels}, {list(self.views)})"


__all__ = ["DOWNSAMPLE_MODES", "MAX_LEVELS", "MCLViews", "MONTAGE_FRACTIONS", "assemble", "batch_rule", "batch_seed",
           "downsample", "draw_sources", "level_weights", "mcl_collate", "mcl_view_augs", "montage_batch",
           "montage_counts", "montage_views", "parse_fractions", "windows"]
