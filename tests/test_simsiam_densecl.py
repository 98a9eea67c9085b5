"""SimSiam (Chen & He 2021) and DenseCL (Wang et al. 2021): SimSiam's stop-gradient, DenseCL's dense
correspondence on hand-built feature maps, the heads, and SimSiam's fixed-lr predictor through the
engine's optimizer and step. The losses against transcriptions of Algorithm 1 and of DenseCL's
``forward_train`` (and lightly): tests/test_references.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslkit.engine.loop import Amp, train_step
from sslkit.engine.optim import build_optimizer
from sslkit.methods.densecl import DenseCL, dense_correspondence
from sslkit.methods.simsiam import SimSiam, simsiam_loss
from tests.test_regioncl import batch_of, cfg_of

# ------------------------------------------------------------------------------------ SimSiam


def test_simsiam_loss_stops_the_gradient_of_z_and_is_minus_one_at_the_optimum():
    """The loss against Algorithm 1 itself: tests/test_references.py."""
    g = torch.Generator().manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(7, 12, generator=g, requires_grad=True) for _ in range(4))
    loss = simsiam_loss(p1, p2, z1, z2)
    loss.backward()
    assert z1.grad is None and z2.grad is None  # stop-gradient
    assert p1.grad is not None and p2.grad is not None
    assert simsiam_loss(z1, z2, z1, z2).item() > -1 and math.isclose(simsiam_loss(z1, z1, z1, z1).item(), -1, abs_tol=1e-6)


def test_simsiam_heads_follow_the_paper():
    m = SimSiam(cfg_of("simsiam", proj_hidden_dim=48, proj_dim=40, pred_hidden_dim=10))
    linears = [x for x in m.projector if isinstance(x, nn.Linear)]
    bns = [x for x in m.projector if isinstance(x, nn.BatchNorm1d)]
    assert [(x.in_features, x.out_features) for x in linears] == [(128, 48), (48, 48), (48, 40)]
    assert len(bns) == 3 and bns[-1].affine is False and bns[0].affine  # output BN without γ/β
    pl = [x for x in m.predictor if isinstance(x, nn.Linear)]
    assert [(x.in_features, x.out_features) for x in pl] == [(40, 10), (10, 40)]
    assert sum(isinstance(x, nn.BatchNorm1d) for x in m.predictor) == 1  # hidden layer only
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0 for b in (m.backbone.layer1[0], m.backbone.layer4[0]))


def test_simsiam_predictor_keeps_the_peak_lr_while_the_rest_follows_the_schedule():
    torch.manual_seed(0)
    m = SimSiam(cfg_of("simsiam"))
    opt = build_optimizer(m, "sgd", 0.001, 1e-4, peak_lr=0.1)
    fixed = [g for g in opt.param_groups if g.get("fixed_lr") is not None]
    assert len(fixed) == 1 and {id(p) for p in fixed[0]["params"]} == {id(p) for p in m.predictor.parameters()}
    assert fixed[0]["lr"] == 0.1
    train_step(m, m, opt, Amp("fp32", "cpu"), batch_of(4), 0.02, 0, 10)
    assert [g["lr"] for g in opt.param_groups] == [0.02, 0.1]
    m2 = SimSiam(cfg_of("simsiam", fix_pred_lr=False))
    assert len(build_optimizer(m2, "sgd", 0.001, 1e-4, peak_lr=0.1).param_groups) == 1
    lars = build_optimizer(m, "lars", 0.001, 1e-6, peak_lr=0.1)  # LARS/AdamW split each group by decay
    assert [g["fixed_lr"] for g in lars.param_groups] == [None, None, 0.1, 0.1]


def test_param_groups_must_cover_every_trainable_parameter_once():
    m = SimSiam(cfg_of("simsiam"))
    m.param_groups = lambda: [{"params": list(m.predictor.parameters()), "fixed_lr": True}]
    with pytest.raises(ValueError, match="exactly once"):
        build_optimizer(m, "sgd", 0.1, 0.0)


# ------------------------------------------------------------------------------------ DenseCL


def test_dense_correspondence_finds_the_matching_cell_on_hand_built_maps():
    """Key view = the query's cells permuted (and scaled, noised): every query cell must find its own cell."""
    g = torch.Generator().manual_seed(0)
    cells = F.normalize(torch.randn(2, 8, 9, generator=g), dim=1)  # 2 images, C=8, 3×3 cells
    perm = torch.tensor([4, 0, 8, 2, 6, 1, 3, 7, 5])
    k = cells[:, :, perm] * 3.0 + 0.01 * torch.randn(2, 8, 9, generator=g)
    match = dense_correspondence(cells, F.normalize(k, dim=1))
    assert match.shape == (2, 9)
    assert torch.equal(perm[match[0]], torch.arange(9)) and torch.equal(perm[match[1]], torch.arange(9))
    # a hand-built 2×2 map (C = 3): query cells e_x, e_y, mostly-e_y, e_z; key cells e_y, e_x, e_z and a
    # diagonal (0.7, 0.7, 0.1) that is never the best: cos(q2, k0) = 0.97 > cos(q2, k3) = 0.85
    fq = torch.tensor([[[1.0, 0.0, 0.2, 0.0], [0.0, 1.0, 0.9, 0.0], [0.0, 0.0, 0.1, 1.0]]])
    fk = torch.tensor([[[0.0, 1.0, 0.0, 0.7], [1.0, 0.0, 0.0, 0.7], [0.0, 0.0, 1.0, 0.1]]])
    assert dense_correspondence(F.normalize(fq, dim=1), F.normalize(fk, dim=1)).tolist() == [[1, 0, 0, 2]]


def test_densecl_loss_is_lambda_weighted_and_both_queues_take_their_keys():
    torch.manual_seed(0)
    m = DenseCL(cfg_of("densecl"))
    x_q, x_k = batch_of(6)
    q2_before = m.queue2.clone()
    out = m((x_q, x_k))
    assert torch.allclose(out["loss"], 0.5 * out["loss_global"] + 0.5 * out["loss_dense"])
    assert int(m.queue_ptr) == 6 and int(m.queue2_ptr) == 6
    from sslkit.models.backbones import res5

    with torch.no_grad():  # queue2 holds the normalised mean of the key's dense projection
        k2 = F.normalize(m.key_dense_head(res5(m.key_backbone, x_k)).flatten(2).mean(2), dim=1)
    assert torch.allclose(m.queue2[:6], k2, atol=1e-5) and torch.equal(m.queue2[6:], q2_before[6:])
    torch.manual_seed(0)
    m0 = DenseCL(cfg_of("densecl", loss_lambda=0.0))
    assert torch.allclose(m0((x_q, x_k))["loss"], out["loss_global"])  # λ = 0: MoCo v2's global term


def test_densecl_key_encoder_follows_both_heads():
    m = DenseCL(cfg_of("densecl"))
    assert m.ema_state()["pairs"] == {"key_backbone.": "backbone.", "key_projector.": "projector.",
                                      "key_dense_head.": "dense_head."}
    with torch.no_grad():
        for p in m.dense_head.parameters():
            p.add_(1.0)
    m.on_after_step(0, 10)
    d = [(pk - pq).abs().max().item() for pk, pq in zip(m.key_dense_head.parameters(), m.dense_head.parameters(), strict=True)]
    assert all(abs(x - 0.999) < 1e-5 for x in d)  # k ← 0.999 k + 0.001 q with q = k + 1
    assert torch.equal(m.key_projector[0].weight, m.projector[0].weight)  # key starts as the query
    assert float(m.projector[0].bias.detach().abs().sum()) == 0  # the authors' Kaiming init, zero biases
