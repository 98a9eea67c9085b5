"""DetCon's mask-tracked views (detcon.txt §3.1 "Data augmentation"; spec detcon.md §2.2–2.3).

The image and its segment label map(s) go through the *same* random-resized crop and flip
(``torchvision.transforms.v2`` with ``tv_tensors.Mask``: nearest-neighbour for the map), so pixel
(i, j) of each view knows its segment. Photometric steps touch the image only. Each view's map is
then reduced to the backbone's final feature grid (one owner segment per cell, the official
code's hard pooling) and 16 segment ids are sampled per view among the segments present.

Several label-map fields (e.g. FH at scales 500/1000/1500 on COCO) form one set of masks: ids of
field ``s`` are offset by ``s·65536``, each field's owners are tracked separately, and sampling is
uniform over the union (spec detcon.md §6.2, "union").
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torchvision import tv_tensors

from sslkit.console import warn
from sslkit.errors import UserError
from sslkit.io.images import ImageSource
from sslkit.ops.masks import cell_owners
from sslkit.transforms import ViewAug, build_view, to_image
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
    from sslkit.proposals.masks import resize_labels

    out = np.empty((len(fields), height, width), np.int64)
    for s, field in enumerate(fields):
        out[s] = resize_labels(artefact.label_map(field, row), (height, width)).astype(np.int64) + s * FIELD_OFFSET
    return out


class MaskStore:
    """Label maps of an ``sslkit.proposals`` artefact, looked up by image file name.

    The HDF5 file is opened lazily in each process (DataLoader workers fork), never pickled open.
    """

    def __init__(self, path: str | os.PathLike, fields: str | Sequence[str] = "all"):
        from sslkit.io.artefacts import Artefact

        self.path = str(path)
        with Artefact(path, "sslkit.proposals") as a:
            available = a.map_names
            if not available:
                raise UserError("has no label maps (it holds boxes)", path,
                                "make masks with: sslkit propose IMAGES --algo felzenszwalb|grid -o masks.h5")
            if fields == "all":
                self.fields = tuple(available)
            else:
                names = (fields,) if isinstance(fields, str) else tuple(fields)
                unknown = [f for f in names if f not in available]
                if unknown:
                    raise UserError(f"no label-map field {unknown[0]!r}", path, f"fields: {', '.join(available)}")
                self.fields = names
            self.row = {name: i for i, name in enumerate(a.file_name)}
            self.skipped = dict(a.skipped)
            self.params = a.params
        self._artefact = None
        self._pid = None

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
        from sslkit.io.artefacts import Artefact

        if self._artefact is None or self._pid != os.getpid():
            self._artefact = Artefact(self.path, "sslkit.proposals")
            self._pid = os.getpid()
        return self._artefact

    def labels(self, file_name: str, height: int, width: int) -> np.ndarray:
        """(S, height, width) int64 label maps at the image's size, field ids offset by s·65536."""
        return stacked_labels(self._open(), self.row[file_name], self.fields, height, width)

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
