"""`sslkit demo-data --preset fmnist-scenes`: Fashion-MNIST scenes and their probe sets.

Needs the Debian package dataset-fashion-mnist (fetched once with apt-get download into the shared
cache, ``$SSLKIT_CACHE`` or ``~/.cache/sslkit/sources``); skipped where apt cannot fetch it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from sslkit.datasets import fmnist, sources
from sslkit.io.coco import ann_to_mask

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TINY = {"n": 10, "items": 12, "probe_items": 20, "min_side": 64, "max_side": 80, "quiet": True}


@pytest.fixture(scope="session")
def fm_root() -> Path:
    try:
        root, _ = sources.fetch_debian(sources.default_cache(), lambda msg: None, packages=(fmnist.PACKAGE,),
                                       folder="fashion-mnist")
        sources.fetch_debian(sources.default_cache(), lambda msg: None)  # the background photos
    except sources.SourceUnavailable as e:
        pytest.skip(f"Debian sources unavailable: {e}")
    return root


@pytest.fixture(scope="session")
def fm_data(fm_root):
    return fmnist.load_fashion_mnist(fm_root)


@pytest.fixture(scope="session")
def tiny(fm_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fmnist") / "tiny"
    fmnist.build_fmnist(out, seed=3, **TINY)
    return out


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_fashion_mnist_is_read_whole(fm_data):
    (xtr, ytr), (xte, yte) = fm_data["train"], fm_data["test"]
    assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28) and xtr.dtype == np.uint8
    assert np.bincount(ytr).tolist() == [6000] * 10 and np.bincount(yte).tolist() == [1000] * 10


def test_every_file_is_valid_coco_with_exact_masks(tiny):
    for name in fmnist.FILE_NAMES:
        path = tiny / f"{name}.json"
        coco, api = _load(path), COCO(str(path))
        assert len(api.getCatIds()) == 10 and coco["images"] and coco["annotations"]
        assert coco["info"]["params"]["preset"] == "fmnist-scenes"
        assert {p["package"] for p in coco["info"]["sources"]} >= {"dataset-fashion-mnist", "mate-backgrounds"}
        for im in coco["images"]:
            assert (tiny / "images" / im["file_name"]).is_file()
            cover = np.zeros((im["height"], im["width"]), np.int32)
            anns = api.loadAnns(api.getAnnIds(imgIds=[im["id"]]))
            assert anns, f"{name}: image {im['id']} has no item"
            for a in anns:
                m = ann_to_mask(a, im["height"], im["width"]).astype(bool)
                assert list(mask_utils.toBbox(a["segmentation"])) == a["bbox"] and a["area"] == int(m.sum()) > 0
                cover += m
            assert cover.max() <= 1, "occluded pixels belong to the front item only"
        if "items" in name:  # single-item images: one whole item each, square
            assert all(im["width"] == im["height"] == fmnist.ITEM_IMAGE_SIDE for im in coco["images"])
            assert len(coco["annotations"]) == len(coco["images"])
        else:
            assert all(TINY["min_side"] <= min(im["width"], im["height"]) and max(im["width"], im["height"])
                       <= TINY["max_side"] for im in coco["images"])


def test_pretraining_uses_train_items_and_probes_test_items_disjointly(tiny, fm_data):
    def items(name: str) -> list[tuple[str, int]]:
        anns = _load(tiny / f"{name}.json")["annotations"]
        out = [tuple(a["source"].removeprefix("fashion-mnist:").split("/")) for a in anns]
        assert all(int(i) == a["item"] for (_, i), a in zip(out, anns, strict=True))
        return [(s, int(i)) for s, i in out]

    for name in ("scenes", "items"):
        assert {s for s, _ in items(name)} == {"train"}
    probe = {name: items(name) for name in fmnist.FILE_NAMES if name.startswith("probe")}
    assert all(s == "test" for v in probe.values() for s, _ in v)
    half_a = {i for _, i in probe["probe_items_train"]}
    half_b = {i for _, i in probe["probe_items_val"]}
    assert len(half_a) + len(half_b) == TINY["probe_items"] and not half_a & half_b
    # the probe scenes of each half hold only that half's items, each at most once
    for name, half in (("probe_scenes_train", half_a), ("probe_scenes_val", half_b)):
        ids = [i for _, i in probe[name]]
        assert set(ids) <= half and len(ids) == len(set(ids))
    # and every annotation's category is its item's Fashion-MNIST class
    for name in fmnist.FILE_NAMES:
        labels = fm_data["train" if name in ("scenes", "items") else "test"][1]
        assert all(a["category_id"] == labels[a["item"]] + 1 for a in _load(tiny / f"{name}.json")["annotations"])


def test_masks_are_the_items_own_pixels(tiny, fm_data):
    """A single-item image's mask, brought back to the item's 28-px crop, is the item's mask (pixels > 5)."""
    import cv2

    coco = _load(tiny / "items.json")
    x = fm_data["train"][0]
    for a in coco["annotations"]:
        m = ann_to_mask(a, fmnist.ITEM_IMAGE_SIDE, fmnist.ITEM_IMAGE_SIDE).astype(np.uint8)
        bx, by, bw, bh = a["bbox"]
        own = fmnist.item_rgba(x[a["item"]])[..., 3] > 0
        back = cv2.resize(m[by:by + bh, bx:bx + bw], own.shape[::-1], interpolation=cv2.INTER_AREA) > 0
        iou = max((back & o).sum() / (back | o).sum() for o in (own, own[:, ::-1]))
        assert iou > 0.8, (a["item"], iou)
    # in a scene the item keeps at least MIN_VISIBLE of its pasted pixels: never less than half its own area
    # once scaled (checked loosely here through the box: at least 8 px a side)
    for a in _load(tiny / "scenes.json")["annotations"]:
        assert min(a["bbox"][2:]) >= 8


def test_same_seed_same_bytes_other_seed_differs(tiny, tmp_path):
    again = tmp_path / "again"
    fmnist.build_fmnist(again, seed=3, **TINY)
    for name in fmnist.FILE_NAMES:
        assert (again / f"{name}.json").read_bytes() == (tiny / f"{name}.json").read_bytes()
    files = sorted(p.relative_to(tiny) for p in (tiny / "images").rglob("*.jpg"))
    assert files == sorted(p.relative_to(again) for p in (again / "images").rglob("*.jpg"))
    assert all((tiny / f).read_bytes() == (again / f).read_bytes() for f in files)
    other = tmp_path / "other"
    fmnist.build_fmnist(other, seed=4, **TINY)
    assert (other / "scenes.json").read_bytes() != (tiny / "scenes.json").read_bytes()


def test_up_to_date_force_and_refusal(tiny, tmp_path):
    assert fmnist.build_fmnist(tiny, seed=3, **TINY)["up_to_date"] is True
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("mine")
    p = subprocess.run([sys.executable, "-m", "sslkit", "demo-data", str(foreign), "--preset", "fmnist-scenes",
                        "--n", "2", "-q"], capture_output=True, text=True)
    assert p.returncode == 2 and "is not an sslkit fmnist-scenes build" in p.stderr
    for flags, msg in ((["--val-fraction", "0.1"], "--val-fraction does not apply to --preset fmnist-scenes"),
                       (["--items", "70000"], "--items must be between 1 and 60000")):
        p = subprocess.run([sys.executable, "-m", "sslkit", "demo-data", str(tmp_path / "bad"), "--preset",
                            "fmnist-scenes", *flags], capture_output=True, text=True)
        assert p.returncode == 2 and p.stderr.startswith(f"error: {msg}"), p.stderr
    p = subprocess.run([sys.executable, "-m", "sslkit", "demo-data", str(tmp_path / "bad"), "--items", "5"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "--items only applies to --preset fmnist-scenes" in p.stderr


def test_cli_builds_and_reports(fm_root, tmp_path):
    out = tmp_path / "cli"
    p = subprocess.run([sys.executable, "-m", "sslkit", "demo-data", str(out), "--preset", "fmnist-scenes", "--n", "3",
                        "--items", "4", "--probe-items", "6", "--max-objects", "3", "-q", "--json"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert (s["scenes"], s["items"], s["probe_items_train"], s["probe_items_val"]) == (3, 4, 3, 3)
    assert _load(out / "scenes.json")["info"]["params"]["objects"] == [2, 3]
