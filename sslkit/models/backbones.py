"""Backbones: torchvision ResNets (any ``torchvision.models.resnet*`` / ``resnext*`` / ``wide_resnet*``)
and ``resnet_tiny``, a 4-stage ResNet with torchvision's key names and small widths for tests.

A backbone here is a ``torchvision.models.ResNet`` whose ``fc`` is ``nn.Identity``:
``backbone(x)`` returns the globally pooled res5 feature (``feat_dim`` channels) and
:func:`stage_features` returns the per-stage maps (conv1, res2..res5) for dense
methods, linear probes and FPNs.  Its ``state_dict`` therefore has exactly the keys
of a torchvision ResNet minus ``fc.*``: that is the exported torchvision format.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from sslkit.errors import UserError

TINY_WIDTHS = (16, 32, 64, 128)


class TinyResNet(ResNet):
    """torchvision ``ResNet`` (BasicBlock, one block per stage) with widths 16/32/64/128.

    Same module names as torchvision's ResNets (conv1, bn1, layer1..4), so export,
    the detectron2 key map and every feature hook are exercised by tests.
    """

    def __init__(self, widths=TINY_WIDTHS, layers=(1, 1, 1, 1)):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = widths[0]
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(BasicBlock, widths[0], layers[0])
        self.layer2 = self._make_layer(BasicBlock, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(BasicBlock, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(BasicBlock, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3], 1000)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def available_archs() -> list[str]:
    names = [n for n in torchvision.models.list_models(module=torchvision.models)
             if n.startswith(("resnet", "resnext", "wide_resnet"))]
    return sorted(names) + ["resnet_tiny"]


def build_backbone(arch: str, zero_init_residual: bool = False) -> ResNet:
    """A randomly initialised ResNet with ``fc = Identity`` and ``feat_dim`` / ``stage_dims`` attributes."""
    if arch == "resnet_tiny":
        net: ResNet = TinyResNet()
    else:
        if arch not in available_archs():
            raise UserError(f"unknown --arch {arch!r}", None, f"choose one of: {', '.join(available_archs())}")
        net = torchvision.models.get_model(arch, weights=None, zero_init_residual=zero_init_residual)
    net.feat_dim = net.fc.in_features  # type: ignore[attr-defined]
    net.fc = nn.Identity()
    block_out = [getattr(layer[-1], "conv3", None) or layer[-1].conv2 for layer in
                 (net.layer1, net.layer2, net.layer3, net.layer4)]
    net.stage_dims = [net.conv1.out_channels] + [c.out_channels for c in block_out]  # type: ignore[attr-defined]
    return net


def stage_features(net: ResNet, x: torch.Tensor) -> list[torch.Tensor]:
    """[conv1 (after maxpool), res2, res3, res4, res5] feature maps, strides 4, 4, 8, 16, 32."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    out = [x]
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        out.append(x)
    return out


def res5(net: ResNet, x: torch.Tensor) -> torch.Tensor:
    """The final (stride-32) feature map before pooling."""
    return stage_features(net, x)[-1]


def load_backbone_weights(net: ResNet, state_dict: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Load a torchvision-format backbone state_dict (``fc.*`` ignored) into ``net``."""
    sd = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if strict and (missing or unexpected):
        raise ValueError(f"backbone weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
