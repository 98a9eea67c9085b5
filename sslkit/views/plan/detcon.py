"""DetCon's planned views: the rows of its two views, and the masks carried with them in the worker.

The label maps are geometry, so they never leave the worker: each view's row (the reference
pipeline's exact draws) crops, resizes (nearest) and flips the image's label maps with the very
``torchvision.transforms.v2`` kernels the reference path applies to its ``tv_tensors.Mask``; then
owners and the sampled mask ids follow as in :class:`sslkit.views.detcon.DetConViews`, with the
same draws. So a DetCon sample's owners, ids (and label maps, for soft pooling) are identical on
every data path, and only the pixels are made elsewhere (the worker's OpenCV or the device).
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from sslkit.transforms import ViewAug
from sslkit.transforms.params import ROW, ViewDrawer
from sslkit.views.detcon import MaskStore, cell_owners, feature_grid
from sslkit.views.plan.dataset import PlanDataset

_INTERPOLATION = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}


def mask_view(mask: tv_tensors.Mask, row: np.ndarray, aug: ViewAug) -> torch.Tensor:
    """The label maps (S, H, W) of one view: the row's crop resized to the view (the Mask kernels of
    ``v2.RandomResizedCrop``, nearest) and its flip."""
    x1, y1, x2, y2 = (int(v) for v in row[ROW["x1"]:ROW["y2"] + 1])
    out = TF.resized_crop(mask, y1, x1, y2 - y1, x2 - x1, size=[aug.size, aug.size],
                          interpolation=_INTERPOLATION[aug.interpolation], antialias=True)
    if row[ROW["flip"]]:
        out = TF.horizontal_flip(out)
    return out.as_subclass(torch.Tensor)


class DetConPlan(PlanDataset):
    """DetCon samples (:class:`sslkit.views.detcon.DetConDataset`'s) as rows + extras
    ``(owners1, owners2, ids1, ids2[, labels1, labels2])``."""

    def __init__(self, source, store: MaskStore, views: tuple[ViewAug, ViewAug], num_masks: int,
                 keep_labels: bool, seed: int, mode: str):
        super().__init__(store.usable(source), seed, views, mode)
        self.store = store
        self.drawers = [ViewDrawer(v) for v in self.slots]
        self.grid = feature_grid(self.slots[0].size)
        self.num_masks = num_masks
        self.keep_labels = keep_labels

    def plan(self, image, record):
        labels = self.store.labels(record.file_name, image.height, image.width)
        mask = tv_tensors.Mask(torch.from_numpy(labels))
        rows, owners, ids, maps = [], [], [], []
        for drawer, aug in zip(self.drawers, self.slots, strict=True):
            row = drawer.draw(image.height, image.width)
            lab = mask_view(mask, row, aug)
            own = cell_owners(lab, (self.grid, self.grid))
            present = torch.unique(own)
            ids.append(present[torch.randint(len(present), (self.num_masks,))])
            rows.append(row)
            owners.append(own)
            maps.append(lab)
        extra = (owners[0], owners[1], ids[0], ids[1]) + ((maps[0], maps[1]) if self.keep_labels else ())
        return [image], np.stack(rows), extra

    def assemble(self, views, extra):
        return (views[0], views[1], *extra)
