"""MCL: montage ↔ window geometry, the multi-level loss against a per-tile transcription of spec §2.4,
the all-gather label offset over two gloo ranks, the FPN/head layouts, the engine's gradient clipping."""

from __future__ import annotations

import math
import os
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from sslkit.engine import config as C
from sslkit.errors import UserError
from sslkit.methods import METHODS
from sslkit.methods.mcl_loss import LOSS_MODES, mcl_loss, target_levels
from sslkit.models.fpn import FPN
from sslkit.views.mcl import (
    assemble,
    draw_sources,
    level_weights,
    montage_batch,
    montage_counts,
    parse_fractions,
    windows,
)
from tests.conftest import assert_learns, free_port, train_on_fixed_batch

TINY = {"arch": "resnet_tiny", "image_size": 64, "batch_size": 32, "fpn_dim": 16, "proj_hidden_dim": 32,
        "proj_dim": 16, "pred_hidden_dim": 32}


def tiny_cfg(**over) -> dict:
    cls = METHODS["mcl"]
    cfg = C.resolve(cls, [("test", {**TINY, **over})])
    cfg["world_size"] = 1
    cls.validate(cfg)
    return cfg


def _batch(b=32, size=64, levels=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2 * levels, 3, size, size, generator=g), seed


# -- montage geometry ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [64, 224])
@pytest.mark.parametrize("mode", ["nearest", "area"])
def test_every_window_is_its_tile(size, mode):
    """Tiles of constant colour c_i through a pooling 'backbone' (average pooling to the stride of
    P_{5-s}): every window's mean is c of the tile's source, at the source's row and column."""
    b = 32
    colours = (torch.arange(b)[:, None] * 3 + torch.arange(3)).float()  # distinct per image and channel, exact
    images = colours[:, :, None, None].expand(b, 3, size, size).contiguous()
    counts = montage_counts(b, parse_fractions("1,1/4,1/16,1/32", 4))
    assert counts == [32, 8, 2, 1]
    g = torch.Generator().manual_seed(1)
    x, sources = montage_batch([images] * 4, counts, g, mode)
    assert x.shape == (sum(counts), 3, size, size)
    assert [len(s) for s in sources] == [32, 32, 32, 64]
    start = 0
    for s, count in enumerate(counts):
        ratio, stride = 2**s, 2 ** (5 - s)  # level s sits on P_{5-s}
        level = x[start:start + count]
        start += count
        p = F.avg_pool2d(level, stride)  # the pooling "backbone": P_{5-s} of the montages
        assert p.shape[-1] == ratio * size // 32
        w = windows(p, ratio)
        assert w.shape == (count * ratio * ratio, 3, size // 32, size // 32)
        torch.testing.assert_close(w.mean((2, 3)), colours[sources[s]], rtol=0, atol=1e-4)
        # and at the right place: tile j of montage m is the block at (row j // r, col j % r)
        t = size // ratio
        for j in (0, ratio * ratio - 1, ratio * ratio // 2 + (ratio > 1)):
            for m in range(count):
                a, c = divmod(j, ratio)
                block = level[m, :, a * t:(a + 1) * t, c * t:(c + 1) * t]
                torch.testing.assert_close(block.mean((1, 2)), colours[sources[s][m * ratio * ratio + j]],
                                           rtol=0, atol=1e-4)
    # level 0 is the batch in order; levels 1, 2 a permutation of it; level 3 every image twice
    assert sources[0].tolist() == list(range(b))
    for s in (1, 2):
        assert sorted(sources[s].tolist()) == list(range(b))
    assert sorted(sources[3].tolist()) == sorted(list(range(b)) * 2)


def test_resnet_pyramid_levels_split_into_whole_windows():
    """A real (tiny) ResNet + FPN: P_{5-s} of a montage is exactly r × r windows of side S/32."""
    from sslkit.models.backbones import build_backbone, stage_features

    net = build_backbone("resnet_tiny")
    fpn = FPN(net.stage_dims[1:], 8)
    for size in (64, 224):
        pyr = fpn(stage_features(net, torch.randn(2, 3, size, size))[1:])
        for s in range(4):
            assert pyr[3 - s].shape[-2:] == (2**s * size // 32,) * 2


def test_nearest_downsampling_keeps_the_top_left_pixel_and_tiles_row_major():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    m = assemble(x, torch.tensor([1, 0, 0, 1]), 2, "nearest")  # one 2x2 montage of 2x2 tiles
    assert m.shape == (1, 1, 4, 4)
    torch.testing.assert_close(m[0, 0, :2, :2], x[1, 0, ::2, ::2])
    torch.testing.assert_close(m[0, 0, :2, 2:], x[0, 0, ::2, ::2])
    torch.testing.assert_close(m[0, 0, 2:, :2], x[0, 0, ::2, ::2])


def test_tile_sources_are_randperm_mod_b_from_the_generator():
    a = draw_sources(32, 8, 1, torch.Generator().manual_seed(3))
    b = torch.randperm(64, generator=torch.Generator().manual_seed(3)) % 32
    assert torch.equal(a, b)


def test_batches_that_do_not_divide_are_one_line_errors():
    with pytest.raises(ValueError, match="multiple of 32"):
        montage_counts(48, parse_fractions("1,1/4,1/16,1/32", 4))
    assert montage_counts(16, parse_fractions("1,1/4,1/16,1/32", 3)) == [16, 4, 1]
    with pytest.raises(UserError, match="multiple of 32"):
        tiny_cfg(batch_size=48)
    with pytest.raises(UserError, match="multiple of 32"):
        tiny_cfg(image_size=80)
    with pytest.raises(ValueError, match="start with 1"):
        parse_fractions("1/2,1/4", 2)


def test_level_weights():
    assert level_weights("auto", 4) == [0.5, 0.25, 0.125, 0.125]  # [C]
    assert level_weights("auto", 3) == [0.5, 0.25, 0.25]
    assert level_weights("auto", 1) == [1.0]
    assert level_weights("1,1/2", 2) == [1.0, 0.5]
    with pytest.raises(ValueError):
        level_weights("1,1", 3)


# -- the loss -----------------------------------------------------------------------------------

def _reference(q_on, q_src, k_on, k_src, q_t, q_ts, k_t, k_ts, weights, tau, mode):
    """Spec §2.4 written out tile by tile, in float64 Python loops."""
    levels = len(q_on)
    total = 0.0
    for on, src, tg, tsrc in ((q_on, q_src, k_t, k_ts), (k_on, k_src, q_t, q_ts)):
        for s in range(levels):
            per_t = []
            for t in target_levels(mode, s, levels):
                v = [F.normalize(r.double(), dim=0) for r in tg[t]]
                rows = []
                for i in range(len(on[s])):
                    u = F.normalize(on[s][i].double(), dim=0)
                    logits = [float(u @ vj) / tau for vj in v]
                    lse = math.log(sum(math.exp(x) for x in logits))
                    pos = [j for j in range(len(v)) if int(tsrc[t][j]) == int(src[s][i])]
                    rows.append(-sum(logits[j] - lse for j in pos) / len(pos))
                per_t.append(2 * tau * sum(rows) / len(rows))
            total += weights[s] * sum(per_t) / len(per_t)
    return total


def _random_tiles(b=8, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = [b, b // 4, b // 8, b // 8]  # r²·M: b, b, 2b, 4b tiles (duplicates at levels 2, 3)
    out = {}
    for view in "qk":
        src = [torch.arange(b)] + [torch.randperm(4**s * c, generator=g) % b for s, c in enumerate(counts) if s]
        out[view + "_on"] = [torch.randn(len(x), d, generator=g) for x in src]
        out[view + "_src"] = src
        out[view + "_t"] = {t: torch.randn(len(x), d, generator=g) for t, x in enumerate(src)}
        out[view + "_ts"] = dict(enumerate(src))
    return out


@pytest.mark.parametrize("mode", LOSS_MODES)
def test_loss_matches_a_per_tile_transcription(mode):
    r = _random_tiles()
    w, tau = [0.5, 0.25, 0.125, 0.125], 0.7
    loss, stats = mcl_loss(r["q_on"], r["q_src"], r["k_on"], r["k_src"], r["q_t"], r["q_ts"], r["k_t"], r["k_ts"],
                           weights=w, tau=tau, mode=mode, batch=8)
    ref = _reference(r["q_on"], r["q_src"], r["k_on"], r["k_src"], r["q_t"], r["q_ts"], r["k_t"], r["k_ts"], w, tau, mode)
    assert abs(loss.item() - ref) <= 1e-5, (loss.item(), ref)
    assert set(stats) == {f"{n}_l{s}" for n in ("loss", "pos_cos", "neg_cos") for s in range(4)}
    for s in range(4):
        assert -1 <= stats[f"pos_cos_l{s}"] <= 1 and -1 <= stats[f"neg_cos_l{s}"] <= 1


def test_loss_is_low_when_online_tiles_point_at_their_image():
    b, d = 16, 32
    targets = F.normalize(torch.randn(b, d), dim=1) * 5
    src = [torch.arange(b), torch.randperm(b), torch.randperm(b), torch.randperm(2 * b) % b]
    good = [targets[s] for s in src]
    bad = [torch.randn(len(s), d) for s in src]
    kw = {"weights": [0.5, 0.25, 0.125, 0.125], "tau": 0.1, "mode": "a", "batch": b}
    lg, sg = mcl_loss(good, src, good, src, {0: targets}, {0: src[0]}, {0: targets}, {0: src[0]}, **kw)
    lb, _ = mcl_loss(bad, src, bad, src, {0: targets}, {0: src[0]}, {0: targets}, {0: src[0]}, **kw)
    assert lg < 0.1 < lb
    assert sg["pos_cos_l3"] == pytest.approx(1.0) and sg["neg_cos_l3"] < 0.5


def _gather_worker(rank, world, port, out_dir, modes):
    import torch.distributed as dist

    from sslkit import dist as sdist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for mode in modes:
            r = _random_tiles(seed=10 + rank)  # each rank: its own 8 images, sources local 0..7
            for t in r["q_on"]:
                t.requires_grad_()
            kw = {"weights": [0.5, 0.25, 0.125, 0.125], "tau": 1.0, "mode": mode, "batch": 8}
            args = (r["q_on"], r["q_src"], r["k_on"], r["k_src"], r["q_t"], r["q_ts"], r["k_t"], r["k_ts"])
            loss, _ = mcl_loss(*args, rank=rank, gather=sdist.all_gather, **kw)
            loss.backward()
            local, _ = mcl_loss(*args, **kw)
            torch.save({"loss": loss.detach(), "grad": [t.grad for t in r["q_on"]], "local": local.detach()},
                       os.path.join(out_dir, f"{mode}{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_labels_carry_the_rank_offset_over_two_gloo_ranks(tmp_path):
    """Two ranks of 8 images each, targets all-gathered: the mean of the rank losses is the loss of one
    process holding both halves with labels offset by 8 for the second, and so are the gradients."""
    import torch.multiprocessing as mp

    mp.start_processes(_gather_worker, args=(2, free_port(), str(tmp_path), ("a", "b")), nprocs=2,
                       start_method="spawn")
    for mode in ("a", "b"):
        res = [torch.load(tmp_path / f"{mode}{i}.pt") for i in range(2)]
        halves = [_random_tiles(seed=10 + i) for i in range(2)]
        cat = {}
        for key in ("q_on", "k_on"):
            cat[key] = [torch.cat([h[key][s] for h in halves]).requires_grad_() for s in range(4)]
        for key in ("q_src", "k_src"):
            cat[key] = [torch.cat([h[key][s] + 8 * i for i, h in enumerate(halves)]) for s in range(4)]
        for key in ("q_t", "k_t"):
            cat[key] = {t: torch.cat([h[key][t] for h in halves]) for t in range(4)}
        for key in ("q_ts", "k_ts"):
            cat[key] = {t: torch.cat([h[key][t] + 8 * i for i, h in enumerate(halves)]) for t in range(4)}
        whole, _ = mcl_loss(cat["q_on"], cat["q_src"], cat["k_on"], cat["k_src"], cat["q_t"], cat["q_ts"], cat["k_t"],
                            cat["k_ts"], weights=[0.5, 0.25, 0.125, 0.125], tau=1.0, mode=mode, batch=16)
        whole.backward()
        assert (res[0]["loss"] + res[1]["loss"]).item() / 2 == pytest.approx(whole.item(), rel=1e-5)
        for s in range(4):
            n = len(res[0]["grad"][s])
            torch.testing.assert_close(torch.cat([res[0]["grad"][s], res[1]["grad"][s]]) / 2, cat["q_on"][s].grad,
                                       rtol=1e-4, atol=1e-7)
            assert n == len(cat["q_on"][s]) // 2
        assert (res[0]["local"] + res[1]["local"]).item() / 2 != pytest.approx(whole.item(), rel=1e-3)


# -- the method ---------------------------------------------------------------------------------

@pytest.mark.parametrize("over", [{}, {"levels": 3, "batch_size": 16}, {"neck": "linear"}, {"loss_mode": "d"}])
def test_every_trainable_parameter_gets_a_gradient(over):
    """DDP (no unused-parameter search) needs every trainable parameter in the graph: also with 3 levels
    (P2 unused) and the non-FPN neck."""
    cfg = tiny_cfg(**over)
    torch.manual_seed(0)
    m = METHODS["mcl"](cfg)
    out = m(_batch(cfg["batch_size"], levels=cfg["levels"]))
    out["loss"].backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(p.grad is None for n, p in m.named_parameters() if n.startswith("target_"))
    assert {f"pos_cos_l{s}" for s in range(cfg["levels"])} <= out.keys()
    assert math.isfinite(out["loss"].item())


def test_matched_and_all_windows_pick_the_same_tiles():
    """With BN in eval mode the head's output of a window does not depend on the others, so the code's
    head-over-every-window (all) and ours (matched) must give the same embeddings."""
    torch.manual_seed(0)
    a = METHODS["mcl"](tiny_cfg())
    b = METHODS["mcl"](tiny_cfg(head_windows="all"))
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.randn(43, 3, 64, 64)
    counts = [32, 8, 2, 1]
    for target in (False, True):
        ea, eb = a.embed(x, counts, [0, 1, 2, 3], target), b.embed(x, counts, [0, 1, 2, 3], target)
        for s in range(4):
            torch.testing.assert_close(ea[s], eb[s], rtol=1e-4, atol=1e-5)


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    m = METHODS["mcl"](tiny_cfg(temperature=0.2))
    assert_learns(train_on_fixed_batch(m, _batch(), steps=12, lr=0.05))


def test_fpn_layout_is_torchvisions_and_partial_levels_agree():
    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

    torch.manual_seed(0)
    ours = FPN([8, 16, 32, 64], 16)
    tv = FeaturePyramidNetwork([8, 16, 32, 64], 16, norm_layer=torch.nn.BatchNorm2d)
    tv.load_state_dict(ours.state_dict(), strict=True)
    feats = [torch.randn(2, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate([8, 16, 32, 64])]
    ours.eval(), tv.eval()
    full = ours(feats)
    ref = list(tv({str(i): f for i, f in enumerate(feats)}).values())
    for a, b in zip(full, ref, strict=True):
        torch.testing.assert_close(a, b)
    only_p5 = ours(feats, levels=[3])
    assert only_p5[:3] == [None, None, None]
    torch.testing.assert_close(only_p5[3], full[3])


def test_parts_round_trip_detectron2_names():
    from sslkit.models import parts as P

    torch.manual_seed(0)
    m = METHODS["mcl"](tiny_cfg())
    sd = m.state_dict()
    fpn = {k[4:]: v for k, v in sd.items() if k.startswith("fpn.")}
    head = {k[9:]: v for k, v in sd.items() if k.startswith("box_head.")}
    assert P.check_part("fpn", fpn) == 16 and P.check_part("head", head) == 16
    d2 = {**P.to_detectron2("fpn", fpn), **P.to_detectron2("head", head)}
    assert {"fpn_lateral2.weight", "fpn_lateral5.norm.running_var", "fpn_output3.norm.bias",
            "box_head.conv1.weight", "box_head.conv4.norm.weight"} <= d2.keys()
    assert not any(k.endswith("num_batches_tracked") for k in d2)
    rest, back = P.split_detectron2({**d2, "stem.conv1.weight": 0})
    assert rest.keys() == {"stem.conv1.weight"}
    for part, orig in (("fpn", fpn), ("head", head)):
        assert back[part].keys() == orig.keys()
        for k in orig:
            if not k.endswith("num_batches_tracked"):
                assert torch.equal(back[part][k], orig[k]), k
    with pytest.raises(P.PartError, match="4 convs"):
        P.check_part("head", {k: v for k, v in head.items() if not k.startswith("3.")})


def test_grad_clip_bounds_the_global_norm_and_logs_it():
    from sslkit.engine.loop import Amp, train_step
    from sslkit.engine.optim import build_optimizer

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)

        def forward(self, x):
            return {"loss": 100 * self.b(self.a(x)).pow(2).mean()}

        def on_after_step(self, step, total):
            return {}

    torch.manual_seed(0)
    toy, x = Toy(), torch.randn(8, 4)
    opt = build_optimizer(toy, "sgd", 0.0, 0.0)
    out, _ = train_step(toy, toy, opt, Amp("fp32", "cpu"), x, 0.0, 0, 1, grad_clip=1.0)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in toy.parameters()]))
    assert out["grad_norm"] > 1.0 and norm.item() == pytest.approx(1.0, rel=1e-5)
    out, _ = train_step(toy, toy, opt, Amp("fp32", "cpu"), x, 0.0, 0, 1)
    assert "grad_norm" not in out


def test_views_are_eight_independent_draws_with_the_codes_pipelines():
    import numpy as np

    from sslkit.views.mcl import MCLViews, mcl_view_augs

    t, t2 = mcl_view_augs(64)
    assert t.crop_scale == t2.crop_scale == (0.2, 1.0)
    assert (t.blur_p, t.solarize_p, t2.blur_p, t2.solarize_p) == (1.0, 0.0, 0.1, 0.2)
    img = (np.random.default_rng(0).random((80, 96, 3)) * 255).astype(np.uint8)
    torch.manual_seed(0)
    views, seed = MCLViews((t, t2), 4)(img)
    assert views.shape == (8, 3, 64, 64) and seed.dtype == torch.int64
    assert len({tuple(v.flatten()[:50].tolist()) for v in views}) == 8  # each level its own crop


def test_montage_fractions_parse():
    assert parse_fractions("1,1/4,1/16,1/32", 4) == [1, Fraction(1, 4), Fraction(1, 16), Fraction(1, 32)]
    with pytest.raises(ValueError, match="entries"):
        parse_fractions("1,1/4", 3)
