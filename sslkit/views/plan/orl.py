"""ORL stage 3's planned views (:class:`sslkit.views.orl.ORLDataset`'s samples as rows).

The same draws in the same order as the reference sample: BYOL's two global views, the box and
its jitter, the intra-RoI patch pair, then the kNN pair (a neighbour slot and a pair of it; the
neighbour image becomes the sample's second source) or, without a usable pair, the intra boxes
again. Patches are rows without a crop draw: the box (whole pixels, as the reference crops it) is
the crop, resized to the patch size. The extras are the ``fallback`` flags.
"""

from __future__ import annotations

import numpy as np
import torch

from sslkit.errors import UserError
from sslkit.io.encoded import read_encoded
from sslkit.io.images import ImageDecodeError
from sslkit.transforms import byol_views, tune_views
from sslkit.transforms.params import ViewDrawer
from sslkit.views.orl import ORLDataset, OrlPairs, jitter_box, pixel_box
from sslkit.views.plan.dataset import PlanDataset


class ORLPlan(PlanDataset):
    """Rows ``global (2)``, then ``intra (2)`` and ``inter (2)`` for the branches computed."""

    def __init__(self, source, pairs: OrlPairs, seed: int, mode: str, image_size: int, patch_size: int,
                 blur_reference: int | None = None, view_aug: str | None = None, k_used: int = 0,
                 pair_ratio_used: float = 0.0, branches=("global", "intra", "inter")):
        # the reference dataset checks the pairs cover the images and picks pairs; its pixels are not used
        self.ref = ORLDataset(source, pairs, None, seed, k_used, pair_ratio_used, branches)
        globals_ = tune_views(byol_views(image_size), blur_reference, view_aug)
        patches = tune_views(byol_views(patch_size), blur_reference, view_aug)
        self.branches = self.ref.branches
        slots = list(globals_) + [a for b in self.branches if b != "global" for a in patches]
        super().__init__(source, seed, slots, mode)
        self.pairs = pairs
        self.global_drawers = [ViewDrawer(v) for v in globals_]
        self.patch_drawers = [ViewDrawer(v, crop=False) for v in patches]

    def _patches(self, box_a, hw_a, box_b, hw_b, src_b: int = 0) -> list[np.ndarray]:
        return [self.patch_drawers[0].draw(*hw_a, box=pixel_box(box_a, *hw_a)),
                self.patch_drawers[1].draw(*hw_b, box=pixel_box(box_b, *hw_b), src=src_b)]

    def plan(self, image, record):
        pairs, ref = self.pairs, self.ref
        h, w = image.height, image.width
        row = pairs.row.get(record.file_name)
        if row is not None and (int(pairs.height[row]), int(pairs.width[row])) != (h, w):
            raise UserError(f"{record.file_name} is {h}x{w} but the views were made on a "
                            f"{pairs.height[row]}x{pairs.width[row]} image", pairs.path,
                            "were the views made from other images?")
        sources = [image]
        rows = [d.draw(h, w) for d in self.global_drawers]
        boxes = pairs.boxes(row) if row is not None else np.zeros((0, 4), np.float32)
        no_boxes = len(boxes) == 0
        box = np.array([0, 0, w, h], np.float32) if no_boxes else boxes[int(torch.randint(len(boxes), ()))]
        jittered, moved = jitter_box(box, h, w)
        if "intra" in self.branches:
            rows += self._patches(box, (h, w), jittered, (h, w))
        no_pair = True
        if "inter" in self.branches:
            pick = ref._pick_pair(row) if row is not None else None
            if pick is not None:
                nrow, (_, qi, ni) = pick
                name = pairs.file_name[nrow]
                try:
                    neighbour = read_encoded(ref._neighbour_path(name), name)
                    nhw = (int(pairs.height[nrow]), int(pairs.width[nrow]))
                    if (neighbour.height, neighbour.width) != nhw:
                        raise ImageDecodeError(name, "size differs from the views file")
                    sources.append(neighbour)
                    rows += self._patches(pairs.boxes(row)[qi], (h, w), pairs.boxes(nrow)[ni], nhw, src_b=1)
                    no_pair = False
                except ImageDecodeError:
                    pass  # as the reference: the intra pair below stands in, counted as no_pairs
            if no_pair:
                rows += self._patches(box, (h, w), jittered, (h, w))
        fallback = torch.tensor([no_boxes, not moved, no_pair and "inter" in self.branches], dtype=torch.float32)
        return sources, np.stack(rows), (fallback,)

    def assemble(self, views, extra):
        out = {}
        for i, branch in enumerate(self.branches):
            out[branch] = (views[2 * i], views[2 * i + 1])
        out["fallback"] = extra[0]
        return out
