"""UniVIP's training views: the online scene-pair / instance sampler (univip.txt §3.2–3.3, §4
"Image augmentations"; spec univip.md §2.2).

The per-image candidate instances are made once per dataset by the view stage
(:mod:`sslkit.views.univip_stage`, ``sslkit sample-views -m univip``) or read straight from a
proposals file, both through :class:`~sslkit.views.candidates.CandidateBoxes`.
:class:`PairSampler` / :class:`UniVIPViews` run in the data loader for every image at every
  iteration (spec §2.2 [I]: no precomputed pairs): two scene crops whose overlap contains K
  candidates, K instance boxes (naive boxes when fewer candidates fit, §3.2 [P]), the scenes at
  224 px through BYOL's two pipelines and the instances, cropped from the original image at
  96 px [P], through the same pipelines without the crop.

Boxes are xyxy float32 in original-image pixels (docs/artefacts.md); crops are ``(x1, y1, x2, y2)``
with exclusive right/bottom edges. All random draws come from torch's global generator, which the
engine seeds per sample from ``(seed, epoch, index)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from sslkit.io.images import ImageSource
from sslkit.ops.boxes import box_iou
from sslkit.transforms import build_view, byol_views, crop_resize, tune_views
from sslkit.views.candidates import CandidateBoxes
from sslkit.views.dataset import ImageDataset

#: §3.2 [P]: "the naive strategy includes setting the minimum scale to 64 pixels, the range of aspect
#: ratio is between 1/3 and 3/1, and the maximum IoU threshold is 0.5"
NAIVE_MIN_SIZE = 64
NAIVE_MAX_RATIO = 3.0
NAIVE_MAX_IOU = 0.5
#: spec §2.2 [I]: scene-pair attempts per image, naive-box draws per box
OVERLAP_TRIES = 50
NAIVE_TRIES = 100
#: BYOL's RandomResizedCrop parameters (ORL configs; spec §2.2)
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


# ---------------------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class ScenePair:
    """One draw of :class:`PairSampler`, in original-image pixels (xyxy, exclusive right/bottom).

    ``boxes[:from_candidates]`` are candidates, the rest naive boxes; ``forced`` of those naive boxes
    were accepted after ``NAIVE_TRIES`` draws without meeting the IoU bound; ``whole_image``: no
    attempt had an overlap of at least ``naive_min_size``², so both crops are the whole image.
    """

    crops: np.ndarray  # (2, 4) scene crops
    region: np.ndarray  # (4,) where the instances were drawn: the overlap (or the whole image)
    boxes: np.ndarray  # (K, 4) float32 instance boxes
    from_candidates: int
    forced: int
    whole_image: bool


def _rrc(height: int, width: int, scale, ratio) -> np.ndarray:
    """BYOL's RandomResizedCrop box, drawn by torchvision's own ``get_params`` (torch's global RNG)."""
    from torchvision.transforms import RandomResizedCrop

    top, left, h, w = RandomResizedCrop.get_params(torch.empty((0, height, width)), list(scale), list(ratio))
    return np.array([left, top, left + w, top + h], np.float64)


def _intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.concatenate([np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])])


def _inside(boxes: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Indices of the boxes fully contained in ``region`` (spec §6.4 [I]: full containment)."""
    return np.flatnonzero((boxes[:, 0] >= region[0]) & (boxes[:, 1] >= region[1]) &
                          (boxes[:, 2] <= region[2]) & (boxes[:, 3] <= region[3]))


def _randint(lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]`` (inclusive) from torch's global generator."""
    return lo + int(torch.randint(hi - lo + 1, (1,)).item())


@dataclass(frozen=True)
class PairSampler:
    """The scene-pair and instance-box rule of §3.2 with the concrete algorithm of spec §2.2.

    Up to ``tries`` times: draw two RandomResizedCrop boxes (scale (0.08, 1), ratio (3/4, 4/3));
    skip pairs whose overlap is smaller than ``naive_min_size`` on a side (room for a naive box);
    if at least ``k`` candidates lie fully inside the overlap, take a uniformly random ``k`` of them.
    Otherwise keep the attempt with the most candidates inside (ties: the larger overlap), take all
    of them and fill up to ``k`` with naive boxes inside the overlap. If no attempt had a large
    enough overlap (tiny image or bad luck), both scene crops are the whole image (they still differ
    by flip and colour) and the naive side shrinks to ``min(naive_min_size, W, H)``.

    ``overlap=False`` is Table 8(a)'s "no": two independent crops, instances anywhere in the image.
    ``naive_only=True`` is Table 8(b)'s "naive": candidates are ignored.
    """

    k: int = 4
    tries: int = OVERLAP_TRIES
    scale: tuple[float, float] = CROP_SCALE
    ratio: tuple[float, float] = CROP_RATIO
    naive_min_size: int = NAIVE_MIN_SIZE
    naive_max_ratio: float = NAIVE_MAX_RATIO
    naive_max_iou: float = NAIVE_MAX_IOU
    naive_tries: int = NAIVE_TRIES
    overlap: bool = True
    naive_only: bool = False

    def sample(self, height: int, width: int, candidates: np.ndarray) -> ScenePair:
        cands = np.zeros((0, 4), np.float32) if self.naive_only else np.asarray(candidates, np.float32).reshape(-1, 4)
        whole = np.array([0, 0, width, height], np.float64)
        m = self.naive_min_size
        best = None  # (n inside, overlap area, c1, c2, region, inside)
        if not self.overlap:
            c1, c2 = _rrc(height, width, self.scale, self.ratio), _rrc(height, width, self.scale, self.ratio)
            best = (0, 0.0, c1, c2, whole, np.arange(len(cands)))
        else:
            for _ in range(self.tries):
                c1, c2 = _rrc(height, width, self.scale, self.ratio), _rrc(height, width, self.scale, self.ratio)
                region = _intersect(c1, c2)
                if region[2] - region[0] < m or region[3] - region[1] < m:
                    continue
                inside = _inside(cands, region)
                if len(inside) >= self.k:
                    best = (len(inside), 0.0, c1, c2, region, inside)
                    break
                area = float((region[2] - region[0]) * (region[3] - region[1]))
                if best is None or (len(inside), area) > best[:2]:
                    best = (len(inside), area, c1, c2, region, inside)
        whole_image = best is None
        if whole_image:
            c1 = c2 = region = whole
            inside = _inside(cands, region)
        else:
            _, _, c1, c2, region, inside = best
        pick = inside[torch.randperm(len(inside))[: self.k].numpy()] if len(inside) else inside
        chosen = [cands[i].astype(np.float64) for i in pick]
        n_cand, forced = len(chosen), 0
        while len(chosen) < self.k:
            box, ok = self._naive(region, chosen)
            chosen.append(box)
            forced += not ok
        boxes = np.asarray(chosen, np.float32).reshape(-1, 4)
        return ScenePair(np.stack([c1, c2]), region, boxes, n_cand, forced, whole_image)

    def _naive(self, region: np.ndarray, chosen: list[np.ndarray]) -> tuple[np.ndarray, bool]:
        """A random integer box inside ``region`` (§3.2's naive strategy; sampling [I]): sides at least
        ``m = min(naive_min_size, region sides)``, aspect within [1/r, r], IoU <= ``naive_max_iou`` with
        ``chosen``; after ``naive_tries`` draws the last one is accepted anyway (returns ``False``)."""
        x0, y0 = int(math.ceil(region[0])), int(math.ceil(region[1]))
        rw, rh = int(math.floor(region[2])) - x0, int(math.floor(region[3])) - y0
        m, r = min(self.naive_min_size, rw, rh), self.naive_max_ratio
        for _ in range(self.naive_tries):
            # w <= r·rh keeps the h range non-empty: m <= ceil(w/r) or m, both <= min(rh, floor(r·w))
            w = _randint(m, min(rw, int(r * rh)))
            h = _randint(max(m, math.ceil(w / r)), min(rh, int(r * w)))
            x, y = _randint(x0, x0 + rw - w), _randint(y0, y0 + rh - h)
            box = np.array([x, y, x + w, y + h], np.float64)
            if not chosen or box_iou(box, np.stack(chosen)).max() <= self.naive_max_iou:
                return box, True
        return box, False


# ---------------------------------------------------------------------------------------- pixels


class UniVIPViews:
    """(image HWC uint8, candidates (n, 4)) → ``(s1, s2, inst_a, inst_b, stats)``.

    ``s1``/``s2`` (3, S, S): the two scene crops through BYOL's pipelines 1 and 2 (blur 1.0 / 0.1,
    solarize 0 / 0.2). ``inst_a``/``inst_b`` (K, 3, s, s): each instance box cropped from the
    original image and resized to ``s``, then through pipeline 1 (for the online network) and,
    independently, pipeline 2 (for the target; spec §6.6 [I]). Without ``instances`` (no loss uses
    them) the instance tensors are empty but the scene pair still obeys the overlap rule.
    ``stats`` (4,) float: candidates used, naive boxes, forced naive boxes, whole-image fallback.
    """

    def __init__(self, sampler: PairSampler, scene_size: int = 224, instance_size: int = 96,
                 instances: bool = True, blur_reference: int | None = None, view_aug: str | None = None):
        self.sampler = sampler
        self.scene_size = scene_size
        self.instance_size = instance_size
        self.instances = instances and sampler.k > 0
        self.scene = [build_view(v, crop=False) for v in tune_views(byol_views(scene_size), blur_reference, view_aug)]
        self.instance = [build_view(v, crop=False)
                         for v in tune_views(byol_views(instance_size), blur_reference, view_aug)]

    def __call__(self, image: np.ndarray, candidates: np.ndarray):
        h, w = image.shape[:2]
        pair = self.sampler.sample(h, w, candidates)
        pil = Image.fromarray(image)
        s1, s2 = (pipe(crop_resize(pil, c, self.scene_size)) for pipe, c in zip(self.scene, pair.crops, strict=True))
        n = len(pair.boxes) if self.instances else 0
        a = torch.empty((n, 3, self.instance_size, self.instance_size))
        b = torch.empty_like(a)
        for i in range(n):
            crop = crop_resize(pil, pair.boxes[i], self.instance_size)
            a[i], b[i] = self.instance[0](crop), self.instance[1](crop)
        stats = torch.tensor([pair.from_candidates, len(pair.boxes) - pair.from_candidates, pair.forced,
                              float(pair.whole_image)], dtype=torch.float32)
        return s1, s2, a, b, stats


class UniVIPDataset(ImageDataset):
    """Images of a source with their candidates (or none), as UniVIP samples; an
    :class:`~sslkit.views.dataset.ImageDataset` (``(epoch, index)`` keys, per-sample seeding)."""

    def __init__(self, source: ImageSource, store: CandidateBoxes | None, views: UniVIPViews, seed: int):
        if store is not None:
            store.check_covers(source, training=True)
        super().__init__(source, views, seed)
        self.store = store

    def make_sample(self, image: np.ndarray, record):
        h, w = image.shape[:2]
        cands = self.store.boxes_for_image(record.file_name, h, w) if self.store is not None else np.zeros((0, 4), np.float32)
        return self.transform(image, cands)


__all__ = ["NAIVE_MAX_IOU", "NAIVE_MAX_RATIO", "NAIVE_MIN_SIZE", "PairSampler", "ScenePair", "UniVIPDataset",
           "UniVIPViews"]
