"""`sslkit detect`: COCO → targets, schedule arithmetic, COCO evaluation, the Mask R-CNN run
(train, Precise BN, predictions, resume, eval-only), the detectron2 config, and the viewer."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from sslkit.errors import UserError
from sslkit.eval.detect.data import load_detection_split
from sslkit.eval.detect.evaluate import evaluate
from sslkit.eval.detect.schedule import iters_1x, make_schedule, parse_schedule
from tests.conftest import real_photo
from tests.conftest import run_cli as sslkit

TINY = ["--arch", "resnet_tiny", "--min-size", "96", "--max-size", "128", "--batch-size", "2", "--fpn-channels", "16",
        "--workers", "0", "--log-every", "1", "--precise-bn-iters", "1", "--no-tensorboard", "--quiet"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """15 demo scenes (12 train / 3 val, 96–128 px) with one unreadable image in each split."""
    d = tmp_path_factory.mktemp("scenes")
    assert sslkit("demo-data", d, "--n", 15, "--min-side", 96, "--max-side", 128, "--quiet") == 0
    for split in ("train", "val"):
        name = json.loads((d / f"{split}.json").read_text())["images"][-1]["file_name"]
        (d / "images" / name).write_bytes(b"not a jpeg")
    return d


@pytest.fixture(scope="module")
def run4(scenes, tmp_path_factory):
    """An uninterrupted 4-iteration run with predictions."""
    out = tmp_path_factory.mktemp("det") / "run"
    rc = sslkit("detect", "random", "--train", scenes / "train.json", "--val", scenes / "val.json", "--out", out,
                "--iters", 4, "--save-predictions", *TINY)
    assert rc == 0
    return out


# -- data ---------------------------------------------------------------------------------------

def test_coco_polygons_and_rle_become_torchvision_targets(tmp_path):
    from pycocotools import mask as mask_utils

    (tmp_path / "im").mkdir()
    Image.fromarray(real_photo("astronaut", 64)).save(tmp_path / "im" / "a.jpg")
    Image.fromarray(real_photo("coffee", 64)).save(tmp_path / "im" / "b.jpg")
    h, w = real_photo("astronaut", 64).shape[:2]
    hb, wb = real_photo("coffee", 64).shape[:2]
    square = np.zeros((h, w), np.uint8)
    square[10:30, 20:44] = 1
    rle = mask_utils.encode(np.asfortranarray(square))
    rle["counts"] = rle["counts"].decode()
    coco = {
        "images": [{"id": 5, "file_name": "a.jpg", "height": h, "width": w},
                   {"id": 9, "file_name": "b.jpg", "height": hb, "width": wb}],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 7, "bbox": [2, 3, 10, 12], "iscrowd": 0,
             "segmentation": [[2, 3, 12, 3, 12, 15, 2, 15], [1, 1, 2, 2]]},  # 2nd part degenerate
            {"id": 2, "image_id": 5, "category_id": 3, "bbox": [20, 10, 24, 20], "iscrowd": 0, "segmentation": rle},
            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [w - 5, 0, 20, 8], "iscrowd": 0,  # clipped at the edge
             "segmentation": {"size": [h, w], "counts": [(w - 5) * h] + [8, h - 8] * 5}},  # column-major
            {"id": 4, "image_id": 5, "category_id": 7, "bbox": [30, 30, 0, 5], "iscrowd": 0},  # empty box
            {"id": 5, "image_id": 9, "category_id": 7, "bbox": [0, 0, 10, 10], "iscrowd": 1,
             "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},  # crowd: ignored
        ]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    split = load_detection_split(tmp_path / "c.json", tmp_path / "im")
    assert split.categories() == [{"id": 3, "name": "three", "label": 1}, {"id": 7, "name": "seven", "label": 2}]
    assert split.trainable() == [0]  # image 9 has only a crowd annotation
    t = split.target(5, h, w)
    assert t["labels"].tolist() == [2, 1, 1]
    assert t["boxes"].dtype == torch.float32
    assert t["boxes"].tolist() == [[2, 3, 12, 15], [20, 10, 44, 30], [w - 5, 0, w, 8]]
    assert t["masks"].shape == (3, h, w) and t["masks"].dtype == torch.uint8
    assert t["masks"][0, 5:13, 4:10].all() and t["masks"][0].sum() < 12 * 14  # the polygon, not the image
    assert torch.equal(t["masks"][1], torch.from_numpy(square))
    assert t["masks"][2, :8, w - 5:].all() and t["masks"][2].sum() == 40


def test_validation_split_must_share_the_categories(tmp_path, scenes):
    coco = json.loads((scenes / "val.json").read_text())
    dropped = coco["categories"].pop()
    coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] != dropped["id"]]
    (tmp_path / "v.json").write_text(json.dumps(coco))
    tr = load_detection_split(scenes / "train.json")
    with pytest.raises(UserError, match="categories differ"):
        load_detection_split(tmp_path / "v.json", scenes / "images", reference=tr)


# -- schedules ----------------------------------------------------------------------------------

def test_schedules_match_detectron2_on_coco():
    one = make_schedule("1x", 118_287, 16)
    assert (one.iters, one.steps, one.warmup_iters, one.base_lr) == (90_000, (60_000, 80_000), 1000, 0.02)
    assert one.epochs == pytest.approx(12.17, abs=0.01)
    two = make_schedule("2x", 118_287, 16)
    assert (two.iters, two.steps, two.warmup_iters) == (180_000, (120_000, 160_000), 1000)
    assert make_schedule("3x", 118_287, 16).steps == (210_000, 250_000)  # detectron2's 3x
    six = make_schedule("6x", 118_287, 16)
    assert (six.iters, six.steps) == (540_000, (480_000, 520_000))  # PyContrast's 6x
    assert make_schedule("1x", 118_287, 8).iters == 180_000 and make_schedule("1x", 118_287, 8).base_lr == 0.01
    assert make_schedule("1x", 118_287, 8).warmup_iters == 2000
    # lr: linear warm-up from 0.001·lr, ×0.1 from iteration 60k and 80k on
    assert one(0) == pytest.approx(0.02 * 0.001)
    assert one(500) == pytest.approx(0.02 * (0.001 * 0.5 + 0.5))
    assert one(1000) == one(59_999) == pytest.approx(0.02)
    assert one(60_000) == pytest.approx(0.002) and one(80_000) == pytest.approx(0.0002)


def test_schedules_scale_to_small_datasets():
    assert iters_1x(200, 4) == 609  # 12.17 epochs × 200 images / 4
    s = make_schedule("1x", 200, 4)
    assert (s.iters, s.warmup_iters, s.steps, s.base_lr) == (609, 7, (406, 541), 0.005)
    assert make_schedule("2x", 200, 4).iters == 1218 and make_schedule("0.5x", 200, 4).iters == 304
    assert make_schedule("2x", 200, 4).warmup_iters == 7  # the 1x warm-up, as detectron2's 2x keeps 1000
    o = make_schedule("1x", 200, 4, iters=90)
    assert (o.iters, o.steps, o.warmup_iters) == (90, (60, 80), 1)
    assert make_schedule("1x", 200, 4, iters=90, steps=[50], warmup_iters=0).steps == (50,)
    assert parse_schedule("1.5x") == 1.5 and parse_schedule("2×") == 2.0
    for bad in ("fast", "0x", "x", "-1x"):
        with pytest.raises(UserError):
            parse_schedule(bad)


# -- evaluation ---------------------------------------------------------------------------------

def test_evaluation_of_the_ground_truth_is_perfect_and_of_shifted_boxes_is_not(scenes):
    gt = json.loads((scenes / "val.json").read_text())
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0,
                "segmentation": a["segmentation"]} for a in gt["annotations"]]
    ev = evaluate(gt, perfect)
    for iou in ("bbox", "segm"):
        assert ev[iou]["AP"] == ev[iou]["AP50"] == ev[iou]["AP75"] == 100.0
        assert all(v in (None, 100.0) for v in ev[iou]["per_category"].values())
    shifted = [dict(d, bbox=[d["bbox"][0] + 0.15 * d["bbox"][2], d["bbox"][1], d["bbox"][2], d["bbox"][3]]) for d in perfect]
    ev = evaluate(gt, shifted, iou_types=("bbox",))
    assert 0 < ev["bbox"]["AP"] < 100.0 and ev["bbox"]["AP75"] < ev["bbox"]["AP50"]
    assert evaluate(gt, [], iou_types=("bbox",))["bbox"]["AP"] == 0.0
    # only the evaluated images count: the misses of a left-out image do not
    first = gt["images"][0]["id"]
    ev = evaluate(gt, [d for d in perfect if d["image_id"] == first], image_ids=[first], iou_types=("bbox",))
    assert ev["bbox"]["AP"] == 100.0


# -- model pieces -------------------------------------------------------------------------------

def test_roi_align_v2_is_aligned_roi_align():
    from torchvision.ops import roi_align

    from sslkit.eval.detect.model import ROIAlignV2

    torch.manual_seed(0)
    feat = torch.rand(2, 3, 16, 16)
    boxes = [torch.tensor([[4.0, 4.0, 40.0, 36.0]]), torch.tensor([[0.0, 8.0, 60.0, 60.0], [10.0, 10.0, 20.0, 30.0]])]
    out = ROIAlignV2(["p"], 7)({"p": feat, "q": feat}, boxes, [(64, 64), (64, 64)])
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    assert torch.allclose(out, roi_align(feat, rois, 7, 0.25, 0, aligned=True))
    assert not torch.allclose(out, roi_align(feat, rois, 7, 0.25, 0, aligned=False))


def test_freeze_at_and_weight_decay_groups():
    from torch import nn

    from sslkit.eval.detect.model import build_mask_rcnn, optimizer_param_groups
    from sslkit.models.backbones import build_backbone

    m = build_mask_rcnn(build_backbone("resnet_tiny"), 3, train_sizes=(80, 96), test_size=96, max_size=128,
                        fpn_channels=16, freeze_at=2)
    body = m.backbone.body
    assert not any(p.requires_grad for n in ("conv1", "bn1", "layer1") for p in body.get_submodule(n).parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())
    m.train()
    assert not body.bn1.training and not body.layer1[0].bn1.training and body.layer2[0].bn1.training
    assert m.transform.min_size == (80, 96)
    m.eval()
    assert m.transform.min_size == (96,)
    groups = {g["name"]: g for g in optimizer_param_groups(m, 1e-4)}
    norm_ids = {id(p) for mod in m.modules() if isinstance(mod, nn.BatchNorm2d) and mod.weight.requires_grad
                for p in mod.parameters()}
    assert {id(p) for p in groups["norm"]["params"]} == norm_ids and groups["norm"]["weight_decay"] == 0.0
    assert groups["default"]["weight_decay"] == 1e-4
    assert sum(len(g["params"]) for g in groups.values()) == sum(p.requires_grad for p in m.parameters())


# -- the run ------------------------------------------------------------------------------------

def test_detect_trains_evaluates_and_writes_coco_results(run4, scenes):
    from sslkit.io.checkpoint import load_checkpoint
    from sslkit.models.convert import load_backbone

    log = [json.loads(line) for line in (run4 / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in log)
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= log[0].keys()
    m = json.loads((run4 / "metrics.json").read_text())
    assert m["format"] == "sslkit.detect_metrics" and m["finished"] and m["precise_bn"]
    for iou in ("bbox", "segm"):
        assert 0.0 <= m[iou]["AP"] <= 100.0 and set(m[iou]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    # the unreadable images: listed, and the val one left out of the evaluation
    val_json = json.loads((scenes / "val.json").read_text())
    bad_val = val_json["images"][-1]["file_name"]
    assert [s["file_name"] for s in m["val"]["skipped"]] == [bad_val]
    assert m["val"]["num_images_evaluated"] == len(val_json["images"]) - 1
    listed = (run4 / "skipped_images.tsv").read_text()
    assert bad_val in listed
    # COCO results: loadable by pycocotools, on evaluated val images, category ids of the json
    res = json.loads((run4 / "predictions.json").read_text())
    assert res and m["num_detections"] == len(res)
    from pycocotools.coco import COCO

    from sslkit.eval.detect.evaluate import _coco, prepare_gt

    gt = _coco(prepare_gt(val_json))
    assert isinstance(gt.loadRes(res), COCO)
    cats = {c["id"] for c in val_json["categories"]}
    good_ids = {im["id"] for im in val_json["images"][:-1]}
    assert all(r["category_id"] in cats and r["image_id"] in good_ids and len(r["bbox"]) == 4 for r in res)
    assert all("counts" in r["segmentation"] for r in res)
    # the checkpoint: weights_only loadable, everything a resume needs; its backbone is usable elsewhere
    ck = load_checkpoint(run4 / "last.pth")
    assert ck["iteration"] == 4 and ck["precise_bn"]
    assert {"model", "optimizer", "scheduler", "rng", "config"} <= ck.keys()
    assert ck["config"]["resolved"]["categories"][0]["label"] == 1
    net, meta = load_backbone(run4 / "last.pth")
    assert meta["arch"] == "resnet_tiny" and meta["method"] == "detect"


def test_resume_after_interruption_continues_and_matches(run4, scenes, tmp_path):
    out = tmp_path / "run"
    args = ["detect", "random", "--train", scenes / "train.json", "--val", scenes / "val.json", "--out", out,
            "--iters", 4, *TINY]
    assert sslkit(*args, "--max-iters", 2) == 0
    assert torch.load(out / "last.pth", weights_only=True)["iteration"] == 2
    assert not (out / "metrics.json").exists()
    assert sslkit(*args) == 0
    assert [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    a = torch.load(out / "last.pth", weights_only=True)
    b = torch.load(run4 / "last.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    assert json.loads((out / "metrics.json").read_text())["bbox"] == json.loads((run4 / "metrics.json").read_text())["bbox"]
    # a finished run is only evaluated again; changing a setting of the run is refused
    assert sslkit(*args) == 0
    assert sslkit("detect", "--out", out, "--batch-size", 4) == 2


def test_eval_only_reevaluates_the_checkpoint(run4, tmp_path):
    assert sslkit("detect", "--out", run4, "--eval-only", "--workers", 0, "--quiet", "-o", tmp_path / "m.json") == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["eval_only"] and m["iteration"] == 4
    assert m["bbox"] == json.loads((run4 / "metrics.json").read_text())["bbox"]


def test_show_draws_predictions_and_ground_truth(run4, scenes, tmp_path):
    val = json.loads((scenes / "val.json").read_text())
    im = val["images"][0]
    assert sslkit("show", run4 / "predictions.json", "--image", im["id"], "--top", 5, "-o", tmp_path / "p.png") == 0
    assert np.asarray(Image.open(tmp_path / "p.png")).shape == (im["height"], im["width"], 3)
    assert sslkit("show", run4 / "predictions.json", "--image", im["file_name"], "--field", "gt",
                  "-o", tmp_path / "g.png") == 0
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "p.png")), np.asarray(Image.open(tmp_path / "g.png")))
    # detection results without the sidecar: the COCO json must be named
    bare = tmp_path / "results.json"
    shutil.copy(run4 / "predictions.json", bare)
    assert sslkit("show", bare, "-o", tmp_path / "x.png") == 2
    assert sslkit("show", bare, "--images", scenes / "val.json", "-o", tmp_path / "x.png") == 0


# -- detectron2 ---------------------------------------------------------------------------------

def test_detectron2_config_and_weights(scenes, tmp_path):
    from sslkit.eval.detect import d2
    from sslkit.models.convert import load_backbone

    out = tmp_path / "d2"
    assert sslkit("detect", "random", "--arch", "resnet18", "--train", scenes / "train.json", "--val",
                  scenes / "val.json", "--out", out, "--engine", "detectron2", "--dry-run", "--device", "cpu",
                  "--batch-size", 4, "--quiet") == 0
    text = (out / "d2_config.yaml").read_text()
    assert "_BASE_" not in text and "PyContrast" in text
    c = yaml.safe_load(text)
    m = c["MODEL"]
    assert m["META_ARCHITECTURE"] == "GeneralizedRCNN" and m["MASK_ON"] is True
    assert m["WEIGHTS"] == str((out / "backbone_d2.pkl").resolve())
    assert m["PIXEL_MEAN"] == [123.675, 116.28, 103.53] and m["PIXEL_STD"] == [58.395, 57.12, 57.375]
    assert c["INPUT"]["FORMAT"] == "RGB" and m["RESNETS"]["STRIDE_IN_1X1"] is False
    assert m["RESNETS"]["DEPTH"] == 18 and m["RESNETS"]["RES2_OUT_CHANNELS"] == 64
    assert m["BACKBONE"] == {"NAME": "build_resnet_fpn_backbone", "FREEZE_AT": 0}
    assert m["ROI_BOX_HEAD"]["NUM_CONV"] == 4 and m["ROI_BOX_HEAD"]["NUM_FC"] == 1
    assert m["RESNETS"]["NORM"] == m["FPN"]["NORM"] == m["ROI_BOX_HEAD"]["NORM"] == m["ROI_MASK_HEAD"]["NORM"] == "BN"
    assert m["ROI_HEADS"]["NUM_CLASSES"] == len(json.loads((scenes / "train.json").read_text())["categories"])
    assert c["TEST"]["PRECISE_BN"]["ENABLED"] is True
    assert c["INPUT"]["MIN_SIZE_TRAIN"] == [640, 672, 704, 736, 768, 800] and c["INPUT"]["MIN_SIZE_TEST"] == 800
    s = make_schedule("1x", 12, 4)  # 12 training scenes with objects (images are decoded only when used)
    assert c["SOLVER"]["MAX_ITER"] == s.iters and c["SOLVER"]["STEPS"] == list(s.steps)
    assert c["SOLVER"]["IMS_PER_BATCH"] == 4 and c["SOLVER"]["BASE_LR"] == pytest.approx(0.005)
    assert c["SOLVER"]["WEIGHT_DECAY_NORM"] == 0.0 and c["SOLVER"]["WARMUP_FACTOR"] == 0.001
    net, meta = load_backbone(out / "backbone_d2.pkl")
    assert meta["arch"] == "resnet18" and meta["backbone_sha256"] == load_backbone("random", "resnet18")[1]["backbone_sha256"]
    # several GPUs: SyncBN everywhere, as the InfoMin config
    synced = d2.config_dict({"arch": "resnet50", "norm": "syncbn", "device": "cuda", "freeze_at": 0, "fpn_channels": 256,
                             "precision": "fp16", "workers": 4, "max_size": 1333, "batch_size": 16, "momentum": 0.9,
                             "weight_decay": 1e-4, "weight_decay_norm": 0.0, "seed": 0, "resolved": {
                                 "categories": [{}] * 80, "train_sizes": [640, 800], "test_size": 800,
                                 "schedule": make_schedule("1x", 118_287, 16).describe(), "save_every": 5000,
                                 "precise_bn_iters": 200}}, "w.pkl", "out", num_gpus=8)
    assert synced["MODEL"]["RESNETS"]["NORM"] == synced["MODEL"]["ROI_MASK_HEAD"]["NORM"] == "SyncBN"
    assert synced["SOLVER"]["STEPS"] == [60_000, 80_000] and synced["SOLVER"]["AMP"]["ENABLED"] is True
    assert synced["TEST"]["PRECISE_BN"]["NUM_ITER"] == 200


def test_detectron2_results_become_sslkit_metrics(tmp_path):
    from sslkit.eval.detect import d2

    cfg = {"weights": "random", "arch": "resnet50", "encoder": None, "backbone_sha256": "x", "train": "t.json",
           "val": "v.json", "resolved": {"num_train_images": 10, "num_train_images_used": 9, "num_val_images": 3,
                                         "categories": [], "schedule": {"iters": 5}}}
    evaluator_out = {"bbox": {"AP": 40.1234567, "AP50": 60.0, "AP75": 44.0, "APs": float("nan"), "APm": 30.0,
                              "APl": 50.0, "AP-cat": 41.0, "AP-fire hydrant": float("nan")},
                     "segm": {"AP": 36.0, "AP50": 57.0, "AP75": 38.0, "APs": 10.0, "APm": 30.0, "APl": 50.0}}
    m = d2.metrics_record(cfg, evaluator_out, tmp_path, False, "cmd")
    assert m["engine"] == "detectron2" and m["bbox"]["AP"] == 40.1235 and m["bbox"]["APs"] is None
    assert m["bbox"]["per_category"] == {"cat": 41.0, "fire hydrant": None} and m["segm"]["AP75"] == 38.0
    json.dumps(m, allow_nan=False)


def test_detectron2_training(scenes, tmp_path):
    pytest.importorskip("detectron2")
    out = tmp_path / "d2"
    assert sslkit("detect", "random", "--arch", "resnet18", "--train", scenes / "train.json", "--val",
                  scenes / "val.json", "--out", out, "--engine", "detectron2", "--iters", 2, "--batch-size", 2,
                  "--min-size", 96, "--max-size", 128, "--precise-bn-iters", 1, "--workers", 0, "--quiet") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["engine"] == "detectron2" and 0.0 <= m["bbox"]["AP"] <= 100.0


# -- errors -------------------------------------------------------------------------------------

def test_bad_input_is_a_one_line_error(scenes, tmp_path, capsys):
    from sslkit.models.backbones import build_backbone

    base = ["--val", scenes / "val.json", "--out", tmp_path / "r", "--arch", "resnet_tiny"]
    cases = [
        (["detect", "random", "--train", tmp_path / "missing.json", *base], "no such file"),
        (["detect", "random", "--train", scenes / "train.json", "--val", scenes / "val.json", "--out", tmp_path / "r"],
         "--arch"),
        (["detect", tmp_path / "w.pth", "--train", scenes / "train.json", *base], "not a readable PyTorch file"),
        (["detect", "random", "--train", scenes / "train.json", *base, "--schedule", "fast"], "--schedule"),
        (["detect", "random", "--train", scenes / "train.json", *base, "--engine", "detectron2", "--device", "cpu"],
         "detectron2"),
        (["detect", "--out", tmp_path / "nothing", "--eval-only"], "nothing to evaluate"),
    ]
    (tmp_path / "w.pth").write_text("these are not weights")
    sd = {k: v for k, v in build_backbone("resnet_tiny").state_dict().items() if not k.startswith("layer4")}
    torch.save(sd, tmp_path / "partial.pth")
    cases.append((["detect", tmp_path / "partial.pth", "--train", scenes / "train.json", *base[:4]], "layer4"))
    for args, needle in cases:
        capsys.readouterr()
        assert sslkit(*args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and needle in err and "Traceback" not in err, err


@pytest.mark.slow
def test_two_cpu_processes_train_and_evaluate_together(scenes, tmp_path):
    out = tmp_path / "ddp"
    assert sslkit("detect", "random", "--train", scenes / "train.json", "--val", scenes / "val.json", "--out", out,
                  "--iters", 2, "--procs", 2, "--save-predictions", *TINY) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["solver"]["world_size"] == 2 and m["val"]["num_images_evaluated"] == m["val"]["num_images"] - 1
    assert {r["image_id"] for r in json.loads((out / "predictions.json").read_text())} <= \
        {im["id"] for im in json.loads((scenes / "val.json").read_text())["images"][:-1]}
