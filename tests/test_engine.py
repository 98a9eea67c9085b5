"""Unit tests of the pretraining engine and the image-level methods' pieces: losses, heads, EMA,
schedules, optimizers, sampler, data, transforms, config resolution, and gathers across 2 ranks."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslkit.engine import config as C
from sslkit.engine.data import StepBatchSampler
from sslkit.engine.optim import LARS, build_optimizer
from sslkit.engine.schedules import WarmupCosine, scaled_lr
from sslkit.errors import UserError
from sslkit.methods import METHODS
from sslkit.methods.byol import BYOL, byol_loss
from sslkit.methods.mocov2 import MoCoV2, info_nce
from sslkit.methods.simclr import SimCLR, nt_xent
from sslkit.models.ema import cosine_momentum, ema_update
from sslkit.models.heads import byol_mlp, mocov2_projector, simclr_projector
from sslkit.transforms import MultiView, ViewAug, build_view, byol_views, separable_gaussian_blur
from sslkit.views.dataset import ImageDataset
from tests.conftest import assert_learns, free_port, train_on_fixed_batch

TINY = {"arch": "resnet_tiny", "image_size": 32, "batch_size": 8, "proj_hidden_dim": 64, "pred_hidden_dim": 64,
        "queue_size": 64}


def tiny_cfg(method: str, **over) -> dict:
    cls = METHODS[method]
    keys = C.method_keys(cls)
    layer = {k: v for k, v in {**TINY, **over}.items() if k in keys}
    return C.resolve(cls, [("test", layer)])


# ---------------------------------------------------------------- losses


def test_byol_loss_is_0_for_parallel_2_for_orthogonal_4_for_opposite():
    v = torch.tensor([[1.0, 2.0, -3.0], [0.5, 0.0, 1.0]])
    assert byol_loss(v, 3 * v).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(v, -v).item() == pytest.approx(4.0, abs=1e-6)
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 5.0]])
    assert byol_loss(e1, e2).item() == pytest.approx(2.0, abs=1e-6)


def test_byol_loss_stops_the_gradient_at_the_target():
    p = torch.randn(4, 8, requires_grad=True)
    z = torch.randn(4, 8, requires_grad=True)
    byol_loss(p, z).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None


def test_info_nce_matches_the_closed_form():
    # q = k, K queue vectors orthogonal to q: loss = -log(e^{1/T} / (e^{1/T} + K))
    T, K = 0.2, 6
    q = F.normalize(torch.tensor([[1.0] + [0.0] * 7]), dim=1)
    queue = torch.eye(8)[1:1 + K]
    loss, acc = info_nce(q, q.clone(), queue, T)
    expected = -math.log(math.exp(1 / T) / (math.exp(1 / T) + K))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert acc.item() == 1.0


def _nt_xent_reference(z1, z2, t):
    """The SimCLR paper's definition, written out with loops over the 2N views."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = [torch.dot(z[i], z[k]) / t for k in range(2 * n) if k != i]
        total = total - (torch.dot(z[i], z[j]) / t - torch.logsumexp(torch.stack(sims), 0))
    return total / (2 * n)


def test_nt_xent_equals_the_paper_definition():
    """``mean`` is the paper's Algorithm 1; the default ``sum`` (official TF code) is twice it."""
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    loss, _ = nt_xent(z1, z2, 0.1, "mean")
    assert loss.item() == pytest.approx(_nt_xent_reference(z1, z2, 0.1).item(), rel=1e-5)
    assert nt_xent(z1, z2, 0.1)[0].item() == pytest.approx(2 * loss.item(), rel=1e-6)



def _gather_worker(rank, world, port, out_dir):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from sslkit import dist as sdist

        g = torch.Generator().manual_seed(0)
        z1, z2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
        n = 8 // world
        a = z1[rank * n:(rank + 1) * n].clone().requires_grad_()
        b = z2[rank * n:(rank + 1) * n].clone().requires_grad_()
        loss, _ = nt_xent(a, b, 0.1)
        loss.backward()
        # MoCo's shuffle-BN round trip must give back each rank's own rows
        x = torch.arange(n, dtype=torch.float32) + 100 * rank
        shuffled, unshuffle = sdist.batch_shuffle(x)
        back = sdist.batch_unshuffle(shuffled, unshuffle)
        torch.save({"loss": loss.detach(), "ga": a.grad, "gb": b.grad, "roundtrip": torch.equal(back, x),
                    "shuffled": shuffled}, os.path.join(out_dir, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gathered_nt_xent_on_2_ranks_equals_one_process(tmp_path):
    """Loss and gradients with negatives all-gathered over 2 gloo ranks (DDP averages the
    gradients) equal those of one process holding the whole batch."""
    import torch.multiprocessing as mp

    mp.start_processes(_gather_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    r = [torch.load(tmp_path / f"r{i}.pt") for i in range(2)]
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(8, 5, generator=g).requires_grad_()
    z2 = torch.randn(8, 5, generator=g).requires_grad_()
    loss, _ = nt_xent(z1, z2, 0.1)
    loss.backward()
    assert (r[0]["loss"] + r[1]["loss"]).item() / 2 == pytest.approx(loss.item(), rel=1e-5)
    torch.testing.assert_close(torch.cat([r[0]["ga"], r[1]["ga"]]) / 2, z1.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.cat([r[0]["gb"], r[1]["gb"]]) / 2, z2.grad, rtol=1e-4, atol=1e-6)
    assert r[0]["roundtrip"] and r[1]["roundtrip"]
    assert sorted(torch.cat([r[0]["shuffled"], r[1]["shuffled"]]).tolist()) == [0, 1, 2, 3, 100, 101, 102, 103]


# ---------------------------------------------------------------- heads


def test_heads_follow_their_papers_layouts():
    byol = byol_mlp(2048)
    assert [type(m).__name__ for m in byol] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert (byol[0].in_features, byol[0].out_features, byol[3].out_features) == (2048, 4096, 256)
    assert byol[0].bias is not None and byol[3].bias is None
    moco = mocov2_projector(2048)
    assert [type(m).__name__ for m in moco] == ["Linear", "ReLU", "Linear"]
    assert moco[2].out_features == 128
    simclr = simclr_projector(2048)
    assert [type(m).__name__ for m in simclr] == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert simclr[0].bias is None and simclr[3].bias is None
    assert simclr[4].weight.requires_grad and not simclr[4].bias.requires_grad  # BN(center=False)


# ---------------------------------------------------------------- EMA and schedules


def test_ema_update_math():
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    with torch.no_grad():
        for p in online.parameters():
            p.fill_(1.0)
        for p in target.parameters():
            p.fill_(0.0)
    ema_update(target, online, 0.9)
    assert all(torch.allclose(p, torch.full_like(p, 0.1)) for p in target.parameters())
    ema_update(target, online, 0.9)
    assert all(torch.allclose(p, torch.full_like(p, 0.19)) for p in target.parameters())


def test_byol_target_follows_the_cosine_momentum_after_each_step():
    m = BYOL(tiny_cfg("byol"))
    assert all(not p.requires_grad for p in m.target_backbone.parameters())
    before = {k: v.clone() for k, v in m.target_backbone.state_dict().items()}
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(1.0)
    out = m.on_after_step(5, 20)
    tau = 1 - 0.01 * (math.cos(math.pi * 5 / 20) + 1) / 2
    assert out["momentum"] == pytest.approx(tau)
    online = dict(m.backbone.named_parameters())
    for name, p in m.target_backbone.named_parameters():
        torch.testing.assert_close(p, tau * before[name] + (1 - tau) * online[name])


def test_lr_schedule_warmup_peak_and_cosine_end():
    s = WarmupCosine(peak_lr=0.4, total_steps=1000, warmup_steps=100, start_factor=1e-4, min_lr=0.0)
    assert s(0) == pytest.approx(0.4e-4)
    assert s(50) == pytest.approx(0.4 * (1e-4 + (1 - 1e-4) * 0.5))
    assert s(100) == pytest.approx(0.4)
    assert s(550) == pytest.approx(0.2)
    assert s(1000) == pytest.approx(0.0, abs=1e-12)
    assert all(s(k) >= s(k + 1) for k in range(100, 1000))


def test_lr_scaling_rules():
    assert scaled_lr(0.2, 512, "linear") == pytest.approx(0.4)  # ORL: 0.2 × 512/256
    assert scaled_lr(0.3, 4096, "linear") == pytest.approx(4.8)  # SimCLR
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert scaled_lr(0.1, 999, "none") == 0.1


def test_momentum_schedule_endpoints():
    assert cosine_momentum(0, 1000, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(500, 1000, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(1000, 1000, 0.99) == pytest.approx(1.0)


# ---------------------------------------------------------------- optimizers


def test_lars_scales_by_the_trust_ratio_and_excludes_bias_and_bn():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))  # ‖w‖ = 5
    w.grad = torch.tensor([0.6, 0.8])  # ‖g‖ = 1
    opt = LARS([w], lr=1.0, momentum=0.9, weight_decay=0.0, eta=1e-3)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0]) - 1e-3 * 5 * torch.tensor([0.6, 0.8]))

    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    groups = build_optimizer(model, "lars", 0.1, 1e-6).param_groups
    assert groups[0]["weight_decay"] == 1e-6 and groups[0]["lars_adapt"]
    assert groups[1]["weight_decay"] == 0.0 and not groups[1]["lars_adapt"]
    assert {p.ndim for p in groups[0]["params"]} == {2} and {p.ndim for p in groups[1]["params"]} == {1}
    sgd = build_optimizer(model, "sgd", 0.1, 1e-4)  # ORL/MoCo: decay on every parameter
    assert len(sgd.param_groups) == 1 and len(sgd.param_groups[0]["params"]) == 4


def test_optimizer_leaves_out_frozen_targets():
    m = BYOL(tiny_cfg("byol"))
    opt = build_optimizer(m, "sgd", 0.1, 1e-4)
    n_trainable = sum(1 for p in m.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in opt.param_groups) == n_trainable
    assert n_trainable < sum(1 for _ in m.parameters())


# ---------------------------------------------------------------- methods


def _fixed_batch(n=8, size=32):
    g = torch.Generator().manual_seed(0)
    base = torch.rand(n, 3, size, size, generator=g)
    return base, (base + 0.05 * torch.randn(n, 3, size, size, generator=g)).flip(-1)


@pytest.mark.parametrize("method", ["byol", "simclr"])
def test_loss_decreases_on_a_fixed_batch(method):
    torch.manual_seed(0)
    model = METHODS[method](tiny_cfg(method))
    assert_learns(train_on_fixed_batch(model, _fixed_batch(), steps=15))


def test_moco_queue_takes_the_keys_and_wraps():
    m = MoCoV2(tiny_cfg("mocov2", queue_size=12, batch_size=8))
    m(_fixed_batch(8))
    assert m.queue_ptr.item() == 8
    m(_fixed_batch(8))
    assert m.queue_ptr.item() == 4  # 16 mod 12
    assert torch.allclose(m.queue.norm(dim=1), torch.ones(12), atol=1e-5)


def test_encoders_name_backbones_in_the_state_dict():
    for name, cls in METHODS.items():
        m = cls(tiny_cfg(name))
        sd = m.state_dict()
        backbone_keys = set(m.backbone.state_dict())
        assert m.default_encoder in m.encoders()
        for prefix in m.encoders().values():
            assert {k[len(prefix):] for k in sd if k.startswith(prefix)} == backbone_keys, (name, prefix)


# ---------------------------------------------------------------- data and transforms


def test_sampler_splits_each_global_batch_across_ranks_and_resumes():
    full = StepBatchSampler(num_images=21, global_batch=6, rank=0, world_size=1, seed=3)
    ranks = [StepBatchSampler(21, 6, r, 2, seed=3) for r in range(2)]
    assert full.steps_per_epoch == 3
    for s in [full, *ranks]:
        s.set_epoch(4)
    glob = list(full)
    per_rank = [list(s) for s in ranks]
    for step in range(3):
        assert len(per_rank[0][step]) == len(per_rank[1][step]) == 3
        assert per_rank[0][step] + per_rank[1][step] == glob[step]
    full.set_epoch(4, start_step=2)
    assert list(full) == glob[2:]
    full.set_epoch(5)
    assert list(full) != glob  # a new permutation each epoch


def test_dataset_is_deterministic_per_sample_and_replaces_unreadable_images(tmp_path):
    from PIL import Image

    from sslkit.io.images import ImageSource

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "1b.png").write_bytes(b"garbage")  # sorts between 1.png and 2.png
    ds = ImageDataset(ImageSource.from_folder(tmp_path), MultiView(byol_views(32)), seed=0)
    (a1, a2), sk = ds[(0, 0)]
    torch.manual_seed(123)  # the global RNG must not matter
    (b1, b2), _ = ds[(0, 0)]
    assert sk == [] and torch.equal(a1, b1) and torch.equal(a2, b2)
    (c1, _), _ = ds[(1, 0)]
    assert not torch.equal(a1, c1)
    _, skipped = ds[(0, 2)]
    assert skipped and skipped[0][0] == "1b.png"


def test_separable_blur_matches_torchvision():
    from torchvision.transforms.v2 import functional as TF

    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8, generator=g)
    for sigma in (0.3, 1.1, 2.0):
        ref = TF.gaussian_blur(img, [23, 23], [sigma, sigma])
        assert (separable_gaussian_blur(img, 23, sigma).int() - ref.int()).abs().max() <= 1
        f = img.float() / 255
        torch.testing.assert_close(separable_gaussian_blur(f, 9, sigma), TF.gaussian_blur(f, [9, 9], [sigma, sigma]),
                                   atol=1e-5, rtol=0)


def test_blur_has_the_same_sigma_on_pil_images_and_tensors():
    """PIL's GaussianBlur(radius=σ) (OpenSelfSup/MoCo) and the tensor kernel blur alike."""
    from PIL import Image

    from sslkit.transforms import GaussianBlur

    g = torch.Generator().manual_seed(0)
    img = F.interpolate(torch.rand(1, 3, 12, 16, generator=g), size=(48, 64), mode="nearest")[0]
    img = (img * 255).round().to(torch.uint8)  # blocky: blur changes it a lot
    blur = GaussianBlur(23, sigma=(1.5, 1.5))
    from_pil = torch.from_numpy(np.array(blur(Image.fromarray(img.permute(1, 2, 0).numpy())))).permute(2, 0, 1)
    from_tensor = blur(img)
    assert (from_tensor.float() - img.float()).abs().mean() > 10
    assert (from_pil.float() - from_tensor.float()).abs().mean() < 2.0


def test_byol_solarizes_only_the_second_view_about_one_time_in_five():
    # A uniform light-gray image stays >= 150 under every other BYOL augmentation (brightness ≥ 0.6×,
    # contrast/saturation/hue/blur/grayscale/crop/flip leave a uniform gray unchanged); solarize maps it to <= 105.
    image = np.full((48, 64, 3), 250, dtype=np.uint8)
    mv = MultiView(byol_views(32))
    mean, std = torch.tensor(mv.views[0].mean).view(3, 1, 1), torch.tensor(mv.views[0].std).view(3, 1, 1)
    torch.manual_seed(0)
    solarized = np.zeros(2)
    n = 300
    for _ in range(n):
        for i, v in enumerate(mv(image)):
            pixel = ((v * std + mean) * 255).mean().item()
            assert pixel >= 145 or pixel <= 110
            solarized[i] += pixel <= 110
    assert solarized[0] == 0
    assert 0.12 < solarized[1] / n < 0.28


def test_byol_blur_is_always_on_view_1_and_one_in_ten_on_view_2():
    from torchvision.transforms import v2

    from sslkit.transforms import GaussianBlur

    def blur_p(pipeline):
        for t in pipeline.transforms:
            if isinstance(t, GaussianBlur):
                return 1.0
            if isinstance(t, v2.RandomApply) and isinstance(t.transforms[0], GaussianBlur):
                return t.p
        return 0.0

    v1, v2_ = (build_view(v) for v in byol_views(224))
    assert (blur_p(v1), blur_p(v2_)) == (1.0, 0.1)
    blur = next(t.transforms[0] for t in build_view(ViewAug(size=224, blur_p=0.5)).transforms
                if isinstance(t, v2.RandomApply) and isinstance(t.transforms[0], GaussianBlur))
    assert tuple(blur.kernel_size) == (23, 23)  # 10% of the side, odd (tensor inputs)


def _blur_sigmas(obj, seen=None) -> set[tuple[float, float]]:
    """σ ranges of every GaussianBlur reachable from a method's transform object."""
    from sslkit.transforms import GaussianBlur

    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, (str, bytes, int, float, np.ndarray, torch.Tensor)) or obj is None:
        return set()
    seen.add(id(obj))
    if isinstance(obj, GaussianBlur):
        return {tuple(round(s, 6) for s in obj.sigma)}
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    else:
        children = list(getattr(obj, "__dict__", {}).values()) + list(getattr(obj, "_modules", {}).values())
    return set().union(*(_blur_sigmas(c, seen) for c in children)) if children else set()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_blur_reference_size_rescales_every_views_blur(method):
    """``blur_reference_size=224`` turns the papers' σ ∈ [0.1, 2] px (224-px views) into σ·side/224 for
    every view a method builds (ORL's patches and UniVIP's instances have their own sides)."""
    cls = METHODS[method]
    base = C.resolve(cls, [("flags", {"image_size": 64})])
    sides = {64} | {base[k] for k in ("patch_size", "instance_size") if k in base}
    assert _blur_sigmas(cls.make_transform(base)) == {(0.1, 2.0)}  # default: the papers' pixels
    scaled = C.resolve(cls, [("flags", {"image_size": 64, "blur_reference_size": 224})])
    got = _blur_sigmas(cls.make_transform(scaled))
    assert got == {(round(0.1 * s / 224, 6), round(2.0 * s / 224, 6)) for s in sides}
    with pytest.raises(UserError, match="blur_reference_size"):
        C.validate(C.resolve(cls, [("flags", {"blur_reference_size": 0})]))


def test_view_aug_overrides_every_view_or_one_and_rejects_bad_items():
    from sslkit.transforms import parse_view_aug, tune_views

    v1, v2 = tune_views(byol_views(64), None, "saturation=0.8, hue=0.2 2.solarize_p=0 crop_scale=0.2:1 1.blur_p=0.5")
    assert (v1.saturation, v2.saturation, v1.hue, v2.hue) == (0.8, 0.8, 0.2, 0.2)
    assert (v1.solarize_p, v2.solarize_p, v1.blur_p, v2.blur_p) == (0.0, 0.0, 0.5, 0.1)  # BYOL: v2 solarizes 0.2
    assert v1.crop_scale == v2.crop_scale == (0.2, 1.0) and v1.size == v2.size == 64
    v1, v2 = tune_views(byol_views(64), None, "blur_p=0.3 2.blur_p=0.0")  # a view's own item wins
    assert (v1.blur_p, v2.blur_p) == (0.3, 0.0)
    assert tune_views(byol_views(64), None, None) == byol_views(64) == tune_views(byol_views(64), None, " ")
    for bad, msg in [("satur=1", "did you mean saturation"), ("hue=0.9", "hue must be a number in [0.0, 0.5]"),
                     ("crop_scale=0.5:0.2", "crop_scale must be LO:HI"), ("blur_p", "is not [1.|2.]FIELD=VALUE"),
                     ("size=32", "unknown view field 'size'"), ("interpolation=cubic", "one of bilinear, bicubic"),
                     ("3.flip_p=0", "unknown view field '3.flip_p'"), ("jitter_p=x", "jitter_p must be a number")]:
        with pytest.raises(ValueError) as e:
            parse_view_aug(bad)
        assert msg in str(e.value), (bad, str(e.value))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_view_aug_reaches_every_view_a_method_builds(method):
    """``view_aug`` is applied before ``blur_reference_size`` in every method's views (ORL's patches,
    UniVIP's instances included); a bad value is a UserError at validation."""
    cls = METHODS[method]
    cfg = C.resolve(cls, [("flags", {"image_size": 64, "view_aug": "blur_sigma=0.2:1.0"})])
    assert _blur_sigmas(cls.make_transform(cfg)) == {(0.2, 1.0)}
    cfg = C.resolve(cls, [("flags", {"image_size": 64, "view_aug": "blur_sigma=0.2:1.0", "blur_reference_size": 32})])
    sides = {64} | {cfg[k] for k in ("patch_size", "instance_size") if k in cfg}
    assert _blur_sigmas(cls.make_transform(cfg)) == {(round(0.2 * s / 32, 6), round(1.0 * s / 32, 6)) for s in sides}
    with pytest.raises(UserError, match="view_aug: 'hue=1': hue must be"):
        C.validate(C.resolve(cls, [("flags", {"view_aug": "hue=1"})]))


# ---------------------------------------------------------------- config


def test_config_layers_override_in_order_and_values_are_checked(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.5\nepochs: 30\nweight_decay: 1e-5\n")  # YAML 1.1 reads 1e-5 as a string
    cfg = C.resolve(BYOL, [("file", C.load_config_file(f)), ("--set", C.parse_set(["epochs=20", "sync_bn=false"])),
                           ("flags", {"epochs": 10})])
    assert (cfg["lr"], cfg["epochs"], cfg["weight_decay"], cfg["sync_bn"]) == (0.5, 10, 1e-5, False)
    assert cfg["batch_size"] == 512 and cfg["ema_momentum"] == 0.99  # method defaults underneath
    toml = tmp_path / "c.toml"
    toml.write_text('optimizer = "lars"\nlr = 1.0\n')
    assert C.resolve(SimCLR, [("t", C.load_config_file(toml))])["lr"] == 1.0
    with pytest.raises(UserError, match="byol has no setting 'temprature'"):
        C.resolve(BYOL, [("flags", {"temprature": 0.1})])
    with pytest.raises(UserError, match="not one of"):
        C.resolve(BYOL, [("flags", {"optimizer": "adam"})])
    with pytest.raises(UserError, match="not a valid int"):
        C.resolve(BYOL, [("flags", {"batch_size": 2.5})])


def test_resume_refuses_to_change_what_defines_the_run():
    old = C.resolve(BYOL, [])
    new = C.resolve(BYOL, [("flags", {"lr": 0.3, "workers": 3, "log_every": 1})], base=old)
    assert C.frozen_changes(BYOL, old, new) == ["lr"]


# ---------------------------------------------------------------- launchers


def test_launcher_detection_reads_torchrun_and_srun_environments(monkeypatch):
    from sslkit.dist import detect_launcher

    monkeypatch.setattr(os, "environ", {})  # a clean environment; detect_launcher also writes to it
    assert detect_launcher() is None
    # an sbatch script (no srun step) is not a distributed launch, whatever the allocation
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    assert detect_launcher() is None
    # srun step: 16 tasks, 8 per node, this is task 11 (node 1, local 3)
    for k, v in {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "16", "SLURM_PROCID": "11", "SLURM_LOCALID": "3",
                 "SLURM_STEP_TASKS_PER_NODE": "8(x2)", "SLURM_JOB_ID": "123", "MASTER_ADDR": "node0"}.items():
        monkeypatch.setenv(k, v)
    info = detect_launcher()
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size, info.launcher) == (11, 16, 3, 8, "slurm")
    assert os.environ["MASTER_PORT"] == str(15000 + 123) and os.environ["RANK"] == "11"
    # torchrun's variables win
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    info = detect_launcher()
    assert (info.rank, info.world_size, info.local_rank, info.launcher) == (1, 2, 1, "torchrun")
