"""ORL's stage-3 training samples (Xie et al., "Unsupervised Object-Level Representation Learning
from Scene Images", NeurIPS 2021, §3.1 "Stage 3", §3.2; ../shared/papers/orl.txt, spec
../shared/specs/orl.md §2.4, docs/orl.md), used by ``sslkit pretrain --method orl``.

Provenance tags as in the spec: [P] paper, [C] authors' code (OpenSelfSup-based ORL repo),
[I] an sslkit choice the paper and code leave open.

Per image, two 224 global views (BYOL pipelines), an intra-RoI pair (a kept box and a jittered
copy, :func:`sslkit.ops.boxes.jitter_box`) and an inter-RoI pair (a random neighbour slot, a random
pair of it); RoI patches are cropped from the unaugmented images and resized to 96 × 96, then go
through the BYOL pipelines without RandomResizedCrop; ``p`` and ``p1`` get pipeline 1 (blur 1.0,
no solarize), ``p′`` and ``p2`` pipeline 2 (blur 0.1, solarize 0.2) [C, spec §6.8].

The pairs come from stage 2 (:mod:`sslkit.views.orl_stage2`, ``sslkit sample-views -m orl``),
read with :class:`sslkit.views.orl_pairs.OrlPairs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sslkit.errors import UserError
from sslkit.io.images import ImageDecodeError, ImageSource, load_rgb
from sslkit.ops.boxes import jitter_box, pixel_box
from sslkit.ops.knn import pair_count
from sslkit.transforms import build_view, byol_views, crop_resize, tune_views
from sslkit.views.dataset import ImageDataset
from sslkit.views.orl_pairs import OrlPairs

IMAGE_SIZE = 224  # global views [P]
PATCH_SIZE = 96  # RoI patches 96×96 [P] (§3.1 "Stage 3", spec §2.4.2)


class ORLViews:
    """The pixel side of a stage-3 sample: BYOL's two global pipelines and the two patch pipelines.

    Random draws come from torch's global generator (the engine seeds it per sample).
    """

    def __init__(self, image_size: int = IMAGE_SIZE, patch_size: int = PATCH_SIZE, blur_reference: int | None = None,
                 view_aug: str | None = None):
        self.image_size = image_size
        self.patch_size = patch_size
        self.global_views = [build_view(v) for v in tune_views(byol_views(image_size), blur_reference, view_aug)]
        self.patch_views = [build_view(v, crop=False)
                            for v in tune_views(byol_views(patch_size), blur_reference, view_aug)]

    def crop(self, image, box) -> object:
        """The whole-pixel box of a PIL image resized to ``patch_size²`` (bilinear; aspect not kept)."""
        return crop_resize(image, pixel_box(box, image.height, image.width), self.patch_size)

    def patches(self, image_a, box_a, image_b, box_b) -> tuple[torch.Tensor, torch.Tensor]:
        """The first patch through pipeline 1 (blur 1.0, no solarize), the second through pipeline 2."""
        return self.patch_views[0](self.crop(image_a, box_a)), self.patch_views[1](self.crop(image_b, box_b))


class ORLDataset(ImageDataset):
    """Stage-3 samples: a dict of ``global`` (v, v′), ``intra`` (p, p′), ``inter`` (p1, p2) and
    ``fallback`` (3,) = [image had no boxes, jitter fell back to the box, no pair (intra pair used)].

    Per sample (paper §3.1 "Stage 3", spec §2.4): a uniform box of the image's filtered boxes and its
    jitter; a uniform neighbour slot among the first ``k_used`` that have pairs, then a uniform pair of
    it (of its first ``max(1, int(pair_ratio_used · B_q))`` when that is set) [C draws a slot among all
    K; sslkit skips slots without pairs, which only happens when a neighbour has no boxes]. Images
    without boxes use the whole image as their box; without a usable pair, the intra pair's boxes
    (re-augmented) form the inter pair. Branches not in ``branches`` are not computed.
    """

    def __init__(self, source: ImageSource, pairs: OrlPairs, views: ORLViews, seed: int, k_used: int = 0,
                 pair_ratio_used: float = 0.0, branches: Sequence[str] = ("global", "intra", "inter")):
        skipped = {fn for fn, _ in pairs.skipped}
        missing = [r.file_name for r in source if r.file_name not in pairs.row and r.file_name not in skipped]
        if missing:
            raise UserError(f"has no views for {len(missing)} of the {len(source)} training images "
                            f"(e.g. {missing[0]})", pairs.path,
                            "run sslkit sample-views on the same images (folder or COCO json) as pretrain")
        super().__init__(source, views, seed)
        self.pairs = pairs
        self.k_used = k_used or pairs.k
        self.pair_ratio_used = pair_ratio_used
        self.branches = tuple(branches)

    def _neighbour_path(self, file_name: str) -> Path:
        rec = self.source.by_name(file_name)
        return rec.path if rec is not None else Path(self.source.root) / file_name

    def _pick_pair(self, row: int) -> tuple[int, np.ndarray] | None:
        """(neighbour row, one pair row [slot, query box, neighbour box]) or None when no slot has pairs."""
        pairs, _ = self.pairs.pairs(row)
        if len(pairs) == 0:
            return None
        slots = np.unique(pairs[:, 0])
        slots = slots[slots < self.k_used]
        if len(slots) == 0:
            return None
        slot = int(slots[int(torch.randint(len(slots), ()))])
        cand, _ = self.pairs.pairs(row, slot)
        if self.pair_ratio_used:
            cand = cand[:pair_count(len(self.pairs.boxes(row)), self.pair_ratio_used)]
        pick = cand[int(torch.randint(len(cand), ()))]
        return int(self.pairs.knn_ids[row, slot]), pick

    def make_sample(self, image: np.ndarray, record):
        views: ORLViews = self.transform
        pil = Image.fromarray(image)
        h, w = image.shape[:2]
        row = self.pairs.row.get(record.file_name)
        if row is not None and (int(self.pairs.height[row]), int(self.pairs.width[row])) != (h, w):
            raise UserError(f"{record.file_name} is {h}x{w} but the views were made on a "
                            f"{self.pairs.height[row]}x{self.pairs.width[row]} image", self.pairs.path,
                            "were the views made from other images?")
        out: dict[str, object] = {}
        if "global" in self.branches:
            out["global"] = (views.global_views[0](pil), views.global_views[1](pil))
        boxes = self.pairs.boxes(row) if row is not None else np.zeros((0, 4), np.float32)
        no_boxes = len(boxes) == 0
        box = np.array([0, 0, w, h], np.float32) if no_boxes else boxes[int(torch.randint(len(boxes), ()))]
        jittered, moved = jitter_box(box, h, w)
        if "intra" in self.branches:
            out["intra"] = views.patches(pil, box, pil, jittered)
        no_pair = True
        if "inter" in self.branches:
            pick = self._pick_pair(row) if row is not None else None
            if pick is not None:
                nrow, (_, qi, ni) = pick
                try:
                    nimg, _ = load_rgb(self._neighbour_path(self.pairs.file_name[nrow]))
                    nb = Image.fromarray(nimg)
                    if (nb.height, nb.width) != (int(self.pairs.height[nrow]), int(self.pairs.width[nrow])):
                        raise ImageDecodeError(self.pairs.file_name[nrow], "size differs from the views file")
                    out["inter"] = views.patches(pil, self.pairs.boxes(row)[qi], nb, self.pairs.boxes(nrow)[ni])
                    no_pair = False
                except ImageDecodeError:
                    pass  # an unreadable neighbour: the intra pair below stands in, counted as no_pairs
            if no_pair:
                out["inter"] = views.patches(pil, box, pil, jittered)
        out["fallback"] = torch.tensor([no_boxes, not moved, no_pair and "inter" in self.branches], dtype=torch.float32)
        return out
