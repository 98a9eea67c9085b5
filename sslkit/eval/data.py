"""Labelled evaluation splits: what ``--train`` / ``--val`` name.

Three tasks, one shape: every image contributes ``rows`` samples, each with a label row.

``classes``
    A class-folder tree (``ROOT/<class>/**/<image>``, as torchvision's ``ImageFolder``):
    one sample per image, label = class index (classes sorted by folder name).
``objects``
    A COCO instances json: one sample per non-crowd annotation whose box is at least
    ``min_box`` pixels on both sides; label = category index (categories sorted by id).
    The sample's pixels are its box (see :mod:`sslkit.eval.features`).
``multilabel``
    A COCO instances json: one sample per image, label = the presence vector of every
    category: 1 present, 0 absent, -1 *ignored* when the only instances of the category are
    marked ``"difficult": 1`` or ``"ignore": 1`` (the VOC07 benchmark's difficult label:
    such images count as negatives when training and are left out of that class's AP).
    Crowd annotations count as present.

Annotations marked difficult/ignore are never ``objects`` samples, nor are crowd ones.

A split carries a ``fingerprint`` (sha256 over the class list, every file's name, size and
modification time, and every label and box) so cached features are reused exactly when the
data is the same.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslkit.errors import UserError
from sslkit.io.coco import annotations_by_image, coco_boxes_xyxy, load_coco
from sslkit.io.images import ImageSource

TASKS = ("classes", "objects", "multilabel")


@dataclass
class Item:
    """One image of a split and the samples it contributes."""

    image_id: int
    file_name: str
    path: Path
    labels: np.ndarray  # (rows,) int64 for classes/objects; (rows, C) int8 in {1, 0, -1} for multilabel
    boxes: np.ndarray | None = None  # (rows, 4) float32 xyxy, objects only
    groups: list[str] | None = None  # (rows,) an annotation field's value per sample (``group_field``)


@dataclass
class LabelledSplit:
    source: str
    kind: str  # "folder" | "coco"
    task: str
    classes: list[str]
    items: list[Item]
    fingerprint: str
    category_ids: list[int] | None = None  # COCO: category id of each class index

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    def num_samples(self) -> int:
        return int(sum(len(it.labels) for it in self.items))

    def describe(self) -> dict:
        return {"source": self.source, "kind": self.kind, "task": self.task, "num_images": len(self.items),
                "num_samples": self.num_samples(), "fingerprint": self.fingerprint}


def _fingerprint(kind: str, task: str, classes: list[str], items: list[Item], extra: dict) -> str:
    h = hashlib.sha256()
    h.update(repr((kind, task, classes, sorted(extra.items()))).encode())
    for it in items:
        try:
            st = os.stat(it.path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        h.update(f"\n{it.image_id}|{it.file_name}|{size}|{mtime}|".encode())
        h.update(np.ascontiguousarray(it.labels).tobytes())
        if it.boxes is not None:
            h.update(np.ascontiguousarray(it.boxes).tobytes())
    return h.hexdigest()


def _from_folder(root: Path, reference: LabelledSplit | None) -> LabelledSplit:
    src = ImageSource.from_folder(root)
    loose = [r.file_name for r in src if "/" not in r.file_name]
    if loose:
        raise UserError(f"images directly in the folder (e.g. {loose[0]}); a class-folder tree "
                        "ROOT/<class>/<image> is expected", root, "move each image into its class folder")
    names = sorted({r.file_name.split("/", 1)[0] for r in src})
    if reference is None:
        if len(names) < 2:
            raise UserError(f"only one class folder ({names[0]})", root, "a classification split needs ≥ 2 classes")
        classes = names
    else:
        if reference.kind != "folder":
            raise UserError("--train is a COCO json but --val is a class folder", root, "use the same kind for both")
        unknown = [n for n in names if n not in reference.classes]
        if unknown:
            raise UserError(f"class folder(s) not in the training split: {', '.join(unknown[:5])}", root,
                            "both splits need the same class folders")
        classes = reference.classes
    index = {c: i for i, c in enumerate(classes)}
    items = [Item(r.image_id, r.file_name, r.path, np.array([index[r.file_name.split("/", 1)[0]]], np.int64))
             for r in src]
    return LabelledSplit(str(root), "folder", "classes", classes, items,
                         _fingerprint("folder", "classes", classes, items, {}))


def _ignored(ann: dict) -> bool:
    return bool(ann.get("difficult") or ann.get("ignore"))


def _from_coco(json_path: Path, task: str, image_root: str | os.PathLike | None, min_box: float,
               reference: LabelledSplit | None, group_field: str | None = None) -> LabelledSplit:

    coco = load_coco(json_path)
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    if not cats:
        raise UserError("has no 'categories'", json_path, "pass a COCO instances json with categories")
    cat_ids = [int(c["id"]) for c in cats]
    classes = [str(c.get("name", c["id"])) for c in cats]
    if reference is not None:
        if reference.kind != "coco":
            raise UserError("--train is a class folder but --val is a COCO json", json_path, "use the same kind for both")
        if reference.category_ids != cat_ids:
            raise UserError("its categories differ from the training json's", json_path,
                            "both splits need the same category ids")
    col = {cid: i for i, cid in enumerate(cat_ids)}
    src = ImageSource.from_coco(json_path, image_root)
    by_image = annotations_by_image(coco)
    items: list[Item] = []
    for r in src:
        anns = by_image.get(r.image_id, [])
        unknown = [a["category_id"] for a in anns if a.get("category_id") not in col]
        if unknown:
            raise UserError(f"an annotation of image {r.image_id} has category {unknown[0]}, not in 'categories'",
                            json_path)
        if task == "multilabel":
            t = np.zeros((1, len(cat_ids)), np.int8)
            for a in sorted(anns, key=_ignored):  # real instances first: an ignored one cannot unset them
                c = col[a["category_id"]]
                t[0, c] = -1 if _ignored(a) and t[0, c] != 1 else 1
            items.append(Item(r.image_id, r.file_name, r.path, t))
            continue
        kept = [a for a in anns if not a.get("iscrowd", 0) and not _ignored(a)
                and a["bbox"][2] >= min_box and a["bbox"][3] >= min_box]
        if kept:
            groups = None
            if group_field is not None:
                missing = [a for a in kept if a.get(group_field) is None]
                if missing:
                    raise UserError(f"annotation {missing[0].get('id', '?')} of image {r.image_id} has no "
                                    f"{group_field!r} field", json_path,
                                    "group the cross-validation by image, or by a field every annotation has")
                groups = [str(a[group_field]) for a in kept]
            items.append(Item(r.image_id, r.file_name, r.path,
                              np.array([col[a["category_id"]] for a in kept], np.int64), coco_boxes_xyxy(kept),
                              groups))
    if not items:
        raise UserError(f"no annotation has a box of at least {min_box:g} px per side", json_path,
                        "lower --min-box or check the json")
    return LabelledSplit(str(json_path), "coco", task, classes, items,
                         _fingerprint("coco", task, classes, items, {"min_box": min_box, "cat_ids": cat_ids}),
                         category_ids=cat_ids)


def load_split(arg: str | os.PathLike, task: str | None = None, image_root: str | os.PathLike | None = None,
               min_box: float = 8.0, reference: LabelledSplit | None = None,
               group_field: str | None = None) -> LabelledSplit:
    """Read a split: a class-folder tree, or a COCO json with ``task`` ``objects`` / ``multilabel``.

    ``reference`` (the training split) fixes the class list of a validation split.
    ``group_field`` (``objects`` only): keep this annotation field of every sample in ``Item.groups``.
    """
    p = Path(arg)
    if not p.exists():
        raise UserError("no such file or folder", p, "pass a class-folder tree or a COCO json")
    if p.is_dir():
        if task not in (None, "classes"):
            raise UserError(f"--task {task} needs a COCO json; this is a folder (read as class folders)", p)
        if group_field is not None:
            raise UserError(f"grouping by the annotation field {group_field!r} needs a COCO json", p,
                            "class folders are grouped by image")
        if image_root is not None:
            raise UserError("--image-root only applies to a COCO json", p)
        return _from_folder(p, reference)
    if p.suffix.lower() != ".json":
        raise UserError("not a folder or a .json file", p, "pass a class-folder tree or a COCO json")
    if task not in ("objects", "multilabel"):
        raise UserError("a COCO json needs --task objects (one sample per box) or --task multilabel "
                        "(per-image category presence)", p)
    if group_field is not None and task != "objects":
        raise UserError(f"grouping by the annotation field {group_field!r} needs --task objects", p,
                        "group by image for --task multilabel")
    return _from_coco(p, task, image_root, min_box, reference, group_field)
