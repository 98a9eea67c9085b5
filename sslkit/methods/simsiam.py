"""SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021) as the authors'
``facebookresearch/simsiam`` trains it (``main_simsiam.py --fix-pred-lr``, ``simsiam/builder.py``).

One encoder f (backbone + 3-layer projector), a predictor h, no negatives and no momentum encoder:
``L = ½·D(p1, sg(z2)) + ½·D(p2, sg(z1))`` with ``D(p, z) = −cos(p, z)`` (§3, Algorithm 1).

* projector (§3 "Baseline settings" / builder.py): ``Linear(d, 2048, no bias) → BN → ReLU → Linear(2048, 2048, no bias) →
  BN → ReLU → Linear(2048, 2048) → BN(affine=False)``. The official last Linear keeps a frozen bias
  [C]; here it has none, which is the same function in training (BN removes any constant shift).
* predictor (§3 "Baseline settings"): ``Linear(2048, 512, no bias) → BN → ReLU → Linear(512, 2048)``.
* backbone: ``zero_init_residual=True`` [C] (the last BN γ of every residual block starts at 0).
* optimisation (§3 "Baseline settings"): SGD, momentum 0.9, wd 1e-4 on every parameter, lr 0.05 × B/256,
  batch 512, cosine decay without warm-up, 100 epochs; the predictor's lr is *not* decayed (§4.2
  "Predictor", Table 1(c): 68.1 % at 100 epochs; ``--fix-pred-lr``: it keeps lr 0.05 × B/256).
* BN: synchronised across devices (``convert_sync_batchnorm`` in main_simsiam.py [C]).
* views: MoCo v2's augmentation (§3 / ``main_simsiam.py``: crop (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1)
  p 0.8, grayscale 0.2, blur p 0.5, flip).

The authors step the cosine per epoch; sslkit steps it per iteration (as for every method).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from sslkit.methods.base import Method
from sslkit.methods.numerics import fp32_loss
from sslkit.transforms import MultiView, mocov2_views, tune_views


def simsiam_projector(in_dim: int, hidden_dim: int = 2048, out_dim: int = 2048) -> nn.Sequential:
    """Three Linear layers with BN (the output BN without affine parameters), §3 "Projection MLP"."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=False))


def simsiam_predictor(dim: int = 2048, hidden_dim: int = 512) -> nn.Sequential:
    """The bottleneck predictor h, §3 "Prediction MLP": 2048 → 512 → 2048, BN on the hidden layer only."""
    return nn.Sequential(nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, dim))


@fp32_loss
def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-row D(p, z) = −cos(p, sg(z)) (eq. 1, the stop-gradient on ``z``). Float32, autocast off."""
    return -F.cosine_similarity(p, z.detach(), dim=1)


@fp32_loss
def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Algorithm 1: ``D(p1, z2)/2 + D(p2, z1)/2`` with the stop-gradient on ``z``; −1 at the optimum.
    Float32, autocast off."""
    return 0.5 * negative_cosine(p1, z2).mean() + 0.5 * negative_cosine(p2, z1).mean()


def zero_init_residual(net: nn.Module) -> None:
    """torchvision's ``zero_init_residual``: the last BN γ of each residual block ← 0 (any ResNet here)."""
    for m in net.modules():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
        elif isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)


class SimSiam(Method):
    name = "simsiam"
    default_encoder = "encoder"
    DEFAULTS = {
        # §3 "Baseline settings" and main_simsiam.py [C]: SGD m=0.9, wd 1e-4, lr 0.05·B/256, batch 512, cosine,
        # no warm-up, 100 epochs (Table 4, and RegionCL-S's base), SyncBN
        "arch": "resnet50",
        "image_size": 224,
        "batch_size": 512,
        "epochs": 100,
        "optimizer": "sgd",
        "lr": 0.05,
        "lr_scaling": "linear",
        "weight_decay": 1e-4,
        "optim_momentum": 0.9,
        "warmup_epochs": 0.0,
        "sync_bn": True,
        # §3 "Projection MLP" / "Prediction MLP": output d = 2048, predictor hidden 512 (a bottleneck)
        "proj_hidden_dim": 2048,
        "proj_dim": 2048,
        "pred_hidden_dim": 512,
        "fix_pred_lr": True,  # §4.2 Table 1(c) / --fix-pred-lr: the predictor's lr is not decayed
        "zero_init_residual": True,  # builder.py [C]
    }
    HELP = {
        "proj_hidden_dim": "projector hidden width",
        "proj_dim": "projection (and prediction) dimension",
        "pred_hidden_dim": "predictor bottleneck width",
        "fix_pred_lr": "keep the predictor at the peak lr instead of the cosine schedule",
        "zero_init_residual": "start the last BN scale of every residual block at 0",
    }

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        if cfg["zero_init_residual"]:
            zero_init_residual(self.backbone)
        self.projector = simsiam_projector(self.feat_dim, cfg["proj_hidden_dim"], cfg["proj_dim"])
        self.predictor = simsiam_predictor(cfg["proj_dim"], cfg["pred_hidden_dim"])
        self.fix_pred_lr = cfg["fix_pred_lr"]

    @classmethod
    def make_transform(cls, cfg: dict):
        return MultiView(tune_views(mocov2_views(cfg["image_size"]), cfg["blur_reference_size"], cfg["view_aug"]))

    def encoders(self) -> dict[str, str]:
        return {"encoder": "backbone."}

    def param_groups(self) -> list[dict] | None:
        if not self.fix_pred_lr:
            return None
        pred = {id(p) for p in self.predictor.parameters()}
        return [{"params": [p for p in self.parameters() if id(p) not in pred]},
                {"params": list(self.predictor.parameters()), "fixed_lr": True}]

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, p): the projection and the prediction of views ``x``."""
        z = self.projector(self.backbone(x))
        return z, self.predictor(z)

    @staticmethod
    def collapse_std(z: torch.Tensor) -> torch.Tensor:
        """§4.1 / Fig. 2 (collapse monitor): std over the batch of the L2-normalised output, averaged over channels, × √d
        (≈ 1 for well-spread outputs, 0 when collapsed)."""
        z = F.normalize(z.detach().float(), dim=1)
        return z.std(dim=0).mean() * z.shape[1] ** 0.5

    def forward_train(self, batch) -> dict[str, torch.Tensor]:
        v1, v2 = batch
        z1, p1 = self.embed(v1)
        z2, p2 = self.embed(v2)
        loss = simsiam_loss(p1, p2, z1, z2)
        return {"loss": loss, "z_std": self.collapse_std(z1)}
