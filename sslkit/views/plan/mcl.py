"""MCL's planned views: 2L rows per image (L draws of T, then L of T′, each its own crop, flip and colours,
as :class:`sslkit.views.mcl.MCLViews` draws them) and, after them, the sample's montage seed; the batch is
``(views (B, 2L, 3, S, S), batch seed)``, what ``mcl_collate`` makes on the reference path."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sslkit.transforms import ViewAug
from sslkit.transforms.params import ViewDrawer
from sslkit.views.mcl import batch_seed
from sslkit.views.plan.dataset import PlanDataset


class MCLPlan(PlanDataset):
    def __init__(self, source, views: Sequence[ViewAug], levels: int, seed: int, mode: str):
        t, t2 = views
        super().__init__(source, seed, [t] * levels + [t2] * levels, mode)
        self.drawers = [ViewDrawer(v) for v in self.slots]

    def plan(self, image, record):
        rows = np.stack([d.draw(image.height, image.width) for d in self.drawers])
        seed = torch.randint(0, 2**62, (), dtype=torch.int64)  # drawn after the views, as MCLViews does
        return [image], rows, (seed,)

    def assemble(self, views, extra):
        (seeds,) = extra
        return torch.stack(views, 1), batch_seed(seeds)
