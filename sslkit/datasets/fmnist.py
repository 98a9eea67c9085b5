"""The ``fmnist-scenes`` preset: multi-object scenes of Fashion-MNIST product photos, with probe sets.

Fashion-MNIST (Zalando; Debian ``dataset-fashion-mnist``, MIT) holds 70,000 28×28 grayscale
photos of single products on black, in 10 classes: 60,000 train and 10,000 test items, about
6,000 distinct objects per class.  Each item is cut out by its own pixels (mask: grey level
above :data:`ITEM_THRESHOLD`, cropped to its tight box) and pasted, scaled and maybe mirrored,
onto random crops of the demo scenes' real background photos (:mod:`sslkit.datasets.sources`),
with the demo builder's compositing and occlusion rules (:func:`sslkit.datasets.demo.paste`).

Six COCO instances files (``file_name`` relative to ``OUT/images``); every annotation has an
exact RLE mask of the item's visible pixels, its category (the item's class), ``source``
(``fashion-mnist:<split>/<index>``) and ``item`` (the index in its Fashion-MNIST split)::

    scenes.json              pretraining scenes: n scenes, 2-4 TRAIN items each
    items.json               pretraining single items: one image per TRAIN item (object-centric)
    probe_items_train.json   probe sets: the TEST items, split in two halves A (train) and B (val);
    probe_items_val.json        one single-item image per item
    probe_scenes_train.json  scenes of the A items / of the B items, each item used once
    probe_scenes_val.json

Train items never appear in a probe file and test items never in a pretraining file; the two
probe halves share no item.  The build is deterministic: every image depends only on ``seed``,
its index and the size parameters (a scene's items are the next ones of a seeded permutation of
its pool), so the same parameters give the same bytes on the same installation.  It is written
into a temporary folder beside OUT and renamed into place; a complete build with the same
parameters is left alone ("up to date") unless ``force``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import time
from pathlib import Path

import numpy as np

from sslkit import __version__
from sslkit.console import info, progress
from sslkit.datasets import sources
from sslkit.datasets.demo import (
    JPEG_QUALITY,
    Instance,
    background_crop,
    mask_box,
    paste,
    replace_dir,
    sibling_dir,
)
from sslkit.errors import UserError

PACKAGE = "dataset-fashion-mnist"
DATA_DIR = "usr/share/datasets/fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
#: Zalando's labels 0-9 (README of zalandoresearch/fashion-mnist), with a supercategory; category id = label + 1
CLASSES = (("T-shirt/top", "clothing"), ("trouser", "clothing"), ("pullover", "clothing"), ("dress", "clothing"),
           ("coat", "clothing"), ("sandal", "footwear"), ("shirt", "clothing"), ("sneaker", "footwear"),
           ("bag", "accessory"), ("ankle boot", "footwear"))
#: an item's mask: its pixels brighter than this grey level (the originals' black background has stray
#: pixels of 1-5; above 5, 97% of the items are one 8-connected piece)
ITEM_THRESHOLD = 5

#: bumped when the same parameters would produce different files
DATASET_VERSION = 1
#: what every json's ``info.description`` starts with; marks a folder as ours to replace
DESCRIPTION = "sslkit fmnist scenes"
PRESET = {"n": 20000, "min_side": 64, "max_side": 96}
#: items tried per scene (uniform), and an item's longer side as a fraction of the scene's shorter side
OBJECTS = (2, 4)
OBJECT_SIZE = (0.3, 0.6)
#: single-item images: square, the item's longer side this fraction of the side, wholly inside
ITEM_IMAGE_SIDE = 64
ITEM_SIZE = (0.6, 0.9)
#: every item keeps at least this share of its pixels visible, and at most this share of its width or height
#: lies outside the scene (stricter than the demo scenes' 25% / 25%: a 28-px item occluded further is hard
#: to recognise)
MIN_VISIBLE = 0.5
MAX_OUTSIDE = 0.1
#: backgrounds are loaded at this longer side and cropped at this linear fraction of the largest crop,
#: so that 15 photos give varied textures rather than 15 recognisable pictures
BACKGROUND_SIDE = 512
BACKGROUND_CROP = (0.15, 0.5)
FILE_NAMES = ("scenes", "items", "probe_items_train", "probe_items_val", "probe_scenes_train", "probe_scenes_val")


def load_fashion_mnist(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images (60000, 28, 28) uint8, labels (60000,) uint8), "test": …}`` from the idx files."""
    out = {}
    for split, (images, labels) in FILES.items():
        x, y = _read_idx(root / DATA_DIR / images, 3), _read_idx(root / DATA_DIR / labels, 1)
        if len(x) != len(y) or y.max(initial=0) >= len(CLASSES):
            raise UserError(f"the {split} images and labels do not match", root / DATA_DIR)
        out[split] = (x, y)
    return out


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file (LeCun's MNIST format, big-endian header; magic 0x08 0x<ndim>: unsigned bytes)."""
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read: {e}", path, "delete the cache folder to fetch it again") from e
    magic, = struct.unpack(">I", data[:4])
    if magic != 0x0800 + ndim:
        raise UserError(f"not an idx file of {ndim}-d unsigned bytes (magic {magic:#x})", path)
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def item_rgba(pixels: np.ndarray) -> np.ndarray:
    """RGBA uint8 of one item: its grey levels as RGB, alpha 255 on its mask, cropped to the mask's box."""
    mask = pixels > ITEM_THRESHOLD
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return np.zeros((1, 1, 4), np.uint8)  # nothing visible: paste() skips it
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    grey = pixels[box]
    return np.dstack([grey, grey, grey, np.where(mask[box], 255, 0).astype(np.uint8)])


def build_fmnist(out: str | os.PathLike, n: int = PRESET["n"], min_side: int = PRESET["min_side"],
                 max_side: int = PRESET["max_side"], seed: int = 0, objects: tuple[int, int] = OBJECTS,
                 object_size: tuple[float, float] = OBJECT_SIZE, items: int | None = None,
                 probe_items: int | None = None, cache: str | os.PathLike | None = None, force: bool = False,
                 quiet: bool = False) -> dict:
    """Build the fmnist-scenes preset into ``out``; returns a summary dict.

    ``n``: pretraining scenes; ``items``: single-item pretraining images (default: one per train
    item, 60,000); ``probe_items``: test items used by the probe sets (default all 10,000, halved
    into the probe's train and val).  ``objects`` / ``object_size`` as in ``build_demo``.
    """
    def log(msg: str) -> None:
        info(msg, quiet)

    out = Path(out)
    objects, object_size = (int(objects[0]), int(objects[1])), (float(object_size[0]), float(object_size[1]))
    _check(n, min_side, max_side, seed, objects, object_size, items, probe_items)
    params = {"preset": "fmnist-scenes", "n": n, "min_side": min_side, "max_side": max_side, "seed": seed,
              "objects": list(objects), "object_size": list(object_size), "items": items,
              "probe_items": probe_items, "dataset_version": DATASET_VERSION}
    existing = _existing_params(out)
    if existing == params and not force:
        summary = _summary(out, {name: json.loads((out / f"{name}.json").read_text()) for name in FILE_NAMES}, 0.0)
        log(f"{out}: up to date ({summary['scenes']} scenes, {summary['items']} items; --force rebuilds)")
        return {**summary, "up_to_date": True}
    if existing is None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError("exists and is not an sslkit fmnist-scenes build", out, "choose a new or empty folder")

    t0 = time.perf_counter()
    cache = Path(cache).expanduser() if cache is not None else sources.default_cache()
    try:
        root, versions = sources.fetch_debian(cache, log, packages=(PACKAGE,), folder="fashion-mnist",
                                              size="about 31 MB")
    except sources.SourceUnavailable as e:
        raise UserError(f"the Debian package {PACKAGE} is unavailable: {e}", cache,
                        "run on a Debian/Ubuntu machine with apt") from e
    data = load_fashion_mnist(root)
    backgrounds = sources.resolve_sources("debian", cache, log)
    packages = [{"package": PACKAGE, "version": versions[PACKAGE], "licence": sources.LICENCES[PACKAGE],
                 "role": "items", "count": sum(len(y) for _, y in data.values())}]
    packages += [p for p in backgrounds.packages if p["role"] == "backgrounds"]
    bgs = [(b.ref, b.load(BACKGROUND_SIDE)) for b in backgrounds.backgrounds]
    log(f"using {PACKAGE} {versions[PACKAGE]} (60,000 train + 10,000 test items) and {len(bgs)} background photos")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling_dir(out, "tmp")
    try:
        files = _render_all(tmp, data, bgs, params, quiet)
        for name, coco in files.items():
            coco["info"] = {
                "description": f"{DESCRIPTION}: Fashion-MNIST items composited onto real background photos",
                "version": str(DATASET_VERSION), "contributor": f"sslkit {__version__} (sslkit demo-data)",
                "file": name, "items_from": "test" if name.startswith("probe") else "train",
                "sources": packages, "seed": seed, "params": params,
            }
            coco["licenses"] = [{"id": k, "name": f"{p['package']}: {p['licence']}", "url": ""}
                                for k, p in enumerate(packages, start=1)]
            (tmp / f"{name}.json").write_text(json.dumps(coco) + "\n", encoding="utf-8")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = _summary(out, files, time.perf_counter() - t0)
    log(f"wrote {summary['scenes']} scenes ({summary['scene_items']} items) and {summary['items']} single items "
        f"from the train items, and probe sets from the test items ({summary['probe_items_train']} + "
        f"{summary['probe_items_val']} single items, {summary['probe_scenes_train']} + "
        f"{summary['probe_scenes_val']} scenes) to {out} in {summary['seconds']:.1f} s")
    return {**summary, "up_to_date": False}


def _check(n, min_side, max_side, seed, objects, object_size, items, probe_items) -> None:
    if n < 1:
        raise UserError(f"--n must be at least 1 (got {n})")
    if min_side < 32 or max_side < min_side:
        raise UserError(f"need 32 ≤ --min-side ≤ --max-side (got {min_side} and {max_side})")
    if seed < 0:
        raise UserError(f"--seed must be 0 or more (got {seed})")
    if not 1 <= objects[0] <= objects[1]:
        raise UserError(f"need 1 ≤ --min-objects ≤ --max-objects (got {objects[0]} and {objects[1]})")
    if not 0.0 < object_size[0] <= object_size[1] <= 1.0:
        raise UserError("need 0 < --min-object-size ≤ --max-object-size ≤ 1 "
                        f"(got {object_size[0]:g} and {object_size[1]:g})")
    if items is not None and not 1 <= items <= 60000:
        raise UserError(f"--items must be between 1 and 60000, the train items (got {items})")
    if probe_items is not None and not 2 <= probe_items <= 10000:
        raise UserError(f"--probe-items must be between 2 and 10000, the test items (got {probe_items})")


def _existing_params(out: Path) -> dict | None:
    """The parameters of a complete build in ``out``; {} for an incomplete one of ours; None if not ours."""
    try:
        info = json.loads((out / "scenes.json").read_text())["info"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not str(info.get("description", "")).startswith(DESCRIPTION):
        return None
    if not all((out / f"{name}.json").is_file() for name in FILE_NAMES):
        return {}
    return info.get("params")


def _permutation(seed: int, code: int, size: int) -> np.ndarray:
    return np.random.default_rng([seed, 1000 + code, size]).permutation(size)


def _render_all(folder: Path, data: dict, bgs: list, params: dict, quiet: bool) -> dict[str, dict]:
    """Every image and json of the build (without ``info``/``licenses``), into ``folder``."""
    seed = params["seed"]
    (x_train, y_train), (x_test, y_test) = data["train"], data["test"]
    n_items = params["items"] or len(y_train)
    n_probe = params["probe_items"] or len(y_test)
    train_pool = _permutation(seed, 0, len(y_train))
    test_pool = _permutation(seed, 2, len(y_test))[:n_probe]
    half_a, half_b = test_pool[:n_probe // 2], test_pool[n_probe // 2:]
    scene_size = (params["min_side"], params["max_side"])
    objects, object_size = tuple(params["objects"]), tuple(params["object_size"])
    plans = {
        # name: (split, pool, per-image item counts (None: single items), code, subfolder)
        "scenes": ("train", train_pool, _counts(seed, 10, objects, params["n"]), "scenes"),
        "items": ("train", _permutation(seed, 1, len(y_train))[:n_items], None, "items"),
        "probe_items_train": ("test", half_a, None, "probe_items_train"),
        "probe_items_val": ("test", half_b, None, "probe_items_val"),
        "probe_scenes_train": ("test", half_a, _counts_to_cover(seed, 12, objects, len(half_a)), "probe_scenes_train"),
        "probe_scenes_val": ("test", half_b, _counts_to_cover(seed, 13, objects, len(half_b)), "probe_scenes_val"),
    }
    cats = [{"id": k + 1, "name": name, "supercategory": sup} for k, (name, sup) in enumerate(CLASSES)]
    total = sum(len(pool) if counts is None else len(counts) for _, pool, counts, _ in plans.values())
    files = {}
    with progress(quiet, unit="img") as p:
        task = p.add_task("fmnist scenes", total=total)
        for code, (name, (split, pool, counts, sub)) in enumerate(plans.items()):
            x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
            (folder / "images" / sub).mkdir(parents=True)
            images, annotations = [], []
            groups = [[int(i)] for i in pool] if counts is None else _groups(pool, counts)
            for i, group in enumerate(groups):
                rng = np.random.default_rng([seed, code, i])
                if counts is None:
                    h = w = ITEM_IMAGE_SIDE
                    size, visible, outside = ITEM_SIZE, 1.0, 0.0
                else:
                    h, w = (int(v) for v in rng.integers(scene_size[0], scene_size[1] + 1, size=2))
                    size, visible, outside = object_size, MIN_VISIBLE, MAX_OUTSIDE
                bg_ref, bg = bgs[int(rng.integers(len(bgs)))]
                canvas = background_crop(rng, bg, h, w, BACKGROUND_CROP)
                instances: list[Instance] = []
                for index in group:
                    cutout = sources.Photo(f"fashion-mnist:{split}/{index}", lambda _s: None, CLASSES[y[index]][0])
                    paste(rng, canvas, instances, cutout, item_rgba(x[index]), size, min_visible=visible,
                          max_outside=outside, min_side=8)
                image_id = i + 1
                file_name = f"{sub}/{image_id:06d}.jpg"
                _write_jpeg(folder / "images" / file_name, canvas)
                images.append({"id": image_id, "file_name": file_name, "height": h, "width": w, "background": bg_ref})
                annotations += [_annotation(len(annotations) + k, image_id, inst)
                                for k, inst in enumerate(instances, start=1)]
                p.advance(task)
            files[name] = {"images": images, "annotations": annotations, "categories": cats}
    return files


def _counts(seed: int, code: int, objects: tuple[int, int], n: int) -> list[int]:
    """Items per scene for ``n`` scenes: scene i's count depends only on (seed, code, i)."""
    return [int(np.random.default_rng([seed, code, i, 7]).integers(objects[0], objects[1] + 1)) for i in range(n)]


def _counts_to_cover(seed: int, code: int, objects: tuple[int, int], pool: int) -> list[int]:
    """Items per scene until ``pool`` items are used, each once (the last scene takes what is left)."""
    counts, used, i = [], 0, 0
    while used < pool:
        k = min(int(np.random.default_rng([seed, code, i, 7]).integers(objects[0], objects[1] + 1)), pool - used)
        counts.append(k)
        used, i = used + k, i + 1
    return counts


def _groups(pool: np.ndarray, counts: list[int]) -> list[list[int]]:
    """Consecutive runs of ``pool`` (wrapping around) of the given lengths."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return [[int(pool[(s + j) % len(pool)]) for j in range(k)] for s, k in zip(starts, counts, strict=True)]


def _annotation(ann_id: int, image_id: int, inst: Instance) -> dict:
    from pycocotools import mask as mask_utils

    h, w = inst.mask.shape
    rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
    index = inst.ref.rsplit("/", 1)[1]
    return {"id": ann_id, "image_id": image_id, "category_id": _category_id(inst.category),
            "bbox": mask_box(inst.mask), "area": int(inst.mask.sum()), "iscrowd": 0,
            "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
            "source": inst.ref, "item": int(index)}


def _category_id(name: str) -> int:
    return [c for c, _ in CLASSES].index(name) + 1


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    import cv2

    ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {path}")
    path.write_bytes(jpeg.tobytes())


def _summary(out: Path, files: dict[str, dict], seconds: float) -> dict:
    s = {"out": str(out), "preset": "fmnist-scenes", "seconds": round(seconds, 2)}
    for name, coco in files.items():
        s[name] = len(coco["images"])
    s["scene_items"] = len(files["scenes"]["annotations"])
    s["probe_scene_items"] = len(files["probe_scenes_train"]["annotations"]) + len(files["probe_scenes_val"]["annotations"])
    return s
