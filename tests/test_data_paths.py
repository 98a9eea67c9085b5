"""The planned data paths: rows drawn as the reference pipelines draw, the worker's OpenCV renderer
(``data_path: cpu``) and the batched device renderer (``data_path: gpu``, here on CPU tensors)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from sslkit.engine import config as C
from sslkit.io.encoded import read_encoded
from sslkit.io.images import ImageSource
from sslkit.methods import METHODS
from sslkit.methods.byol import BYOL
from sslkit.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ViewAug,
    build_view,
    byol_views,
    mocov2_views,
    simclr_views,
)
from sslkit.transforms.params import ROW, ViewDrawer
from sslkit.transforms.render_cpu import normalize, render_view
from sslkit.transforms.render_device import render_views
from sslkit.views.dataset import sample_seed
from sslkit.views.plan import render_sample_cpu
from sslkit.views.plan.device import DeviceViews
from tests.conftest import real_photo
from tests.conftest import run_cli as sslkit
from tests.test_data_paths_files import _jpeg

PLAIN = ViewAug(size=48, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
RECIPES = {"byol": byol_views(64), "mocov2": mocov2_views(64), "simclr": simclr_views(64),
           "detcon-s": METHODS["detcon-s"].view_augs(64)}


def _reference_params(aug: ViewAug, height: int, width: int) -> list[tuple[str, dict]]:
    """Run the reference v2 pipeline on a blank image and record every make_params it calls."""
    pipe = build_view(aug)
    seen: list[tuple[str, dict]] = []

    def wrap(t):
        name = "make_params" if hasattr(t, "make_params") else "_get_params"
        orig = getattr(t, name)

        def rec(inputs):
            out = orig(inputs)
            seen.append((type(t).__name__, out))
            return out
        setattr(t, name, rec)

    for t in pipe.transforms:
        for inner in getattr(t, "transforms", [t]):
            wrap(inner)
    pipe(tv_tensors.Image(torch.zeros((3, height, width), dtype=torch.uint8)))
    return seen


def _expected_row(seen) -> dict:
    exp = {"flip": 0.0, "jitter": 0.0, "gray": 0.0, "blur": 0.0, "solarize": 0.0}
    for name, p in seen:
        if name == "RandomResizedCrop":
            exp["box"] = (p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"])
        elif name == "RandomHorizontalFlip":
            exp["flip"] = 1.0
        elif name == "ColorJitter":
            exp["jitter"] = 1.0
            exp["order"] = p["fn_idx"].tolist()
            exp["factors"] = [p[f"{k}_factor"] for k in ("brightness", "contrast", "saturation", "hue")]
        elif name == "RandomGrayscale":
            exp["gray"] = 1.0
        elif name == "GaussianBlur":
            exp["blur"], exp["sigma"] = 1.0, p["sigma"][0]
        elif name == "RandomSolarize":
            exp["solarize"] = 1.0
    return exp


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_rows_are_exactly_the_reference_pipelines_draws(recipe):
    for v, aug in enumerate(RECIPES[recipe]):
        drawer = ViewDrawer(aug)
        for seed, (h, w) in enumerate([(480, 640), (64, 400), (300, 20), (97, 131)] * 6):
            torch.manual_seed(seed)
            exp = _expected_row(_reference_params(aug, h, w))
            after_ref = torch.rand(1)
            torch.manual_seed(seed)
            row = drawer.draw(h, w)
            assert torch.rand(1) == after_ref, "the drawer consumed the generator differently"
            assert tuple(row[ROW["x1"]:ROW["y2"] + 1]) == exp["box"]
            for k in ("flip", "jitter", "gray", "blur", "solarize"):
                assert row[ROW[k]] == exp[k], (recipe, v, seed, k)
            if exp["jitter"]:
                assert row[ROW["order0"]:ROW["order3"] + 1].tolist() == exp["order"]
                for i, f in enumerate(exp["factors"]):
                    assert row[ROW["brightness"] + i] == (f if f is not None else (0.0 if i == 3 else 1.0))
            if exp["blur"]:
                assert row[ROW["sigma"]] == exp["sigma"]


def test_drawn_parameters_obey_the_recipe_over_many_draws():
    n, (h, w) = 3000, (480, 640)
    aug = byol_views(224)[1]  # blur 0.1, solarize 0.2
    drawer = ViewDrawer(aug)
    torch.manual_seed(0)
    rows = np.stack([drawer.draw(h, w) for _ in range(n)])
    cw, ch = rows[:, ROW["x2"]] - rows[:, ROW["x1"]], rows[:, ROW["y2"]] - rows[:, ROW["y1"]]
    assert (rows[:, ROW["x1"]] >= 0).all() and (rows[:, ROW["x2"]] <= w).all() and (rows[:, ROW["y2"]] <= h).all()
    area = cw * ch / (h * w)
    assert area.min() >= 0.08 * 0.97 and area.max() <= 1.0
    ratio = cw / ch
    assert ratio.min() >= 0.75 * 0.97 and ratio.max() <= 4 / 3 * 1.03
    for field, p in (("flip", 0.5), ("jitter", 0.8), ("gray", 0.2), ("blur", 0.1), ("solarize", 0.2)):
        rate, sd = rows[:, ROW[field]].mean(), math.sqrt(p * (1 - p) / n)
        assert abs(rate - p) < 4 * sd, (field, rate)
    j = rows[rows[:, ROW["jitter"]] > 0]
    assert (np.sort(j[:, ROW["order0"]:ROW["order3"] + 1], 1) == np.arange(4)).all()
    for name, lo, hi in (("brightness", 0.6, 1.4), ("contrast", 0.6, 1.4), ("saturation", 0.8, 1.2), ("hue", -0.1, 0.1)):
        f = j[:, ROW[name]]
        assert f.min() >= lo and f.max() <= hi and f.max() - f.min() > 0.9 * (hi - lo)
    s = rows[rows[:, ROW["blur"]] > 0, ROW["sigma"]]
    assert s.min() >= 0.1 and s.max() <= 2.0


def _tensor_reference(image: np.ndarray, aug: ViewAug, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return build_view(aug)(tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous()))


@pytest.mark.parametrize("recipe", ["byol", "simclr"])
def test_both_renderers_make_the_reference_pixels(recipe):
    """Same seed → same view as the reference tensor pipeline, up to its uint8 rounding between steps."""
    image = real_photo("astronaut", 160).copy()
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    chw = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    scale = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
    diffs = {"cpu": [], "gpu": []}
    for aug in RECIPES[recipe]:
        drawer = ViewDrawer(aug)
        for seed in range(8):
            ref = _tensor_reference(image, aug, seed)
            torch.manual_seed(seed)
            row = drawer.draw(*image.shape[:2])
            cpu = normalize(render_view(bgr, row, aug), aug)
            gpu = render_views([chw], row[None], np.zeros(1, int), aug)[0]
            diffs["cpu"].append(float(((cpu - ref) * scale).abs().mean()))
            diffs["gpu"].append(float(((gpu - ref) * scale).abs().mean()))
    # each uint8 step of the reference rounds (~0.3-0.5 /255 per op; the device path never rounds): a
    # different crop or factor would differ by tens
    for name in ("cpu", "gpu"):
        assert max(diffs[name]) < 3.0 and np.mean(diffs[name]) < 1.6, (name, diffs[name])


def test_rendered_views_show_the_drawn_crop_and_flip():
    """An image whose red channel codes x: each view's pixels tell which columns it shows and whether flipped."""
    h, w = 120, 250
    x = np.tile(np.linspace(0, 255, w).round().astype(np.uint8), (h, 1))
    image = np.stack([x, np.full_like(x, 90), np.full_like(x, 160)], -1)
    chw = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    aug = replace(PLAIN, size=32, crop_scale=(0.3, 1.0))
    drawer = ViewDrawer(aug)
    torch.manual_seed(1)
    rows = np.stack([drawer.draw(h, w) for _ in range(200)])
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    device_views = (render_views([chw], rows, np.zeros(len(rows), int), aug) * std + mean) * 255
    cpu_views = torch.stack([render_view(np.ascontiguousarray(image[:, :, ::-1]), r, aug) for r in rows]).float()
    for views in (device_views, cpu_views):
        red = views[:, 0, 16]  # the middle row's red values
        flipped = (red[:, 0] > red[:, -1]).numpy()
        assert (flipped == (rows[:, ROW["flip"]] > 0)).all()
        lo, hi = red.min(1).values.numpy(), red.max(1).values.numpy()
        want_lo = rows[:, ROW["x1"]] / (w - 1) * 255
        want_hi = (rows[:, ROW["x2"]] - 1) / (w - 1) * 255
        assert np.abs(lo - want_lo).max() < 9 and np.abs(hi - want_hi).max() < 9
    assert 0.35 < rows[:, ROW["flip"]].mean() < 0.65


def test_grayscale_and_solarize_apply_to_the_drawn_views_only():
    image = real_photo("coffee", 96).copy()
    chw = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    aug = replace(PLAIN, size=32, grayscale_p=0.5, solarize_p=0.5)
    drawer = ViewDrawer(aug)
    torch.manual_seed(3)
    rows = np.stack([drawer.draw(*image.shape[:2]) for _ in range(40)])
    views = render_views([chw], rows, np.zeros(len(rows), int), aug)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = views * std + mean
    gray = (rgb.max(1).values - rgb.min(1).values).flatten(1).max(1).values < 1e-4
    assert (gray.numpy() == (rows[:, ROW["gray"]] > 0)).all()
    plain = render_views([chw], np.where(np.arange(len(rows[0])) == ROW["solarize"], 0, rows),
                         np.zeros(len(rows), int), aug) * std + mean
    changed = ((plain - rgb).abs().flatten(1).max(1).values > 1e-3).numpy()
    assert (changed == (rows[:, ROW["solarize"]] > 0)).all()


def test_renderers_follow_the_drawn_box_onto_the_objects_pixels():
    """A patch row (no crop draw: the box is given) of a red square shows the red square only."""
    image = np.full((90, 120, 3), 128, np.uint8)
    image[20:60, 70:110] = (220, 30, 30)
    chw = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    aug = replace(PLAIN, size=32)
    drawer = ViewDrawer(aug, crop=False)
    torch.manual_seed(0)
    rows = np.stack([drawer.draw(90, 120, box=(72, 22, 108, 58)) for _ in range(6)])
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    dev = (render_views([chw], rows, np.zeros(6, int), aug) * std + mean) * 255
    cpu = torch.stack([render_view(np.ascontiguousarray(image[:, :, ::-1]), r, aug) for r in rows]).float()
    for views in (dev, cpu):
        assert (views[:, 0] > 210).all() and (views[:, 1] < 40).all()


# ----------------------------------------------------------------------------- method plans


def _palette_scene(h=96, w=128):
    from tests.test_detcon import PALETTE, _scene

    lab, img = _scene(h, w)
    return lab, img, PALETTE


class _Store:
    def __init__(self, labels):
        self.labels_ = labels

    def usable(self, source):
        return source

    def labels(self, file_name, h, w):
        return self.labels_[None]


def test_detcon_plan_masks_land_on_their_pixels_and_match_the_reference(tmp_path):
    from sslkit.views.detcon import DetConViews
    from sslkit.views.plan.detcon import DetConPlan
    from tests.test_detcon import _decode

    lab, img, _ = _palette_scene()
    Image.fromarray(img).save(tmp_path / "scene.png")
    src = ImageSource.from_folder(tmp_path)
    views = (replace(PLAIN, size=64, flip_p=0.5), replace(PLAIN, size=64, flip_p=1.0))
    reference = DetConViews(views, num_masks=16, keep_labels=True)
    for mode in ("cpu", "gpu"):
        plan = DetConPlan(src, _Store(lab), views, 16, True, seed=0, mode=mode)
        for epoch in range(6):
            item, _ = plan[(epoch, 0)]
            if mode == "cpu":
                batch = plan.finish(plan.collate([item]), torch.device("cpu"))
            else:
                batch, _ = DeviceViews(plan, torch.device("cpu"))(plan.collate([item]))
            v1, v2, o1, o2, i1, i2, m1, m2 = batch
            torch.manual_seed(sample_seed(0, epoch, 0))
            ref = reference(img, lab[None])
            for got, want in zip((o1[0], o2[0], i1[0], i2[0], m1[0], m2[0]), ref[2:], strict=True):
                torch.testing.assert_close(got, want)
            for v, m in ((v1[0], m1[0, 0].numpy()), (v2[0], m2[0, 0].numpy())):
                pad = np.pad(m, 1, mode="edge")
                inner = np.ones_like(m, bool)
                for dy in range(3):
                    for dx in range(3):
                        inner &= pad[dy:dy + m.shape[0], dx:dx + m.shape[1]] == m
                assert (_decode(v)[inner] == m[inner]).all()


# ----------------------------------------------------------------------------- the engine


def _run(tmp_path, name, photo_dir, *extra):
    out = tmp_path / name
    code = sslkit("pretrain", photo_dir, "-m", "byol", "-o", out, "--arch", "resnet_tiny", "--image-size", 32,
                  "--batch-size", 2, "--epochs", 2, "--warmup-epochs", 0, "--workers", 0, "--log-every", 1,
                  "--no-tensorboard", "-q", "--set", "proj_hidden_dim=16", "--set", "pred_hidden_dim=16",
                  "--set", "proj_dim=8", *extra)
    assert code == 0
    return out


def test_gpu_path_trains_and_resumes_exactly_on_cpu(tmp_path, photo_dir):
    from sslkit.io.checkpoint import load_checkpoint

    straight = _run(tmp_path, "straight", photo_dir, "--data-path", "gpu")
    _run(tmp_path, "split", photo_dir, "--data-path", "gpu", "--max-steps", 2)
    split = _run(tmp_path, "split", photo_dir, "--data-path", "gpu")
    a, b = load_checkpoint(straight / "last.pth")["model"], load_checkpoint(split / "last.pth")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    logs = [json.loads(x) for x in (straight / "log.jsonl").read_text().splitlines()]
    assert len(logs) == 4 and all(math.isfinite(r["loss"]) for r in logs)
    # the paths draw the same views, so a run may change path on resume
    _run(tmp_path, "switch", photo_dir, "--data-path", "cpu", "--max-steps", 2)
    _run(tmp_path, "switch", photo_dir, "--data-path", "gpu")


def test_a_method_without_a_plan_refuses_the_gpu_path_in_one_line():
    from sslkit.engine.feed import make_feed
    from sslkit.errors import UserError

    class Custom(BYOL):
        name = "custom"

        @classmethod
        def make_transform(cls, cfg):
            return lambda image: image

    cfg = C.resolve(Custom, [("t", {"data_path": "gpu"})])
    with pytest.raises(UserError, match="custom has no GPU data path"):
        make_feed(Custom, cfg, None, torch.device("cpu"))
    cfg = C.resolve(Custom, [("t", {"data_path": "cpu"})])
    assert make_feed(Custom, cfg, None, torch.device("cpu")).path == "cpu"  # its own pipeline


def test_prefetch_thread_hands_over_in_order_raises_and_stops_early():
    from sslkit.engine.feed import _prefetched

    out = list(_prefetched(((i, []) for i in range(7)), torch.device("cpu"), 2))
    assert out == [(i, []) for i in range(7)]

    def boom():
        yield 1, []
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        list(_prefetched(boom(), torch.device("cpu"), 2))
    taken = []

    def endless():
        i = 0
        while True:
            taken.append(i)
            yield i, []
            i += 1

    gen = _prefetched(endless(), torch.device("cpu"), 2)
    assert [next(gen)[0] for _ in range(3)] == [0, 1, 2]
    gen.close()  # stops and joins the thread
    import threading

    assert len(taken) <= 3 + 2 + 1
    assert not any(t.name == "sslkit-device-views" for t in threading.enumerate())


def test_render_sample_cpu_decodes_each_source_once(tmp_path, monkeypatch):
    import sslkit.views.plan.dataset as D

    path = _jpeg(tmp_path / "x.jpg", real_photo("astronaut", 256))
    enc = read_encoded(path, "x.jpg")
    calls = []
    real = D.decode_bgr
    monkeypatch.setattr(D, "decode_bgr", lambda image, d: calls.append(d) or real(image, d))
    drawer = ViewDrawer(replace(PLAIN, size=32), crop=False)
    rows = np.stack([drawer.draw(256, 256, box=(0, 0, 256, 256)), drawer.draw(256, 256, box=(10, 10, 200, 120))])
    views = render_sample_cpu([enc], rows, (replace(PLAIN, size=32),) * 2)
    assert calls == [2] and all(v.shape == (3, 32, 32) and v.dtype == torch.uint8 for v in views)


def test_feed_paths_agree_on_every_plain_method(photo_dir):
    from sslkit.engine.feed import make_feed

    src = ImageSource.from_folder(photo_dir)
    for name in ("byol", "mocov2", "simclr"):
        cls = METHODS[name]
        got = {}
        for path in ("pil", "cpu", "gpu"):
            cfg = C.resolve(cls, [("t", {"image_size": 48, "data_path": path, "seed": 3})])
            feed = make_feed(cls, cfg, src, torch.device("cpu"))
            batch = feed.collate([feed.dataset[(1, i)] for i in range(4)])
            got[path], _ = next(iter(feed.batches([batch])))
        for path in ("cpu", "gpu"):
            assert [v.shape for v in got[path]] == [v.shape for v in got["pil"]]
            d = torch.stack([(a - b).abs().mean() for a, b in zip(got[path], got["pil"], strict=True)])
            assert (d < 0.12).all(), (name, path, d)  # ~0.03 typical: PIL vs OpenCV/kornia kernels


def test_pipeline_steps_a_plan_cannot_render_are_refused(monkeypatch):
    import sslkit.transforms.params as P

    real = P.build_view
    monkeypatch.setattr(P, "build_view", lambda aug: v2.Compose([*real(aug).transforms[:2], v2.RandomVerticalFlip(),
                                                                 *real(aug).transforms[2:]]))
    with pytest.raises(ValueError, match="cannot render RandomVerticalFlip"):
        ViewDrawer(PLAIN)


def test_mcl_planned_views_and_montage_seed_match_its_reference_views(photo_dir):
    """MCL's 8 views per image and the batch seed of its tile permutations: the planned paths draw what
    MCLViews draws (same crops, same seed), so the montages are the same on every data path."""
    from sslkit.engine.feed import make_feed

    src = ImageSource.from_folder(photo_dir)
    cls = METHODS["mcl"]
    got = {}
    for path in ("pil", "cpu", "gpu"):
        cfg = C.resolve(cls, [("t", {"image_size": 64, "data_path": path, "seed": 5, "batch_size": 4,
                                     "montage_fractions": "1,1/4,1/4,1/4"})])
        feed = make_feed(cls, cfg, src, torch.device("cpu"))
        batch = feed.collate([feed.dataset[(0, i)] for i in range(4)])
        got[path], _ = next(iter(feed.batches([batch])))
    ref_views, ref_seed = got["pil"]
    assert ref_views.shape == (4, 8, 3, 64, 64)
    for path in ("cpu", "gpu"):
        views, seed = got[path]
        assert seed == ref_seed and views.shape == ref_views.shape
        assert (views - ref_views).abs().mean() < 0.12, path  # PIL vs OpenCV/kornia kernels
