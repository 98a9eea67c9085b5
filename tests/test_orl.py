"""ORL: the stage-2 rules (kNN, pair rule, jitter) against brute force and hand-built inputs, and
all three stages through the CLI on demo scenes (stage 1 = one tiny BYOL epoch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from sslkit._testing import kill_at
from sslkit.ops.boxes import jitter_box, pixel_box
from sslkit.ops.knn import knn_search, pair_count, top_pairs
from tests.conftest import assert_learns, one_line_error, train_on_fixed_batch
from tests.conftest import run_cli as sslkit

# ----------------------------------------------------------------------------- pure rules

def test_knn_excludes_self_and_returns_the_true_top_k_with_duplicates():
    g = torch.Generator().manual_seed(0)
    # entries ±1/4: equal norms, and every dot product is exact in float32, so ties are real ties
    feats = (torch.randint(0, 2, (60, 16), generator=g).float() * 2 - 1) / 4
    feats[[5, 17, 40]] = feats[3].clone()  # duplicate images of image 3
    feats[20:32] = feats[19].clone()  # 13 identical images: more ties at the k-th place than k
    k = 5
    ids, sims = knn_search(feats, k, block_bytes=7 * 60 * 4)  # blocks of 7 queries
    full = (feats @ feats.T).numpy()
    for i in range(len(feats)):
        order = sorted((j for j in range(len(feats)) if j != i), key=lambda j: (-full[i, j], j))[:k]
        assert ids[i].tolist() == order, i
        np.testing.assert_array_equal(sims[i], full[i, order])
    assert not (ids == np.arange(len(feats))[:, None]).any()
    assert set(ids[3, :3].tolist()) == {5, 17, 40} and (sims[3, :3] == full[3, 3]).all()
    assert ids[19].tolist() == [20, 21, 22, 23, 24]  # duplicates of the query are neighbours, lowest rows first


def test_pair_rule_on_a_hand_built_similarity_matrix():
    assert [pair_count(b) for b in (0, 1, 9, 10, 19, 20, 23, 30, 100)] == [0, 1, 1, 1, 1, 2, 2, 3, 10]
    assert pair_count(23, 0.2) == 4 and pair_count(3, 0.5) == 1
    m = torch.zeros(23, 4)
    m[5, 2] = 0.9
    m[17, 0] = 0.8
    m[5, 3] = 0.8  # ties with (17, 0): the lower flat index (5·4+3 < 17·4) comes first
    m[0, 0] = 0.7
    qi, ni, sc = top_pairs(m, pair_count(23))  # n = max(1, int(0.1·23)) = 2 of the 92 entries
    assert qi.tolist() == [5, 5] and ni.tolist() == [2, 3] and sc.tolist() == pytest.approx([0.9, 0.8])
    qi, ni, _ = top_pairs(m, 4)
    assert list(zip(qi.tolist(), ni.tolist(), strict=True)) == [(5, 2), (5, 3), (17, 0), (0, 0)]
    qi, ni, _ = top_pairs(torch.ones(1, 1), 10)  # never more pairs than entries
    assert qi.tolist() == [0] and ni.tolist() == [0]


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_jitter_stays_in_the_image_overlaps_and_falls_back_when_impossible():
    g = torch.Generator().manual_seed(1)
    moved = 0
    for _ in range(300):
        h, w = (int(v) for v in torch.randint(40, 200, (2,), generator=g))
        x1, y1 = float(torch.rand((), generator=g)) * w * 0.7, float(torch.rand((), generator=g)) * h * 0.7
        box = [x1, y1, x1 + 1 + float(torch.rand((), generator=g)) * (w - x1 - 1),
               y1 + 1 + float(torch.rand((), generator=g)) * (h - y1 - 1)]
        out, ok = jitter_box(box, h, w, generator=g)
        b = pixel_box(box, h, w)
        assert 0 <= out[0] < out[2] <= w and 0 <= out[1] < out[3] <= h
        assert all(float(v).is_integer() for v in out)
        if ok:
            moved += 1
            assert _iou(out, b) > 0.5
            bw, bh = out[2] - out[0], out[3] - out[1]
            assert 0.5 * 0.9 <= bw * bh / ((b[2] - b[0]) * (b[3] - b[1])) <= 2 * 1.1 or min(bw, bh) < 10
        else:
            assert out.tolist() == list(b)
    assert moved > 150  # thin boxes (aspect far outside [1/2, 2]) cannot reach IoU > 0.5 and fall back
    # A whole 4:1 image: inside it a box with aspect <= 2 covers at most half of it, so IoU > 0.5 is
    # impossible and the box itself comes back. (A whole *square* image can be jittered: shrink to
    # > 50% of the area with a small centre shift.)
    for seed in range(20):
        out, ok = jitter_box([0, 0, 400, 100], 100, 400, generator=torch.Generator().manual_seed(seed))
        assert not ok and out.tolist() == [0, 0, 400, 100]
    results = [jitter_box([0, 0, 100, 100], 100, 100, generator=torch.Generator().manual_seed(s)) for s in range(20)]
    assert any(ok for _, ok in results)
    assert all(_iou(o, [0, 0, 100, 100]) > 0.5 and o.min() >= 0 and o.max() <= 100 for o, ok in results if ok)


# ----------------------------------------------------------------------------- the three stages

TINY = ["--arch", "resnet_tiny", "--batch-size", 4, "--workers", 0, "-q", "--no-tensorboard", "--warmup-epochs", 0,
        "--set", "proj_hidden_dim=32", "--set", "pred_hidden_dim=32", "--set", "proj_dim=16"]
STAGE2 = ["--knn", 3, "--image-size", 64, "--roi-size", 64, "--min-size", 16, "--workers", 0, "--chunk-size", 2, "-q"]
EMPTY = "000004.jpg"  # this image gets no proposals at all


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """demo scenes → BYOL stage 1 (1 epoch) → selective search (one image emptied) → stage-2 pairs."""
    from sslkit.io.artefacts import Artefact, ArtefactWriter

    d = tmp_path_factory.mktemp("orl")
    assert sslkit("demo-data", d / "demo", "--n", 10, "--min-side", 96, "--max-side", 128, "--quiet",
                  "--sources", "pip") == 0
    images = d / "demo" / "train.json"
    assert sslkit("pretrain", images, "-m", "byol", "-o", d / "s1", "--image-size", 32, "--epochs", 1, *TINY) == 0
    assert sslkit("propose", images, "-o", d / "ss.h5", "-q", "--workers", 1, "--min-size", 16) == 0
    with Artefact(d / "ss.h5") as a, ArtefactWriter(d / "props.h5", "sslkit.proposals", params=a.params,
                                                    ragged={n: a.field_spec(n) for n in a.ragged_names}) as w:
        for rec in a.records():
            if rec.file_name == EMPTY:
                rec.ragged = {n: v[:0] for n, v in rec.ragged.items()}
            w.add(rec)
    assert sslkit("sample-views", images, "-m", "orl", "--proposals", d / "props.h5", "--ckpt", d / "s1" / "last.pth",
                  "-o", d / "pairs.h5", *STAGE2) == 0
    return d


def _fields(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        out = {"file_name": f["images/file_name"][:]}
        for name in ("boxes", "knn_ids", "knn_sims", "knn_image_ids", "pairs", "pair_scores"):
            out[name] = f[name]["data"][:]
            out[name + "/offsets"] = f[name]["offsets"][:]
        return out


def test_stage2_pairs_file_follows_the_rules(chain):
    from sslkit.views.orl_pairs import OrlPairs

    p = OrlPairs(chain / "pairs.h5")
    assert len(p) == 8 and p.k == 3 and p.attrs["views_kind"] == "orl-pairs"
    assert p.params["checkpoint"]["image_feature"]["name"] == "projector16_l2"  # BYOL: the projector output
    assert p.params["checkpoint"]["roi_feature"]["name"] == "backbone128_gap_l2"
    assert p.params["proposals"]["field"] == "boxes_filtered"  # made with the same filter values
    empty = p.row[EMPTY]
    assert len(p.boxes(empty)) == 0 and len(p.pairs(empty)[0]) == 0 and p.stats()["images_without_boxes"] == 1
    for i in range(len(p)):
        ids, sims = p.neighbours(i)
        assert i not in ids and len(set(ids.tolist())) == 3 and (np.diff(sims) <= 0).all()
        assert [p.file_name[j] for j in ids] == [p.file_name[j] for j in p.knn_ids[i]]  # rows resolve to names
        bq = len(p.boxes(i))
        for slot, j in enumerate(ids):
            rows, scores = p.pairs(i, slot)
            bk = len(p.boxes(j))
            assert len(rows) == (min(pair_count(bq), bq * bk) if bk else 0), (i, slot)
            assert (np.diff(scores) <= 0).all() and (rows[:, 1] < bq).all() and (rows[:, 2] < bk).all()
        if i != empty:
            assert len(p.pairs(i)[0]) > 0
    assert p.stats()["pairs"] == int(p.attrs["num_pairs"])
    assert not (chain / "pairs.h5.partial").exists()


def test_stage2_resumes_after_kill_9_to_the_same_file(chain, tmp_path):
    out = tmp_path / "pairs.h5"
    args = ["sample-views", chain / "demo" / "train.json", "-m", "orl", "--proposals", chain / "props.h5",
            "--ckpt", chain / "s1" / "last.pth", "-o", out, *STAGE2]
    env = {**os.environ, **kill_at("commit:orl-pairs", 1), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "sslkit", *map(str, args)], env=env, capture_output=True, text=True)
    assert p.returncode == -9, p.stderr
    assert not out.exists() and len(list((tmp_path / "pairs.h5.partial" / "pairs").glob("chunk-*.npz"))) == 1
    assert sslkit(*args) == 0
    a, b = _fields(out), _fields(chain / "pairs.h5")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert not (tmp_path / "pairs.h5.partial").exists()


def test_stage2_shards_merge_to_the_single_run(chain, tmp_path):
    base = ["sample-views", chain / "demo" / "train.json", "-m", "orl", "--proposals", chain / "props.h5",
            "--ckpt", chain / "s1" / "last.pth", *STAGE2]
    for i in range(2):
        assert sslkit(*base, "-o", tmp_path / f"part{i}.h5", "--shard", f"{i}/2") == 0
    assert sslkit("sample-views", "-m", "orl", "--merge", tmp_path / "part1.h5", tmp_path / "part0.h5",
                  "-o", tmp_path / "merged.h5", "-q") == 0
    a, b = _fields(tmp_path / "merged.h5"), _fields(chain / "pairs.h5")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    from sslkit.views.orl_pairs import OrlPairs

    with pytest.raises(Exception, match="is shard 0/2"):
        OrlPairs(tmp_path / "part0.h5")


def test_stage2_accepts_a_backbone_without_projector(chain, tmp_path, capsys):
    w = tmp_path / "backbone.pth"
    assert sslkit("export", chain / "s1" / "last.pth", "-o", w, "-q") == 0
    out = tmp_path / "pairs.h5"
    assert sslkit("sample-views", chain / "demo" / "train.json", "-m", "orl", "--proposals", chain / "props.h5",
                  "--ckpt", w, "-o", out, *STAGE2) == 0
    from sslkit.views.orl_pairs import OrlPairs

    feat = OrlPairs(out).params["checkpoint"]["image_feature"]
    assert feat["kind"] == "backbone_gap" and feat["dim"] == 128 and "no BYOL-style projector" in feat["note"]
    err = one_line_error(capsys, "sample-views", chain / "demo" / "train.json", "-m", "orl", "--proposals",
                         chain / "props.h5", "--ckpt", w, "-o", tmp_path / "x.h5", "--image-feature", "projector", "-q")
    assert "has no BYOL-style projector" in err


def test_stage2_on_ground_truth_boxes(chain, tmp_path):
    """Table 5(d): COCO's boxes instead of selective search, through the same filter."""
    from sslkit.io.coco import annotations_by_image, coco_boxes_xyxy, load_coco
    from sslkit.proposals.filters import orl_filter
    from sslkit.views.orl_pairs import OrlPairs

    images = chain / "demo" / "train.json"
    out = tmp_path / "gt.h5"
    assert sslkit("sample-views", images, "-m", "orl", "--source", "gt", "--coco", images,
                  "--ckpt", chain / "s1" / "last.pth", "-o", out, *STAGE2) == 0
    p = OrlPairs(out)
    assert p.params["proposals"]["source"] == "gt"
    coco = load_coco(images)
    anns = annotations_by_image(coco)
    for im in coco["images"]:
        gt = coco_boxes_xyxy(anns[im["id"]])
        np.testing.assert_array_equal(p.boxes(p.row[im["file_name"]]), gt[orl_filter(gt, 16.0)])
    assert p.stats()["pairs"] > 0


def test_bad_inputs_are_one_line_errors(chain, tmp_path, capsys):
    images = chain / "demo" / "train.json"
    ck = chain / "s1" / "last.pth"
    assert sslkit("propose", images, "--algo", "grid", "-o", tmp_path / "grid.h5", "-q", "--workers", 1) == 0
    # label maps are read as segment boxes (tests/test_swap_matrix.py); their settings are checked
    err = one_line_error(capsys, "sample-views", images, "-m", "orl", "--proposals", tmp_path / "grid.h5",
                         "--ckpt", ck, "-o", tmp_path / "x.h5", "-q", "--set", "segment_fields=fh_s1000_c1000")
    assert "has no label-map field 'fh_s1000_c1000'" in err
    err = one_line_error(capsys, "sample-views", images, "-m", "orl", "--proposals", tmp_path / "grid.h5",
                         "--ckpt", ck, "-o", tmp_path / "x.h5", "-q", "--set", "segment_order=area")
    assert "segment_order='area' is not one of size, id" in err
    torch.save({"epoch": 3, "weights": [1, 2, 3]}, tmp_path / "other.pth")
    err = one_line_error(capsys, "sample-views", images, "-m", "orl", "--proposals", chain / "props.h5",
                         "--ckpt", tmp_path / "other.pth", "-o", tmp_path / "x.h5", "-q")
    assert "other.pth" in err and "not a checkpoint" in err
    err = one_line_error(capsys, "sample-views", images, "-m", "orl", "--proposals", chain / "props.h5",
                         "-o", tmp_path / "x.h5")
    assert "needs --ckpt" in err
    err = one_line_error(capsys, "sample-views", chain / "demo" / "val.json", "-m", "orl", "--proposals",
                         chain / "props.h5", "--ckpt", ck, "-o", tmp_path / "x.h5", "-q")
    assert "has no proposals for 2 of the 2 images" in err
    run = [images, "-m", "orl", "-o", tmp_path / "run", "--image-size", 32, "--epochs", 1, *TINY]
    assert "orl needs the stage-2 pairs" in one_line_error(capsys, "pretrain", *run)
    assert "expected sslkit.views" in one_line_error(capsys, "pretrain", *run, "--views", chain / "props.h5")
    err = one_line_error(capsys, "pretrain", *run, "--views", chain / "pairs.h5", "--set", "knn_k_used=4")
    assert "knn_k_used=4 but the views file has K = 3" in err
    err = one_line_error(capsys, "pretrain", *run, "--views", chain / "pairs.h5", "--set", f"init_from={tmp_path / 'other.pth'}")
    assert "not a checkpoint" in err
    err = one_line_error(capsys, "pretrain", *run, "--views", chain / "pairs.h5", "--set", "proj_dim=8",
                         "--set", f"init_from={ck}")
    assert "its projector is hidden 32 → 16, this run's 32 → 8" in err
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "run").exists()


def test_info_and_show_draw_a_pair_of_images(chain, tmp_path, capsys):
    from PIL import Image

    from sslkit.views.orl_pairs import OrlPairs

    p = OrlPairs(chain / "pairs.h5")
    q = 0 if p.file_name[0] != EMPTY else 1
    png = tmp_path / "pair.png"
    assert sslkit("show", chain / "pairs.h5", "--image", p.file_name[q], "--field", "neighbor=2", "-o", png) == 0
    im = Image.open(png)
    n = int(p.knn_ids[q, 2])
    h = max(p.height[q], p.height[n])
    expect_w = round(p.width[q] * h / p.height[q]) + 8 + round(p.width[n] * h / p.height[n])
    assert im.size == (expect_w, h)
    assert sslkit("show", chain / "pairs.h5", "--image", p.file_name[q], "--neighbor", 2, "-o",
                  tmp_path / "same.png") == 0
    assert (tmp_path / "same.png").read_bytes() == png.read_bytes()  # --neighbor K == --field neighbor=K
    assert sslkit("show", chain / "pairs.h5", "--grid", 4, "-o", tmp_path / "grid.png") == 0
    capsys.readouterr()
    assert sslkit("info", chain / "pairs.h5", "--json") == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kind"] == "sslkit.views" and d["attrs"]["views_kind"] == "orl-pairs"
    assert d["fields"]["knn_ids"]["row_shape"] == [3] and d["fields"]["pairs"]["per_image"]["images_with_none"] == 1
    assert sslkit("show", chain / "pairs.h5", "--field", "neighbor=3", "-o", tmp_path / "x.png") == 2


# ----------------------------------------------------------------------------- stage 3

def _cfg(views, **over):
    from sslkit.engine import config as C
    from sslkit.methods import METHODS

    layer = {"arch": "resnet_tiny", "image_size": 32, "patch_size": 32, "batch_size": 4, "proj_hidden_dim": 32,
             "pred_hidden_dim": 32, "proj_dim": 16, "views": str(views), **over}
    return C.resolve(METHODS["orl"], [("test", layer)])


def _batch(cfg, n=4):
    from sslkit.io.images import ImageSource
    from sslkit.methods import METHODS

    ds = METHODS["orl"].make_dataset(cfg, ImageSource.from_arg(cfg["images"]))
    return torch.utils.data.default_collate([ds[(0, i)][0] for i in range(n)]), ds


def test_stage3_loss_decreases_on_a_fixed_batch(chain):
    from sslkit.methods.orl import ORL

    cfg = _cfg(chain / "pairs.h5", images=str(chain / "demo" / "train.json"))
    batch, _ = _batch(cfg)
    assert batch["global"][0].shape == (4, 3, 32, 32) and batch["intra"][1].shape == (4, 3, 32, 32)
    torch.manual_seed(0)
    model = ORL(cfg)
    assert model.predictor is not model.predictor_intra and model.predictor_intra is not model.predictor_inter
    outs = train_on_fixed_batch(model, batch)
    for out in outs:
        assert out["loss"] == pytest.approx(out["loss_image"] + out["loss_intra"] + out["loss_inter"], rel=1e-5)
    assert_learns(outs)


def test_stage3_samples_fall_back_and_respect_the_ablation_settings(chain):
    from sslkit.methods.orl import ORL

    cfg = _cfg(chain / "pairs.h5", images=str(chain / "demo" / "train.json"), knn_k_used=1, inter_weight=0.0)
    batch, ds = _batch(cfg, 8)
    assert "inter" not in batch and not hasattr(ORL(cfg), "predictor_inter")
    empty = [i for i in range(8) if ds.source[i].file_name == EMPTY][0]
    assert batch["fallback"][empty, 0] == 1 and batch["fallback"][:, 0].sum() == 1
    # knn_k_used=1: every inter pair comes from the nearest neighbour
    q = ds.pairs.row[ds.source[0].file_name]
    for s in range(20):
        torch.manual_seed(s)
        nrow, pick = ds._pick_pair(q)
        assert nrow == ds.pairs.knn_ids[q, 0] and pick[0] == 0
    # the emptied image: whole-image box, and its inter pair is its intra pair
    cfg = _cfg(chain / "pairs.h5", images=str(chain / "demo" / "train.json"))
    batch, _ = _batch(cfg, 8)
    assert batch["fallback"][empty].tolist()[0::2] == [1.0, 1.0] and batch["fallback"][:, 2].sum() == 1


def test_stage3_trains_from_the_cli_from_stage1_weights(chain, tmp_path):
    from sslkit.io.checkpoint import load_checkpoint

    out = tmp_path / "s3"
    assert sslkit("pretrain", chain / "demo" / "train.json", "-m", "orl", "--views", chain / "pairs.h5", "-o", out,
                  "--image-size", 32, "--epochs", 1, "--log-every", 1, "--set", "patch_size=32",
                  "--set", f"init_from={chain / 's1' / 'last.pth'}", "--max-steps", 1, *TINY) == 0
    logs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert {"loss_image", "loss_intra", "loss_inter", "no_boxes", "jitter_fallback", "no_pairs"} <= set(logs[0])
    ck = load_checkpoint(out / "last.pth")
    assert ck["method"] == "orl" and ck["encoders"]["online"] == "backbone."
    assert any(k.startswith("predictor_inter.") for k in ck["model"])
    # init_from: the stage-1 online backbone before the first step (checked on a fresh model)
    from sslkit.methods.orl import ORL

    s1 = load_checkpoint(chain / "s1" / "last.pth")["model"]
    model = ORL(_cfg(chain / "pairs.h5", init_from=str(chain / "s1" / "last.pth")))
    for k, v in model.state_dict().items():
        if k.startswith(("backbone.", "projector.", "predictor.")):
            assert torch.equal(v, s1[k]), k
        if k.startswith("target_"):
            assert torch.equal(v, model.state_dict()[k[len("target_"):]]), k


def test_stage3_resumes_exactly_with_the_views_path_given_relative(chain, tmp_path, monkeypatch):
    """An interrupted stage 3 continued with --views spelled relative to another cwd (the checkpoint
    stores it absolute) ends with the weights of the uninterrupted run."""
    from sslkit.io.checkpoint import load_checkpoint

    def stage3(out, views, *extra):
        return sslkit("pretrain", chain / "demo" / "train.json", "-m", "orl", "--views", views, "-o", out,
                      "--image-size", 32, "--epochs", 2, "--set", "patch_size=32", "--save-every", 100, *TINY, *extra)

    assert stage3(tmp_path / "full", chain / "pairs.h5") == 0
    assert stage3(tmp_path / "part", chain / "pairs.h5", "--max-steps", 1) == 0
    monkeypatch.chdir(chain)
    assert stage3(tmp_path / "part", "pairs.h5") == 0
    a, b = load_checkpoint(tmp_path / "full" / "last.pth"), load_checkpoint(tmp_path / "part" / "last.pth")
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


# ----------------------------------------------------------------------------- planned data paths

def _plan_batch(plan, n):
    from sslkit.views.plan.device import DeviceViews

    batch = plan.collate([plan[(0, i)][0] for i in range(n)])
    if plan.mode == "cpu":
        return plan.finish(batch, torch.device("cpu"))
    return DeviceViews(plan, torch.device("cpu"))(batch)[0]


def test_stage3_plans_draw_the_reference_samples(chain):
    """cpu and gpu paths: the same boxes, jitter, kNN pairs and patches (on the same pixels) as the
    reference samples for the same seeds; PIL's blur is not the tensor one, so views are compared unblurred."""
    from sslkit.io.images import ImageSource
    from sslkit.methods.orl import ORL

    cfg = _cfg(chain / "pairs.h5", images=str(chain / "demo" / "train.json"), view_aug="blur_p=0")
    src = ImageSource.from_arg(cfg["images"])
    ref = torch.utils.data.default_collate([ORL.make_dataset(cfg, src)[(0, i)][0] for i in range(8)])
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255
    for mode in ("cpu", "gpu"):
        got = _plan_batch(ORL.make_plan_dataset(cfg, src, mode), 8)
        torch.testing.assert_close(got["fallback"], ref["fallback"])
        for branch in ("global", "intra", "inter"):
            for a, b in zip(got[branch], ref[branch], strict=True):
                assert a.shape == b.shape
                assert float(((a - b) * std).abs().mean()) < 3.0, (mode, branch)  # ~1.3; another box: tens
