"""The three proposal algorithms as small picklable configs, and the per-image work they do.

Each algorithm knows its artefact fields (``fields()``), the parameters it
records (``params()``) and how to turn one decoded image into a
:class:`~sslkit.io.artefacts.Record` (``compute()``).  :func:`process_image`
is the function the worker processes run: decode, compute, or report the
file as skipped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from sslkit.io.artefacts import Record
from sslkit.io.coco import annotations_by_image, instance_label_map, load_coco
from sslkit.io.images import ImageDecodeError, load_rgb
from sslkit.proposals.filters import BoxFilter
from sslkit.proposals.masks import (
    FH_DEFAULT_MAX_SIDE,
    FH_DEFAULT_MIN_SIZE,
    FH_DEFAULT_SCALE,
    FH_SIGMA,
    GRID_DEFAULT_N,
    felzenszwalb,
    grid_labels,
    resize_labels,
    scaled_min_size,
)
from sslkit.proposals.selective_search import selective_search, to_original_pixels

ALGOS = ("selective-search", "felzenszwalb", "grid", "coco-gt")

#: longest side selective search runs at; boxes are mapped back to original pixels.
#: Chosen by measurement (docs/proposals.md, "Choosing --max-side"): recall of GT boxes at
#: IoU 0.5 stays within 0.5 points of full resolution while the search runs ~1.5x faster.
SS_DEFAULT_MAX_SIDE = 512

BOX_FIELDS = {"boxes": ("float32", (4,)), "boxes_filtered": ("float32", (4,))}


@dataclass(frozen=True)
class SelectiveSearch:
    mode: str = "fast"
    max_side: int = SS_DEFAULT_MAX_SIDE
    max_boxes: int = 0
    seed: int = 1
    filter: BoxFilter = field(default_factory=BoxFilter)
    name = "selective-search"

    @property
    def decode_side(self) -> int | None:
        return self.max_side or None

    def fields(self) -> tuple[dict, tuple[str, ...]]:
        return dict(BOX_FIELDS), ()

    def params(self) -> dict:
        return {"algo": self.name, "mode": self.mode, "max_side": self.max_side, "max_boxes": self.max_boxes,
                "seed": self.seed, "filter": asdict(self.filter), "box_format": "xyxy",
                "box_frame": "original image pixels (upright, EXIF applied)"}

    def compute(self, rgb: np.ndarray, orig_hw: tuple[int, int], image_id: int) -> tuple[dict, dict]:
        boxes = to_original_pixels(selective_search(rgb, self.mode, self.seed), rgb.shape[:2], orig_hw)
        filtered = boxes[self.filter.apply(boxes)]
        if self.max_boxes:
            boxes = boxes[: self.max_boxes]
        return {"boxes": boxes, "boxes_filtered": filtered}, {}


@dataclass(frozen=True)
class Felzenszwalb:
    scales: tuple[int, ...] = (FH_DEFAULT_SCALE,)
    min_sizes: tuple[int, ...] = (FH_DEFAULT_MIN_SIZE,)
    sigma: float = FH_SIGMA
    max_side: int = FH_DEFAULT_MAX_SIDE
    name = "felzenszwalb"

    def __post_init__(self):
        if len(self.scales) != len(self.min_sizes):
            raise ValueError("scales and min_sizes must have the same length")

    @property
    def decode_side(self) -> int | None:
        return self.max_side or None

    @property
    def map_names(self) -> tuple[str, ...]:
        return tuple(f"fh_s{s:g}_c{c}" for s, c in zip(self.scales, self.min_sizes, strict=True))

    def fields(self) -> tuple[dict, tuple[str, ...]]:
        return {}, self.map_names

    def params(self) -> dict:
        return {"algo": self.name, "scales": list(self.scales), "min_sizes": list(self.min_sizes),
                "sigma": self.sigma, "max_side": self.max_side, "implementation": "cv2.ximgproc GraphSegmentation",
                "min_size_scaling": "area of the stored map / area of the original image",
                "mask_fields": list(self.map_names)}

    def compute(self, rgb: np.ndarray, orig_hw: tuple[int, int], image_id: int) -> tuple[dict, dict]:
        maps = {}
        for name, s, c in zip(self.map_names, self.scales, self.min_sizes, strict=True):
            maps[name] = felzenszwalb(rgb, s, scaled_min_size(c, rgb.shape[:2], orig_hw), self.sigma)
        return {}, maps


@dataclass(frozen=True)
class Grid:
    n: int = GRID_DEFAULT_N
    name = "grid"
    #: grid maps need only the image size, but every image is decoded (small) so unreadable files are skipped
    decode_side = 64

    @property
    def map_names(self) -> tuple[str, ...]:
        return (f"grid_n{self.n}",)

    def fields(self) -> tuple[dict, tuple[str, ...]]:
        return {}, self.map_names

    def params(self) -> dict:
        return {"algo": self.name, "grid_n": self.n, "cell_id": "floor(y*n/H)*n + floor(x*n/W)",
                "mask_fields": list(self.map_names)}

    def compute(self, rgb: np.ndarray, orig_hw: tuple[int, int], image_id: int) -> tuple[dict, dict]:
        return {}, {self.map_names[0]: grid_labels(self.n)}


#: per-process cache of COCO annotations by json path (workers load the json once)
_COCO_CACHE: dict[str, tuple[dict[int, list], dict[int, tuple[int, int]]]] = {}


def _coco_annotations(path: str) -> tuple[dict[int, list], dict[int, tuple[int, int]]]:
    if path not in _COCO_CACHE:
        coco = load_coco(path)
        sizes = {im["id"]: (int(im.get("height", 0) or 0), int(im.get("width", 0) or 0)) for im in coco["images"]}
        _COCO_CACHE[path] = (annotations_by_image(coco), sizes)
    return _COCO_CACHE[path]


@dataclass(frozen=True)
class CocoGT:
    """Ground-truth instance masks of a COCO json as one label map (DetCon §4.4, "what if
    segmentation were solved"; spec detcon.md §2.1): 0 = background, k = the k-th annotation of
    the image in json order (later annotations drawn over earlier ones); crowd regions skipped
    unless ``include_crowd``."""

    coco: str
    include_crowd: bool = False
    name = "coco-gt"
    #: the masks come from the json; the image is decoded (small) only so unreadable files are skipped
    decode_side = 64
    map_names = ("gt_instances",)

    def fields(self) -> tuple[dict, tuple[str, ...]]:
        return {}, self.map_names

    def params(self) -> dict:
        return {"algo": self.name, "coco": self.coco, "include_crowd": self.include_crowd,
                "labels": "0 background; k = k-th annotation of the image (json order)", "background_label": 0,
                "mask_fields": list(self.map_names)}

    def compute(self, rgb: np.ndarray, orig_hw: tuple[int, int], image_id: int) -> tuple[dict, dict]:
        anns_by_image, sizes = _coco_annotations(self.coco)
        anns = [a for a in anns_by_image.get(image_id, []) if self.include_crowd or not a.get("iscrowd", 0)]
        h, w = sizes.get(image_id) or orig_hw
        labels = instance_label_map(anns, h or orig_hw[0], w or orig_hw[1])
        if labels.shape != tuple(orig_hw):
            labels = resize_labels(labels, orig_hw)
        return {}, {self.map_names[0]: labels}


Algorithm = SelectiveSearch | Felzenszwalb | Grid | CocoGT


def process_image(algo: Algorithm, task: tuple[int, str, str]) -> Record | tuple[str, str]:
    """Run ``algo`` on one image ``(image_id, file_name, path)``: a Record, or ``(file_name, reason)`` if unreadable."""

    image_id, file_name, path = task
    try:
        rgb, (h, w) = load_rgb(path, max_side=algo.decode_side)
    except ImageDecodeError as e:
        return file_name, e.reason
    ragged, maps = algo.compute(rgb, (h, w), image_id)
    return Record(image_id, file_name, h, w, ragged, maps)
