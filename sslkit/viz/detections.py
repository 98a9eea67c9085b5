"""Renderer for detection results: a COCO results json (``sslkit detect --save-predictions``'s
``predictions.json``, or detectron2's ``inference/coco_instances_results.json``) over its images.

The results list holds image ids, category ids, ``[x, y, w, h]`` boxes, scores and (optionally)
RLE masks; the image table and category names come from the val COCO json — recorded in the
``predictions.meta.json`` sidecar that ``sslkit detect`` writes, or given with ``--images VAL.json``.

``--field`` picks what to draw: ``predictions`` (default) or ``gt`` (the json's annotations, to
compare).  Predictions with score ≥ 0.5 are drawn (detectron2's demo threshold); ``--top K``
draws the K highest-scoring ones instead.  Each instance: its mask filled at ``--alpha``, its box,
and ``name score``; the colour is the category's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sslkit.errors import FormatError, UserError
from sslkit.eval.detect import PREDICTIONS_FORMAT, PREDICTIONS_VERSION, predictions_meta_path
from sslkit.eval.detect.data import decode_mask
from sslkit.io.coco import annotations_by_image, load_coco
from sslkit.io.images import ImageSource, read_image_size
from sslkit.models.convert import file_sha256
from sslkit.viz.base import Rendering, ShowOptions
from sslkit.viz.draw import color, line_width

SCORE_THRESHOLD = 0.5
FIELDS = ("predictions", "gt")


class DetectionsFile:
    """A COCO results json with the interface ``sslkit show`` uses for artefacts (format, params,
    image table, ``index_of``), plus the detections and ground truth of each image."""

    def __init__(self, path: str | Path, images: str | Path | None = None, image_root: str | Path | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError("no such file", self.path)
        try:
            dets = json.loads(self.path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FormatError(f"not a JSON file ({e})", self.path) from e
        if not isinstance(dets, list) or any(not isinstance(d, dict) or not {"image_id", "category_id", "bbox", "score"}
                                             <= d.keys() for d in dets):
            raise FormatError("not a COCO results list (entries with image_id, category_id, bbox, score)",
                              self.path, "sslkit show draws sslkit artefacts (.h5) and detection results (.json)")
        meta = None
        side = predictions_meta_path(self.path)
        if side.is_file():
            m = json.loads(side.read_text(encoding="utf-8"))
            if m.get("format") == PREDICTIONS_FORMAT and m.get("file_sha256") == file_sha256(self.path):
                if int(m.get("format_version", 0)) > PREDICTIONS_VERSION:
                    raise FormatError(f"{side.name} is a newer format than this sslkit reads", side, "upgrade sslkit")
                meta = m
        json_path = None
        if images is not None and Path(images).suffix.lower() == ".json":
            json_path = Path(images)
        elif meta is not None:
            json_path = Path(meta["coco"])
        if json_path is None:
            raise UserError("which images? the results name image ids only", self.path,
                            "pass --images VAL.json (the COCO json that was evaluated)")
        coco = load_coco(json_path)
        self.format = PREDICTIONS_FORMAT
        self.format_version = PREDICTIONS_VERSION
        if images is not None and Path(images).is_dir():
            root = Path(images)
        elif meta is not None and json_path == Path(meta["coco"]) and Path(meta["image_root"]).is_dir() \
                and image_root is None:
            root = Path(meta["image_root"])
        else:
            root = ImageSource.from_coco(json_path, image_root).root
        self.params = {"source": {"root": str(root), "coco": str(json_path)}}
        ims = coco["images"]
        self.image_id = np.array([int(im["id"]) for im in ims], np.int64)
        self.file_name = [str(im["file_name"]) for im in ims]
        hw = []
        for im in ims:
            h, w = int(im.get("height", 0) or 0), int(im.get("width", 0) or 0)
            hw.append((h, w) if h and w else read_image_size(root / im["file_name"]))
        self.height = np.array([h for h, _ in hw], np.int64)
        self.width = np.array([w for _, w in hw], np.int64)
        self.category_names = {int(c["id"]): str(c.get("name", c["id"])) for c in coco["categories"]}
        self._cat_index = {cid: k for k, cid in enumerate(sorted(self.category_names))}
        self._by_id = {int(v): i for i, v in enumerate(self.image_id)}
        self._by_name = {n: i for i, n in enumerate(self.file_name)}
        unknown = sorted({int(d["image_id"]) for d in dets} - self._by_id.keys())
        if unknown:
            raise UserError(f"{len(unknown)} result image ids are not in {json_path.name} (e.g. {unknown[0]})",
                            self.path, "pass --images with the COCO json these results were made on")
        self.detections: dict[int, list[dict]] = {}
        for d in dets:
            self.detections.setdefault(int(d["image_id"]), []).append(d)
        self.gt = annotations_by_image(coco)

    def __len__(self) -> int:
        return len(self.image_id)

    def index_of(self, key) -> int:
        if isinstance(key, str) and key in self._by_name:
            return self._by_name[key]
        try:
            return self._by_id[int(key)]
        except (KeyError, ValueError):
            raise UserError(f"no image {key!r} in {Path(self.params['source']['coco']).name}", self.path,
                            "pass an image id or a file name of the evaluated COCO json") from None

    def category_color(self, category_id: int) -> tuple[int, int, int]:
        return color(self._cat_index.get(int(category_id), int(category_id)))

    def close(self) -> None:
        pass

    def __enter__(self) -> DetectionsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _mask(seg, height: int, width: int) -> np.ndarray | None:
    if not seg:
        return None
    return decode_mask({"segmentation": seg, "bbox": [0, 0, 0, 0]}, height, width).astype(bool)


def draw_instances(image: np.ndarray, instances: list[dict], colors: list[tuple[int, int, int]],
                   labels: list[str], alpha: float) -> np.ndarray:
    """Masks (filled at ``alpha``), boxes and text labels of COCO-style instances over ``image``."""
    import cv2

    out = image.astype(np.float32)
    h, w = image.shape[:2]
    for inst, c in zip(instances, colors, strict=True):
        m = _mask(inst.get("segmentation"), h, w)
        if m is not None:
            out[m] = out[m] * (1 - alpha) + np.array(c, np.float32) * alpha
    out = out.round().astype(np.uint8)
    t = line_width((h, w))
    for inst, c, text in zip(instances, colors, labels, strict=True):
        x, y, bw, bh = (float(v) for v in inst["bbox"])
        p1 = (int(round(x)), int(round(y)))
        p2 = (max(p1[0], int(round(x + bw)) - 1), max(p1[1], int(round(y + bh)) - 1))
        cv2.rectangle(out, p1, p2, c, t, lineType=cv2.LINE_AA)
        scale = max(0.3, min(0.6, max(h, w) / 1000))
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = max(th + base, p1[1])
        cv2.rectangle(out, (p1[0], ty - th - base), (p1[0] + tw, ty), c, -1)
        cv2.putText(out, text, (p1[0], ty - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def render(art: DetectionsFile, row: int, image: np.ndarray, opts: ShowOptions) -> Rendering:
    field = opts.field or "predictions"
    if field not in FIELDS:
        raise UserError(f"detection results have no field {field!r}", art.path, f"--field one of: {', '.join(FIELDS)}")
    image_id = int(art.image_id[row])
    name = art.file_name[row]
    if field == "gt":
        anns = art.gt.get(image_id, [])
        return Rendering(draw_instances(image, anns, [art.category_color(a["category_id"]) for a in anns],
                                        [art.category_names.get(a["category_id"], str(a["category_id"])) for a in anns],
                                        opts.alpha), f"{name}: {len(anns)} ground-truth objects")
    dets = sorted(art.detections.get(image_id, []), key=lambda d: -float(d["score"]))
    shown = dets[:opts.top] if opts.top else [d for d in dets if float(d["score"]) >= SCORE_THRESHOLD]
    labels = [f"{art.category_names.get(d['category_id'], d['category_id'])} {float(d['score']):.2f}" for d in shown]
    what = f"top {len(shown)}" if opts.top else f"{len(shown)} with score >= {SCORE_THRESHOLD}"
    return Rendering(draw_instances(image, shown, [art.category_color(d["category_id"]) for d in shown], labels,
                                    opts.alpha), f"{name}: {what} of {len(dets)} detections")
