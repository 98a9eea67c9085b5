"""DetCon: mask tracking through the views, and training through the CLI on real images."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from sslkit.engine import config as C
from sslkit.methods import METHODS
from sslkit.methods.detcon_ops import detcon_loss
from sslkit.transforms import IMAGENET_MEAN, IMAGENET_STD, ViewAug
from sslkit.views.detcon import FIELD_OFFSET, DetConViews, feature_grid
from tests.conftest import assert_learns, free_port, real_photo, train_on_fixed_batch
from tests.conftest import run_cli as sslkit

PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255]], np.uint8)


def _scene(h=96, w=128):
    """A label map of 6 vertical/horizontal blocks (asymmetric, so a missed flip shows) and its colour image."""
    lab = np.zeros((h, w), np.int64)
    lab[:, 20:50] = 1
    lab[:, 50:] = 2
    lab[60:, 70:] = 3
    lab[:30, 100:] = 4
    lab[40:60, :20] = 5
    return lab, PALETTE[lab]


def _decode(view: torch.Tensor) -> np.ndarray:
    """Nearest palette index of every pixel of a normalised view."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    rgb = ((view * std + mean) * 255).permute(1, 2, 0).numpy()
    d = ((rgb[:, :, None, :] - PALETTE[None, None].astype(np.float32)) ** 2).sum(-1)
    return d.argmin(-1)


def test_label_map_stays_aligned_with_pixels_through_crop_and_flip():
    lab, img = _scene()
    plain = ViewAug(size=64, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0, flip_p=0.5)
    views = DetConViews((plain, replace(plain, flip_p=1.0)), num_masks=16, keep_labels=True)
    flips_seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        v1, v2, o1, o2, i1, i2, m1, m2 = views(img, lab[None])
        for v, m in ((v1, m1), (v2, m2)):
            got = _decode(v)
            m = m[0].numpy()
            # interior pixels (3×3 neighbourhood in one segment) must show their segment's colour
            pad = np.pad(m, 1, mode="edge")
            same = np.ones_like(m, bool)
            for dy in range(3):
                for dx in range(3):
                    same &= pad[dy:dy + m.shape[0], dx:dx + m.shape[1]] == m
            assert same.sum() > 0.5 * m.size
            assert (got[same] == m[same]).all()
        # segment 4 sits top-right: after a flip it is on the left half
        ys, xs = np.nonzero(m2[0].numpy() == 4)
        if len(xs):
            flips_seen.add(bool(xs.mean() < 32))
        assert o1.shape == (1, feature_grid(64), feature_grid(64))
        assert set(i1.tolist()) <= set(torch.unique(o1).tolist())
        assert set(i2.tolist()) <= set(torch.unique(o2).tolist())
    assert True in flips_seen


def test_fields_are_offset_and_owners_per_field():
    lab, img = _scene(64, 64)
    plain = ViewAug(size=64, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
    views = DetConViews((plain, plain), num_masks=32)
    two = np.stack([lab, (lab > 2).astype(np.int64) + FIELD_OFFSET])
    torch.manual_seed(0)
    v1, v2, o1, o2, i1, i2 = views(img, two)
    assert o1.shape == (2, 2, 2)
    assert (o1[0] < FIELD_OFFSET).all() and (o1[1] >= FIELD_OFFSET).all()
    assert (i1 >= FIELD_OFFSET).any() and (i1 < FIELD_OFFSET).any()  # sampled from the union


def test_feature_grid_matches_resnet():
    from sslkit.models.backbones import build_backbone, res5

    net = build_backbone("resnet_tiny").eval()
    for size in (32, 64, 70, 96, 224):
        with torch.no_grad():
            assert res5(net, torch.zeros(1, 3, size, size)).shape[-1] == feature_grid(size)


# ----------------------------------------------------------------------------- training


def _cfg(method: str, **over) -> dict:
    cls = METHODS[method]
    layer = {"arch": "resnet_tiny", "image_size": 64, "batch_size": 4, "proj_hidden_dim": 64, "proj_dim": 32,
             "masks": "unused.h5", **over}
    if method == "detcon-b":
        layer["pred_hidden_dim"] = 64
    return C.resolve(cls, [("test", layer)])


def _fixed_batch(method: str, n: int = 4):
    """Real photos with FH masks, through the method's own views (fixed once)."""
    from sslkit.proposals.masks import felzenszwalb

    views = METHODS[method].make_transform(_cfg(method))
    samples = []
    for i, name in enumerate(("astronaut", "coffee", "chelsea", "rocket")[:n]):
        img = real_photo(name, 96)
        labels = felzenszwalb(img, scale=100, min_size=20).astype(np.int64)[None]
        torch.manual_seed(i)
        samples.append(views(img, labels))
    return torch.utils.data.default_collate(samples)


@pytest.mark.parametrize("method", ["detcon-s", "detcon-b"])
def test_loss_decreases_on_a_fixed_batch(method):
    torch.manual_seed(0)
    model = METHODS[method](_cfg(method))
    assert_learns(train_on_fixed_batch(model, _fixed_batch(method)))



def _latents():
    g = torch.Generator().manual_seed(3)
    q1, q2, t1, t2 = (torch.randn(4, 6, 8, generator=g) for _ in range(4))
    id1 = torch.randint(0, 4, (4, 6), generator=g)
    id2 = torch.randint(0, 4, (4, 6), generator=g)
    return q1, q2, t1, t2, id1, id2


def _gather_worker(rank, world, port, out_dir):
    import torch.distributed as dist

    from sslkit import dist as sdist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n = 4 // world
        q1, q2, t1, t2, id1, id2 = (x[rank * n:(rank + 1) * n] for x in _latents())
        q1.requires_grad_()
        loss = detcon_loss(q1, q2, t1, t2, id1, id2, rank=rank, gather=sdist.all_gather)
        loss.backward()
        local = detcon_loss(q1.detach(), q2, t1, t2, id1, id2)  # negatives of this rank only
        torch.save({"loss": loss.detach(), "grad": q1.grad, "local": local}, os.path.join(out_dir, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_negatives_are_gathered_across_two_ranks(tmp_path):
    """Per-rank losses with all-gathered targets average to the loss of one process over the whole batch."""
    import torch.multiprocessing as mp

    mp.start_processes(_gather_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    r = [torch.load(tmp_path / f"r{i}.pt") for i in range(2)]
    q1, q2, t1, t2, id1, id2 = _latents()
    q1.requires_grad_()
    whole = detcon_loss(q1, q2, t1, t2, id1, id2)
    whole.backward()
    assert (r[0]["loss"] + r[1]["loss"]).item() / 2 == pytest.approx(whole.item(), rel=1e-5)
    torch.testing.assert_close(torch.cat([r[0]["grad"], r[1]["grad"]]) / 2, q1.grad, rtol=1e-4, atol=1e-7)
    # and the gathered negatives matter: without them the loss differs
    assert (r[0]["local"] + r[1]["local"]).item() / 2 != pytest.approx(whole.item(), rel=1e-3)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Demo scenes from real photos, with FH and grid masks from `sslkit propose`."""
    d = tmp_path_factory.mktemp("detcon")
    assert sslkit("demo-data", d / "demo", "--n", 10, "--min-side", 96, "--max-side", 128, "--quiet",
                  "--sources", "pip") == 0
    assert sslkit("propose", d / "demo" / "train.json", "--algo", "felzenszwalb", "-o", d / "fh.h5", "-q",
                  "--workers", 1) == 0
    assert sslkit("propose", d / "demo" / "train.json", "--algo", "grid", "-o", d / "grid.h5", "-q",
                  "--workers", 1) == 0
    return d


TRAIN = ["--arch", "resnet_tiny", "--image-size", 64, "--batch-size", 4, "--epochs", 1, "--warmup-epochs", 0,
         "--workers", 0, "--log-every", 1, "--no-tensorboard", "-q", "--set", "proj_hidden_dim=32",
         "--set", "proj_dim=16"]


@pytest.mark.parametrize("method,masks", [("detcon-s", "fh.h5"), ("detcon-b", "grid.h5")])
def test_trains_from_the_cli_on_propose_masks_and_exports(scenes, tmp_path, method, masks):
    out = tmp_path / "run"
    extra = ["--set", "pred_hidden_dim=32"] if method == "detcon-b" else []
    assert sslkit("pretrain", scenes / "demo" / "train.json", "-m", method, "--masks", scenes / masks,
                  "-o", out, *TRAIN, *extra) == 0
    logs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert len(logs) == 2 and all(math.isfinite(r["loss"]) for r in logs)
    assert all(0 < r["paired_masks"] <= 1 for r in logs)
    from sslkit.io.checkpoint import load_checkpoint

    ck = load_checkpoint(out / "last.pth")
    assert ck["config"]["masks"] == str((scenes / masks).resolve())
    assert ck["encoders"]["online"] == "backbone."
    assert sslkit("export", out / "last.pth", "-o", tmp_path / "w.pth") == 0


def test_bad_mask_inputs_are_one_line_errors(scenes, tmp_path, capsys):
    base = [scenes / "demo" / "train.json", "-o", tmp_path / "r", *TRAIN]
    assert sslkit("pretrain", "-m", "detcon-b", *base) == 2
    assert "detcon-b needs masks" in capsys.readouterr().err
    boxes = tmp_path / "ss.h5"
    assert sslkit("propose", scenes / "demo" / "train.json", "-o", boxes, "-q", "--workers", 1,
                  "--max-side", 64) == 0
    # a boxes file is painted into masks (tests/test_swap_matrix.py); its settings are checked first
    assert sslkit("pretrain", "-m", "detcon-b", "--masks", boxes, *base, "--set", "box_order=biggest") == 2
    assert "box_order must be one of large-first, small-first, rank" in capsys.readouterr().err
    assert sslkit("pretrain", "-m", "detcon-b", "--masks", boxes, *base, "--set", "mask_fields=fh_s1000_c1000") == 2
    assert "no label-map or box field 'fh_s1000_c1000'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert sslkit("pretrain", scenes / "demo" / "val.json", "-m", "detcon-s", "--masks", scenes / "fh.h5",
                  "-o", tmp_path / "r2", *TRAIN) == 2
    assert "has no masks for" in capsys.readouterr().err


def test_coco_gt_masks_and_views_picture(scenes, tmp_path):
    """`propose --algo coco-gt` writes the instance masks (the GT ablation); `show --views` draws both views."""
    from sslkit.io.artefacts import Artefact
    from sslkit.io.coco import annotations_by_image, load_coco

    gt = tmp_path / "gt.h5"
    train = scenes / "demo" / "train.json"
    assert sslkit("propose", train, "--algo", "coco-gt", "-o", gt, "-q", "--workers", 1) == 0
    coco = load_coco(train)
    by_image = annotations_by_image(coco)
    with Artefact(gt) as a:
        assert a.map_names == ["gt_instances"]
        for row in range(len(a)):
            lab = a.label_map("gt_instances", row)
            n = len([x for x in by_image[int(a.image_id[row])] if not x.get("iscrowd")])
            assert lab.shape == (a.height[row], a.width[row]) and lab.max() <= n
            assert set(np.unique(lab).tolist()) - {0} <= set(range(1, n + 1))
    png = tmp_path / "views.png"
    assert sslkit("show", gt, "--views", "detcon-b", "--size", 64, "-o", png) == 0
    from PIL import Image

    w, h = Image.open(png).size
    assert h == 256 and w == 2 * 256 + 6  # two 64-px views drawn at 256 px, side by side
    assert sslkit("show", gt, "--views", "byol", "-o", tmp_path / "x.png") == 2
    assert sslkit("propose", scenes / "demo" / "images", "--algo", "coco-gt", "-o", tmp_path / "y.h5", "-q") == 2
