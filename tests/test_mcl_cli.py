"""MCL through the CLI on real photos: pretrain at 64 px (windows 2×2) with resume, export of the FPN and
box head, their arrival in the detector, the frozen-montage stage and its picture."""

from __future__ import annotations

import itertools
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sslkit.io.checkpoint import load_checkpoint
from tests.conftest import REAL_PHOTOS, real_photo
from tests.conftest import run_cli as sslkit

TINY = ["--arch", "resnet_tiny", "--image-size", 64, "--batch-size", 32, "--workers", 0, "--quiet", "--no-tensorboard",
        "--warmup-epochs", 0, "--log-every", 1, "--set", "fpn_dim=16", "--set", "proj_hidden_dim=32",
        "--set", "proj_dim=16", "--set", "pred_hidden_dim=32"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """40 JPEGs (≤ 96 px): crops and flips of skimage's real photos; one step of 32 per epoch."""
    d = tmp_path_factory.mktemp("mclphotos")
    for name in REAL_PHOTOS:
        im = Image.fromarray(real_photo(name, 96))
        w, h = im.size
        crops = [(0, 0, w, h), (0, 0, w * 3 // 4, h * 3 // 4), (w // 4, h // 4, w, h), (w // 8, 0, w * 7 // 8, h)]
        for k, (box, flip) in enumerate(itertools.product(crops, (False, True))):
            c = im.crop(box)
            (c.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else c).save(d / f"{name}_{k}.jpg", quality=90)
    return d


@pytest.fixture(scope="module")
def full_run(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("mclrun") / "full"
    assert sslkit("pretrain", photos, "-m", "mcl", "-o", out, "--epochs", 3, *TINY) == 0
    return out


def test_pretrain_logs_every_level_and_resumes_bit_identically(photos, full_run, tmp_path):
    logs = [json.loads(x) for x in (full_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3]
    for r in logs:
        assert math.isfinite(r["loss"]) and r["grad_norm"] > 0
        assert all(f"{k}_l{s}" in r for k in ("loss", "pos_cos", "neg_cos") for s in range(4))
    ck = load_checkpoint(full_run / "last.pth")
    assert ck["config"]["grad_clip"] == 500.0 and ck["config"]["optimizer"] == "lars"
    assert ck["config"]["min_lr"] == 1e-4 and ck["config"]["weight_decay"] == 1e-5
    assert ck["parts"]["online"] == {"fpn": "fpn.", "head": "box_head."}
    assert ck["ema"]["pairs"]["target_fpn."] == "fpn."

    part = tmp_path / "part"
    assert sslkit("pretrain", photos, "-m", "mcl", "-o", part, "--epochs", 3, *TINY, "--max-steps", 2) == 0
    assert load_checkpoint(part / "last.pth")["step"] == 2
    assert sslkit("pretrain", photos, "-m", "mcl", "-o", part, "--epochs", 3, *TINY, "--workers", 1) == 0
    a, b = load_checkpoint(full_run / "last.pth"), load_checkpoint(part / "last.pth")
    assert a["step"] == b["step"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, st in a["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    assert [r["step"] for r in map(json.loads, (part / "log.jsonl").read_text().splitlines())] == [1, 2, 3]


def test_batch_and_size_rules_are_one_line_errors(photos, tmp_path, capsys):
    for bad, msg in ((["--batch-size", 48], "multiple of 32"), (["--image-size", 80], "multiple of 32"),
                     (["--set", "loss_mode=e"], "loss_mode")):
        capsys.readouterr()
        assert sslkit("pretrain", photos, "-m", "mcl", "-o", tmp_path / "x", *TINY, *bad) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2


def _detector(weights, arch="resnet_tiny"):
    """The torchvision detector ``sslkit detect`` builds from ``weights`` (its settings as detect resolves them)."""
    from sslkit.eval.detect import train as T
    from sslkit.eval.detect.model import parts_settings
    from sslkit.eval.detect.settings import DEFAULTS
    from sslkit.models.convert import backbone_state_dict

    meta = backbone_state_dict(weights)[1]
    cfg = {**DEFAULTS, "weights": str(weights), "arch": arch, **parts_settings(meta, {}),
           "resolved": {"categories": [{"id": 1, "name": "thing", "label": 1}], "train_sizes": [64], "test_size": 64}}
    return T.build_model(cfg, fresh_backbone=True)


def test_export_carries_fpn_and_box_head_into_the_detector(full_run, tmp_path):
    ck = load_checkpoint(full_run / "last.pth")["model"]
    outs = {"pkl": tmp_path / "mcl.pkl", "pth": tmp_path / "mcl.pth", "bb": tmp_path / "mcl_bb.pkl",
            "bf": tmp_path / "mcl_bf.pth"}
    assert sslkit("export", full_run / "last.pth", "-o", outs["pkl"], "-q") == 0
    assert sslkit("export", full_run / "last.pth", "-o", outs["pth"], "-q") == 0
    assert sslkit("export", full_run / "last.pth", "-o", outs["bb"], "--include", "backbone", "-q") == 0
    assert sslkit("export", outs["pkl"], "-o", outs["bf"], "--include", "backbone,fpn", "-q") == 0

    from sslkit.io.checkpoint import load_detectron2_pkl

    d2 = load_detectron2_pkl(outs["pkl"])["model"]
    assert {f"fpn_lateral{i}.norm.weight" for i in range(2, 6)} | {f"fpn_output{i}.weight" for i in range(2, 6)} | \
        {f"box_head.conv{i}.norm.running_mean" for i in range(1, 5)} <= d2.keys()
    assert not any(k.startswith(("fpn_", "box_head")) for k in load_detectron2_pkl(outs["bb"])["model"])

    def same(model, prefix, ck_prefix):
        sd = model.state_dict()
        keys = [k for k in sd if k.startswith(prefix) and not k.endswith("num_batches_tracked")]
        return bool(keys) and all(torch.equal(sd[k], ck[ck_prefix + k[len(prefix):]]) for k in keys)

    for kind in ("pkl", "pth"):
        model, line = _detector(outs[kind])
        assert same(model, "backbone.body.", "backbone.")
        assert same(model, "backbone.fpn.", "fpn.")
        head = torch.nn.Sequential(*list(model.roi_heads.box_head)[:4])
        assert all(torch.equal(v, ck["box_head." + k]) for k, v in head.state_dict().items()
                   if not k.endswith("num_batches_tracked"))
        assert "FPN" in line and "box-head convs 1-4" in line.split("from scratch")[0]
    model, line = _detector(outs["bb"])  # the ablation's "backbone only": FPN and head from scratch
    assert same(model, "backbone.body.", "backbone.") and not same(model, "backbone.fpn.", "fpn.")
    assert "from scratch: FPN, box-head convs" in line
    model, line = _detector(outs["bf"])  # "+ FPN"
    assert same(model, "backbone.fpn.", "fpn.") and "from scratch: box-head convs" in line


def test_detect_run_says_which_parts_came_from_the_export(full_run, tmp_path, capsys):
    demo = tmp_path / "demo"
    assert sslkit("demo-data", demo, "--n", 6, "--min-side", 96, "--max-side", 128, "--quiet") == 0
    pkl = tmp_path / "mcl.pkl"
    assert sslkit("export", full_run / "last.pth", "-o", pkl, "-q") == 0
    capsys.readouterr()
    rc = sslkit("detect", pkl, "--train", demo / "train.json", "--val", demo / "val.json", "--out", tmp_path / "det",
                "--iters", 1, "--min-size", 64, "--max-size", 96, "--batch-size", 2, "--workers", 0,
                "--precise-bn-iters", 0, "--no-tensorboard", "--log-every", 1)
    assert rc == 0
    err = capsys.readouterr().err
    assert "initialised from the weights: backbone, FPN" in " ".join(err.split())
    m = json.loads((tmp_path / "det" / "metrics.json").read_text())
    assert m["model"]["initialised_from_weights"] == ["backbone", "fpn", "head"] and m["model"]["fpn_channels"] == 16
    capsys.readouterr()
    assert sslkit("detect", pkl, "--train", demo / "train.json", "--val", demo / "val.json", "--out", tmp_path / "d2",
                  "--fpn-channels", 32, "--dry-run") == 2
    assert "contradicts the weights" in capsys.readouterr().err


def test_frozen_montages_are_the_training_montages_and_show_draws_them(photo_dir, tmp_path):
    from sslkit.config import resolve
    from sslkit.io.artefacts import Artefact
    from sslkit.io.images import ImageSource
    from sslkit.views.dataset import ImageDataset
    from sslkit.views.mcl import MCLViews, mcl_collate, mcl_view_augs, montage_views
    from sslkit.views.mcl_stage import MCLMontageStage, montages_from_file, to_uint8
    from sslkit.views.stage import StageInputs

    out = tmp_path / "montage.h5"
    settings = resolve(MCLMontageStage.SETTINGS, [("test", {"image_size": 64, "seed": 3})])
    res = MCLMontageStage.run(ImageSource.from_arg(photo_dir), out, settings, StageInputs(), overwrite=False, quiet=True)
    assert res.summary["montages_per_level"] == [32, 8, 2, 1] and res.summary["distinct_images"] == 5
    # the training code on the same (seed, epoch 0, slot) samples
    ds = ImageDataset(ImageSource.from_arg(photo_dir), MCLViews(mcl_view_augs(64), 4), 3)
    views, seed = mcl_collate([ds[(0, i)][0] for i in range(32)])
    (qx, qsrc), (kx, ksrc) = montage_views(views, seed, [32, 8, 2, 1])
    with Artefact(out) as art:
        assert art.attrs["views_kind"] == "mcl-montages" and len(art) == 32
        redrawn = montages_from_file(art)
        start = 0
        for s, count in enumerate([32, 8, 2, 1]):
            for v, x in ((0, qx), (1, kx)):
                assert np.array_equal(redrawn[(v, s)], to_uint8(x[start:start + count])), (v, s)
            assert np.array_equal(np.asarray(art.attrs[f"level{s}_sources_q"]), qsrc[s].numpy())
            start += count
        tiles = art.ragged("tiles", 7)
        assert len(tiles) == 2 * 5  # per view: levels 0, 1, 2 once, level 3 twice
        for v, lvl, m, r, c in tiles:
            src = np.asarray(art.attrs[f"level{lvl}_sources_{'qk'[v]}"])
            assert src[m * 4**lvl + r * 2**lvl + c] == 7
    png = tmp_path / "m.png"
    assert sslkit("show", out, "--image", 0, "-o", png) == 0
    im = np.asarray(Image.open(png))
    assert im.shape[0] > 400 and im.shape[1] > 4 * 320  # 2 views x 4 level panels
    assert MCLMontageStage.VIEWS_KIND == "mcl-montages"
    from sslkit.methods import METHODS

    assert METHODS["mcl"].view_stage is MCLMontageStage


@pytest.mark.slow
def test_two_rank_ddp_run(photos, tmp_path, capfd):
    """`--procs 2`: two gloo ranks of 16 images each (montages 16/4/1 at 3 levels)."""
    out = tmp_path / "ddp"
    args = [a for a in TINY if a != "--quiet"]
    assert sslkit("pretrain", photos, "-m", "mcl", "-o", out, "--epochs", 1, "--procs", 2, *args,
                  "--set", "levels=3") == 0
    assert "batch 32 (16/rank × 2)" in capfd.readouterr().err
    ck = load_checkpoint(out / "last.pth")
    assert ck["config"]["world_size"] == 2 and ck["step"] == 1
    shutil.rmtree(out)
