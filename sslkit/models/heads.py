"""Projector / predictor MLP heads.

One builder, :func:`mlp`, and the three layouts the image-level methods use:

* BYOL (ORL spec §2.1, OpenSelfSup ``NonLinearNeckSimCLR``/``NonLinearNeckV2`` as ORL configures
  them): ``Linear(d, 4096) → BN → ReLU → Linear(4096, 256, bias=False)``, no BN after the last
  layer; Kaiming-normal (fan_in, ReLU) weights, zero biases. The predictor has the same layout
  (256 → 4096 → 256).
* MoCo v2 (MoCo repo ``builder.py`` with ``--mlp``): ``Linear(d, 2048) → ReLU → Linear(2048, 128)``,
  no BN, PyTorch's default init.
* SimCLR (TF code ``model_util.projection_head``, 2 layers): ``Linear(d, 2048, bias=False) → BN →
  ReLU → Linear(2048, 128, bias=False) → BN(center=False)``; the last BN has a scale but no shift
  (its bias is frozen at 0).
* MCL (spec mcl.md §2.3 [C], ``DetConvGpNonLinearHead`` / ``NonLinearNeckV2``): the region head's
  conv tower (:func:`box_head_convs`, the detector's box-head convs), the projector
  ``Linear(256, 2048) → BN → ReLU → Linear(2048, 256) → BN(affine=False)`` (Kaiming fan-in) and one
  predictor per level ``Linear(256, 2048) → BN → ReLU → Linear(2048, 256)`` (normal, σ = 0.01).
"""

from __future__ import annotations

from torch import nn
from torchvision.ops.misc import Conv2dNormActivation


def mlp(in_dim: int, hidden_dim: int, out_dim: int, *, hidden_bn: bool = True, hidden_bias: bool = True,
        last_bias: bool = True, last_bn: str = "none", init: str = "default") -> nn.Sequential:
    """``Linear → [BN] → ReLU → Linear → [BN]``.

    ``last_bn``: ``"none"``, ``"affine"``, ``"scale"`` (BN with a learnt scale and no shift) or ``"plain"``
    (BN without affine parameters).
    ``init``: ``"default"`` (PyTorch), ``"kaiming"`` (normal, fan_in, ReLU gain; zero biases) or ``"normal"``
    (normal σ = 0.01, zero biases: mmcv ``normal_init``).
    Module indices: 0 = first Linear, then BN (if any), ReLU, the last Linear and its BN (if any).
    """
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=hidden_bias)]
    if hidden_bn:
        layers.append(nn.BatchNorm1d(hidden_dim))
    layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim, bias=last_bias)]
    if last_bn == "affine":
        layers.append(nn.BatchNorm1d(out_dim))
    elif last_bn == "scale":
        bn = nn.BatchNorm1d(out_dim)
        bn.bias.requires_grad_(False)  # TF batch_norm(center=False): no shift, stays 0
        layers.append(bn)
    elif last_bn == "plain":
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    elif last_bn != "none":
        raise ValueError(f"last_bn must be none, affine, scale or plain (got {last_bn!r})")
    head = nn.Sequential(*layers)
    if init == "kaiming":
        for m in head.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    elif init == "normal":
        for m in head.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    elif init != "default":
        raise ValueError(f"init must be default, kaiming or normal (got {init!r})")
    return head


def byol_mlp(in_dim: int, hidden_dim: int = 4096, out_dim: int = 256) -> nn.Sequential:
    """BYOL/ORL projector or predictor: Linear → BN → ReLU → Linear (no bias, no BN)."""
    return mlp(in_dim, hidden_dim, out_dim, last_bias=False, init="kaiming")


def mocov2_projector(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> nn.Sequential:
    """MoCo v2 projector: Linear → ReLU → Linear, no BN."""
    return mlp(in_dim, hidden_dim, out_dim, hidden_bn=False)


def simclr_projector(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> nn.Sequential:
    """SimCLR v1 projector: Linear (no bias) → BN → ReLU → Linear (no bias) → BN without shift."""
    return mlp(in_dim, hidden_dim, out_dim, hidden_bias=False, last_bias=False, last_bn="scale")


def box_head_convs(dim: int, num_convs: int = 4) -> nn.Sequential:
    """The conv tower of a 4conv1fc box head: ``num_convs`` × (Conv 3×3, no bias → BN → ReLU), ``dim`` → ``dim``.

    Module names ``{i}.0`` (conv) and ``{i}.1`` (BN) are those of torchvision's ``FastRCNNConvFCHead``
    with a ``norm_layer``, so the tower loads into ``sslkit detect``'s box head; init Kaiming-normal
    fan-out (mmcv ``ConvModule``) [C].
    """
    tower = nn.Sequential(*(Conv2dNormActivation(dim, dim, kernel_size=3, norm_layer=nn.BatchNorm2d)
                            for _ in range(num_convs)))
    for m in tower.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return tower


def mcl_projector(in_dim: int, hidden_dim: int = 2048, out_dim: int = 256) -> nn.Sequential:
    """MCL's projector [C]: Linear → BN → ReLU → Linear → BN(affine=False), Kaiming fan-in."""
    return mlp(in_dim, hidden_dim, out_dim, last_bn="plain", init="kaiming")


def mcl_predictor(dim: int = 256, hidden_dim: int = 2048) -> nn.Sequential:
    """One of MCL's per-level predictors [C] (``NonLinearNeckV2``): Linear → BN → ReLU → Linear, normal σ 0.01."""
    return mlp(dim, hidden_dim, dim, init="normal")
