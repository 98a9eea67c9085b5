"""Exponential moving average (target / momentum encoders): ξ ← τ·ξ + (1 − τ)·θ."""

from __future__ import annotations

import copy

import torch
from torch import nn


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
