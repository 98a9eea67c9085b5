"""Every loss against an independent reference that can disagree with it.

* Transcriptions of the authors' code (tests/reference_losses.py): SimCLR's TF ``objective.py``,
  DeepMind's DetCon ``byol_nce_detcon`` (JAX), BYOL's ``regression_loss``, ORL's ``forward_train`` with
  its ``LatentPredictHead``, MoCo's ``builder.py`` (loss and queue), UniVIP's Eq. 9–10, SimSiam's
  Algorithm 1, DenseCL's ``forward_train`` (global + dense loss, both queues), RegionCL-M's pseudo-code
  (the digest's §2.4; the authors release only -M, and their model file does not run as released).
* POT (a ``dev`` dependency, imported unconditionally) for UniVIP's Sinkhorn plan.
* lightly (the optional ``refs`` extra, ``pip install -e '.[refs]'``; these checks skip without it): DetConBLoss / DetConSLoss,
  NTXentLoss (also with its memory bank, MoCo's form), NegativeCosineSimilarity (BYOL's and SimSiam's form).

sslkit computes every loss in float32 (``sslkit.methods.numerics``); the transcriptions run in float64,
so agreement is to float32 rounding (relative ~1e-6).
"""

from __future__ import annotations

import copy

import numpy as np
import ot  # POT: a dev dependency, so these checks never skip in CI
import pytest
import torch
import torch.nn.functional as F

import sslkit.dist
from sslkit.methods.byol import byol_loss
from sslkit.methods.densecl import dense_correspondence, dense_info_nce
from sslkit.methods.detcon_ops import detcon_loss
from sslkit.methods.mocov2 import info_nce
from sslkit.methods.regioncl_ops import region_info_nce
from sslkit.methods.simclr import nt_xent
from sslkit.methods.simsiam import simsiam_loss
from sslkit.methods.univip import instance_loss, normalize_marginal, ot_marginals, sinkhorn_log
from sslkit.views.regioncl import partner_index, region_valid, sample_box, swap_generator
from tests import reference_losses as ref
from tests.tiny_methods import tiny_method


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _as_rank(monkeypatch, rank: int, *fulls: torch.Tensor, world: int = 2):
    """Make ``sslkit.dist`` act as rank ``rank`` of ``world``. The i-th gather returns ``fulls[i]`` (every
    rank's rows) with this rank's slot replaced by the gathered tensor itself, so the gradient reaches it."""
    calls = iter(fulls)

    def gather(x):
        full = next(calls)
        n = full.shape[0] // world
        return torch.cat([x if r == rank else full[r * n:(r + 1) * n].to(x.dtype) for r in range(world)])

    monkeypatch.setattr(sslkit.dist, "rank", lambda: rank)
    monkeypatch.setattr(sslkit.dist, "world_size", lambda: world)
    monkeypatch.setattr(sslkit.dist, "all_gather_with_grad", gather)
    monkeypatch.setattr(sslkit.dist, "all_gather", gather)
    return gather


# ----------------------------------------------------------------------------- SimCLR


def test_nt_xent_equals_the_official_tf_loss_and_half_of_it_with_mean():
    g = _gen(0)
    z1, z2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    want = ref.simclr_tf_loss(z1.numpy(), z2.numpy(), z1.numpy(), z2.numpy(), 0, 0.1)
    assert nt_xent(z1, z2, 0.1)[0].item() == pytest.approx(want, rel=1e-6)
    assert nt_xent(z1, z2, 0.1, "mean")[0].item() == pytest.approx(want / 2, rel=1e-6)


@pytest.mark.parametrize("rank", [0, 1])
def test_nt_xent_with_two_ranks_equals_the_tf_loss_with_two_replicas(monkeypatch, rank):
    g = _gen(1)
    h1, h2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    local = slice(rank * 4, rank * 4 + 4)
    _as_rank(monkeypatch, rank, F.normalize(h1, dim=1), F.normalize(h2, dim=1))  # nt_xent gathers z̄1, then z̄2
    got = nt_xent(h1[local], h2[local], 0.1)[0].item()
    want = ref.simclr_tf_loss(h1[local].numpy(), h2[local].numpy(), h1.numpy(), h2.numpy(), rank, 0.1)
    assert got == pytest.approx(want, rel=1e-6)


def test_nt_xent_mean_equals_lightly_ntxent_loss_and_gradient():
    lightly_loss = pytest.importorskip("lightly.loss")
    g = _gen(2)
    z1, z2 = torch.randn(6, 8, generator=g, requires_grad=True), torch.randn(6, 8, generator=g, requires_grad=True)
    mine = nt_xent(z1, z2, 0.1, "mean")[0]
    g_mine = torch.autograd.grad(mine, (z1, z2))
    theirs = lightly_loss.NTXentLoss(temperature=0.1)(z1, z2)
    g_theirs = torch.autograd.grad(theirs, (z1, z2))
    assert mine.item() == pytest.approx(theirs.item(), rel=1e-6)
    for a, b in zip(g_mine, g_theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- DetCon


def _detcon_inputs(b=3, r=6, d=8, seed=0, ids=4):
    g = _gen(seed)
    q1, q2, t1, t2 = (torch.randn(b, r, d, generator=g, dtype=torch.float64) for _ in range(4))
    # few segments, so there are duplicates in a view and segments missing from the other view
    id1, id2 = torch.randint(0, ids, (b, r), generator=g), torch.randint(0, ids, (b, r), generator=g)
    return q1, q2, t1, t2, id1, id2


@pytest.mark.parametrize("local_negatives", [True, False])
@pytest.mark.parametrize("variant", ["B", "S"])
def test_detcon_loss_and_gradient_equal_deepminds_byol_nce_detcon(variant, local_negatives):
    """-B: targets without gradient; -S: the same latents as prediction and target, gradient through both."""
    q1, q2, t1, t2, id1, id2 = _detcon_inputs()
    q1.requires_grad_(), q2.requires_grad_()
    if variant == "S":
        t1, t2 = q1, q2
    mine = detcon_loss(q1, q2, t1, t2, id1, id2, local_negatives=local_negatives)
    g_mine = torch.autograd.grad(mine, (q1, q2))
    theirs = ref.byol_nce_detcon(q1, q2, t1 if variant == "S" else t1.detach(), t2 if variant == "S" else t2.detach(),
                                 id1, id2, id1, id2, local_negatives=local_negatives)
    g_theirs = torch.autograd.grad(theirs, (q1, q2))
    assert mine.dtype == torch.float32
    assert mine.item() == pytest.approx(theirs.item(), rel=2e-6)
    for a, b in zip(g_mine, g_theirs, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("rank", [0, 1])
def test_detcon_global_negatives_equal_the_cross_replica_reference(monkeypatch, rank):
    q1, q2, t1, t2, id1, id2 = _detcon_inputs(b=4, seed=1)
    local = slice(rank * 2, rank * 2 + 2)
    gather = _as_rank(monkeypatch, rank, F.normalize(t1.float(), dim=-1), F.normalize(t2.float(), dim=-1))
    mine = detcon_loss(q1[local], q2[local], t1[local], t2[local], id1[local], id2[local], rank=rank, gather=gather)
    theirs = ref.byol_nce_detcon(q1[local], q2[local], t1, t2, id1[local], id2[local], id1[local], id2[local],
                                 replica_id=rank)
    assert mine.item() == pytest.approx(theirs.item(), rel=2e-6)


@pytest.mark.parametrize("variant", ["B", "S"])
def test_detcon_loss_equals_lightly(variant):
    lightly_loss = pytest.importorskip("lightly.loss")
    q1, q2, t1, t2, id1, id2 = (x.float() if x.is_floating_point() else x for x in _detcon_inputs(seed=2))
    q1.requires_grad_(), q2.requires_grad_()
    if variant == "B":
        mine = detcon_loss(q1, q2, t1, t2, id1, id2)
        theirs = lightly_loss.DetConBLoss(temperature=0.1, gather_distributed=False)(q1, q2, t1, t2, id1, id2)
    else:
        mine = detcon_loss(q1, q2, q1, q2, id1, id2)
        theirs = lightly_loss.DetConSLoss(temperature=0.1, gather_distributed=False)(q1, q2, id1, id2)
    g_mine, g_theirs = torch.autograd.grad(mine, (q1, q2)), torch.autograd.grad(theirs, (q1, q2))
    assert mine.item() == pytest.approx(theirs.item(), rel=1e-6)
    for a, b in zip(g_mine, g_theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- BYOL and ORL


def _byol_inputs():
    g = _gen(3)
    return torch.randn(5, 16, generator=g, requires_grad=True), torch.randn(5, 16, generator=g)


def test_byol_loss_equals_byols_regression_loss():
    p, z = _byol_inputs()
    pd = p.detach().double().requires_grad_()
    mine, theirs = byol_loss(p, z), ref.byol_regression_loss(pd, z.double())
    assert mine.item() == pytest.approx(theirs.item(), rel=1e-6)
    torch.testing.assert_close(torch.autograd.grad(mine, p)[0].double(), torch.autograd.grad(theirs, pd)[0],
                               rtol=1e-5, atol=1e-8)


def test_byol_loss_equals_lightly_negative_cosine_similarity():
    lightly_loss = pytest.importorskip("lightly.loss")
    p, z = _byol_inputs()
    mine = byol_loss(p, z)
    theirs = 2 + 2 * lightly_loss.NegativeCosineSimilarity()(p, z)  # lightly's is −mean cos
    assert mine.item() == pytest.approx(theirs.item(), rel=1e-6)
    torch.testing.assert_close(torch.autograd.grad(mine, p)[0], torch.autograd.grad(theirs, p)[0],
                               rtol=1e-5, atol=1e-7)


def test_orl_loss_and_gradients_equal_the_authors_forward_train():
    model, batch, _ = tiny_method("orl", n=4, seed=0)
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(batch)
    g_mine = torch.autograd.grad(out["loss"], params, allow_unused=True)

    def online(x):
        return model.projector(model.backbone(x))

    def target(x):
        return model.target_projector(model.target_backbone(x))

    heads = {"global": model.predictor, "intra": model.predictor_intra, "inter": model.predictor_inter}
    losses = ref.orl_forward_train(online, target, heads, batch, {"global": 1.0, "intra": 1.0, "inter": 1.0})
    total = sum(losses.values())
    g_theirs = torch.autograd.grad(total, params, allow_unused=True)
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    assert out["loss_intra"].item() == pytest.approx(losses["intra"].item(), rel=1e-6)
    for a, b in zip(g_mine, g_theirs, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------- MoCo


def test_mocov2_two_steps_equal_the_official_builder_loss_and_queue():
    """Loss of two SGD steps and the queue after them, against builder.py on copies of the same weights
    (the key encoder's momentum update at the start of step 2 = sslkit's after-step update of step 1)."""
    model, (x_q, x_k), cfg = tiny_method("mocov2", n=4, seed=0, queue_size=16, ema_momentum=0.9)
    twin = copy.deepcopy(model)
    reference = ref.MoCoReference(torch.nn.Sequential(twin.backbone, twin.projector),
                                  torch.nn.Sequential(twin.key_backbone, twin.key_projector),
                                  twin.queue, m=0.9, temperature=cfg["temperature"])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    opt_ref = torch.optim.SGD([p for p in twin.parameters() if p.requires_grad], lr=0.1)
    for step in range(2):
        views = (x_q, x_k) if step == 0 else (x_k, x_q)
        loss = model(views)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.on_after_step(step, 2)
        loss_ref = reference.forward(*views)
        opt_ref.zero_grad()
        loss_ref.backward()
        opt_ref.step()
        assert loss.item() == pytest.approx(loss_ref.item(), rel=1e-5)
    torch.testing.assert_close(model.queue, reference.queue.T, rtol=1e-5, atol=1e-6)
    assert int(model.queue_ptr) == reference.ptr == 8


def test_info_nce_equals_lightly_ntxent_with_a_memory_bank():
    lightly_loss = pytest.importorskip("lightly.loss")
    g = _gen(4)
    q = torch.randn(4, 8, generator=g, requires_grad=True)  # the projector's output; MoCoV2 normalises it
    k = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    queue = F.normalize(torch.randn(32, 8, generator=g), dim=1)
    theirs_fn = lightly_loss.NTXentLoss(temperature=0.2, memory_bank_size=(32, 8))
    theirs_fn.memory_bank.bank.copy_(queue)
    mine = info_nce(F.normalize(q, dim=1), k, queue, 0.2)[0]
    theirs = theirs_fn(q, k)
    assert mine.item() == pytest.approx(theirs.item(), rel=1e-6)
    torch.testing.assert_close(torch.autograd.grad(mine, q)[0], torch.autograd.grad(theirs, q)[0],
                               rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- UniVIP


def _ot_problem(b=4, m=5, n=5, seed=0, hard=False):
    g = _gen(seed)
    if hard:  # wide, adversarial costs
        cost = 3 * torch.rand(b, m, n, generator=g)
    else:  # 1 − cos of embeddings, as in training
        cost = 1 - F.normalize(torch.randn(b, m, 16, generator=g), dim=-1) @ \
            F.normalize(torch.randn(b, n, 16, generator=g), dim=-1).transpose(1, 2)
    a = torch.rand(b, m, generator=g).masked_fill(torch.rand(b, m, generator=g) < 0.3, 0.0)
    bb = torch.rand(b, n, generator=g).masked_fill(torch.rand(b, n, generator=g) < 0.3, 0.0)
    a[0] = 0.0  # one all-zero marginal: uniform after the floor
    return cost, a, bb


@pytest.mark.parametrize("hard", [False, True])
def test_sinkhorn_plan_equals_pots_sinkhorn_log(hard):
    """POT's ``sinkhorn_log`` updates the columns first; on the transposed problem its iterates are
    sslkit's (rows first), so the two agree to float rounding at any iteration count; converged, POT
    in its own orientation gives the same plan."""
    cost, a, b = _ot_problem(hard=hard, n=4 if hard else 5)
    for iters in (5, 50):
        plan = sinkhorn_log(cost, a, b, eps=0.1, iters=iters)
        for i in range(cost.shape[0]):
            na, nb = normalize_marginal(a[i]).double().numpy(), normalize_marginal(b[i]).double().numpy()
            pot = ot.sinkhorn(nb, na, cost[i].double().numpy().T, reg=0.1, method="sinkhorn_log",
                              numItermax=iters, stopThr=0.0, warn=False).T
            np.testing.assert_allclose(plan[i].numpy(), pot, atol=2e-6, rtol=0)
    plan = sinkhorn_log(cost, a, b, eps=0.1, iters=2000)
    for i in range(cost.shape[0]):
        na, nb = normalize_marginal(a[i]).double().numpy(), normalize_marginal(b[i]).double().numpy()
        pot = ot.sinkhorn(na, nb, cost[i].double().numpy(), reg=0.1, method="sinkhorn_log", numItermax=2000,
                          stopThr=1e-12, warn=False)
        np.testing.assert_allclose(plan[i].numpy(), pot, atol=1e-5, rtol=0)


def test_sinkhorn_from_half_precision_costs_equals_pot_on_the_rounded_costs():
    cost, a, b = _ot_problem(seed=1)
    for dtype in (torch.float16, torch.bfloat16):
        half = cost.to(dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plan = sinkhorn_log(half, a.to(dtype), b, eps=0.1, iters=50)
        assert plan.dtype == torch.float32 and torch.isfinite(plan).all()
        for i in range(cost.shape[0]):
            na = normalize_marginal(a[i].to(dtype)).double().numpy()
            nb = normalize_marginal(b[i]).double().numpy()
            pot = ot.sinkhorn(nb, na, half[i].double().numpy().T, reg=0.1, method="sinkhorn_log", numItermax=50,
                              stopThr=0.0, warn=False).T
            np.testing.assert_allclose(plan[i].numpy(), pot, atol=2e-6, rtol=0)


def test_univip_marginals_and_instance_loss_equal_the_paper_with_pots_plan():
    """Eq. 9–10 as printed (raw dot products), normalised with the 1e-8 floor, POT's plan, Eq. 11 in the
    2 − 2·cos form: sslkit's instance loss."""
    g = _gen(5)
    o = torch.randn(3, 4, 16, generator=g) * torch.rand(3, 4, 1, generator=g) * 3  # norms vary
    t = torch.randn(3, 4, 16, generator=g)
    f_o = (torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g))
    f_t = (torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g))
    b, a = ot_marginals(o, t, f_o, f_t)
    b_ref, a_ref = ref.univip_marginals(o.numpy(), t.numpy(), f_o, f_t)
    np.testing.assert_allclose(b.numpy(), b_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.numpy(), a_ref, rtol=1e-5, atol=1e-5)
    loss, _ = instance_loss(o, t, f_o, f_t, eps=0.1, iters=50)
    cos = (F.normalize(o.double(), dim=-1) @ F.normalize(t.double(), dim=-1).transpose(1, 2)).numpy()
    total = 0.0
    for i in range(3):
        nb = (b_ref[i] + 1e-8) / (b_ref[i] + 1e-8).sum()
        na = (a_ref[i] + 1e-8) / (a_ref[i] + 1e-8).sum()
        plan = ot.sinkhorn(na, nb, (1 - cos[i]).T, reg=0.1, method="sinkhorn_log", numItermax=50, stopThr=0.0,
                           warn=False).T  # rows: online suppliers b; columns: target demanders a
        total += 2 * (plan * (1 - cos[i])).sum()
    assert loss.item() == pytest.approx(total / 3, rel=1e-5)


# ----------------------------------------------------------------------------- SimSiam


def _simsiam_inputs():
    g = _gen(6)
    return tuple(torch.randn(7, 12, generator=g, requires_grad=True) for _ in range(4))


def test_simsiam_loss_and_gradient_equal_algorithm_1():
    p1, p2, z1, z2 = _simsiam_inputs()
    d = [t.detach().double().requires_grad_() for t in (p1, p2, z1, z2)]
    mine, theirs = simsiam_loss(p1, p2, z1, z2), ref.simsiam_algorithm1(*d)
    assert abs(mine.item() - theirs.item()) <= 1e-6
    for a, b in zip(torch.autograd.grad(mine, (p1, p2)), torch.autograd.grad(theirs, d[:2]), strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-7)


def test_simsiam_loss_equals_lightly_negative_cosine_similarity():
    lightly_loss = pytest.importorskip("lightly.loss")
    p1, p2, z1, z2 = _simsiam_inputs()
    criterion = lightly_loss.NegativeCosineSimilarity()
    mine = simsiam_loss(p1, p2, z1, z2)
    theirs = 0.5 * (criterion(p1, z2.detach()) + criterion(p2, z1.detach()))  # lightly's SimSiam example
    assert abs(mine.item() - theirs.item()) <= 1e-6
    for a, b in zip(torch.autograd.grad(mine, (p1, p2)), torch.autograd.grad(theirs, (p1, p2)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- DenseCL


def _unit(g, *shape, dim=1):
    return F.normalize(torch.randn(*shape, generator=g), dim=dim)


def test_densecl_losses_equal_the_official_forward_train_on_random_tensors():
    """Global InfoNCE, the backbone-feature correspondence and the dense InfoNCE against the dense queue, as
    ``DenseCL.forward_train`` computes them (queues stored (C, K) there, (K, C) here)."""
    g = _gen(7)
    n, c, cb, s, kq, tau, lam = 3, 16, 24, 9, 40, 0.2, 0.5
    q, k = _unit(g, n, c), _unit(g, n, c)
    q_grid, k_grid = _unit(g, n, c, s), _unit(g, n, c, s)
    q_b, k_b = _unit(g, n, cb, s), _unit(g, n, cb, s)
    queue, queue2 = _unit(g, kq, c), _unit(g, kq, c)
    q.requires_grad_(), q_grid.requires_grad_()
    single, dense = ref.densecl_losses(q, k, q_grid, k_grid, q_b, k_b, queue.T, queue2.T, tau, lam)
    loss_global, _ = info_nce(q, k, queue, tau)
    loss_dense = dense_info_nce(q_grid, k_grid, dense_correspondence(q_b, k_b), queue2, tau)
    assert abs(((1 - lam) * loss_global).item() - single.item()) <= 1e-5
    assert abs((lam * loss_dense).item() - dense.item()) <= 1e-5
    mine = (1 - lam) * loss_global + lam * loss_dense
    for a, b in zip(torch.autograd.grad(mine, (q, q_grid)), torch.autograd.grad(single + dense, (q, q_grid)),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def _c5(net):
    """A torchvision ResNet's C5 map (stem, layer1..4), written out here rather than taken from sslkit."""
    def run(x):
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return run


def test_densecl_two_steps_equal_the_official_forward_train_loss_and_both_queues():
    """Two SGD steps of sslkit's DenseCL against ``DenseCL.forward_train`` with ``DenseCLNeck`` on copies of the
    same weights: each term of the loss, and both queues and their pointers after the steps."""
    model, (x_q, x_k), cfg = tiny_method("densecl", n=4, seed=0, queue_size=16, ema_momentum=0.9)
    twin = copy.deepcopy(model)
    encoder_q = (_c5(twin.backbone), twin.projector, twin.dense_head)
    encoder_k = (_c5(twin.key_backbone), twin.key_projector, twin.key_dense_head)
    params_q = [p for mod in (twin.backbone, twin.projector, twin.dense_head) for p in mod.parameters()]
    params_k = [p for mod in (twin.key_backbone, twin.key_projector, twin.key_dense_head) for p in mod.parameters()]
    reference = ref.DenseCLReference(encoder_q, encoder_k, params_q, params_k, twin.queue, twin.queue2, m=0.9,
                                     temperature=cfg["temperature"], loss_lambda=cfg["loss_lambda"])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    opt_ref = torch.optim.SGD([p for p in twin.parameters() if p.requires_grad], lr=0.1)
    for step in range(2):
        views = (x_q, x_k) if step == 0 else (x_k, x_q)
        out = model(views)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        model.on_after_step(step, 2)
        single, dense = reference.forward(*views)
        opt_ref.zero_grad()
        (single + dense).backward()
        opt_ref.step()
        lam = cfg["loss_lambda"]
        assert abs(float((1 - lam) * out["loss_global"]) - single.item()) <= 1e-5
        assert abs(float(lam * out["loss_dense"]) - dense.item()) <= 1e-5
        assert abs(out["loss"].item() - (single + dense).item()) <= 1e-5
    torch.testing.assert_close(model.queue, reference.queue.T, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.queue2, reference.queue2.T, rtol=1e-5, atol=1e-6)
    assert int(model.queue_ptr) == reference.ptr == 8 and int(model.queue2_ptr) == reference.ptr2 == 8


# ----------------------------------------------------------------------------- RegionCL


@pytest.mark.parametrize("b", [6, 5])
def test_regioncl_m_losses_equal_a_per_sample_transcription_of_the_pseudo_code(b):
    g = _gen(b)
    tau = 0.2
    q, k, pin, cv = (_unit(g, b, 16) for _ in range(4))
    queue = _unit(g, 40, 16)
    l_ins, _ = info_nce(q, k, queue, tau)
    l_reg, _ = region_info_nce(cv, pin, k, queue, partner_index(b), region_valid(b), tau)
    ref_ins, ref_reg = ref.regioncl_m_per_sample(q, k, queue, pin, cv, tau)
    assert abs(float(l_ins) - ref_ins) <= 1e-5
    assert abs(float(l_reg) - ref_reg) <= 1e-5


def test_regioncl_m_step_equals_the_pseudo_code_loss_gradients_and_queue():
    """One training step of sslkit's RegionCL-M (box drawn by its step-0 generator) against the digest's §2.4
    pseudo-code on copies of the same weights: the swap, the C5 map, mask pooling, the projector, eq. 1–3, the
    gradients of every parameter, and the queue after the step (the instance keys only)."""
    model, (x_q, x_k), cfg = tiny_method("regioncl-m", n=4, seed=0, queue_size=16)
    twin = copy.deepcopy(model)
    queue = twin.queue.clone()
    params = [p for p in model.parameters() if p.requires_grad]
    out = model((x_q, x_k))
    g_mine = torch.autograd.grad(out["loss"], params)
    box = sample_box(swap_generator(cfg["seed"], 0, 0), x_q.shape[2], x_q.shape[3], cfg["regioncl_cells_min"],
                     cfg["regioncl_cells_max"])
    l_ins, l_reg, k = ref.regioncl_m_pseudo_code(_c5(twin.backbone), twin.projector, _c5(twin.key_backbone),
                                                 twin.key_projector, x_q, x_k, queue, (box.y0, box.x0, box.h, box.w),
                                                 (box.cy, box.cx, box.ch, box.cw), cfg["temperature"])
    g_ref = torch.autograd.grad(l_ins + l_reg, [p for p in twin.parameters() if p.requires_grad])
    assert abs(out["loss_ins"].item() - l_ins.item()) <= 1e-5
    assert abs(out["loss_reg"].item() - l_reg.item()) <= 1e-5
    assert abs(out["loss"].item() - (l_ins + l_reg).item()) <= 1e-5
    for a, b in zip(g_mine, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model.queue[:4], k, rtol=1e-5, atol=1e-6)
    assert torch.equal(model.queue[4:], queue[4:]) and int(model.queue_ptr) == 4
