"""Exponential moving average (target / momentum encoders): ξ ← τ·ξ + (1 − τ)·θ, and its momentum
schedules (pure functions of the optimizer step, so a resumed run recomputes the same τ)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from sslkit.errors import UserError


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with ``requires_grad=False`` everywhere: the target starts equal to the online net."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target ← momentum·target + (1 − momentum)·online`` over parameters, in place.

    Parameters only, as BYOL/ORL (OpenSelfSup ``_momentum_update``) and MoCo do: the target's BN
    running statistics come from its own forward passes. One fused ``lerp`` over all tensors.
    """
    t = [p for p in target.parameters()]
    o = [p.detach() for p in online.parameters()]
    if len(t) != len(o):
        raise ValueError(f"EMA pair differs in structure ({len(t)} vs {len(o)} parameters)")
    torch._foreach_lerp_(t, o, 1.0 - momentum)


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """BYOL's target-momentum schedule τ_k = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2 (BYOL §3.2; ORL §3.2):
    τ_0 = base, τ_K = final (1.0)."""
    t = min(1.0, step / max(1, total_steps))
    return final - (final - base) * (math.cos(math.pi * t) + 1.0) / 2.0


def ema_momentum(schedule: str, step: int, total_steps: int, base: float) -> float:
    """``cosine`` (BYOL) or ``constant`` (MoCo's fixed m)."""
    if schedule == "cosine":
        return cosine_momentum(step, total_steps, base)
    if schedule == "constant":
        return base
    raise ValueError(f"unknown EMA schedule {schedule!r}")


def check_ema_settings(cfg: dict) -> None:
    """``ema_schedule`` is cosine or constant and ``ema_momentum`` in [0, 1]: one line otherwise."""
    if cfg["ema_schedule"] not in ("cosine", "constant"):
        raise UserError(f"ema_schedule must be cosine or constant (got {cfg['ema_schedule']!r})")
    if not 0.0 <= cfg["ema_momentum"] <= 1.0:
        raise UserError(f"ema_momentum must be in [0, 1] (got {cfg['ema_momentum']})")
