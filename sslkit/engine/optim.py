"""Optimizers: SGD (momentum), LARS, AdamW, with the parameter grouping each recipe uses.

* ``sgd``: weight decay on every parameter, BN and biases included (ORL/OpenSelfSup and the MoCo
  repo both do this).
* ``lars``: biases and BN parameters (every 1-d tensor) get neither weight decay nor the LARS
  trust ratio (SimCLR and BYOL code; OpenSelfSup ``lars_exclude``). ``lr_placement`` says where the
  learning rate enters (below).
* ``adamw``: 1-d tensors without weight decay (the usual AdamW practice).

A method may split its parameters into its own groups (``Method.param_groups``); a group marked
``fixed_lr`` stores the lr it keeps as ``group["fixed_lr"]`` and the engine leaves it there instead
of applying the schedule (SimSiam's predictor, Chen & He 2021 §4.1 / ``main_simsiam.py --fix-pred-lr``).
"""

from __future__ import annotations

import torch
from torch import nn

#: where LARS applies the learning rate: ``inside`` the momentum buffer (SimCLR's TF ``LARSOptimizer``
#: with ``classic_momentum=True``) or ``outside`` it (BYOL's and DetCon's optax ``lars``:
#: ``scale_by_lars`` accumulates the momentum, then ``optax.scale(-lr)``; also ``torch.optim.SGD``)
LR_PLACEMENTS = ("inside", "outside")


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) as SimCLR/BYOL use it.

    For a parameter group with ``lars_adapt=True`` the update direction ``d = g + wd·w`` is scaled by
    the trust ratio ``eta·‖w‖ / ‖d‖`` (1 when either norm is 0); groups with ``lars_adapt=False`` use
    ``d`` unscaled (with their own weight decay, usually 0). Then heavy-ball momentum, with the
    learning rate either

    * ``lr_placement="inside"`` (SimCLR TF): ``v ← m·v + lr·trust·d``, ``w ← w − v``; or
    * ``lr_placement="outside"`` (BYOL/DetCon optax): ``v ← m·v + trust·d``, ``w ← w − lr·v``.

    The two are identical at constant lr. While the lr changes they differ: inside, the buffer keeps
    each past step at the lr it had; outside, the whole buffer moves at today's lr. During a linear
    warm-up from 0 (m = 0.9, a constant gradient direction) the inside step is 0.53 of the outside
    one at warm-up step 1, 0.60 at step 10, 0.91 at step 100 and 0.98 at step 500; under the
    cosine decay it is slightly larger. The momentum buffers of the two placements are not
    interchangeable, so the setting is fixed for a run.
    """

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 1e-3, lars_adapt: bool = True, lr_placement: str = "inside"):
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError("LARS: lr, momentum, weight_decay must be >= 0 and eta > 0")
        if lr_placement not in LR_PLACEMENTS:
            raise ValueError(f"LARS: lr_placement must be one of {LR_PLACEMENTS} (got {lr_placement!r})")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      lars_adapt=lars_adapt, lr_placement=lr_placement))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, m, lr, eta = group["weight_decay"], group["momentum"], group["lr"], group["eta"]
            inside = group.get("lr_placement", "inside") == "inside"
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if wd != 0:
                    d = d.add(p, alpha=wd)
                if group["lars_adapt"]:
                    w_norm = torch.linalg.vector_norm(p)
                    d_norm = torch.linalg.vector_norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0), eta * w_norm / d_norm,
                                        torch.ones_like(w_norm))
                    d = d.mul(trust)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                scale = lr if inside else 1.0
                if buf is None:
                    buf = state["momentum_buffer"] = torch.clone(d).mul_(scale)
                else:
                    buf.mul_(m).add_(d, alpha=scale)
                p.sub_(buf if inside else buf * lr)
        return loss


def _split_decay(params) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable parameters split into (weights, 1-d tensors: biases and norm affine parameters)."""
    decay, no_decay = [], []
    for p in params:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return decay, no_decay


def method_groups(model: nn.Module, fixed_value: float) -> list[dict]:
    """``[{"params": [...], "fixed_lr": float | None}, ...]``: the model's own groups (``param_groups()``)
    checked to cover every trainable parameter exactly once, or one group of all of them."""
    hook = getattr(model, "param_groups", None)
    groups = hook() if callable(hook) else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    if groups is None:
        return [{"params": trainable, "fixed_lr": None}]
    out = [{"params": [p for p in g["params"] if p.requires_grad],
            "fixed_lr": fixed_value if g.get("fixed_lr") else None} for g in groups]
    seen = [id(p) for g in out for p in g["params"]]
    if len(seen) != len(set(seen)) or set(seen) != {id(p) for p in trainable}:
        raise ValueError(f"{type(model).__name__}.param_groups() must list every trainable parameter exactly once")
    return out


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9,
                    lars_eta: float = 1e-3, lars_lr_placement: str = "inside",
                    peak_lr: float | None = None) -> torch.optim.Optimizer:
    """The optimizer for ``model``'s trainable parameters (frozen EMA targets are left out).

    ``lr`` is the initial value; the engine sets every group's ``lr`` from the schedule each step,
    except groups with a ``fixed_lr`` value (``peak_lr``, or ``lr`` when not given), which keep it.
    ``lars_lr_placement`` (LARS only): see :class:`LARS`.
    """
    base = method_groups(model, lr if peak_lr is None else peak_lr)
    for g in base:
        g["lr"] = g["fixed_lr"] if g["fixed_lr"] is not None else lr
    if name == "sgd":
        return torch.optim.SGD(base, lr=lr, momentum=momentum, weight_decay=weight_decay)
    groups = []
    for g in base:
        decay, no_decay = _split_decay(g["params"])
        extra = {k: v for k, v in g.items() if k != "params"}
        groups += [{"params": decay, **extra}, {"params": no_decay, "weight_decay": 0.0, **extra}]
    if name == "lars":
        for g in groups[1::2]:
            g["lars_adapt"] = False
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=lars_eta,
                    lr_placement=lars_lr_placement)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")
