"""`sslkit linprobe`: features, the three classifiers, metrics, the cache and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sslkit.eval.features import SPEC_POOL, Preprocess, pool_map, stage_maps
from sslkit.eval.knn import knn_scores
from sslkit.eval.linear import LinearConfig, predict, train_linear
from sslkit.eval.metrics import mean_ap, topk_accuracy, voc_ap
from sslkit.eval.svm import svm_scores
from sslkit.models.backbones import build_backbone
from tests.conftest import run_cli as sslkit

CPU = torch.device("cpu")


# -- metrics ------------------------------------------------------------------------------------

def test_voc_ap_is_the_benchmarks_all_point_ap():
    # ranks: + - - + +  → precision 1, .5, .33, .5, .6 at recall 1/3, 1/3, 1/3, 2/3, 1
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    targets = np.array([1, 0, 0, 1, 1])
    assert voc_ap(scores, targets) == pytest.approx(1 / 3 * 1 + 1 / 3 * 0.6 + 1 / 3 * 0.6)
    from sklearn.metrics import average_precision_score  # no monotone envelope: 0.7

    assert average_precision_score(targets, scores) == pytest.approx(0.7)
    m = mean_ap(np.stack([scores, scores], 1), np.stack([targets, np.zeros(5)], 1))
    assert m["classes_evaluated"] == 1 and m["ap"][1] is None and m["mAP"] == pytest.approx(73.3333, abs=1e-3)


def test_voc_ap_leaves_ignored_out():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert voc_ap(scores, np.array([1, -1, 0, 1])) == pytest.approx(voc_ap(scores[[0, 2, 3]], np.array([1, 0, 1])))
    assert voc_ap(scores, np.array([1, -1, 0, 1])) != pytest.approx(voc_ap(scores, np.array([1, 0, 0, 1])))


def test_topk_accuracy():
    scores = np.array([[0.1, 0.5, 0.4, 0.0, 0, 0], [0.9, 0.05, 0.05, 0, 0, 0], [0.05, 0.1, 0.1, 0.2, 0.3, 0.4]])
    labels = np.array([2, 0, 0])
    r = topk_accuracy(scores, labels)
    assert r["top1"] == pytest.approx(100 / 3) and r["top5"] == pytest.approx(200 / 3)
    assert "top5" not in topk_accuracy(scores[:, :5], labels)  # 5 classes: top-5 is always 100


# -- classifiers on synthetic features ------------------------------------------------------------

def blobs(n_per_class: int, num_classes: int, dim: int, seed: int, spread: float = 0.5):
    g = np.random.default_rng(seed)
    centres = np.random.default_rng(100).normal(size=(num_classes, dim)) * 2
    y = np.repeat(np.arange(num_classes), n_per_class)
    x = centres[y] + g.normal(size=(len(y), dim)) * spread
    return x.astype(np.float32), y


def _within_chance(top1: float, num_classes: int, n: int) -> bool:
    p = 1 / num_classes
    return abs(top1 / 100 - p) <= 4 * math.sqrt(p * (1 - p) / n)


def _probe(protocol: str, xtr, ytr, xva, num_classes: int, **kw) -> np.ndarray:
    if protocol == "linear":
        return predict(train_linear(xtr, ytr, num_classes, False, kw.get("cfg", LinearConfig()), CPU), xva, CPU)
    if protocol == "knn":
        return knn_scores(xtr, ytr, xva, num_classes)
    return svm_scores(xtr, ytr, xva, num_classes)[0]


@pytest.mark.parametrize("protocol", ["linear", "knn", "svm"])
def test_separable_features_are_classified(protocol):
    xtr, ytr = blobs(200, 3, 16, seed=0)
    xva, yva = blobs(100, 3, 16, seed=1)
    assert topk_accuracy(_probe(protocol, xtr, ytr, xva, 3), yva)["top1"] >= 98


@pytest.mark.parametrize("protocol", ["linear", "knn", "svm"])
def test_random_labels_stay_at_chance(protocol):
    g = np.random.default_rng(0)
    c, n_val = 5, 3000
    xtr, ytr = g.normal(size=(400, 16)).astype(np.float32), g.integers(0, c, 400)
    xva, yva = g.normal(size=(n_val, 16)).astype(np.float32), g.integers(0, c, n_val)
    cfg = LinearConfig(solver="lbfgs", weight_decay=1e-2)
    top1 = topk_accuracy(_probe(protocol, xtr, ytr, xva, c, cfg=cfg), yva)["top1"]
    assert _within_chance(top1, c, n_val), top1


def test_sgd_protocol_schedule_and_fit():
    cfg = LinearConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (28, 256, 0.01, 0.9, 1e-4)
    assert cfg.milestones == [8, 16, 24]
    assert LinearConfig(epochs=14).milestones == [4, 8, 12] and LinearConfig(epochs=84).milestones == [24, 48, 72]
    head = train_linear(*blobs(200, 3, 16, seed=0), 3, False, cfg, CPU)
    assert not any(p.requires_grad for p in head.bn.parameters()) and head.bn.affine is False
    # BN running statistics moved to the features' statistics
    x, _ = blobs(200, 3, 16, seed=0)
    assert torch.allclose(head.bn.running_mean, torch.from_numpy(x.mean(0)), atol=0.3)


def test_head_normalises_pooled_maps_per_channel():
    """On a flattened C×g×g pooled map the head's BN is OpenSelfSup's BatchNorm2d(C, affine=False)."""
    from sslkit.eval.linear import LinearHead

    x = torch.randn(8, 6, 2, 2) * torch.arange(1, 7).view(1, 6, 1, 1) + 3
    head = LinearHead(24, 5, channels=6).train()
    ref = torch.nn.BatchNorm2d(6, affine=False).train()
    torch.testing.assert_close(head.normalise(x.flatten(1)), ref(x).flatten(1))
    torch.testing.assert_close(head.bn.running_var, ref.running_var)
    # full-batch L-BFGS sets the same per-channel statistics from the data
    xs = x.flatten(1).numpy()
    fitted = train_linear(xs, np.arange(8) % 5, 5, False, LinearConfig(solver="lbfgs", lbfgs_iters=5), CPU,
                          channels=6)
    torch.testing.assert_close(fitted.bn.running_mean, x.mean((0, 2, 3)))


def test_multilabel_classifiers():
    g = np.random.default_rng(0)
    y = (g.random((400, 4)) < 0.4).astype(np.uint8)
    x = (y @ (np.eye(4, 12) * 3) + g.normal(size=(400, 12)) * 0.3).astype(np.float32)
    xtr, ytr, xva, yva = x[:300], y[:300], x[300:], y[300:]
    lin = predict(train_linear(xtr, ytr, 4, True, LinearConfig(solver="lbfgs"), CPU), xva, CPU)
    for scores in (lin, knn_scores(xtr, ytr, xva, 4), svm_scores(xtr, ytr, xva, 4)[0]):
        assert mean_ap(scores, yva)["mAP"] > 95
    # labels unrelated to the features: mAP near the positive rate (≈40), far below 95
    assert mean_ap(knn_scores(xtr, ytr[::-1], xva, 4), yva)["mAP"] < 60


def test_knn_weighted_votes():
    train = np.array([[1, 0], [0.8, 0.6], [0, 1]], np.float32)
    labels = np.array([0, 1, 1])
    q = np.array([[1, 0.1]], np.float32)
    s = knn_scores(train, labels, q, 2, k=2, temperature=0.5)
    qn = q[0] / np.linalg.norm(q[0])
    w = np.exp(np.array([qn @ train[0], qn @ train[1]]) / 0.5)
    np.testing.assert_allclose(s[0], [w[0] / w.sum(), w[1] / w.sum()], rtol=1e-5)


def test_svm_picks_costs_from_the_list_and_survives_rare_classes():
    x, y = blobs(30, 3, 8, seed=0)
    y2 = y.copy()
    y2[0] = 3  # class 3: a single positive → no cross-validation possible
    scores, info = svm_scores(x, y2, x, 5, costs=(1.0, 10.0))
    assert all(c in (1.0, 10.0) for c in info["chosen_cost"][:4])
    assert info["cv_ap"][3] == [None, None] and info["chosen_cost"][3] == 1.0
    assert info["classes_without_svm"] == [4] and (scores[:, 4] < -1e5).all()


def test_low_shot_draws_and_benchmark():
    from sslkit.eval.svm import low_shot_svm, low_shot_targets

    g = np.random.default_rng(0)
    y = (g.random((300, 4)) < 0.4).astype(np.int8)
    y[:20, 0] = -1  # difficult: never drawn
    t = low_shot_targets(y, 3, np.random.default_rng(1))
    assert ((t == 1).sum(0) == 3).all() and ((t == 0).sum(0) == 9).all()
    assert (y[t == 1] == 1).all() and (y[t == 0] == 0).all() and (t[:20, 0] == -1).all()
    with pytest.raises(ValueError, match="positives"):
        low_shot_targets(y[:5], 3, np.random.default_rng(1))
    x = (np.clip(y, 0, 1) @ (np.eye(4, 12) * 3) + g.normal(size=(300, 12)) * 0.3).astype(np.float32)
    r = low_shot_svm(x[:200], y[:200], x[200:], y[200:], 4, shots=(1, 4), samples=2, costs=(1.0, 10.0))
    assert set(r["shots"]) == {"1", "4"} and r["samples"] == 2
    for k in ("1", "4"):
        v = r["shots"][k]
        assert v["cost"] in (1.0, 10.0) and v["mAP"] == pytest.approx(max(v["mAP_per_cost"]), abs=1e-3) and v["min"] <= v["mAP"] <= v["max"]
    assert r["shots"]["4"]["mAP"] > 90


# -- features -----------------------------------------------------------------------------------

def test_stage_maps_and_spec_pooling():
    net = build_backbone("resnet_tiny").eval()
    with torch.no_grad():
        m = stage_maps(net, torch.randn(1, 3, 64, 64), ["conv1", "res2", "res5"])
    assert m["conv1"].shape[-1] == 32 and m["res2"].shape[-1] == 16 and m["res5"].shape[-1] == 2  # conv1: pre-maxpool
    # at 224 px the fixed pools of Goyal et al. give ORL's dimensions on a ResNet-50
    sizes = {"conv1": (64, 112), "res2": (256, 56), "res3": (512, 28), "res4": (1024, 14), "res5": (2048, 7)}
    dims = {"conv1": 9216, "res2": 9216, "res3": 8192, "res4": 9216, "res5": 8192}
    for stage, (c, hw) in sizes.items():
        x = torch.randn(1, c, hw, hw)
        y = pool_map(x, stage, "spec")
        assert y.shape[1] == dims[stage]
        torch.testing.assert_close(y, F.avg_pool2d(x, *SPEC_POOL[stage]).flatten(1))
        assert pool_map(torch.randn(1, c, hw + 3, hw + 3), stage, "spec").shape[1] == dims[stage]  # adaptive
        torch.testing.assert_close(pool_map(x, stage, "avg"), x.mean((2, 3)))


def test_box_crops_take_the_boxes_pixels():
    img = np.zeros((60, 100, 3), np.uint8)
    img[10:30, 70:90] = (255, 0, 0)  # red square at x 70..90, y 10..30
    img[40:60, 0:20] = (0, 0, 255)
    prep = Preprocess(16, mean=(0, 0, 0), std=(1, 1, 1))
    crops = prep.crops(img, np.array([[70, 10, 90, 30], [0, 40, 20, 60]], np.float32))
    assert crops.shape == (2, 3, 16, 16)
    torch.testing.assert_close(crops[0].mean((1, 2)), torch.tensor([1.0, 0, 0]))
    torch.testing.assert_close(crops[1].mean((1, 2)), torch.tensor([0, 0, 1.0]))
    wide = Preprocess(16, box_scale=2.0, mean=(0, 0, 0), std=(1, 1, 1)).crops(img, np.array([[70, 10, 90, 30]]))
    assert 0.2 < float(wide[0, 0].mean()) < 0.5  # context around the box, clipped to the image


# -- the command ----------------------------------------------------------------------------------

def _random_crops(img: np.ndarray, n: int, rng) -> list[np.ndarray]:
    h, w = img.shape[:2]
    out = []
    for _ in range(n):
        s = int(rng.integers(120, 200))
        y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
        out.append(img[y:y + s, x:x + s])
    return out


@pytest.fixture(scope="module")
def colour_folders(tmp_path_factory):
    """Two colour classes of one real photo: the orange cat and the same cat with R and B swapped."""
    import skimage.data

    root = tmp_path_factory.mktemp("folders")
    cat = skimage.data.chelsea()
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 12)):
        for name, img in (("orange", cat), ("blue", np.ascontiguousarray(cat[..., ::-1]))):
            d = root / split / name
            d.mkdir(parents=True)
            for i, c in enumerate(_random_crops(img, n, rng)):
                Image.fromarray(c).resize((40, 40)).save(d / f"{i:02d}.png")
    return root


SMALL = ("--arch", "resnet_tiny", "--image-size", "32", "--workers", "0", "--batch-size", "16")
COMMON = (*SMALL, "-q")


def test_linear_probe_separates_colour_classes_and_caches(colour_folders, tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ("random", "--train", colour_folders / "train", "--val", colour_folders / "val", *COMMON,
            "--cache-dir", cache, "--layers", "conv1,res5")
    assert sslkit("linprobe", *args, "--solver", "lbfgs", "-o", tmp_path / "m.json", "--json") == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec == json.loads((tmp_path / "m.json").read_text())
    assert rec["classes"] == ["blue", "orange"] and rec["num_classes"] == 2 and rec["task"] == "classes"
    assert rec["results"]["res5"]["top1"] >= 90 and rec["results"]["res5"]["dim"] == 128
    assert rec["chance"]["top1_uniform"] == 50
    assert rec["train"]["num_samples_used"] == 32 and rec["val"]["num_samples_used"] == 24
    assert not rec["train"]["cache"]["hit"] and not rec["val"]["cache"]["hit"]
    files = sorted(cache.glob("*.h5"))
    assert len(files) == 2
    mtimes = [f.stat().st_mtime_ns for f in files]

    assert sslkit("linprobe", *args, "--protocol", "knn", "--json") == 0
    knn = json.loads(capsys.readouterr().out)
    assert knn["train"]["cache"]["hit"] and knn["val"]["cache"]["hit"]
    assert sorted(cache.glob("*.h5")) == files and [f.stat().st_mtime_ns for f in files] == mtimes
    assert knn["results"]["conv1"]["top1"] >= 90 and knn["settings"] == {"k": 20, "temperature": 0.07,
                                                                        "similarity": "cosine"}
    # the cached file is an sslkit artefact that info can read
    assert sslkit("info", files[0], "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "sslkit.features" and set(info["fields"]) == {"feat_conv1", "feat_res5", "label"}

    # other weights → other features
    assert sslkit("linprobe", *args, "--protocol", "knn", "--seed", "1", "--json") == 0
    assert not json.loads(capsys.readouterr().out)["train"]["cache"]["hit"]


def test_svm_and_sgd_protocols_on_folders(colour_folders, tmp_path, capsys):
    args = ("random", "--train", colour_folders / "train", "--val", colour_folders / "val", *COMMON,
            "--cache-dir", tmp_path / "cache")
    assert sslkit("linprobe", *args, "--protocol", "svm", "--pool", "spec", "--layers", "conv1", "--json") == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["results"]["conv1"]["top1"] >= 90 and rec["results"]["conv1"]["dim"] == 16 * 12 * 12
    assert set(rec["svm"]["conv1"]["chosen_cost"]) <= {1.0, 10.0, 100.0}
    assert sslkit("linprobe", *args, "--protocol", "svm", "--layers", "conv1", "--low-shot", "1,4",
                  "--low-shot-samples", "2", "--json") == 0
    low = json.loads(capsys.readouterr().out)["results"]["conv1"]["low_shot"]
    assert set(low["shots"]) == {"1", "4"} and low["samples"] == 2 and low["shots"]["4"]["mAP"] >= 90
    assert sslkit("linprobe", *args, "--epochs", "60", "--linear-batch-size", "8", "--json") == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["settings"]["milestones"] == [17, 34, 51] and rec["results"]["res5"]["train"]["top1"] >= 90
    assert sslkit("linprobe", "random", "--train", colour_folders / "train", "--val", colour_folders / "val", *SMALL,
                  "--cache-dir", tmp_path / "cache") == 0  # no -q: the table
    out = capsys.readouterr()
    assert "top1" in out.out and "SGD steps" in out.err  # 60 epochs × 4 steps: the small-data hint


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    """Four real photos with hand-written boxes (in the saved images' pixels)."""
    import skimage.data

    root = tmp_path_factory.mktemp("coco")
    (root / "images").mkdir()
    photos = {"astronaut.jpg": (skimage.data.astronaut(), (128, 128)), "coffee.jpg": (skimage.data.coffee(), (192, 128)),
              "chelsea.jpg": (skimage.data.chelsea(), (192, 128)), "rocket.jpg": (skimage.data.rocket(), (192, 128))}
    images = []
    for i, (name, (arr, size)) in enumerate(photos.items(), start=1):
        Image.fromarray(arr).resize(size).save(root / "images" / name)
        images.append({"id": i, "file_name": name, "width": size[0], "height": size[1]})
    anns = [
        {"image_id": 1, "category_id": 1, "bbox": [22, 4, 90, 124], "iscrowd": 0},   # astronaut
        {"image_id": 1, "category_id": 4, "bbox": [0, 0, 30, 60], "iscrowd": 0},     # flag
        {"image_id": 2, "category_id": 2, "bbox": [30, 10, 130, 100], "iscrowd": 0},  # cup
        {"image_id": 2, "category_id": 2, "bbox": [5, 5, 4, 4], "iscrowd": 0},       # below --min-box
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 20, 20], "iscrowd": 1},     # crowd: presence only
        {"image_id": 3, "category_id": 3, "bbox": [40, 5, 110, 120], "iscrowd": 0},  # cat
        {"image_id": 3, "category_id": 1, "bbox": [0, 60, 40, 60], "iscrowd": 0, "difficult": 1},
        {"image_id": 1, "category_id": 4, "bbox": [100, 0, 28, 40], "iscrowd": 0, "difficult": 1},
    ]
    for k, a in enumerate(anns, start=1):
        a.update(id=k, area=a["bbox"][2] * a["bbox"][3])
    cats = [{"id": 1, "name": "person"}, {"id": 2, "name": "cup"}, {"id": 3, "name": "cat"}, {"id": 4, "name": "flag"}]
    (root / "train.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def test_coco_labels(tiny_coco):
    from sslkit.eval.data import load_split

    js = tiny_coco / "train.json"
    objects = load_split(js, "objects")
    assert [it.file_name for it in objects.items] == ["astronaut.jpg", "coffee.jpg", "chelsea.jpg"]
    assert [it.labels.tolist() for it in objects.items] == [[0, 3], [1], [2]]
    np.testing.assert_array_equal(objects.items[0].boxes, [[22, 4, 112, 128], [0, 0, 30, 60]])
    multi = load_split(js, "multilabel")
    # person: astronaut yes, coffee (crowd) yes, chelsea only difficult → ignored; flag: real + difficult → 1
    assert [it.labels[0].tolist() for it in multi.items] == [[1, 0, 0, 1], [1, 1, 0, 0], [-1, 0, 1, 0],
                                                              [0, 0, 0, 0]]
    assert load_split(js, "multilabel").fingerprint == multi.fingerprint != objects.fingerprint


def test_coco_objects_and_multilabel(tiny_coco, tmp_path, capsys):
    js = tiny_coco / "train.json"
    base = ("random", "--train", js, "--val", js, *COMMON, "--cache-dir", tmp_path / "c", "--protocol", "knn",
            "--k", "1", "--json")
    # 1-NN of a sample onto its own split is itself: proves crops, labels and rows line up
    assert sslkit("linprobe", *base, "--task", "objects") == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["classes"] == ["person", "cup", "cat", "flag"] and rec["task"] == "objects"
    assert rec["train"]["num_images"] == 3 and rec["train"]["num_samples_used"] == 4  # tiny box, crowd, rocket out
    assert rec["results"]["res5"]["top1"] == 100
    assert sslkit("linprobe", *base, "--task", "multilabel") == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["primary_metric"] == "mAP" and rec["train"]["num_samples_used"] == 4
    assert rec["results"]["res5"]["mAP"] == 100 and rec["results"]["res5"]["classes_evaluated"] == 4
    assert "chance" not in rec
    # the linear and SVM paths on multi-label data
    for extra in (("--protocol", "linear", "--solver", "lbfgs"), ("--protocol", "svm")):
        assert sslkit("linprobe", *base, *extra, "--task", "multilabel") == 0
        rec = json.loads(capsys.readouterr().out)
        assert 0 <= rec["results"]["res5"]["mAP"] <= 100 and rec["val"]["cache"]["hit"]


def test_object_crops_keep_their_labels(tmp_path, capsys):
    """Solid colour patches, category = colour, laid out differently in train and val: a 1-NN
    probe is only right if every crop row carries its own annotation's label."""
    colours = {1: (220, 30, 30), 2: (30, 200, 30), 3: (40, 40, 230)}
    layouts = {"train": [(1, [4, 4, 20, 20]), (2, [30, 30, 24, 24]), (3, [60, 8, 28, 20])],
               "val": [(3, [2, 30, 20, 20]), (1, [40, 2, 30, 30]), (2, [70, 40, 20, 20])]}
    cats = [{"id": c, "name": n} for c, n in ((1, "red"), (2, "green"), (3, "blue"))]
    for split, patches in layouts.items():
        img = np.full((64, 96, 3), 128, np.uint8)
        anns = []
        for k, (cat, (x, y, w, h)) in enumerate(patches, start=1):
            img[y:y + h, x:x + w] = colours[cat]
            anns.append({"id": k, "image_id": 7, "category_id": cat, "bbox": [x, y, w, h], "iscrowd": 0})
        Image.fromarray(img).save(tmp_path / f"{split}.png")
        (tmp_path / f"{split}.json").write_text(json.dumps({
            "images": [{"id": 7, "file_name": f"{split}.png", "width": 96, "height": 64}],
            "annotations": anns[::-1], "categories": cats}))
    assert sslkit("linprobe", "random", "--train", tmp_path / "train.json", "--val", tmp_path / "val.json",
                  "--task", "objects", *COMMON, "--protocol", "knn", "--k", "1", "--no-cache", "--json") == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["results"]["res5"]["top1"] == 100 and rec["val"]["num_samples_used"] == 3
    assert rec["train"]["cache"]["path"] is None


def test_cli_errors(tiny_coco, colour_folders, tmp_path, capsys):
    js = tiny_coco / "train.json"
    cases = [
        (("random", "--train", js, "--val", js, *COMMON), "--task"),
        (("random", "--train", colour_folders / "train", "--val", colour_folders / "val", "--image-size", "32",
          "--workers", "0"), "--arch"),
        (("random", "--train", colour_folders / "train", "--val", js, "--task", "objects", *COMMON), "--task objects"),
        (("random", "--train", colour_folders / "train", "--val", colour_folders / "val", *COMMON, "--layers", "res6"),
         "res6"),
        ((tmp_path / "missing.pth", "--train", colour_folders / "train", "--val", colour_folders / "val", *COMMON),
         "no such file"),
        (("random", "--train", colour_folders / "train", "--val", colour_folders / "val", *COMMON, "--low-shot", "2"),
         "--protocol svm"),
        (("random", "--train", js, "--val", js, "--task", "multilabel", *COMMON, "--protocol", "svm",
          "--low-shot", "1"), "too little training data"),
    ]
    for args, needle in cases:
        assert sslkit("linprobe", *args, "--cache-dir", tmp_path / "c") == 2, args
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


# -- weight decay chosen by grouped cross-validation ----------------------------------------------

def test_group_folds_keep_groups_whole_and_balance_sizes():
    from sslkit.eval.linear import group_folds

    groups = np.repeat(np.arange(12), [9, 1, 4, 4, 2, 7, 3, 3, 5, 1, 6, 2])
    fold = group_folds(groups, 3, seed=0)
    for g in np.unique(groups):
        assert len(set(fold[groups == g])) == 1  # a group never straddles folds
    sizes = np.bincount(fold, minlength=3)
    assert sizes.sum() == len(groups) and sizes.max() - sizes.min() <= 9  # within the largest group
    np.testing.assert_array_equal(fold, group_folds(groups, 3, seed=0))  # deterministic
    assert any((group_folds(groups, 3, seed=s) != fold).any() for s in range(1, 6))  # the seed shuffles
    assert sorted(np.bincount(group_folds(np.arange(10), 5, seed=3))) == [2] * 5  # one sample per group
    with pytest.raises(ValueError, match="2 groups cannot make 3"):
        group_folds(np.array([0, 0, 1]), 3)


def test_weight_decay_search_is_the_best_mean_fold_score():
    """The chosen value is the grid's best mean held-out-fold top-1 (ties → larger), recomputed here fold
    by fold; the refit with it classifies new samples."""
    from dataclasses import replace

    from sslkit.eval.linear import group_folds, select_weight_decay

    g = np.random.default_rng(0)
    x, y = blobs(40, 3, 16, seed=0, spread=2.5)  # overlapping classes: the penalty matters
    x = np.concatenate([x, g.normal(size=(len(x), 48)).astype(np.float32) * 2], 1)  # plus pure-noise dimensions
    groups = np.arange(len(y)) // 4
    cfg, grid = LinearConfig(solver="lbfgs", seed=1), (1e-6, 1e-3, 1e-1, 1.0, 30.0)
    wd, info = select_weight_decay(x, y, groups, 3, False, cfg, grid, 4, CPU)
    fold = group_folds(groups, 4, seed=1)
    ref = []
    for v in grid:
        accs = []
        for k in range(4):
            head = train_linear(x[fold != k], y[fold != k], 3, False, replace(cfg, weight_decay=v), CPU)
            accs.append((predict(head, x[fold == k], CPU).argmax(1) == y[fold == k]).mean() * 100)
        ref.append(np.mean(accs))
    assert info["cv_scores"] == pytest.approx(ref, abs=1e-3)
    best = max(range(len(grid)), key=lambda i: (round(ref[i], 4), grid[i]))
    assert wd == grid[best] == info["chosen"] and info["fold_sizes"] == np.bincount(fold).tolist()
    assert ref[0] < max(ref)  # the noise dimensions make some penalty better than none
    xv, yv = blobs(100, 3, 16, seed=5, spread=2.5)
    xv = np.concatenate([xv, g.normal(size=(len(xv), 48)).astype(np.float32) * 2], 1)
    acc = (predict(train_linear(x, y, 3, False, replace(cfg, weight_decay=wd), CPU), xv, CPU).argmax(1) == yv).mean()
    acc0 = (predict(train_linear(x, y, 3, False, replace(cfg, weight_decay=1e-6), CPU), xv, CPU).argmax(1) == yv).mean()
    assert acc >= acc0


@pytest.fixture(scope="module")
def shaded_coco(tmp_path_factory):
    """Six images of red/green/blue patches; each patch's annotation names its shade in ``source``
    (four shades per colour), as demo-data names the cutout photo an object came from."""
    root = tmp_path_factory.mktemp("shaded")
    base = {1: np.array([200, 30, 30]), 2: np.array([30, 190, 30]), 3: np.array([40, 40, 220])}
    cats = [{"id": c, "name": n} for c, n in ((1, "red"), (2, "green"), (3, "blue"))]
    g = np.random.default_rng(0)
    images, anns = [], []
    for i in range(1, 7):
        img = np.full((64, 96, 3), 128, np.uint8)
        for j, cat in enumerate((1, 2, 3)):
            shade = int(g.integers(4))
            x, y = 4 + 30 * j, int(g.integers(0, 30))
            img[y:y + 24, x:x + 24] = np.clip(base[cat] + 12 * shade, 0, 255)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, 24, 24],
                         "iscrowd": 0, "area": 576, "source": f"{cat}-{shade}"})
        Image.fromarray(img).save(root / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": 96, "height": 64})
    (root / "train.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def test_row_groups_follow_the_cached_rows(shaded_coco, tmp_path):
    from sslkit.eval.data import load_split
    from sslkit.eval.features import cached_features
    from sslkit.models.convert import load_backbone

    split = load_split(shaded_coco / "train.json", "objects", group_field="source")
    net, meta = load_backbone("random", arch="resnet_tiny", seed=0)
    for _ in range(2):  # extracted, then read back from the cache
        fs = cached_features(net, meta, split, Preprocess(32), ["res5"], "avg", tmp_path, "train", CPU, 4, 0)
        groups = fs.row_groups(split)
        assert len(groups) == len(fs.labels) == 18
        assert [int(s.split("-")[0]) - 1 for s in groups] == fs.labels.tolist()  # each row has its own annotation
    assert fs.cache_hit
    with pytest.raises(Exception, match="has no 'colour' field"):
        load_split(shaded_coco / "train.json", "objects", group_field="colour")


def test_cli_cross_validated_weight_decay(shaded_coco, tmp_path, capsys):
    from sslkit.eval.linear import WD_GRID

    js = shaded_coco / "train.json"
    args = ("linprobe", "random", "--train", js, "--val", js, "--task", "objects", *COMMON, "--protocol", "linear",
            "--solver", "lbfgs", "--cache-dir", tmp_path / "c")
    assert sslkit(*args, "--wd", "auto", "--cv-group", "source", "--folds", "3", "--json") == 0
    rec = json.loads(capsys.readouterr().out)
    r = rec["results"]["res5"]
    assert r["wd_search"]["grid"] == list(WD_GRID) and r["weight_decay"] in WD_GRID
    assert sum(r["wd_search"]["fold_sizes"]) == 18 and len(r["wd_search"]["cv_scores"]) == len(WD_GRID)
    assert rec["settings"]["weight_decay"] == "cross-validated" and rec["settings"]["cv_group"] == "source"
    assert r["top1"] >= 90  # colours: separable
    assert sslkit(*args, "--wd", "1e-3,1e-1", "--folds", "2", "--json") == 0  # a list, grouped by image
    rec = json.loads(capsys.readouterr().out)
    assert rec["results"]["res5"]["wd_search"]["grid"] == [1e-3, 1e-1] and rec["settings"]["cv_group"] == "image"
    assert sslkit(*args, "--wd", "0.5", "--json") == 0  # one value: fixed, no search
    rec = json.loads(capsys.readouterr().out)
    assert "wd_search" not in rec["results"]["res5"] and rec["settings"]["weight_decay"] == 0.5
    for extra, needle in ((("--wd", "auto", "--cv-group", "colour"), "has no 'colour' field"),
                          (("--cv-group", "source"), "--cv-group only applies"),
                          (("--wd", "auto", "--folds", "7"), "6 image groups"),
                          (("--wd", "small"), "--wd 'small'"),
                          (("--wd", "auto", "--protocol", "knn"), "is for --protocol linear")):
        assert sslkit(*args, *extra) == 2, extra
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
