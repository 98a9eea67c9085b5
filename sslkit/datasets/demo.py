"""The offline demo / benchmark scenes: real-photo cutouts composited onto real background photos.

Each scene is a random crop of a background photo, resized to a random size
(each side between ``min_side`` and ``max_side``), with 2–6 object cutouts (a
uniformly drawn category, then a uniformly drawn cutout of it) pasted at
random scale (longer side 5–65% of the scene's shorter side, log-uniform;
``objects`` and ``object_size`` change both ranges), position and horizontal
flip, alpha-blended.  Later pastes
occlude earlier ones; a placement is only accepted when every object in the
scene, the new one included, keeps at least :data:`MIN_VISIBLE` of its pixels
and a box of at least :data:`MIN_BOX_SIDE` pixels per side (otherwise the
object is tried elsewhere, then left out), so every visible object is
annotated.  Annotations are exact: each mask is the object's visible pixels
(alpha ≥ 0.5), each box the tight box of that mask.

Output (a COCO instances dataset)::
    OUT/images/000001.jpg …     scenes, JPEG quality 92
    OUT/annotations.json        all scenes
    OUT/train.json, val.json    a random split by ``val_fraction``

The build is deterministic: scene *i* depends only on ``seed``, *i*, the
size parameters and the object ranges (not on ``n``), so the same parameters give the same bytes on
the same installation.  It is written into a temporary folder beside OUT and
renamed into place at the end; an OUT built with the same parameters is left
alone ("up to date") unless ``force``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslkit import __version__
from sslkit.console import info, progress
from sslkit.datasets.sources import Photo, SourceSet, resolve_sources
from sslkit.errors import UserError

#: bumped when the same parameters would produce different scenes
DATASET_VERSION = 1
#: what annotations.json's ``info.description`` starts with; marks a folder as ours to replace
DESCRIPTION = "sslkit demo scenes"

PRESETS = {
    "demo": {"n": 200, "min_side": 160, "max_side": 256},
    "bench": {"n": 240, "min_side": 480, "max_side": 640},
}

OBJECTS_PER_SCENE = (2, 6)
#: object size: its longer side as a fraction of the scene's shorter side (log-uniform) …
OBJECT_SIZE = (0.05, 0.65)
#: … but at least this many pixels
MIN_OBJECT_SIDE = 16
#: background crop: linear size as a fraction of the largest crop of the scene's aspect ratio
CROP_SIZE = (0.5, 1.0)
#: an object must keep this fraction of its pixels visible (occlusion and the image border)
MIN_VISIBLE = 0.25
#: and a box at least this many pixels wide and high
MIN_BOX_SIDE = 8
#: placements tried per object before it is left out
PLACEMENT_TRIES = 10
#: at most this fraction of an object's width / height may lie outside the scene
MAX_OUTSIDE = 0.25
JPEG_QUALITY = 92


@dataclass
class Instance:
    category: str
    ref: str
    mask: np.ndarray  # (H, W) bool, visible pixels
    full_area: int  # pixels of the whole pasted object, before occlusion and cropping


def _log(quiet: bool):
    return lambda msg: info(msg, quiet)


def build_demo(out: str | os.PathLike, n: int = 200, min_side: int = 160, max_side: int = 256, seed: int = 0,
               val_fraction: float = 0.2, sources: str = "auto", cache: str | os.PathLike | None = None,
               force: bool = False, quiet: bool = False, objects: tuple[int, int] = OBJECTS_PER_SCENE,
               object_size: tuple[float, float] = OBJECT_SIZE) -> dict:
    """Build the demo scene dataset into ``out``; returns a summary dict.

    ``sources`` is ``auto`` (Debian packages, else pip wheels), ``debian`` or
    ``pip``; ``cache`` is where the Debian packages are unpacked (default
    ``$SSLKIT_CACHE`` or ``~/.cache/sslkit/sources``).  ``objects`` is the
    (min, max) number of objects tried per scene, ``object_size`` the (min, max)
    longer side of a pasted object as a fraction of the scene's shorter side.
    """
    out = Path(out)
    objects, object_size = (int(objects[0]), int(objects[1])), (float(object_size[0]), float(object_size[1]))
    _check_params(n, min_side, max_side, seed, val_fraction, sources)
    _check_objects(objects, object_size)
    log = _log(quiet)
    params = {"n": n, "min_side": min_side, "max_side": max_side, "seed": seed, "val_fraction": val_fraction,
              "sources": sources, "dataset_version": DATASET_VERSION}
    # recorded only when changed, so that builds made before these options existed stay up to date
    if objects != OBJECTS_PER_SCENE:
        params["objects"] = list(objects)
    if object_size != OBJECT_SIZE:
        params["object_size"] = list(object_size)
    existing = _existing_params(out)
    if existing == params and not force:
        coco = json.loads((out / "annotations.json").read_text())
        summary = _summary(out, coco, len(json.loads((out / "val.json").read_text())["images"]), 0.0)
        log(f"{out}: up to date ({summary['images']} scenes from {summary['sources']} sources; --force rebuilds)")
        return {**summary, "up_to_date": True}
    if existing is None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError("exists and is not an sslkit demo dataset", out, "choose a new or empty folder")

    t0 = time.perf_counter()
    src = resolve_sources(sources, cache, log)
    log(f"using {src.describe()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling_dir(out, "tmp")
    try:
        coco = _render(tmp, src, n, min_side, max_side, seed, quiet, objects, object_size)
        coco["info"] = _info(src, params)
        n_val = _write_jsons(tmp, coco, val_fraction, seed)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = _summary(out, coco, n_val, time.perf_counter() - t0)
    log(f"wrote {summary['images']} scenes, {summary['annotations']} objects in {summary['categories']} "
        f"categories to {out} ({summary['train_images']} train / {summary['val_images']} val) "
        f"in {summary['seconds']:.1f} s")
    return {**summary, "up_to_date": False}


def _check_params(n: int, min_side: int, max_side: int, seed: int, val_fraction: float, sources: str) -> None:
    if n < 1:
        raise UserError(f"--n must be at least 1 (got {n})")
    if min_side < 32 or max_side < min_side:
        raise UserError(f"need 32 ≤ --min-side ≤ --max-side (got {min_side} and {max_side})")
    if seed < 0:
        raise UserError(f"--seed must be 0 or more (got {seed})")
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction must be in [0, 1) (got {val_fraction})")
    if sources not in ("auto", "debian", "pip"):
        raise UserError(f"unknown --sources {sources!r}", None, "use auto, debian or pip")


def _check_objects(objects: tuple[int, int], object_size: tuple[float, float]) -> None:
    if not 1 <= objects[0] <= objects[1]:
        raise UserError(f"need 1 ≤ --min-objects ≤ --max-objects (got {objects[0]} and {objects[1]})")
    if not 0.0 < object_size[0] <= object_size[1] <= 1.0:
        raise UserError("need 0 < --min-object-size ≤ --max-object-size ≤ 1 "
                        f"(got {object_size[0]:g} and {object_size[1]:g})")


def _existing_params(out: Path) -> dict | None:
    """The build parameters recorded in ``out/annotations.json``, or None if ``out`` is not a complete build."""
    try:
        info = json.loads((out / "annotations.json").read_text())["info"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not str(info.get("description", "")).startswith(DESCRIPTION):
        return None
    if not all((out / name).is_file() for name in ("train.json", "val.json")):
        return {}  # ours, but incomplete: replace it
    return info.get("params")


def _info(src: SourceSet, params: dict) -> dict:
    return {
        "description": f"{DESCRIPTION}: real-photo object cutouts composited onto real background photos",
        "version": str(DATASET_VERSION),
        "contributor": f"sslkit {__version__} (sslkit demo-data)",
        "source_set": src.kind,
        "sources": src.packages,
        "seed": params["seed"],
        "params": params,
    }


def _render(folder: Path, src: SourceSet, n: int, min_side: int, max_side: int, seed: int, quiet: bool,
            objects: tuple[int, int], object_size: tuple[float, float]) -> dict:
    """Compose ``n`` scenes into ``folder/images``; returns the COCO dict without ``info``."""
    import cv2
    from pycocotools import mask as mask_utils

    (folder / "images").mkdir()
    cat_ids = {name: k for k, (name, _) in enumerate(src.categories, start=1)}
    names = list(cat_ids)
    by_category = {name: [c for c in src.cutouts if c.category == name] for name in names}
    loaded: dict[str, np.ndarray] = {}

    def load(photo: Photo) -> np.ndarray:
        if photo.ref not in loaded:
            loaded[photo.ref] = photo.load(2 * max_side)
        return loaded[photo.ref]

    images, annotations = [], []
    with progress(quiet, unit="img") as p:
        task = p.add_task("demo scenes", total=n)
        for i in range(n):
            rng = np.random.default_rng([seed, min_side, max_side, i])
            h, w = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
            bg = src.backgrounds[int(rng.integers(len(src.backgrounds)))]
            canvas = background_crop(rng, load(bg), h, w)
            instances: list[Instance] = []
            for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
                category = names[int(rng.integers(len(names)))]
                cutout = by_category[category][int(rng.integers(len(by_category[category])))]
                paste(rng, canvas, instances, cutout, load(cutout), object_size)
            image_id = i + 1
            file_name = f"{image_id:06d}.jpg"
            ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(canvas[..., ::-1]),
                                    [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for scene {image_id}")
            (folder / "images" / file_name).write_bytes(jpeg.tobytes())
            images.append({"id": image_id, "file_name": file_name, "height": h, "width": w, "background": bg.ref})
            for inst in instances:
                rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": cat_ids[inst.category],
                    "bbox": mask_box(inst.mask), "area": int(inst.mask.sum()), "iscrowd": 0,
                    "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                    "source": inst.ref,
                })
            p.advance(task)
    categories = [{"id": cat_ids[name], "name": name, "supercategory": sup} for name, sup in src.categories]
    licenses = [{"id": k, "name": f"{pk['package']}: {pk['licence']}", "url": ""}
                for k, pk in enumerate(src.packages, start=1)]
    return {"licenses": licenses, "images": images, "annotations": annotations, "categories": categories}


def _resize(arr: np.ndarray, w: int, h: int) -> np.ndarray:
    import cv2

    shrinking = w * h < arr.shape[0] * arr.shape[1]
    return cv2.resize(arr, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def background_crop(rng: np.random.Generator, bg: np.ndarray, h: int, w: int,
                    crop_size: tuple[float, float] = CROP_SIZE) -> np.ndarray:
    """A random crop of ``bg`` with the scene's aspect ratio, resized to (h, w), maybe mirrored.

    ``crop_size``: the crop's linear size as a fraction of the largest crop of that aspect ratio.
    """
    bh, bw = bg.shape[:2]
    cw_max = min(bw, bh * w / h)
    s = rng.uniform(*crop_size)
    cw = max(1, int(round(cw_max * s)))
    ch = max(1, min(bh, int(round(cw * h / w))))
    x0 = int(rng.integers(bw - cw + 1))
    y0 = int(rng.integers(bh - ch + 1))
    crop = _resize(bg[y0:y0 + ch, x0:x0 + cw], w, h)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


def _visible_enough(mask: np.ndarray, full_area: int, min_visible: float = MIN_VISIBLE) -> bool:
    if mask.sum() < min_visible * full_area:
        return False
    _, _, bw, bh = mask_box(mask)
    return bw >= MIN_BOX_SIDE and bh >= MIN_BOX_SIDE


def paste(rng: np.random.Generator, canvas: np.ndarray, instances: list[Instance], cutout: Photo,
          rgba: np.ndarray, object_size: tuple[float, float], min_visible: float = MIN_VISIBLE,
          max_outside: float = MAX_OUTSIDE, min_side: int = MIN_OBJECT_SIDE) -> Instance | None:
    """Alpha-blend ``rgba`` onto ``canvas`` at a random scale, flip and place, if one keeps every object visible.

    Returns the new instance (also appended to ``instances``), or None when no placement was accepted.
    ``min_visible``, ``max_outside`` and ``min_side`` default to the demo scenes' constants.
    """
    h, w = canvas.shape[:2]
    oh, ow = rgba.shape[:2]
    short = min(h, w)
    hi = np.log(max(object_size[1] * short, min_side))
    lo = min(np.log(max(object_size[0] * short, min_side)), hi)
    scale = float(np.exp(rng.uniform(lo, hi))) / max(oh, ow)
    sw, sh = max(1, round(ow * scale)), max(1, round(oh * scale))
    premultiplied = rgba.astype(np.float32) / 255.0
    premultiplied[..., :3] *= premultiplied[..., 3:]  # so that resizing does not bleed hidden colours in
    obj = _resize(premultiplied, sw, sh)
    if rng.random() < 0.5:
        obj = obj[:, ::-1]
    alpha = obj[..., 3]
    shape = alpha >= 0.5
    full_area = int(shape.sum())
    if full_area == 0:
        return None
    out_x, out_y = int(max_outside * sw), int(max_outside * sh)
    for _ in range(PLACEMENT_TRIES):
        x = int(rng.integers(-out_x, max(-out_x, w - sw + out_x) + 1))
        y = int(rng.integers(-out_y, max(-out_y, h - sh + out_y) + 1))
        # the part of the object inside the scene: scene rows/cols [y0, y1) x [x0, x1)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + sw, w), min(y + sh, h)
        if x1 <= x0 or y1 <= y0:
            continue
        mask = np.zeros((h, w), bool)
        mask[y0:y1, x0:x1] = shape[y0 - y:y1 - y, x0 - x:x1 - x]
        if not _visible_enough(mask, full_area, min_visible):
            continue
        if not all(_visible_enough(inst.mask & ~mask, inst.full_area, min_visible) for inst in instances):
            continue
        a = alpha[y0 - y:y1 - y, x0 - x:x1 - x, None]
        rgb = obj[y0 - y:y1 - y, x0 - x:x1 - x, :3]  # premultiplied by alpha
        region = canvas[y0:y1, x0:x1].astype(np.float32) / 255.0
        canvas[y0:y1, x0:x1] = np.clip((region * (1.0 - a) + rgb) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        for inst in instances:
            inst.mask &= ~mask
        instances.append(Instance(cutout.category, cutout.ref, mask, full_area))
        return instances[-1]
    return None


def mask_box(mask: np.ndarray) -> list[int]:
    """Tight ``[x, y, w, h]`` of a non-empty boolean mask (what pycocotools' ``toBbox`` gives for its RLE)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _split(image_ids: list[int], val_fraction: float, seed: int) -> set[int]:
    """The validation image ids: a seeded random ``val_fraction`` of the images.

    With ``val_fraction > 0`` and at least two images, val gets at least one image and train keeps one.
    """
    n = len(image_ids)
    n_val = 0 if val_fraction == 0 or n < 2 else min(n - 1, max(1, round(n * val_fraction)))
    order = np.random.default_rng([seed, n]).permutation(n)
    return {image_ids[k] for k in order[:n_val]}


def _write_jsons(folder: Path, coco: dict, val_fraction: float, seed: int) -> int:
    """Write annotations.json, train.json and val.json; returns the number of validation images."""
    val_ids = _split([im["id"] for im in coco["images"]], val_fraction, seed)
    # plain writes: the whole build folder is renamed into place at the end
    _write_json(folder / "annotations.json", coco)
    for split, keep in (("train", lambda i: i not in val_ids), ("val", lambda i: i in val_ids)):
        part = {**coco, "info": {**coco["info"], "split": split},
                "images": [im for im in coco["images"] if keep(im["id"])],
                "annotations": [a for a in coco["annotations"] if keep(a["image_id"])]}
        _write_json(folder / f"{split}.json", part)
    return len(val_ids)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def sibling_dir(out: Path, suffix: str) -> Path:
    """A new hidden folder beside ``out`` (same filesystem, so renames are atomic), made with the usual mode."""
    path = out.parent / f".{out.name}.{os.getpid()}-{time.time_ns()}.{suffix}"
    path.mkdir()
    return path


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished build ``tmp`` to ``out``, replacing an older build or an empty folder."""
    if out.exists():
        old = sibling_dir(out, "old")
        os.replace(out, old / "previous")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _summary(out: Path, coco: dict, n_val: int, seconds: float) -> dict:
    return {
        "out": str(out), "images": len(coco["images"]), "annotations": len(coco["annotations"]),
        "categories": len(coco["categories"]), "train_images": len(coco["images"]) - n_val, "val_images": n_val,
        "sources": coco["info"]["source_set"], "seconds": round(seconds, 2),
    }
