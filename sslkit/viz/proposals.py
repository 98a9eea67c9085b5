"""Renderer for ``sslkit.proposals`` files: boxes (raw or filtered) or coloured label maps.

``--field`` picks what to draw: ``boxes_filtered`` (default when present,
all of them), ``boxes`` (the first ``--top``, default 50, in selective-search
order — the raw list has thousands), or a label-map field such as
``fh_s1000_c1000`` / ``grid_n5``, resized to the image with the readers'
nearest-neighbour rule.  Box ``k`` and segment ``k`` get colour ``k``.
"""

from __future__ import annotations

import numpy as np

from sslkit.errors import UserError
from sslkit.io.artefacts import Artefact
from sslkit.proposals.masks import resize_labels
from sslkit.viz.base import Rendering, ShowOptions
from sslkit.viz.draw import draw_boxes, overlay_labels

#: raw selective-search lists are long; show the head of the ranking unless --top says otherwise
DEFAULT_TOP_RAW = 50


def default_field(art: Artefact) -> str:
    if "boxes_filtered" in art.ragged_names:
        return "boxes_filtered"
    names = art.map_names + art.ragged_names
    if not names:
        raise UserError("has no boxes or label maps to draw", art.path)
    return names[0]


def render(art: Artefact, row: int, image: np.ndarray, opts: ShowOptions) -> Rendering:
    field = opts.field or default_field(art)
    name = art.file_name[row]
    if field in art.ragged_names:
        boxes = art.ragged(field, row)
        top = opts.top or (DEFAULT_TOP_RAW if field == "boxes" else len(boxes))
        shown = boxes[:top]
        return Rendering(draw_boxes(image, shown), f"{name}: {len(shown)} of {len(boxes)} {field}")
    if field in art.map_names:
        labels = resize_labels(art.label_map(field, row), image.shape[:2])
        return Rendering(overlay_labels(image, labels, opts.alpha),
                         f"{name}: {len(np.unique(labels))} segments ({field})")
    raise UserError(f"has no field {field!r}", art.path,
                    f"--field one of: {', '.join(art.ragged_names + art.map_names)}")
