"""UniVIP's planned views (:class:`sslkit.views.univip.UniVIPViews`' samples as rows).

The scene pair and the K instance boxes come from the same :class:`~sslkit.views.univip.PairSampler`
draw as the reference; then the two scene rows (BYOL's pipelines 1 and 2 without their crop: the
crop is the sampled scene box) and, per instance, a row through pipeline 1 and one through
pipeline 2 of the same box. The renderers crop whole pixels: the reference resizes the float box
exactly (PIL), so an instance box with fractional corners (COCO ground truth) is here rounded to
the nearest pixel, a shift of at most half a pixel of the original image. The extras are the
box statistics.
"""

from __future__ import annotations

import numpy as np
import torch

from sslkit.transforms import byol_views, tune_views
from sslkit.transforms.params import ViewDrawer
from sslkit.views.candidates import CandidateBoxes
from sslkit.views.plan.dataset import PlanDataset
from sslkit.views.univip import PairSampler


class UniVIPPlan(PlanDataset):
    """Rows ``scene1, scene2, inst1_a, inst1_b, …, instK_a, instK_b`` (no instance rows when no loss
    term uses them); the batch ``(s1, s2, inst_a (B, K, …), inst_b, stats)`` as the reference."""

    def __init__(self, source, store: CandidateBoxes | None, sampler: PairSampler, seed: int, mode: str,
                 scene_size: int = 224, instance_size: int = 96, instances: bool = True,
                 blur_reference: int | None = None, view_aug: str | None = None):
        if store is not None:
            store.check_covers(source, training=True)
        scenes = tune_views(byol_views(scene_size), blur_reference, view_aug)
        insts = tune_views(byol_views(instance_size), blur_reference, view_aug)
        self.k = sampler.k if instances else 0
        super().__init__(source, seed, list(scenes) + list(insts) * self.k, mode)
        self.store = store
        self.sampler = sampler
        self.instance_size = instance_size
        self.scene_drawers = [ViewDrawer(v, crop=False) for v in scenes]
        self.instance_drawers = [ViewDrawer(v, crop=False) for v in insts]

    def plan(self, image, record):
        h, w = image.height, image.width
        cands = self.store.boxes_for_image(record.file_name, h, w) if self.store is not None else np.zeros((0, 4), np.float32)
        pair = self.sampler.sample(h, w, cands)
        rows = [d.draw(h, w, box=c) for d, c in zip(self.scene_drawers, pair.crops, strict=True)]
        for i in range(self.k):
            rows += [d.draw(h, w, box=pair.boxes[i]) for d in self.instance_drawers]
        stats = torch.tensor([pair.from_candidates, len(pair.boxes) - pair.from_candidates, pair.forced,
                              float(pair.whole_image)], dtype=torch.float32)
        return [image], np.stack(rows), (stats,)

    def assemble(self, views, extra):
        s1, s2 = views[0], views[1]
        if self.k:
            inst_a, inst_b = torch.stack(views[2::2], 1), torch.stack(views[3::2], 1)
        else:
            s = self.instance_size
            inst_a = inst_b = s1.new_zeros((s1.shape[0], 0, 3, s, s))
        return s1, s2, inst_a, inst_b, extra[0]
