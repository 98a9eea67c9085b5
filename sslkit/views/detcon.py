"""DetCon's mask-tracked views (detcon.txt §3.1 "Data augmentation"; spec detcon.md §2.2–2.3).

The image and its segment label map(s) go through the *same* random-resized crop and flip
(``torchvision.transforms.v2`` with ``tv_tensors.Mask``: nearest-neighbour for the map), so pixel
(i, j) of each view knows its segment. Photometric steps touch the image only. Each view's map is
then reduced to the backbone's final feature grid (one owner segment per cell, the official
code's hard pooling) and 16 segment ids are sampled per view among the segments present.

Several label-map fields (e.g. FH at scales 500/1000/1500 on COCO) form one set of masks: ids of
field ``s`` are offset by ``s·65536``, each field's owners are tracked separately, and sampling is
uniform over the union (spec detcon.md §6.2, "union").

A file of boxes (selective search, a user's own, UniVIP candidates) serves as masks too: each image's
boxes, filtered like ORL's candidates, are painted into a label map at the image's size as it is
loaded (:func:`sslkit.ops.regions.boxes_to_labels`, :class:`BoxMasks`; docs/swap.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision import tv_tensors

from sslkit.console import warn
from sslkit.errors import UserError
from sslkit.io.artefacts import Artefact
from sslkit.io.images import ImageSource
from sslkit.ops.masks import cell_owners
from sslkit.ops.regions import boxes_to_labels
from sslkit.proposals.filters import BoxFilter
from sslkit.proposals.masks import resize_labels
from sslkit.transforms import ViewAug, build_view, to_image
from sslkit.views.candidates import CANDIDATES_KIND, CandidateBoxes, field_list
from sslkit.views.dataset import ImageDataset

#: segment ids of label-map field s are offset by s·FIELD_OFFSET (uint16 ids never collide)
FIELD_OFFSET = 1 << 16


def feature_grid(size: int, stride_log2: int = 5) -> int:
    """Side of a ResNet's final feature map for a ``size`` input: ceil-halving 5 times (224 → 7, 64 → 2)."""
    for _ in range(stride_log2):
        size = -(-size // 2)
    return size


def stacked_labels(artefact, row: int, fields: Sequence[str], height: int, width: int) -> np.ndarray:
    """(S, height, width) int64: label-map ``fields`` of ``row`` resized (nearest) to the image, ids of
    field ``s`` offset by ``s·FIELD_OFFSET``."""

    out = np.empty((len(fields), height, width), np.int64)
    for s, field in enumerate(fields):
        out[s] = resize_labels(artefact.label_map(field, row), (height, width)).astype(np.int64) + s * FIELD_OFFSET
    return out


@dataclass(frozen=True)
class BoxMasks:
    """How a box field becomes a label map ([I], docs/swap.md): the image's boxes through ``filter``
    (ORL's candidate filter, so DetCon paints the boxes ORL and UniVIP start from; a raw ``boxes``
    field only, as :class:`~sslkit.views.candidates.CandidateBoxes` reads it), scaled to the image,
    then painted in ``order`` (:func:`sslkit.ops.regions.paint_order`): box ``k`` → id ``k + 1``,
    uncovered pixels → 0, one more segment DetCon samples like any other."""

    filter: BoxFilter = BoxFilter()
    order: str = "large-first"

    def describe(self) -> dict:
        f = self.filter
        return {"rule": "boxes painted into a label map: box k -> id k+1, uncovered pixels 0 (background "
                        "segment); a pixel belongs to a box when its centre lies inside",
                "box_order": self.order, "filter": {"min_size": f.min_size, "max_ratio": f.max_ratio,
                                                    "max_iou": f.max_iou, "top_n": f.top_n, "fallback": f.fallback}}


class MaskStore:
    """Label maps of a region file, looked up by image file name: an ``sslkit.proposals`` artefact's label
    maps, or its boxes (or a univip-candidates file's) painted into label maps (``boxes``, :class:`BoxMasks`).

    ``fields``: ``"all"`` (every label-map field; in a file without any, its box field ``boxes``, or its
    only box field) or names of label-map and box fields, used together as a union. The HDF5 file is
    opened lazily in each process (DataLoader workers fork), never pickled open.
    """

    def __init__(self, path: str | os.PathLike, fields: str | Sequence[str] = "all", boxes: BoxMasks | None = None):
        self.path = str(path)
        self.box_rule = boxes or BoxMasks()
        with Artefact(path, ("sslkit.proposals", "sslkit.views")) as a:
            if a.format == "sslkit.views" and a.attrs.get("views_kind") != CANDIDATES_KIND:
                raise UserError(f"holds {a.attrs.get('views_kind')} views, not regions", path,
                                "pass masks or boxes from sslkit propose (or UniVIP candidates)")
            maps = list(a.map_names)
            box_fields = [f for f in a.ragged_names if a.field_spec(f)[1] == (4,)]
            names = field_list(fields)
            if names is None:
                if maps:
                    names = tuple(maps)
                elif box_fields:
                    names = ("boxes",) if "boxes" in box_fields else (box_fields[0],)
                else:
                    raise UserError("has neither label maps nor boxes", path,
                                    "make masks with: sslkit propose IMAGES --algo felzenszwalb|grid -o masks.h5")
            unknown = [f for f in names if f not in maps and f not in box_fields]
            if unknown:
                raise UserError(f"no label-map or box field {unknown[0]!r}", path,
                                f"mask_fields: all or some of {', '.join(maps + box_fields)}")
            self.fields = names
            self.row = {name: i for i, name in enumerate(a.file_name)}
            self.skipped = dict(a.skipped)
            self.params = a.params
        #: box fields, read and filtered by the one candidate-box loader, painted per image
        self.boxes = {f: CandidateBoxes.open(path, self.box_rule.filter, field=f, reuse_filtered=True,
                                             accept_views=True) for f in self.fields if f not in maps}
        self._artefact = None
        self._pid = None

    def describe(self) -> dict:
        """The fields used and, for box fields, how they become label maps (docs/swap.md)."""
        out: dict = {"path": self.path, "fields": list(self.fields)}
        if self.boxes:
            out["from_boxes"] = {**self.box_rule.describe(), "fields": {f: c.describe() for f, c in self.boxes.items()}}
        return out

    def usable(self, source: ImageSource) -> ImageSource:
        """``source`` without the images the artefact skipped (unreadable when it was made; said once), after
        checking that it has masks for every other one."""
        skipped = [r.file_name for r in source if r.file_name not in self.row and r.file_name in self.skipped]
        if skipped:
            warn(f"{self.path}: training without the {len(skipped)} image(s) it skipped as unreadable (e.g. "
                 f"{skipped[0]}: {self.skipped[skipped[0]]})")
            source = source.without(skipped)
        self.check_covers(source)
        return source

    def check_covers(self, source: ImageSource) -> None:
        missing = [r.file_name for r in source if r.file_name not in self.row]
        if missing:
            raise UserError(f"has no masks for {len(missing)} of the {len(source)} training images "
                            f"(e.g. {missing[0]})", self.path,
                            "run sslkit propose on the same images (folder or COCO json) as pretrain")

    def _open(self):
        if self._artefact is None or self._pid != os.getpid():
            self._artefact = Artefact(self.path)
            self._pid = os.getpid()
        return self._artefact

    def labels(self, file_name: str, height: int, width: int) -> np.ndarray:
        """(S, height, width) int64 label maps at the image's size, field ids offset by s·65536."""
        row = self.row[file_name]
        if not self.boxes:
            return stacked_labels(self._open(), row, self.fields, height, width)
        out = np.empty((len(self.fields), height, width), np.int64)
        for s, field in enumerate(self.fields):
            if field in self.boxes:
                lab = boxes_to_labels(self.boxes[field].boxes_for_image(file_name, height, width), height, width,
                                      self.box_rule.order)
            else:
                lab = resize_labels(self._open().label_map(field, row), (height, width))
            out[s] = lab.astype(np.int64) + s * FIELD_OFFSET
        return out

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_artefact"], d["_pid"] = None, None
        return d


class DetConViews:
    """(image HWC uint8, labels (S, H, W)) → the two views, their owner grids and sampled ids.

    Returns ``(v1, v2, owners1, owners2, ids1, ids2)`` with views (3, size, size) float, owners
    (S, g, g) int64 on the feature grid, ids (K,) int64; with ``keep_labels`` the views' label maps
    (S, size, size) follow, for soft pooling. Random draws come from torch's global generator
    (the engine seeds it per sample).
    """

    def __init__(self, views: tuple[ViewAug, ViewAug], num_masks: int = 16, keep_labels: bool = False):
        self.views = views
        self.pipelines = [build_view(v) for v in views]
        self.grid = feature_grid(views[0].size)
        self.num_masks = num_masks
        self.keep_labels = keep_labels

    def __call__(self, image: np.ndarray, labels: np.ndarray):
        img = to_image(image)
        mask = tv_tensors.Mask(torch.from_numpy(labels))
        outs, owners, ids, maps = [], [], [], []
        for pipe in self.pipelines:
            view, lab = pipe(img, mask)
            own = cell_owners(lab, (self.grid, self.grid))  # (S, g, g): fields act as the batch dim
            present = torch.unique(own)
            pick = present[torch.randint(len(present), (self.num_masks,))]
            outs.append(view)
            owners.append(own)
            ids.append(pick)
            maps.append(lab)
        sample = (outs[0], outs[1], owners[0], owners[1], ids[0], ids[1])
        return sample + (maps[0], maps[1]) if self.keep_labels else sample


class DetConDataset(ImageDataset):
    """Images of a source with their label maps from a :class:`MaskStore`, as DetCon samples.

    An :class:`~sslkit.views.dataset.ImageDataset` (items keyed by ``(epoch, index)``, unreadable
    images replaced and reported, per-sample seeding) whose samples also carry the image's masks.
    """

    def __init__(self, source: ImageSource, store: MaskStore, views: DetConViews, seed: int):
        super().__init__(store.usable(source), views, seed)
        self.store = store

    def make_sample(self, image: np.ndarray, record):
        return self.transform(image, self.store.labels(record.file_name, image.shape[0], image.shape[1]))
