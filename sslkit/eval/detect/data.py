"""COCO instances → torchvision detection inputs: images, targets, a resumable batch stream.

**Categories.** The json's categories sorted by id get contiguous labels ``1..K`` (0 is
torchvision's background), as detectron2 maps them to ``0..K-1``; :meth:`DetectionSplit.categories`
records the mapping (``{"id", "name", "label"}``) and predictions are mapped back to the ids.

**Targets** (detectron2's ``DatasetMapper`` rules): crowd annotations are left out; a box is
``[x, y, w, h]`` → ``xyxy`` clipped to the image; instances whose clipped box or mask is empty
are dropped; masks (polygons, RLE or compressed RLE; degenerate polygon parts with fewer than
3 points ignored, a box mask when there is no segmentation) are ``(N, H, W)`` uint8 at the
image's size.  Training uses only images with at least one instance
(``DATALOADER.FILTER_EMPTY_ANNOTATIONS``); evaluation uses every image.

**Batches.** Iteration ``k`` of a run takes the ``k``-th batch of an endless stream: epoch ``e``
visits the images in ``randperm(N)`` seeded by ``(seed, e)``; images are grouped by orientation
(landscape / portrait, detectron2's ``ASPECT_RATIO_GROUPING``) and a global batch is emitted
whenever one group has ``B`` images; rank ``r`` of ``W`` takes the ``r``-th ``B/W`` of it.
The horizontal flip of each image is drawn from ``(seed, k, index)``.  So the data of any
iteration is a function of (seed, k) only, and a resumed run sees the same batches.

**Unreadable images** are replaced by the next readable image (training) or left out of the
evaluation (their annotations too); either way they are listed in ``RUN_DIR/skipped_images.tsv``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from sslkit.errors import UserError
from sslkit.io.coco import ann_to_mask, load_coco
from sslkit.io.images import ImageDecodeError, ImageRecord, ImageSource, load_rgb, read_image_size
from sslkit.views.dataset import sample_seed

#: give up when this many images in a row cannot be decoded (something is wrong with the source)
MAX_CONSECUTIVE_UNREADABLE = 64


def valid_polygons(seg: list) -> list:
    """Polygon parts with at least 3 points (detectron2 drops the rest)."""
    return [p for p in seg if len(p) >= 6 and len(p) % 2 == 0]


def decode_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """(H, W) uint8 mask of an annotation; degenerate polygon parts are ignored (box mask if none is left)."""

    seg = ann.get("segmentation")
    if isinstance(seg, list):
        ann = {**ann, "segmentation": valid_polygons(seg)}
    return ann_to_mask(ann, height, width)


@dataclass
class DetectionSplit:
    """A COCO instances json, checked, with its images and the contiguous label mapping."""

    json_path: Path
    coco: dict
    records: list[ImageRecord]
    root: Path
    category_ids: list[int]
    category_names: list[str]
    anns: dict[int, list[dict]]  # image id → non-crowd annotations

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def label_of(self, category_id: int) -> int:
        return self._label[category_id]

    def __post_init__(self):
        self._label = {cid: i + 1 for i, cid in enumerate(self.category_ids)}

    def categories(self) -> list[dict]:
        return [{"id": cid, "name": name, "label": i + 1}
                for i, (cid, name) in enumerate(zip(self.category_ids, self.category_names, strict=True))]

    def trainable(self) -> list[int]:
        """Indices of the images with at least one usable instance (by box; masks are checked when loaded)."""
        out = []
        for i, r in enumerate(self.records):
            h, w = r.height or 1 << 30, r.width or 1 << 30
            for a in self.anns.get(r.image_id, []):
                x, y, bw, bh = a["bbox"]
                if min(x + bw, w) - max(x, 0) > 0 and min(y + bh, h) - max(y, 0) > 0:
                    out.append(i)
                    break
        return out

    def target(self, image_id: int, height: int, width: int) -> dict[str, torch.Tensor]:
        """torchvision target of one image: ``boxes`` (N, 4) float32 xyxy, ``labels`` (N,) int64, ``masks`` (N, H, W) uint8."""
        boxes, labels, masks = [], [], []
        for a in self.anns.get(image_id, []):
            x, y, w, h = (float(v) for v in a["bbox"])
            box = [max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)]
            if box[2] - box[0] <= 1e-5 or box[3] - box[1] <= 1e-5:
                continue
            m = decode_mask(a, height, width)
            if not m.any():
                continue
            boxes.append(box)
            labels.append(self._label[a["category_id"]])
            masks.append(m)
        return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, height, width), torch.uint8)}

    def aspect_groups(self) -> np.ndarray:
        """0 for landscape (w ≥ h), 1 for portrait, per image (sizes from the json, else the file header)."""

        out = np.zeros(len(self.records), np.int64)
        for i, r in enumerate(self.records):
            h, w = r.height, r.width
            if not (h and w):
                try:
                    h, w = read_image_size(r.path)
                except ImageDecodeError:
                    h, w = 1, 1
            out[i] = int(h > w)
        return out

    def describe(self) -> dict:
        return {"json": str(self.json_path), "image_root": str(self.root), "num_images": len(self.records),
                "num_annotations": int(sum(len(v) for v in self.anns.values()))}


def load_detection_split(json_path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                         reference: DetectionSplit | None = None) -> DetectionSplit:
    """Read a COCO instances json for detection; ``reference`` (the training split) fixes the categories."""

    json_path = Path(json_path)
    coco = load_coco(json_path)
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    if not cats:
        raise UserError("has no 'categories'", json_path, "pass a COCO instances json with categories")
    cat_ids = [int(c["id"]) for c in cats]
    if reference is not None and cat_ids != reference.category_ids:
        raise UserError("its categories differ from the training json's", json_path,
                        "train and val need the same category ids")
    known = set(cat_ids)
    anns: dict[int, list[dict]] = {}
    for k, a in enumerate(coco["annotations"]):
        if a.get("category_id") not in known:
            raise UserError(f"annotations[{k}] has category {a.get('category_id')}, not in 'categories'", json_path)
        if not a.get("iscrowd", 0):
            anns.setdefault(a["image_id"], []).append(a)
    src = ImageSource.from_coco(json_path, image_root)
    return DetectionSplit(json_path, coco, list(src.records), src.root, cat_ids,
                          [str(c.get("name", c["id"])) for c in cats], anns)


def _chw(arr: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 → (3, H, W) tensor (copied when the array is read-only)."""
    arr = np.ascontiguousarray(arr)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy()).permute(2, 0, 1)


def _decode(record: ImageRecord) -> np.ndarray:
    """The image, checked against the size the json gives (annotations are in that frame)."""
    arr, _ = load_rgb(record.path)
    if record.height and record.width and arr.shape[:2] != (record.height, record.width):
        raise ImageDecodeError(record.path, f"decoded size {arr.shape[0]}x{arr.shape[1]} differs from the json's "
                                            f"{record.height}x{record.width}")
    return arr


class TrainImages(Dataset):
    """Item ``(iteration, index)`` → ``(image uint8 (3, H, W), target, image_id, skipped)``, flipped at random."""

    def __init__(self, split: DetectionSplit, indices: list[int], seed: int, flip: bool = True):
        self.split = split
        self.indices = indices  # usable images (positions in split.records)
        self.seed = seed
        self.flip = flip

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: tuple[int, int]):
        it, pos = key
        n = len(self.indices)
        skipped: list[tuple[str, str]] = []
        for attempt in range(min(n, MAX_CONSECUTIVE_UNREADABLE)):
            record = self.split.records[self.indices[(pos + attempt) % n]]
            try:
                arr = _decode(record)
            except ImageDecodeError as e:
                skipped.append((record.file_name, e.reason))
                continue
            target = self.split.target(record.image_id, arr.shape[0], arr.shape[1])
            if len(target["boxes"]):
                break
            skipped.append((record.file_name, "no usable instance (every box or mask is empty)"))
        else:
            raise RuntimeError(f"{len(skipped)} training images in a row are unusable (from "
                               f"{self.split.records[self.indices[pos]].file_name}); check the images and the json")
        image = _chw(arr)
        if self.flip and np.random.default_rng(sample_seed(self.seed, it, pos)).random() < 0.5:
            image = image.flip(-1)
            w = float(arr.shape[1])
            b = target["boxes"]
            target["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
            target["masks"] = target["masks"].flip(-1)
        return image, target, record.image_id, skipped


def collate(items):
    """``(images, targets, image_ids, skipped)`` lists for a batch."""
    images, targets, ids, skipped = [], [], [], []
    for image, target, image_id, sk in items:
        images.append(image)
        targets.append(target)
        ids.append(image_id)
        skipped.extend(sk)
    return images, targets, ids, skipped


def batch_stream(num: int, batch: int, seed: int, groups: np.ndarray | None, salt: int = 0) -> Iterator[list[int]]:
    """Endless global batches (positions in ``0..num-1``), aspect-grouped; a function of ``seed`` alone."""

    buckets: dict[int, list[int]] = {}
    epoch = 0
    while True:
        g = torch.Generator().manual_seed(sample_seed(seed, salt, epoch))
        for i in torch.randperm(num, generator=g).tolist():
            key = int(groups[i]) if groups is not None else 0
            b = buckets.setdefault(key, [])
            b.append(i)
            if len(b) == batch:
                yield b
                buckets[key] = []
        epoch += 1


class RankBatches(Sampler):
    """This rank's keys ``(iteration, position)`` for iterations ``start .. stop-1`` of the stream."""

    def __init__(self, num: int, global_batch: int, rank: int, world_size: int, seed: int, groups: np.ndarray | None,
                 start: int, stop: int, salt: int = 0):
        if global_batch % world_size:
            raise UserError(f"the batch of {global_batch} images does not split evenly over {world_size} processes",
                            None, "pass a --batch-size divisible by the number of processes")
        self.args = (num, global_batch, seed, groups, salt)
        self.local = global_batch // world_size
        self.rank = rank
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        lo = self.rank * self.local
        for it, batch in enumerate(batch_stream(*self.args)):
            if it >= self.stop:
                return
            if it >= self.start:
                yield [(it, p) for p in batch[lo:lo + self.local]]


class EvalImages(Dataset):
    """Item ``i`` → ``(i, image uint8 (3, H, W) or None, error or None)`` for records ``indices``."""

    def __init__(self, split: DetectionSplit, indices: list[int]):
        self.split = split
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        record = self.split.records[self.indices[i]]
        try:
            return self.indices[i], _chw(_decode(record)), None
        except ImageDecodeError as e:
            return self.indices[i], None, e.reason


def eval_collate(items):
    return items
