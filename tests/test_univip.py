"""UniVIP: Sinkhorn, the scene-pair / instance sampler, the three losses, candidates, and training
through the CLI on demo scenes with real selective-search proposals."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from sslkit.engine import config as C
from sslkit.errors import UserError
from sslkit.methods import METHODS
from sslkit.methods.univip import instance_loss, normalize_marginal, ot_marginals, sinkhorn_log
from sslkit.ops.boxes import box_iou
from sslkit.proposals.filters import orl_filter
from sslkit.transforms import crop_resize
from sslkit.views.univip import PairSampler, UniVIPViews
from tests.conftest import assert_learns, train_on_fixed_batch
from tests.conftest import run_cli as sslkit

# ------------------------------------------------------------------------------------ Sinkhorn


def _problem(batch=8, m=4, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    cost = 2 * torch.rand(batch, m, n, generator=g)
    a, b = torch.rand(batch, m, generator=g), 3 * torch.rand(batch, n, generator=g)
    return cost, a, b


@pytest.mark.parametrize("m,n", [(4, 4), (3, 5)])
def test_sinkhorn_plan_has_the_normalised_marginals(m, n):
    """Costs 1 − cos of embeddings (what the loss feeds it) at the defaults (ε 0.1, 50 iterations);
    arbitrary costs in [0, 2] converge more slowly (rows within ~2e-2 after 50) but do converge."""
    import torch.nn.functional as F

    _, a, b = _problem(m=m, n=n)
    g = torch.Generator().manual_seed(5)
    emb = [F.normalize(torch.randn(8, k, 32, generator=g), dim=-1) for k in (m, n)]
    cos_cost = (1 - emb[0] @ emb[1].transpose(-1, -2)).requires_grad_()
    hard_cost = _problem(m=m, n=n)[0]
    for cost, iters in ((cos_cost, 50), (hard_cost, 1000)):
        plan = sinkhorn_log(cost, a, b, 0.1, iters)
        assert plan.dtype == torch.float32 and not plan.requires_grad
        assert (plan >= 0).all()
        torch.testing.assert_close(plan.sum((-2, -1)), torch.ones(8), atol=1e-5, rtol=0)
        torch.testing.assert_close(plan.sum(-1), a / a.sum(-1, keepdim=True), atol=1e-4, rtol=0)
        torch.testing.assert_close(plan.sum(-2), b / b.sum(-1, keepdim=True), atol=1e-5, rtol=0)


def test_sinkhorn_approaches_the_exact_transport_as_eps_shrinks():
    """Uniform marginals: the optimum is a permutation / K (Birkhoff); entropic OT at ε is within
    ε·log K of it in cost, and its plan puts almost all mass on that permutation."""
    cost, _, _ = _problem(batch=6, seed=1)
    u = torch.ones(6, 4)
    plan = sinkhorn_log(cost, u, u, eps=0.01, iters=5000)  # small ε converges slowly
    for c, y in zip(cost, plan, strict=True):
        perms = list(itertools.permutations(range(4)))
        values = [sum(c[i, p[i]].item() for i in range(4)) / 4 for p in perms]
        best = perms[int(np.argmin(values))]
        got = (c * y).sum().item()
        assert min(values) - 1e-4 <= got <= min(values) + 0.01 * math.log(4) + 1e-4
        assert y.argmax(1).tolist() == list(best)


def test_sinkhorn_matches_identical_instances_on_the_diagonal():
    plan = sinkhorn_log(1 - torch.eye(4), torch.ones(4), torch.ones(4))
    assert plan.diagonal().sum().item() > 0.999
    perm = torch.tensor([2, 0, 3, 1])
    plan = sinkhorn_log(1 - torch.eye(4)[perm], torch.ones(4), torch.ones(4))
    assert (plan.argmax(1) == perm).all()


@pytest.mark.parametrize("case", ["zero_rows", "zero_cols", "all_zero", "some_zero", "cost_zero", "tiny_eps",
                                  "fp16", "bf16", "autocast_bf16"])
def test_sinkhorn_stays_finite_in_degenerate_cases(case):
    cost, a, b = _problem()
    eps = 0.1
    if case == "zero_rows":
        a = torch.zeros_like(a)
    elif case == "zero_cols":
        b = torch.zeros_like(b)
    elif case == "all_zero":
        a, b = torch.zeros_like(a), torch.zeros_like(b)
    elif case == "some_zero":
        a[:, :2] = 0
        b[:, 1:] = 0
    elif case == "cost_zero":
        cost = torch.full_like(cost, 1e-7)
    elif case == "tiny_eps":
        eps = 1e-4
    elif case in ("fp16", "bf16"):
        dt = torch.float16 if case == "fp16" else torch.bfloat16
        cost, a, b = cost.to(dt), a.to(dt), b.to(dt)
    if case == "autocast_bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plan = sinkhorn_log(cost, a, b, eps)
    else:
        plan = sinkhorn_log(cost, a, b, eps)
    assert plan.dtype == torch.float32 and torch.isfinite(plan).all() and (plan >= 0).all()
    torch.testing.assert_close(plan.sum((-2, -1)), torch.ones(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(plan.sum(-2), normalize_marginal(b), atol=1e-4, rtol=0)
    if case == "all_zero":  # uniform fallback on both sides: the marginals are 1/K (rows once converged)
        converged = sinkhorn_log(cost, a, b, eps, 1000)
        torch.testing.assert_close(converged.sum(-1), torch.full((8, 4), 0.25), atol=1e-4, rtol=0)
    if case == "cost_zero":  # nothing to prefer: the independent coupling a ⊗ b
        torch.testing.assert_close(plan, normalize_marginal(a)[:, :, None] * normalize_marginal(b)[:, None],
                                   atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------ losses


def _embeddings(b=6, k=4, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(b, k, d, generator=g)
    f_o = (torch.randn(b, d, generator=g), torch.randn(b, d, generator=g))
    f_t = (torch.randn(b, d, generator=g), torch.randn(b, d, generator=g))
    return o, f_o, f_t


def test_marginals_are_eq_9_and_10():
    o = torch.tensor([[[2.0, 0.0], [-1.0, 0.0], [0.0, 3.0]]])  # (1, 3, 2)
    t = torch.tensor([[[0.0, 1.0], [1.0, 1.0], [0.0, -1.0]]])
    f_t = (torch.tensor([[1.0, 0.0]]), torch.tensor([[5.0, 0.0]]))  # mean of unit vectors: (1, 0)
    f_o = (torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 1.0]]))  # (0, 1)
    b, a = ot_marginals(o, t, f_o, f_t)  # the paper's raw dot products (default)
    torch.testing.assert_close(b, torch.tensor([[6.0, 0.0, 0.0]]))  # ReLU(o·(3,0))
    torch.testing.assert_close(a, torch.tensor([[1.5, 1.5, 0.0]]))  # ReLU(t·(0,1.5))
    bn, an = ot_marginals(o, t, f_o, f_t, "normalized")  # the digest's cosines
    torch.testing.assert_close(bn, torch.tensor([[1.0, 0.0, 0.0]]))  # ReLU(ō·(1,0))
    torch.testing.assert_close(an, torch.tensor([[1.0, 2 ** -0.5, 0.0]]))  # ReLU(t̄·(0,1))
    # raw: t_2 = (1, 1) gets as much mass as t_1 = (0, 1), its norm making up for the angle (cosines: 0.71 of it)
    torch.testing.assert_close(normalize_marginal(a), torch.tensor([[0.5, 0.5, 0.0]]), atol=1e-7, rtol=0)
    # the online instances supply b (rows of the plan), the target instances demand a (columns)
    _, plan = instance_loss(o, t, f_o, f_t, iters=1000)
    torch.testing.assert_close(plan.sum(-1), normalize_marginal(b), atol=1e-4, rtol=0)
    torch.testing.assert_close(plan.sum(-2), normalize_marginal(a), atol=1e-4, rtol=0)


def test_instance_loss_is_lowest_for_matched_instances_and_ignores_their_order():
    """Identical online and target embeddings (instances and scenes, so the marginals agree, Eq. 9–10)
    give the lowest loss, ~0."""
    o, f_o, _ = _embeddings()
    f_t = f_o
    matched, plan = instance_loss(o, o.clone(), f_o, f_t)
    assert 0 <= matched.item() < 0.02
    assert plan.diagonal(dim1=-2, dim2=-1).sum(-1).min().item() > 0.97
    g = torch.Generator().manual_seed(1)
    for sigma in (0.2, 0.5, 1.0, 3.0):
        noisy, _ = instance_loss(o, o + sigma * torch.randn(o.shape, generator=g), f_o, f_t)
        assert noisy.item() > matched.item()
    # optimal transport finds the correspondence: shuffling the target instances changes nothing,
    # while a loss on the diagonal pairs would jump to ~2
    perm = torch.tensor([3, 0, 1, 2])
    shuffled, plan_shuffled = instance_loss(o, o[:, perm], f_o, f_t)
    assert shuffled.item() == pytest.approx(matched.item(), abs=1e-4)
    torch.testing.assert_close(plan_shuffled, plan[:, :, perm], atol=1e-5, rtol=0)  # the plan follows them


def test_instance_loss_gradient_reaches_only_the_online_branch_and_survives_bf16():
    o, f_o, f_t = _embeddings()
    o.requires_grad_()
    t = (o.detach() + 0.5 * torch.randn(o.shape)).requires_grad_()
    loss, _ = instance_loss(o, t, f_o, f_t)
    loss.backward()
    assert t.grad is None and torch.isfinite(o.grad).all() and o.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, _ = instance_loss(o.bfloat16(), t.bfloat16(), (f_o[0].bfloat16(), f_o[1]), f_t)
    assert loss16.dtype == torch.float32 and loss16.item() == pytest.approx(loss.item(), abs=0.05)


def _cfg(method="univip", **over) -> dict:
    layer = {"arch": "resnet_tiny", "image_size": 64, "batch_size": 4, "proj_hidden_dim": 32, "proj_dim": 16,
             "pred_hidden_dim": 32, **over}
    if method == "univip":
        layer = {"instance_size": 32, "naive_min_size": 12, "views": "unused.h5", **layer}
    return C.resolve(METHODS[method], [("test", layer)])


def _views(b=4, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    s1, s2 = torch.randn(b, 3, 64, 64, generator=g), torch.randn(b, 3, 64, 64, generator=g)
    ia, ib = torch.randn(b, k, 3, 32, 32, generator=g), torch.randn(b, k, 3, 32, 32, generator=g)
    return s1, s2, ia, ib, torch.tensor([[k, 0.0, 0.0, 0.0]]).repeat(b, 1)


def test_k0_is_byol_on_the_same_views():
    torch.manual_seed(0)
    byol = METHODS["byol"](_cfg("byol"))
    torch.manual_seed(0)
    univip = METHODS["univip"](_cfg(num_instances=0))
    assert byol.state_dict().keys() == univip.state_dict().keys()
    s1, s2, ia, ib, stats = _views(k=0)
    want = byol((s1, s2))["loss"]
    got = univip((s1, s2, ia, ib, stats))
    assert got["loss"].item() == want.item()
    assert set(got) == {"loss", "loss_scene", "naive_fraction", "naive_forced", "whole_image"}


@pytest.mark.parametrize("weights,terms", [
    ((1, 1, 1), {"loss_scene", "loss_scene_instance", "loss_instance"}),  # Table 7 (e)
    ((1, 0, 1), {"loss_scene", "loss_instance"}),  # (d)
    ((1, 1, 0), {"loss_scene", "loss_scene_instance"}),  # (c)
    ((0, 0, 1), {"loss_instance"}),
])
def test_loss_terms_follow_the_weights(weights, terms):
    cfg = _cfg(scene_weight=weights[0], scene_instance_weight=weights[1], instance_weight=weights[2])
    torch.manual_seed(0)
    model = METHODS["univip"](cfg)
    assert hasattr(model, "f_linear") == bool(weights[1])
    if weights[1]:
        assert model.f_linear.in_features == 4 * 16 and model.f_linear.out_features == 16  # Eq. 4: K·d → d
    out = model(_views())
    assert {k for k in out if k.startswith("loss_")} == terms
    total = sum(w * out[t].item() for w, t in zip(weights, ("loss_scene", "loss_scene_instance", "loss_instance"),
                                                  strict=True) if w)
    assert out["loss"].item() == pytest.approx(total, rel=1e-6)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad), \
        "every trainable parameter must get a gradient (DDP)"


def test_bad_settings_are_user_errors():
    cls = METHODS["univip"]
    cls.validate(_cfg(num_instances=0, views=""))  # K = 0 needs no candidates
    cls.validate(_cfg(naive_only=True, views=""))  # naive boxes need none either
    for over, msg in [({"views": ""}, "needs candidate boxes"),
                      ({"scene_weight": 0, "num_instances": 0}, "every loss term is off"),
                      ({"naive_max_iou": 1.5}, "naive boxes need"),
                      ({"ot_eps": 0.0}, "Sinkhorn needs")]:
        with pytest.raises(UserError, match=msg):
            cls.validate(_cfg(**over))


# ------------------------------------------------------------------------------------ sampling


def _candidates(h=480, w=640, n=80, seed=0):
    rng = np.random.default_rng(seed)
    bw, bh = rng.uniform(30, 260, n), rng.uniform(30, 200, n)
    x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    return np.stack([x, y, x + bw, y + bh], 1).astype(np.float32)


def _check_naive(boxes, region, m):
    """Naive boxes (§3.2): sides >= m, aspect within [1/3, 3], inside the region."""
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (bw >= m).all() and (bh >= m).all()
    assert (bw <= 3 * bh).all() and (bh <= 3 * bw).all()
    assert (boxes[:, :2] >= region[:2]).all() and (boxes[:, 2:] <= region[2:]).all()


def test_instances_lie_inside_both_scene_views():
    h, w = 480, 640
    cands = _candidates(h, w)
    sampler = PairSampler(k=4)
    full = 0
    for seed in range(150):
        torch.manual_seed(seed)
        pair = sampler.sample(h, w, cands)
        c1, c2 = pair.crops
        assert (pair.crops[:, :2] >= 0).all() and (pair.crops[:, 2] <= w).all() and (pair.crops[:, 3] <= h).all()
        overlap = np.concatenate([np.maximum(c1[:2], c2[:2]), np.minimum(c1[2:], c2[2:])])
        assert np.array_equal(pair.region, overlap) and not pair.whole_image
        assert (overlap[2:] - overlap[:2] >= 64).all()
        assert pair.boxes.shape == (4, 4)
        for crop in (c1, c2):
            assert (pair.boxes[:, :2] >= crop[:2]).all() and (pair.boxes[:, 2:] <= crop[2:]).all()
        picked = pair.boxes[:pair.from_candidates]
        assert all((cands == b).all(1).any() for b in picked)  # real candidates,
        assert len(np.unique(picked, axis=0)) == len(picked)  # each at most once
        _check_naive(pair.boxes[pair.from_candidates:], overlap, 64)
        full += pair.from_candidates == 4
    assert full > 100  # the candidate path is what is mostly exercised


def test_naive_boxes_without_candidates():
    sampler = PairSampler(k=4)
    forced = 0
    for seed in range(60):
        torch.manual_seed(seed)
        pair = sampler.sample(480, 640, np.zeros((0, 4), np.float32))
        assert pair.from_candidates == 0 and pair.boxes.shape == (4, 4)
        _check_naive(pair.boxes, pair.region, 64)
        if pair.forced == 0:
            iou = box_iou(pair.boxes, pair.boxes)
            assert iou[~np.eye(4, dtype=bool)].max() <= 0.5
        forced += pair.forced > 0
    assert forced <= 3  # the best attempt keeps the largest overlap: room for 4 boxes almost always


def test_whole_image_fallback_for_tiny_images():
    sampler = PairSampler(k=4)
    small = np.array([[5, 5, 25, 30]], np.float32)
    for seed in range(10):
        torch.manual_seed(seed)
        pair = sampler.sample(40, 50, small)
        assert pair.whole_image and (pair.crops == [0, 0, 50, 40]).all()
        assert (pair.boxes[0] == small[0]).all() and pair.from_candidates == 1
        _check_naive(pair.boxes[1:], np.array([0, 0, 50, 40]), 40)  # naive side shrinks to min(64, W, H)


def test_sampler_is_a_function_of_the_seed_and_ablations_change_it():
    cands = _candidates()
    draws = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        draws.append(PairSampler().sample(480, 640, cands))
    assert np.array_equal(draws[0].boxes, draws[1].boxes) and np.array_equal(draws[0].crops, draws[1].crops)
    assert not np.array_equal(draws[0].crops, draws[2].crops)
    torch.manual_seed(0)
    loose = PairSampler(overlap=False).sample(480, 640, cands)  # Table 8(a) "no": instances anywhere
    assert (loose.region == [0, 0, 640, 480]).all() and loose.from_candidates == 4
    torch.manual_seed(0)
    naive = PairSampler(naive_only=True).sample(480, 640, cands)  # Table 8(b) "naive"
    assert naive.from_candidates == 0


def test_views_crop_instances_from_the_original_image():
    ramp = np.broadcast_to(np.arange(128, dtype=np.uint8)[None, :, None], (96, 128, 3)).copy()
    from PIL import Image

    crop = np.asarray(crop_resize(Image.fromarray(ramp), (10, 20, 42, 52), 32))
    assert crop.shape == (32, 32, 3) and crop[:, 0, 0].max() <= 11 and crop[:, -1, 0].min() >= 40
    views = UniVIPViews(PairSampler(k=3, naive_min_size=12), scene_size=64, instance_size=32)
    torch.manual_seed(0)
    s1, s2, a, b, stats = views(ramp, np.array([[0, 0, 40, 40]], np.float32))
    assert s1.shape == s2.shape == (3, 64, 64) and a.shape == b.shape == (3, 3, 32, 32)
    assert stats[:2].sum().item() == 3 and not torch.equal(a, b)  # two independent pipelines


# ------------------------------------------------------------------------------------ training


def _fixed_batch(n=4):
    """Real photos with their selective-search candidates, through UniVIP's own views, fixed once."""
    from sslkit.proposals.selective_search import selective_search
    from tests.conftest import real_photo

    views = METHODS["univip"].make_transform(_cfg())
    samples = []
    for i, name in enumerate(("astronaut", "coffee", "chelsea", "rocket")[:n]):
        img = real_photo(name, 96)
        boxes = selective_search(img)
        torch.manual_seed(i)
        samples.append(views(img, boxes[orl_filter(boxes, 12, fallback=False)]))
    return torch.utils.data.default_collate(samples)


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = METHODS["univip"](_cfg())
    outs = train_on_fixed_batch(model, _fixed_batch())
    assert_learns(outs)
    terms = [[o[k] for k in ("loss_scene", "loss_scene_instance", "loss_instance")] for o in outs]
    assert (np.array(terms[-1]) < np.array(terms[0])).all(), terms  # every term learns


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Demo scenes from real photos with selective-search proposals from `sslkit propose`."""
    d = tmp_path_factory.mktemp("univip")
    assert sslkit("demo-data", d / "demo", "--n", 10, "--min-side", 96, "--max-side", 128, "--quiet",
                  "--sources", "pip") == 0
    assert sslkit("propose", d / "demo" / "train.json", "-o", d / "props.h5", "--max-side", 128,
                  "--min-size", 16, "-q", "--workers", 1) == 0
    return d


def test_candidates_from_proposals_and_from_coco_gt(scenes, tmp_path):
    from sslkit.io.artefacts import Artefact
    from sslkit.io.coco import annotations_by_image, coco_boxes_xyxy, load_coco
    from sslkit.io.images import ImageSource
    from sslkit.views.univip_stage import build_candidates

    source = ImageSource.from_arg(scenes / "demo" / "train.json")
    kw = dict(min_size=24.0, max_ratio=3.0, max_iou=0.5, top_n=10, overwrite=False, quiet=True)
    s = build_candidates(source, tmp_path / "c.h5", proposals=scenes / "props.h5", coco=None,
                         source_kind="proposals", **kw)
    assert s["num_images"] == len(source) == 8 and s["boxes"]["max"] <= 10
    with Artefact(tmp_path / "c.h5", "sslkit.views") as c, Artefact(scenes / "props.h5") as p:
        assert c.attrs["views_kind"] == "univip-candidates" and c.attrs["min_size"] == 24.0
        assert c.params["filter"]["fallback"] is False and c.params["source"]["root"]
        for i, name in enumerate(c.file_name):
            raw = p.ragged("boxes", p.index_of(name))
            want = raw[orl_filter(raw, 24.0, 3.0, 0.5, 10, fallback=False)]
            assert np.array_equal(c.ragged("boxes", i), want)
    s = build_candidates(source, tmp_path / "g.h5", proposals=None, coco=scenes / "demo" / "train.json",
                         source_kind="gt", **{**kw, "min_size": 0.0, "max_iou": 1.0, "top_n": 0})
    coco = load_coco(scenes / "demo" / "train.json")
    anns = annotations_by_image(coco)
    with Artefact(tmp_path / "g.h5") as g:
        for im in coco["images"]:
            boxes = coco_boxes_xyxy(anns[im["id"]])
            want = boxes[orl_filter(boxes, None, 3.0, None, None, fallback=False)]
            assert np.array_equal(g.ragged("boxes", g.index_of(im["file_name"])), want)
    with pytest.raises(UserError, match="already exists"):
        build_candidates(source, scenes / "props.h5", proposals=scenes / "props.h5", coco=None,
                         source_kind="proposals", **kw)
    with pytest.raises(UserError, match="has no proposals for 2 of the 10"):
        build_candidates(ImageSource.from_arg(scenes / "demo" / "images"), tmp_path / "x.h5",
                         proposals=scenes / "props.h5", coco=None, source_kind="proposals", **kw)


def test_sample_views_cli_writes_candidates(scenes, tmp_path):
    out = tmp_path / "cands.h5"
    assert sslkit("sample-views", scenes / "demo" / "train.json", "--method", "univip", "--proposals",
                  scenes / "props.h5", "-o", out, "--min-size", 16, "-q") == 0
    gt = tmp_path / "gt.h5"
    assert sslkit("sample-views", scenes / "demo" / "train.json", "--method", "univip", "--source", "gt",
                  "--coco", scenes / "demo" / "train.json", "-o", gt, "-q") == 0
    from sslkit.io.artefacts import Artefact

    for path, kind in ((out, "proposals"), (gt, "gt")):
        with Artefact(path, "sslkit.views") as a:
            assert a.attrs["views_kind"] == "univip-candidates" and a.attrs["source_kind"] == kind
            assert len(a) == 8


TRAIN = ["-m", "univip", "--arch", "resnet_tiny", "--image-size", 64, "--batch-size", 4, "--epochs", 1,
         "--warmup-epochs", 0, "--workers", 0, "--log-every", 1, "--no-tensorboard",
         "--set", "proj_hidden_dim=32", "--set", "proj_dim=16", "--set", "pred_hidden_dim=32",
         "--set", "instance_size=32", "--set", "naive_min_size=12"]


def _logs(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]


def test_trains_from_the_cli_on_raw_selective_search_and_exports(scenes, tmp_path):
    out = tmp_path / "run"
    assert sslkit("pretrain", scenes / "demo" / "train.json", "--views", scenes / "props.h5", "-o", out, "-q",
                  *TRAIN, "--set", "filter_min_size=16") == 0
    logs = _logs(out)
    assert [r["step"] for r in logs] == [1, 2]
    for r in logs:
        assert all(math.isfinite(r[k]) for k in ("loss", "loss_scene", "loss_scene_instance", "loss_instance"))
        assert 0 <= r["naive_fraction"] < 1  # most instances are selective-search candidates
    from sslkit.io.checkpoint import load_checkpoint

    ck = load_checkpoint(out / "last.pth")
    assert ck["config"]["views"] == str((scenes / "props.h5").resolve())
    assert ck["encoders"] == {"online": "backbone.", "target": "target_backbone."}
    assert ck["default_encoder"] == "online"
    assert "projector.0.weight" in ck["model"] and "target_projector.0.weight" in ck["model"]  # ORL stage 2
    assert "f_linear.weight" in ck["model"]
    assert sslkit("export", out / "last.pth", "-o", tmp_path / "w.pth") == 0
    from sslkit.models.pretrained import checkpoint_heads

    _, meta, projector, predictor = checkpoint_heads(out / "last.pth")  # what ORL's stage 2 reads
    assert meta["encoder"] == "online" and projector is not None and predictor is not None
    assert torch.equal(projector["0.weight"], ck["model"]["projector.0.weight"])


def test_two_rank_run_on_a_candidates_file(scenes, tmp_path, capfd):
    """`--procs 2` (gloo): each rank samples its half of the batch; finite losses, one checkpoint."""
    from sslkit.io.images import ImageSource
    from sslkit.views.univip_stage import build_candidates

    cands = tmp_path / "c.h5"
    build_candidates(ImageSource.from_arg(scenes / "demo" / "train.json"), cands, proposals=scenes / "props.h5",
                     coco=None, source_kind="proposals", min_size=16, max_ratio=3, max_iou=0.5, top_n=100,
                     overwrite=False, quiet=True)
    out = tmp_path / "ddp"
    assert sslkit("pretrain", scenes / "demo" / "train.json", "--views", cands, "-o", out, "--procs", 2,
                  *TRAIN) == 0
    assert "batch 4 (2/rank × 2)" in capfd.readouterr().err
    logs = _logs(out)
    assert [r["step"] for r in logs] == [1, 2] and all(math.isfinite(r["loss"]) for r in logs)


def test_show_renders_the_sampled_views(scenes, tmp_path):
    from sslkit.io.artefacts import Artefact
    from sslkit.io.images import ImageSource, load_rgb
    from sslkit.views.univip_stage import build_candidates
    from sslkit.viz import ShowOptions
    from sslkit.viz.univip import render

    source = ImageSource.from_arg(scenes / "demo" / "train.json")
    build_candidates(source, tmp_path / "c.h5", proposals=scenes / "props.h5", coco=None, source_kind="proposals",
                     min_size=16, max_ratio=3, max_iou=0.5, top_n=100, overwrite=False, quiet=True)
    with Artefact(tmp_path / "c.h5") as art:
        image, _ = load_rgb(source.root / art.file_name[2])
        h, w = image.shape[:2]
        for k in (4, 6):
            shot = render(art, 2, image, ShowOptions(top=k))
            assert shot.image.shape == (448, round(w * 448 / h) + 224 + 96 * math.ceil(k / 4), 3)
            assert f"of K={k} in the overlap" in shot.caption
        again = render(art, 2, image, ShowOptions())
        assert np.array_equal(again.image, render(art, 2, image, ShowOptions()).image)  # seeded
        assert not np.array_equal(again.image, render(art, 2, image, ShowOptions(seed=1)).image)
        name = art.file_name[2]
    png = tmp_path / "u.png"
    assert sslkit("show", tmp_path / "c.h5", "--image", name, "-o", png) == 0
    from PIL import Image

    assert Image.open(png).size == (again.image.shape[1], again.image.shape[0])


def test_plans_draw_the_reference_samples(scenes):
    """cpu and gpu paths: the same scene pair, instance boxes and statistics as the reference samples,
    the instances on the same pixels (compared unblurred: PIL's blur is not the tensor one)."""
    from sslkit.io.images import ImageSource
    from sslkit.views.plan.device import DeviceViews

    cls = METHODS["univip"]
    cfg = _cfg(views=str(scenes / "props.h5"), filter_min_size=16, view_aug="blur_p=0")
    src = ImageSource.from_arg(scenes / "demo" / "train.json")
    ref = torch.utils.data.default_collate([cls.make_dataset(cfg, src)[(0, i)][0] for i in range(6)])
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255
    for mode in ("cpu", "gpu"):
        plan = cls.make_plan_dataset(cfg, src, mode)
        batch = plan.collate([plan[(0, i)][0] for i in range(6)])
        got = plan.finish(batch, torch.device("cpu")) if mode == "cpu" else \
            DeviceViews(plan, torch.device("cpu"))(batch)[0]
        torch.testing.assert_close(got[4], ref[4])
        for a, b in zip(got[:4], ref[:4], strict=True):
            assert a.shape == b.shape and a.shape[0] == 6
            assert float(((a - b) * std).abs().mean()) < 3.0, mode  # a shifted box would differ by tens
