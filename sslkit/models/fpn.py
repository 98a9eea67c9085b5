"""Feature pyramids on an sslkit ResNet: an FPN with BatchNorm (MCL's neck, the detector's FPN) and
MCL's non-FPN ``FPNLinear`` pseudo-pyramid.

:class:`FPN` is mmdet's ``FPN(norm_cfg=BN, start_level=0, num_outs=4)`` as MCL configures it [C]
(spec mcl.md §2.3): a 1×1 lateral conv + BN on each of C2–C5, nearest top-down upsampling and
addition, a 3×3 output conv + BN per level, no activation, convs without bias, Xavier-uniform
init. Its module names are torchvision's ``FeaturePyramidNetwork`` (``inner_blocks.{i}.{0,1}``,
``layer_blocks.{i}.{0,1}``), so its ``state_dict`` loads unchanged into the FPN of ``sslkit
detect``'s Mask R-CNN (``backbone.fpn.*``; P6 there is a parameter-free max-pool) and maps
one-to-one onto detectron2's ``fpn_lateral{2..5}`` / ``fpn_output{2..5}`` (:mod:`sslkit.models.parts`).

``forward(features, levels)`` computes only the requested outputs (each needs its lateral and the
top-down path above it): MCL's target branch needs P5 alone. BatchNorm statistics of a level do
not depend on which other levels are computed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

#: pyramid level names of the outputs, finest first (strides 4, 8, 16, 32)
PYRAMID = ("p2", "p3", "p4", "p5")


def _xavier(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)  # mmcv xavier_init(distribution='uniform') [C]
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class FPN(nn.Module):
    """C2–C5 → P2–P5 with BN in every lateral and output conv (torchvision ``FeaturePyramidNetwork`` names)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256):
        super().__init__()
        self.out_channels = out_channels
        self.inner_blocks = nn.ModuleList(
            Conv2dNormActivation(c, out_channels, kernel_size=1, padding=0, norm_layer=nn.BatchNorm2d,
                                 activation_layer=None) for c in in_channels)
        self.layer_blocks = nn.ModuleList(
            Conv2dNormActivation(out_channels, out_channels, kernel_size=3, norm_layer=nn.BatchNorm2d,
                                 activation_layer=None) for _ in in_channels)
        _xavier(self)

    def forward(self, features: Sequence[torch.Tensor], levels: Sequence[int] | None = None) -> list[torch.Tensor | None]:
        """``features`` = [C2, C3, C4, C5]; returns [P2, P3, P4, P5] with ``None`` for levels not asked
        for (``levels``: indices into that list; default all)."""
        n = len(self.inner_blocks)
        want = set(range(n) if levels is None else levels)
        out: list[torch.Tensor | None] = [None] * n
        if not want:
            return out
        lowest = min(want)
        inner = self.inner_blocks[-1](features[-1])
        for i in range(n - 1, lowest - 1, -1):
            if i < n - 1:
                lateral = self.inner_blocks[i](features[i])
                inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
            if i in want:
                out[i] = self.layer_blocks[i](inner)
        return out


class FPNLinear(nn.Module):
    """MCL's non-FPN variant [P §3.2][C] (``FPNLinear``): 1×1 conv + BN + ReLU on C5 to ``out_channels``,
    then nearest upsampling ×2, ×4, ×8 to make a 4-level pseudo-pyramid (same strides as :class:`FPN`)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256):
        super().__init__()
        self.out_channels = out_channels
        self.num_levels = len(in_channels)
        self.reduction = Conv2dNormActivation(in_channels[-1], out_channels, kernel_size=1, padding=0,
                                              norm_layer=nn.BatchNorm2d)  # ConvModule's default ReLU [C]
        _xavier(self)

    def forward(self, features: Sequence[torch.Tensor], levels: Sequence[int] | None = None) -> list[torch.Tensor | None]:
        n = self.num_levels
        want = set(range(n) if levels is None else levels)
        top = self.reduction(features[-1])
        return [None if i not in want else top if i == n - 1 else
                F.interpolate(top, scale_factor=2 ** (n - 1 - i), mode="nearest") for i in range(n)]


def build_neck(kind: str, in_channels: Sequence[int], out_channels: int) -> nn.Module:
    """``fpn`` (:class:`FPN`) or ``linear`` (:class:`FPNLinear`)."""
    if kind == "fpn":
        return FPN(in_channels, out_channels)
    if kind == "linear":
        return FPNLinear(in_channels, out_channels)
    raise ValueError(f"neck must be fpn or linear (got {kind!r})")
