"""Settings that choose between the official code's convention and another: LARS's lr placement,
SimCLR's two directions, DetCon's warm-up start, UniVIP's OT marginals — and resumed checkpoints
that predate them keep what they were trained with."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslkit.engine import config as C
from sslkit.engine.optim import LARS, build_optimizer
from sslkit.engine.schedules import WarmupCosine
from sslkit.errors import UserError
from sslkit.methods import METHODS


def _lars_steps(placement: str, lrs: list[float], eta: float = 1.0, m: float = 0.9) -> list[torch.Tensor]:
    """The parameter after each LARS step with gradient u = (0.6, 0.8): trust·g = eta·‖w‖·u."""
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = LARS([w], lr=0.0, momentum=m, weight_decay=0.0, eta=eta, lr_placement=placement)
    out = []
    for lr in lrs:
        opt.param_groups[0]["lr"] = lr
        w.grad = torch.tensor([0.6, 0.8])
        opt.step()
        out.append(w.detach().clone())
    return out


def test_lars_lr_inside_and_outside_the_momentum():
    """Inside (SimCLR TF): v ← m·v + lr·t·d, w ← w − v. Outside (BYOL/DetCon optax): v ← m·v + t·d,
    w ← w − lr·v. Equal at constant lr; in a linear warm-up the inside step is the smaller one."""
    const = [0.01] * 5
    for a, b in zip(_lars_steps("inside", const), _lars_steps("outside", const), strict=True):
        torch.testing.assert_close(a, b)
    u, w0 = torch.tensor([0.6, 0.8]), torch.tensor([3.0, 4.0])
    inside, outside = _lars_steps("inside", [0.1, 0.2]), _lars_steps("outside", [0.1, 0.2])
    w1 = w0 - 0.1 * 5.0 * u  # first step: both lr · ‖w0‖ · u
    torch.testing.assert_close(inside[0], w1)
    torch.testing.assert_close(outside[0], w1)
    n1 = w1.norm()
    torch.testing.assert_close(inside[1], w1 - (0.9 * 0.1 * 5.0 * u + 0.2 * n1 * u))
    torch.testing.assert_close(outside[1], w1 - 0.2 * (0.9 * 5.0 * u + n1 * u))
    # a linear warm-up from 0 (1000 steps): the step ratios the LARS docstring quotes
    lrs = [k / 1000 for k in range(101)]
    w_in, w_out = _lars_steps("inside", lrs, eta=1e-3), _lars_steps("outside", lrs, eta=1e-3)
    for k, want in ((1, 0.53), (10, 0.60), (100, 0.91)):
        ratio = (w_in[k] - w_in[k - 1]).norm() / (w_out[k] - w_out[k - 1]).norm()
        assert ratio.item() == pytest.approx(want, abs=0.01)


def test_lars_placement_reaches_the_optimizer_and_defaults_follow_the_official_code():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    opt = build_optimizer(model, "lars", 0.1, 1e-6, lars_lr_placement="outside")
    assert {g["lr_placement"] for g in opt.param_groups} == {"outside"}
    assert build_optimizer(model, "lars", 0.1, 1e-6).param_groups[0]["lr_placement"] == "inside"
    with pytest.raises(ValueError):
        LARS(model.parameters(), lr_placement="between")
    placement = {n: C.resolve(cls, [])["lars_lr_placement"] for n, cls in METHODS.items()}
    assert placement["simclr"] == "inside"  # TF LARSOptimizer, classic momentum
    assert placement["detcon-b"] == placement["detcon-s"] == placement["byol"] == "outside"  # optax lars
    with pytest.raises(UserError, match="not one of"):
        C.resolve(METHODS["simclr"], [("--set", {"lars_lr_placement": "after"})])


def test_detcon_warms_up_from_zero_as_the_official_schedule():
    cfg = C.resolve(METHODS["detcon-b"], [])
    s = WarmupCosine(1.0, 1000, 100, cfg["warmup_start_factor"])
    assert s(0) == 0.0 and s(50) == pytest.approx(0.5)


def test_settings_reject_bad_values():
    for name, key in (("simclr", "loss_directions"), ("univip", "ot_marginals")):
        cls = METHODS[name]
        cfg = C.resolve(cls, [("--set", {key: "both", "views": "x.h5"} if name == "univip" else {key: "both"})])
        with pytest.raises(UserError, match=key):
            cls.validate(cfg)


def test_a_checkpoint_made_before_a_setting_existed_resumes_with_what_it_did():
    """Old runs had LARS's lr inside the momentum, SimCLR's directions averaged and UniVIP's marginals on
    normalised vectors; a checkpoint config without those keys resolves to them, not to today's defaults."""
    for name, key, old in (("simclr", "loss_directions", "mean"), ("detcon-b", "lars_lr_placement", "inside"),
                           ("univip", "ot_marginals", "normalized")):
        cls = METHODS[name]
        saved = {k: v for k, v in C.resolve(cls, []).items() if k not in C.BEFORE_THE_KEY}
        assert C.resolve(cls, [], base=saved)[key] == old
        assert C.resolve(cls, [])[key] != old  # new runs get the official convention
        assert not C.frozen_changes(cls, saved, C.resolve(cls, [], base=saved))
