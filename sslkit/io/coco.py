"""COCO instances json: loading with validation, per-image annotations, mask decoding.

Boxes in COCO are ``[x, y, w, h]`` in pixels; sslkit uses ``xyxy`` float32
internally (see docs/artefacts.md), so :func:`coco_boxes_xyxy` converts.
Masks may be polygons, uncompressed RLE (``counts`` a list) or compressed
RLE (``counts`` a string); :func:`ann_to_mask` decodes all three.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from sslkit.errors import UserError


def load_coco(path: str | os.PathLike) -> dict:
    """Read and check a COCO instances json. One clear line on anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise UserError("no such file", path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})", path) from e
    except UnicodeDecodeError as e:
        raise UserError("not a UTF-8 text file", path, "pass a COCO instances json") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError("not a COCO json (no 'images' list)", path, "pass a COCO instances json")
    seen = set()
    for k, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise UserError(f"images[{k}] lacks 'id' or 'file_name'", path)
        if im["id"] in seen:
            raise UserError(f"duplicate image id {im['id']} (images[{k}])", path)
        seen.add(im["id"])
    anns = data.setdefault("annotations", [])
    if not isinstance(anns, list):
        raise UserError("'annotations' is not a list", path)
    for k, a in enumerate(anns):
        if not isinstance(a, dict) or "image_id" not in a or "bbox" not in a:
            raise UserError(f"annotations[{k}] lacks 'image_id' or 'bbox'", path)
        if a["image_id"] not in seen:
            raise UserError(f"annotations[{k}] refers to unknown image id {a['image_id']}", path)
        if len(a["bbox"]) != 4:
            raise UserError(f"annotations[{k}] bbox has {len(a['bbox'])} numbers, expected 4 (x, y, w, h)", path)
    data.setdefault("categories", [])
    return data


def annotations_by_image(coco: dict) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = defaultdict(list)
    for a in coco.get("annotations", []):
        out[a["image_id"]].append(a)
    return out


def coco_boxes_xyxy(anns: list[dict], include_crowd: bool = False) -> np.ndarray:
    rows = [a["bbox"] for a in anns if include_crowd or not a.get("iscrowd", 0)]
    if not rows:
        return np.zeros((0, 4), np.float32)
    b = np.asarray(rows, dtype=np.float32)
    b[:, 2:] += b[:, :2]
    return b


def ann_to_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """Binary (H, W) uint8 mask of one annotation (polygon, RLE or compressed RLE)."""
    from pycocotools import mask as mask_utils

    seg = ann.get("segmentation")
    if seg is None or (isinstance(seg, list) and len(seg) == 0):
        # no mask: fall back to the box
        m = np.zeros((height, width), np.uint8)
        x, y, w, h = ann["bbox"]
        m[int(y):int(np.ceil(y + h)), int(x):int(np.ceil(x + w))] = 1
        return m
    if isinstance(seg, list):
        rles = mask_utils.frPyObjects(seg, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = dict(seg)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(np.uint8)


def instance_label_map(anns: list[dict], height: int, width: int) -> np.ndarray:
    """uint16 label map: 0 background, k = k-th annotation (later ones drawn over earlier)."""
    out = np.zeros((height, width), np.uint16)
    for k, a in enumerate(anns, start=1):
        out[ann_to_mask(a, height, width).astype(bool)] = k
    return out
