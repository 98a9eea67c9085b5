"""Image sources (a folder or a COCO json + image root) and robust decoding to RGB uint8.

Decoding rules (one place, used by every stage):

* EXIF orientation is applied, so pixels and boxes are in the upright frame a
  viewer shows (COCO's annotations are in that frame too).
* Any mode becomes 3-channel RGB uint8: grayscale is replicated, CMYK and
  palette images are converted, 16-bit and 32-bit integer images are scaled
  to 8 bits (16-bit: the top byte), float images are clipped to [0, 1] and
  scaled, and alpha is composited over black (equivalent to premultiplied
  alpha; transparent pixels carry no colour).
* A file that cannot be decoded (corrupt, truncated, not an image) raises
  :class:`ImageDecodeError`; batch drivers catch it, report file + reason and
  record the file in the artefact's list of skipped files.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sslkit.errors import UserError
from sslkit.io.atomic import write_text_atomic
from sslkit.io.coco import load_coco

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

#: ImageNet statistics every sslkit pipeline normalises with: RGB, pixel values in [0, 1]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageDecodeError(Exception):
    """An image file that cannot be decoded; ``reason`` says why in a few words."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class ImageRecord:
    """One image of a source. ``height``/``width`` are 0 when not known without decoding."""

    image_id: int
    file_name: str  # relative to the source root, posix separators
    path: Path
    height: int = 0
    width: int = 0


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img)
        if mode == "I" and a.max(initial=0) > 65535:
            a = (a.astype(np.float64) / max(float(a.max()), 1.0) * 255.0).astype(np.uint8)
        else:
            a = (a.astype(np.uint32) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
    if mode == "F":
        a = np.asarray(img, dtype=np.float32)
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[..., 3:4]
        rgb = (rgba[..., :3] * alpha + 127) // 255
        return np.ascontiguousarray(rgb.astype(np.uint8))
    if mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    """(height, width) after EXIF orientation, read from the header only."""
    w, h = img.size
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # malformed EXIF: treat as upright
        orientation = 1
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return h, w


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image in the upright (EXIF-applied) frame, without decoding pixels."""
    try:
        with Image.open(path) as img:
            return _oriented_size(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageDecodeError(path, _reason(e)) from e


def _reason(e: BaseException) -> str:
    if isinstance(e, UnidentifiedImageError):
        return "not a readable image (unknown or corrupt format)"
    if isinstance(e, FileNotFoundError):
        return "file not found"
    if isinstance(e, PermissionError):
        return "permission denied"
    msg = str(e).strip() or type(e).__name__
    if "truncated" in msg.lower():
        return "truncated image file"
    return msg.splitlines()[0][:200]


def load_rgb(path: str | os.PathLike, max_side: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode ``path`` to an upright RGB uint8 array.

    With ``max_side`` the image is downscaled (area interpolation) so that its
    longer side is at most ``max_side``; JPEGs are then decoded at reduced
    resolution directly (libjpeg DCT scaling), which is much faster.

    Returns ``(array, (orig_height, orig_width))`` where the original size is
    in the upright frame, so callers can map coordinates back.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's EXIF/ICC chatter is not the user's problem
            with Image.open(path) as img:
                orig_h, orig_w = _oriented_size(img)
                if max_side and img.format == "JPEG" and max(img.size) > 2 * max_side:
                    w, h = img.size
                    scale = max_side / max(w, h)
                    img.draft("RGB", (max(1, int(w * scale)), max(1, int(h * scale))))
                img.load()
                img = ImageOps.exif_transpose(img)
                arr = _to_rgb_array(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(path, _reason(e)) from e
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageDecodeError(path, "empty image")
    if max_side and max(arr.shape[:2]) > max_side:
        import cv2

        h, w = arr.shape[:2]
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        arr = cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
    return arr, (orig_h, orig_w)


class ImageSource:
    """An ordered list of images: a folder (recursive) or a COCO instances json + image root.

    Folder sources list files with extensions in :data:`IMAGE_EXTENSIONS`
    (case-insensitive), sorted by relative path; ``image_id`` is the position
    in that order, so the same folder always gives the same ids.  COCO sources
    keep the json's image ids and order.
    """

    def __init__(self, root: Path, records: list[ImageRecord], kind: str, coco_path: Path | None = None):
        self.root = root
        self.records = records
        self.kind = kind
        self.coco_path = coco_path
        self._by_name = {r.file_name: r for r in records}
        self._by_id = {r.image_id: r for r in records}

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, i: int) -> ImageRecord:
        return self.records[i]

    def without(self, file_names) -> ImageSource:
        """The same source minus the images named in ``file_names`` (e.g. those an artefact skipped)."""
        drop = set(file_names)
        return ImageSource(self.root, [r for r in self.records if r.file_name not in drop], self.kind, self.coco_path)

    def by_name(self, file_name: str) -> ImageRecord | None:
        return self._by_name.get(file_name)

    def by_id(self, image_id: int) -> ImageRecord | None:
        return self._by_id.get(image_id)

    def describe(self) -> dict:
        d = {"kind": self.kind, "root": str(self.root), "num_images": len(self)}
        if self.coco_path is not None:
            d["coco"] = str(self.coco_path)
        return d

    def location(self) -> dict:
        """:meth:`describe` with absolute paths: recorded in artefacts, so ``sslkit show`` finds the images."""
        d = {**self.describe(), "root": str(Path(self.root).resolve())}
        if self.coco_path is not None:
            d["coco"] = str(Path(self.coco_path).resolve())
        return d

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> ImageSource:
        root = Path(folder)
        if not root.is_dir():
            raise UserError("not a folder", root, "pass a folder of images or a COCO json")
        files = sorted(
            (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
            key=lambda p: p.relative_to(root).as_posix(),
        )
        if not files:
            raise UserError(
                f"no images found (looked for {', '.join(IMAGE_EXTENSIONS)} recursively)", root,
                "check the path",
            )
        records = [ImageRecord(i, p.relative_to(root).as_posix(), p) for i, p in enumerate(files)]
        return cls(root, records, "folder")

    @classmethod
    def from_coco(cls, json_path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> ImageSource:
        json_path = Path(json_path)
        coco = load_coco(json_path)
        images = coco["images"]
        root = resolve_image_root(json_path, [im["file_name"] for im in images[:8]], image_root)
        records = [
            ImageRecord(int(im["id"]), str(im["file_name"]), root / im["file_name"],
                        int(im.get("height", 0) or 0), int(im.get("width", 0) or 0))
            for im in images
        ]
        return cls(root, records, "coco", json_path)

    @classmethod
    def from_arg(cls, images: str | os.PathLike, image_root: str | os.PathLike | None = None) -> ImageSource:
        """What every subcommand's IMAGES argument means: a folder, or a ``.json`` COCO file."""
        p = Path(images)
        if not p.exists():
            raise UserError("no such file or folder", p, "pass a folder of images or a COCO json")
        if p.is_dir():
            if image_root is not None:
                raise UserError("--image-root only applies to a COCO json input", p)
            return cls.from_folder(p)
        if p.suffix.lower() == ".json":
            return cls.from_coco(p, image_root)
        raise UserError("not a folder or a .json file", p, "pass a folder of images or a COCO json")


def resolve_image_root(json_path: Path, sample_names: list[str], image_root: str | os.PathLike | None) -> Path:
    """Where a COCO json's ``file_name`` paths live.

    Explicit ``--image-root`` wins; otherwise try the json's folder, its
    ``images/`` subfolder and the COCO layout (``annotations/x.json`` beside
    ``train2017/``, by the json's split name).
    """
    if image_root is not None:
        root = Path(image_root)
        if not root.is_dir():
            raise UserError("image root is not a folder", root)
        if sample_names and not any((root / n).exists() for n in sample_names):
            raise UserError(f"none of the first images (e.g. {sample_names[0]}) is under this image root",
                            root, "check --image-root")
        return root
    base = json_path.parent
    candidates = [base, base / "images", base.parent]
    stem = json_path.stem  # instances_train2017 -> train2017
    if "_" in stem:
        split = stem.split("_", 1)[1]
        candidates += [base.parent / split, base / split, base.parent / "images" / split]
    for c in candidates:
        if sample_names and all((c / n).exists() for n in sample_names[:3]):
            return c
    if not sample_names:
        return base
    raise UserError(f"cannot find the images it names (e.g. {sample_names[0]})", json_path,
                    "pass --image-root FOLDER")


def write_json(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
