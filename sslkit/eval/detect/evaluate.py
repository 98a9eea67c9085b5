"""COCO-style evaluation with pycocotools: predictions → results json → AP tables.

Reported per IoU type (``bbox``, ``segm``), in percent, as detectron2's ``COCOEvaluator``:
``AP`` (IoU .50:.95), ``AP50``, ``AP75``, ``APs``/``APm``/``APl`` (area < 32², 32²–96², > 96²;
``None`` when the split has no object of that size), and ``per_category`` AP.  Crowd annotations
are COCO's "ignore" regions.  Only the images that were evaluated count (``image_ids``): an image
that could not be decoded is left out with its annotations rather than counted as all misses.
"""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np

from sslkit.eval.detect.data import decode_mask

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")


def to_coco_results(image_id: int, output: dict, label_to_category: dict[int, int],
                    masks: bool = True) -> list[dict]:
    """One image's torchvision predictions (boxes xyxy, labels, scores, masks (N,1,H,W) probabilities)
    → COCO result entries (``bbox`` as xywh, ``segmentation`` a compressed RLE of mask > 0.5)."""
    from pycocotools import mask as mask_utils

    boxes = output["boxes"].detach().float().cpu().numpy()
    scores = output["scores"].detach().float().cpu().numpy()
    labels = output["labels"].detach().cpu().numpy()
    rles = None
    if masks and "masks" in output and len(boxes):
        binary = (output["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    out = []
    for k in range(len(boxes)):
        x0, y0, x1, y1 = (float(v) for v in boxes[k])
        r = {"image_id": int(image_id), "category_id": int(label_to_category[int(labels[k])]),
             "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)], "score": round(float(scores[k]), 5)}
        if rles is not None:
            r["segmentation"] = {"size": [int(s) for s in rles[k]["size"]], "counts": rles[k]["counts"].decode("ascii")}
        out.append(r)
    return out


def prepare_gt(coco: dict) -> dict:
    """A copy of a COCO json that pycocotools' COCOeval accepts: every annotation with ``id``,
    ``iscrowd`` and ``area`` (the mask area, else the box area, when the json has none)."""

    gt = {"images": coco["images"], "categories": coco["categories"], "annotations": []}
    images = {im["id"]: im for im in coco["images"]}
    used = {a["id"] for a in coco["annotations"] if "id" in a}
    next_id = max(used, default=0) + 1
    for a in coco["annotations"]:
        a = dict(a)
        if "id" not in a:
            a["id"], next_id = next_id, next_id + 1
        a.setdefault("iscrowd", 0)
        if "area" not in a:
            seg = a.get("segmentation")
            im = images.get(a["image_id"], {})
            if seg and im.get("height") and im.get("width"):
                a["area"] = float(decode_mask(a, im["height"], im["width"]).sum())
            else:
                a["area"] = float(a["bbox"][2] * a["bbox"][3])
        gt["annotations"].append(a)
    return gt


def has_masks(coco: dict) -> bool:
    """Whether every annotation has a segmentation (mask AP needs one per object)."""
    return all(a.get("segmentation") for a in coco["annotations"])


def _coco(gt: dict):
    from pycocotools.coco import COCO

    c = COCO()
    c.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        c.createIndex()
    return c


def _pct(v: float) -> float | None:
    return None if v < 0 else round(float(v) * 100.0, 4)


def evaluate(gt_coco: dict, results: list[dict], image_ids: list[int] | None = None,
             iou_types: tuple[str, ...] = IOU_TYPES, category_names: dict[int, str] | None = None) -> dict:
    """COCOeval of ``results`` against ``gt_coco`` (a loaded COCO json) on ``image_ids`` (default: all).

    Returns ``{iou_type: {"AP": …, …, "per_category": {name: AP}}, "summary": {iou_type: text}}``
    (``None`` where the images hold no object of that size or category).
    """
    from pycocotools.cocoeval import COCOeval

    gt = _coco(prepare_gt(gt_coco))
    ids = sorted(gt.getImgIds() if image_ids is None else {int(i) for i in image_ids})
    names = category_names or {c["id"]: str(c.get("name", c["id"])) for c in gt_coco["categories"]}
    out: dict = {"summary": {}}
    for iou in iou_types:
        dets = copy.deepcopy(results)
        if iou == "segm":
            dets = [d for d in dets if "segmentation" in d]
            for d in dets:
                d.pop("bbox", None)  # so that loadRes takes the mask area, as detectron2 does
        if dets:
            with contextlib.redirect_stdout(io.StringIO()):
                dt = gt.loadRes(dets)
        else:  # loadRes cannot take an empty list; no detections is AP 0 wherever there are objects
            dt = _coco({"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []})
        ev = COCOeval(gt, dt, iou)
        ev.params.imgIds = ids
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats = {m: _pct(v) for m, v in zip(METRICS, ev.stats[:6], strict=True)}
        # per category: mean precision over IoUs and recall, area "all", 100 detections (detectron2's table)
        prec = ev.eval["precision"]
        per = {}
        for k, cid in enumerate(ev.params.catIds):
            p = prec[:, :, k, 0, -1]
            p = p[p > -1]
            per[names.get(cid, str(cid))] = round(float(p.mean()) * 100.0, 4) if p.size else None
        out[iou] = {**stats, "per_category": per}
        out["summary"][iou] = buf.getvalue().rstrip()
    return out
