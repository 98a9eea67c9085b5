"""``sslkit show FILE --for METHOD``: the regions a method reads from a region file, converted as the method
converts them (docs/swap.md), over the image.

* ``detcon-s`` / ``detcon-b``: the label maps DetCon pools over, one panel per field of ``mask_fields``
  (a boxes file: its boxes filtered and painted, ``box_order``), coloured segments with white edges;
* ``orl``: the candidate boxes ORL stage 2 starts from (``sample-views -m orl``: the filter with ORL's
  ``boxes[0]`` fallback; a label-map file: its segments' boxes first);
* ``univip``: UniVIP's candidates as ``pretrain -m univip --views FILE`` reads them (no fallback).

The conversion settings are the consumer's own (defaults of the method or view stage), changed with
``--set KEY=VALUE`` exactly as for the command that trains; the caption says how the regions were made.
The same settings apply to ``--views detcon-s|detcon-b|univip`` (:func:`consumer`).
"""

from __future__ import annotations

import numpy as np

from sslkit.config import resolve
from sslkit.engine.config import method_keys
from sslkit.errors import UserError
from sslkit.methods import get_method
from sslkit.ops.regions import BOX_ORDERS
from sslkit.proposals.filters import FILTER_KEYS, BoxFilter
from sslkit.views.candidates import SEGMENT_KEYS, CandidateBoxes, SegmentRule
from sslkit.views.detcon import FIELD_OFFSET
from sslkit.views.orl_stage2 import OrlPairsStage
from sslkit.viz.base import Rendering, ShowOptions
from sslkit.viz.draw import draw_boxes, overlay_labels

#: ``--for`` methods and the settings of theirs that decide how a region file is read
CONVERSION_KEYS = {
    "detcon-s": ("mask_fields", "box_order", "filter_min_size", "filter_max_ratio", "filter_max_iou", "filter_top_n"),
    "detcon-b": ("mask_fields", "box_order", "filter_min_size", "filter_max_ratio", "filter_max_iou", "filter_top_n"),
    "univip": ("candidate_field", "filter_min_size", "filter_max_ratio", "filter_max_iou", "filter_top_n",
               "segment_fields", "segment_order"),
    "orl": (*FILTER_KEYS, *SEGMENT_KEYS),
}


def _spec(method: str) -> dict:
    if method not in CONVERSION_KEYS:
        raise UserError(f"--for {method!r} is not one of {', '.join(CONVERSION_KEYS)}", None,
                        "the methods that read region files (MCL and RegionCL make their own regions)")
    if method == "orl":  # its boxes are read by stage 2 (sample-views -m orl), with that stage's settings

        return {k: OrlPairsStage.SETTINGS[k] for k in CONVERSION_KEYS[method]}
    keys = method_keys(get_method(method))
    return {k: keys[k] for k in CONVERSION_KEYS[method]}


def consumer(method: str, path, sets: dict | None = None):
    """``(store, settings)``: the region file ``path`` read as ``method`` reads it, under its defaults overlaid
    by ``sets``. The store is a :class:`~sslkit.views.detcon.MaskStore` for DetCon, else a
    :class:`~sslkit.views.candidates.CandidateBoxes`."""
    settings = resolve(_spec(method), [("--set", sets or {})], owner=f"show --for {method}",
                       listing=f"sslkit pretrain -m {method} --print-config")
    if method.startswith("detcon"):
        if settings["box_order"] not in BOX_ORDERS:
            raise UserError(f"box_order must be one of {', '.join(BOX_ORDERS)} (got {settings['box_order']!r})")
        return get_method(method).mask_store({**settings, "masks": str(path)}), settings
    if method == "univip":
        return get_method("univip").candidates({**settings, "views": str(path)}), settings
    filt = BoxFilter.from_settings(settings, fallback=True)
    return CandidateBoxes.open(path, filt, reuse_filtered=True, segments=SegmentRule.from_settings(settings)), settings


def _how(store) -> str:
    """A few words on where the boxes came from."""
    d = store.describe()
    if d["from"] == "label maps":
        return f"boxes of the segments of {', '.join(d['fields'])} ({d['segment_order']} order)"
    if d["filter"]:
        return f"{d['field']} (filtered)"
    if d["field"] == "boxes_filtered":
        return "boxes_filtered (made by propose with the same filter)"
    return f"{d['field']} (as stored)"


def render(art, row: int, image: np.ndarray, opts: ShowOptions) -> Rendering:
    method = opts.regions_for
    store, settings = consumer(method, art.path, opts.sets)
    name = art.file_name[row]
    h, w = image.shape[:2]
    if method.startswith("detcon"):
        if name not in store.row:
            raise UserError(f"has no regions for {name}", art.path)
        labels = store.labels(name, h, w)
        panels, parts = [], []
        for s, field in enumerate(store.fields):
            lab = labels[s] - s * FIELD_OFFSET
            panels.append(overlay_labels(image, lab, opts.alpha))
            how = f"boxes painted {settings['box_order']}" if field in store.boxes else "label map"
            parts.append(f"{field}: {len(np.unique(lab))} segments ({how})")
        gap = np.zeros((h, 6, 3), np.uint8)
        picture = panels[0] if len(panels) == 1 else np.concatenate(
            [p for panel in panels for p in (panel, gap)][:-1], axis=1)
        return Rendering(picture, f"{name} as {method} masks: " + "; ".join(parts))
    boxes = store.boxes_for_image(name, h, w)
    if opts.top:
        boxes = boxes[:opts.top]
    return Rendering(draw_boxes(image, boxes), f"{name} as {method} candidates: {len(boxes)} {_how(store)}")
