"""The one candidate-box loader of the object-level methods: boxes per image file name, filtered.

ORL stage 2 (its RoIs), UniVIP's ``sample-views`` stage (its candidate instances) and UniVIP
training (``--views``) all read boxes through :class:`CandidateBoxes`, from

* an ``sslkit.proposals`` file: the raw selective-search ``boxes`` through the filter, or another
  box field (``boxes_filtered``) as stored; with ``reuse_filtered`` the stored ``boxes_filtered``
  stand in for the filter when the file was made with exactly its values;
* an ``sslkit.views`` file of kind ``univip-candidates`` (``accept_views``): its ``boxes`` as stored;
* a COCO instances json (:meth:`CandidateBoxes.from_coco`): the non-crowd boxes of each image, in
  annotation order, through the filter (the "GT" rows of ORL Table 5(d) and UniVIP Table 8(b));
* an ``sslkit.proposals`` file of label maps (Felzenszwalb, grid, COCO instance masks, a user's own):
  the bounding box of every segment of the chosen fields (:class:`SegmentRule`), ordered, then through
  the filter as raw boxes are (docs/swap.md).

Boxes are ``xyxy`` float32 in the pixels of the image the file was made from. HDF5 files are
opened lazily, once per process (DataLoader workers fork or spawn; a loader is never pickled open).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslkit.config import Key
from sslkit.errors import UserError
from sslkit.io.artefacts import Artefact
from sslkit.io.coco import annotations_by_image, coco_boxes_xyxy, load_coco
from sslkit.io.images import ImageSource
from sslkit.ops.regions import segment_boxes
from sslkit.proposals.filters import BoxFilter

CANDIDATES_KIND = "univip-candidates"
_NO_BOXES = np.zeros((0, 4), np.float32)

#: the order of a label map's segment boxes before the (order-dependent) filter
SEGMENT_ORDERS = ("size", "id")
#: label-map files as boxes: the settings of every stage that reads candidate boxes ([I], docs/swap.md)
SEGMENT_KEYS = {
    "segment_fields": Key("all", str, "label-map files: fields whose segments become boxes ('all' or a comma list)"),
    "segment_order": Key("size", str, "label-map files: order of the segment boxes before the filter: size "
                         "(most pixels first) or id (field, then segment id)", choices=SEGMENT_ORDERS),
}


def field_list(text: str | Sequence[str]) -> tuple[str, ...] | None:
    """``"all"`` → None; ``"a,b"`` (or a sequence) → ``("a", "b")``."""
    if isinstance(text, str):
        if text.strip() == "all":
            return None
        text = text.split(",")
    names = tuple(t.strip() for t in text if t.strip())
    if not names:
        raise UserError("empty field list", None, "pass 'all' or comma-separated field names")
    return names


@dataclass(frozen=True)
class SegmentRule:
    """How a label-map file becomes candidate boxes: the bounding box of each segment of ``fields``
    (None: every label-map field, pooled) in the image's pixels (:func:`sslkit.ops.regions.segment_boxes`),
    without the file's background segment (``params.background_label``: COCO instance maps' 0), then
    ordered by ``order``: ``size`` (most image pixels first; ties by field, then id) or ``id`` (by field,
    then segment id). The filter that follows keeps its greedy suppression in this order."""

    fields: tuple[str, ...] | None = None
    order: str = "size"

    @classmethod
    def from_settings(cls, settings: dict) -> SegmentRule:
        if settings["segment_order"] not in SEGMENT_ORDERS:
            raise UserError(f"segment_order={settings['segment_order']!r} is not one of {', '.join(SEGMENT_ORDERS)}")
        return cls(field_list(settings["segment_fields"]), settings["segment_order"])


def background_label(params: dict) -> int | None:
    """The label a label-map file declares as background (not a region), if any: ``params.background_label``;
    files of ``propose --algo coco-gt`` made before it was recorded: 0."""
    value = params.get("background_label")
    if value is None and params.get("algo") == "coco-gt":
        value = 0
    return None if value is None else int(value)


def segments_as_boxes(maps: Sequence[np.ndarray], image_hw: tuple[int, int], order: str = "size",
                      background: int | None = None) -> np.ndarray:
    """(n, 4) float32 boxes of the segments of one image's label maps (one per field), by :class:`SegmentRule`."""
    parts = [segment_boxes(m, image_hw, background) for m in maps]
    if not parts:
        return _NO_BOXES
    boxes = np.concatenate([p[1] for p in parts]).reshape(-1, 4)
    if order == "size":  # stable: ties keep field, then id order
        boxes = boxes[np.argsort(-np.concatenate([p[2] for p in parts]), kind="stable")]
    return boxes.astype(np.float32, copy=False)


class CandidateBoxes:
    """Filtered candidate boxes of the images of one file (see the module docstring)."""

    def __init__(self, path: Path, kind: str, rows: dict[str, int], hw: np.ndarray, *, field: str = "boxes",
                 filt: BoxFilter | None = None, skipped: dict[str, str] | None = None, params: dict | None = None,
                 created: str | None = None, coco: tuple[list[dict], dict] | None = None,
                 maps: tuple[str, ...] = (), segments: SegmentRule | None = None):
        self.path = Path(path)
        self.kind = kind  # "proposals", "views", "gt" or "segments" (label maps as boxes)
        self.rows = rows  # file name → row
        self.hw = hw  # (N, 2) height, width per row (0 where a COCO json does not say)
        self.field = field
        self.filter = filt  # applied to every row read (None: used as stored)
        self.skipped = skipped or {}  # file name → why the file's maker skipped it
        self.params = params or {}
        self.created = created
        self._coco = coco  # (images, annotations by image id) of a COCO json
        self.maps = maps  # kind "segments": the label-map fields whose segments are the boxes
        self.segments = segments or SegmentRule()
        self.background = background_label(self.params) if maps else None
        self._artefact: Artefact | None = None
        self._pid: int | None = None

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, filt: BoxFilter | None, *, field: str = "boxes",
             reuse_filtered: bool = False, accept_views: bool = False,
             segments: SegmentRule | None = None) -> CandidateBoxes:
        """Boxes of an ``sslkit.proposals`` file (or, with ``accept_views``, a univip-candidates file).

        A proposals file of label maps gives the boxes of its segments (``segments``, default
        :class:`SegmentRule`), through ``filt``; so does a file with both when ``segments`` names fields."""
        segments = segments or SegmentRule()
        formats = ("sslkit.views", "sslkit.proposals") if accept_views else "sslkit.proposals"
        with Artefact(path, formats) as a:
            if segments.fields is not None and not a.map_names:
                raise UserError(f"segment_fields={','.join(segments.fields)}, but the file has no label maps", path,
                                "leave segment_fields at 'all' for a file of boxes")
            as_segments = a.format == "sslkit.proposals" and a.map_names and \
                (segments.fields is not None or not a.ragged_names)
            if as_segments:
                maps = tuple(a.map_names) if segments.fields is None else segments.fields
                unknown = [m for m in maps if m not in a.map_names]
                if unknown:
                    raise UserError(f"has no label-map field {unknown[0]!r}", path,
                                    f"segment_fields: all or some of {', '.join(a.map_names)}")
                return cls(a.path, "segments", {name: i for i, name in enumerate(a.file_name)},
                           np.stack([a.height, a.width], 1), field="segments", filt=filt, skipped=dict(a.skipped),
                           params=a.params, created=a.attrs.get("created"), maps=maps, segments=segments)
            if a.format == "sslkit.views":
                kind = a.attrs.get("views_kind")
                if kind != CANDIDATES_KIND:
                    raise UserError(f"holds {kind} views, not UniVIP candidates", path,
                                    "make them with: sslkit sample-views IMAGES --method univip --proposals props.h5")
                if field != "boxes":
                    raise UserError(f"candidate_field={field!r}: a candidates file has only 'boxes'", path)
            elif not a.ragged_names:
                raise UserError("has neither boxes nor label maps", path,
                                "make regions with: sslkit propose IMAGES -o props.h5 (see docs/swap.md)")
            if field not in a.ragged_names:
                raise UserError(f"has no box field {field!r}", path, f"candidate_field one of: {', '.join(a.ragged_names)}")
            raw = a.format == "sslkit.proposals" and field == "boxes"
            if raw and reuse_filtered and filt is not None and "boxes_filtered" in a.ragged_names and \
                    filt.same_as(a.params.get("filter")):
                field, raw = "boxes_filtered", False
            return cls(a.path, "views" if a.format == "sslkit.views" else "proposals",
                       {name: i for i, name in enumerate(a.file_name)}, np.stack([a.height, a.width], 1),
                       field=field, filt=filt if raw else None, skipped=dict(a.skipped), params=a.params,
                       created=a.attrs.get("created"))

    @classmethod
    def from_coco(cls, path: str | os.PathLike, filt: BoxFilter) -> CandidateBoxes:
        """The ground-truth boxes of a COCO instances json, through ``filt``."""
        coco = load_coco(path)
        images = coco["images"]
        hw = np.array([(int(im.get("height") or 0), int(im.get("width") or 0)) for im in images],
                      np.int64).reshape(-1, 2)
        return cls(Path(path), "gt", {im["file_name"]: i for i, im in enumerate(images)}, hw, filt=filt,
                   coco=(images, annotations_by_image(coco)))

    # -- what it covers --------------------------------------------------------------------------
    def missing(self, source: ImageSource) -> list[str]:
        """File names of ``source`` this file has no row for (and did not list as skipped)."""
        return [r.file_name for r in source if r.file_name not in self.rows and r.file_name not in self.skipped]

    def check_covers(self, source: ImageSource, training: bool = False) -> None:
        """A UserError naming how many images of ``source`` the file lacks, if any."""
        missing = self.missing(source)
        if not missing:
            return
        example = f"(e.g. {missing[0]})"
        if training:
            raise UserError(f"has no boxes for {len(missing)} of the {len(source)} training images {example}",
                            self.path, "make it from the same images (folder or COCO json) as pretrain")
        if self.kind == "gt":
            raise UserError(f"has no entry for {len(missing)} of the {len(source)} images {example}", self.path,
                            "pass the COCO json of the same images")
        raise UserError(f"has no proposals for {len(missing)} of the {len(source)} images {example}", self.path,
                        "run sslkit propose on the same images (folder or COCO json)")

    def size(self, file_name: str) -> tuple[int, int] | None:
        """(height, width) of the image the boxes were made on, None when unknown."""
        i = self.rows.get(file_name)
        if i is None or not (self.hw[i][0] and self.hw[i][1]):
            return None
        return int(self.hw[i][0]), int(self.hw[i][1])

    # -- boxes -----------------------------------------------------------------------------------
    def _open(self) -> Artefact:
        if self._artefact is None or self._pid != os.getpid():
            self._artefact = Artefact(self.path)
            self._pid = os.getpid()
        return self._artefact

    def _filtered(self, boxes: np.ndarray) -> np.ndarray:
        b = np.asarray(boxes, np.float32).reshape(-1, 4)
        return b if self.filter is None else b[self.filter.apply(b)]

    def _segment_boxes(self, a: Artefact, i: int) -> np.ndarray:
        return segments_as_boxes([a.label_map(m, i) for m in self.maps], (int(self.hw[i][0]), int(self.hw[i][1])),
                                 self.segments.order, self.background)

    def _raw(self, i: int) -> np.ndarray:
        if self._coco is not None:
            images, anns = self._coco
            return coco_boxes_xyxy(anns.get(images[i]["id"], []))
        if self.maps:
            return self._segment_boxes(self._open(), i)
        return self._open().ragged(self.field, i)

    def at(self, i: int) -> np.ndarray:
        """(n, 4) float32 boxes of row ``i``."""
        return self._filtered(self._raw(i))

    def get(self, file_name: str) -> np.ndarray:
        """(n, 4) float32 boxes of an image; none for an image the file does not have."""
        i = self.rows.get(file_name)
        return _NO_BOXES if i is None else self.at(i)

    def iter_rows(self) -> Iterator[tuple[int, str, np.ndarray]]:
        """``(row, file name, boxes)`` of every row in file order (HDF5 read in blocks: bounded memory)."""
        if self._coco is not None:
            for i, im in enumerate(self._coco[0]):
                yield i, im["file_name"], self.at(i)
            return
        a = self._open()
        if self.maps:
            for i in range(len(a)):
                yield i, a.file_name[i], self._filtered(self._segment_boxes(a, i))
            return
        for i, raw in a.iter_ragged(self.field):
            yield i, a.file_name[i], self._filtered(raw)

    def load(self, names: set[str]) -> dict[str, np.ndarray]:
        """The boxes of every image in ``names`` the file has, read in one pass."""
        return {fn: b for _, fn, b in self.iter_rows() if fn in names}

    def boxes_for_image(self, file_name: str, height: int, width: int) -> np.ndarray:
        """The boxes in the pixels of an image of ``height × width``: scaled if the image is now of
        another size than the file recorded, clipped to it, degenerate boxes (a side < 1 px) dropped."""
        i = self.rows.get(file_name)
        if i is None:
            return _NO_BOXES
        b = self.at(i)
        h0, w0 = self.hw[i]
        if (h0, w0) != (height, width):
            b = b * np.array([width / w0, height / h0, width / w0, height / h0], np.float32)
        b = np.clip(b, 0, np.array([width, height, width, height], np.float32))
        return b[((b[:, 2] - b[:, 0]) >= 1) & ((b[:, 3] - b[:, 1]) >= 1)]

    def describe(self) -> dict:
        """Where the boxes come from and how they were made, for an output's ``params`` (docs/swap.md)."""
        if self.kind == "segments":
            return {"from": "label maps", "fields": list(self.maps), "algo": self.params.get("algo"),
                    "rule": "bounding box of each segment of the label map resized (nearest) to the image; "
                            "the background_label segment, if any, left out",
                    "background_label": self.background, "segment_order": self.segments.order,
                    "filter": None if self.filter is None else _filter_dict(self.filter)}
        return {"from": {"gt": "COCO boxes", "views": "candidate boxes"}.get(self.kind, "boxes"),
                "field": self.field, "algo": self.params.get("algo"),
                "filter": None if self.filter is None else _filter_dict(self.filter)}

    def close(self) -> None:
        if self._artefact is not None and self._pid == os.getpid():
            self._artefact.close()
        self._artefact = None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_artefact"], d["_pid"] = None, None
        return d


def _filter_dict(f: BoxFilter) -> dict:
    return {"min_size": f.min_size, "max_ratio": f.max_ratio, "max_iou": f.max_iou, "top_n": f.top_n,
            "fallback": f.fallback}
