"""BYOL (Grill et al., NeurIPS 2020) with ORL's COCO recipe (Xie et al., NeurIPS 2021, §3.2; spec §2.1–2.2, §3).

Online network θ: backbone → projector → predictor. Target ξ: backbone → projector, an EMA of θ
(predictor excluded), updated after every step with τ cosine-annealed from 0.99 to 1 per
iteration. Each view goes through its own forward pass (its own BN batch statistics), as in
OpenSelfSup. Loss: ℓ(v, v′) + ℓ(v′, v) with ℓ(a, b) = mean ‖q̄(a) − z̄_ξ(b)‖² = 2 − 2·cos.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslkit.methods.base import Method
from sslkit.methods.numerics import fp32_loss
from sslkit.models.ema import check_ema_settings, ema_momentum, ema_update, frozen_copy
from sslkit.models.heads import byol_mlp
from sslkit.transforms import MultiView, byol_views, tune_views


@fp32_loss
def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``‖p/‖p‖ − z/‖z‖‖² = 2 − 2·cos(p, z)``: 0 for parallel, 4 for opposite vectors.

    ``z`` is the target projection; it is detached here (stop-gradient). Float32, autocast off.
    """
    p = F.normalize(p, dim=-1)
    z = F.normalize(z.detach(), dim=-1)
    return (2.0 - 2.0 * (p * z).sum(dim=-1)).mean()


class OnlineTarget:
    """BYOL's networks around a backbone: online projector + predictor, and a target (backbone +
    projector) that is an EMA of the online ones, τ annealed from ``ema_momentum`` to 1 per step.

    Shared by BYOL and every method built on BYOL's architecture (DetCon-B, ORL, UniVIP); a mixin
    placed before :class:`~sslkit.methods.base.Method` in the bases.
    """

    def build_online_target(self, cfg: dict) -> None:
        self.projector = byol_mlp(self.feat_dim, cfg["proj_hidden_dim"], cfg["proj_dim"])
        self.predictor = byol_mlp(cfg["proj_dim"], cfg["pred_hidden_dim"], cfg["proj_dim"])
        self.target_backbone = frozen_copy(self.backbone)
        self.target_projector = frozen_copy(self.projector)
        self.ema_base = cfg["ema_momentum"]
        self.ema_schedule = cfg["ema_schedule"]
        self.momentum = self.ema_base

    def encoders(self) -> dict[str, str]:
        return {"online": "backbone.", "target": "target_backbone."}

    def on_after_step(self, step: int, total_steps: int) -> dict[str, float]:
        self.momentum = ema_momentum(self.ema_schedule, step, total_steps, self.ema_base)
        ema_update(self.target_backbone, self.backbone, self.momentum)
        ema_update(self.target_projector, self.projector, self.momentum)
        return {"momentum": self.momentum}

    def ema_state(self) -> dict:
        return {"momentum": self.momentum, "base_momentum": self.ema_base, "schedule": self.ema_schedule,
                "pairs": {"target_backbone.": "backbone.", "target_projector.": "projector."}}


class BYOL(OnlineTarget, Method):
    name = "byol"
    default_encoder = "online"
    DEFAULTS = {
        # ORL §3.2 + its OpenSelfSup config (spec §3): SGD m=0.9, wd 1e-4 on all params, base lr 0.2
        # ×B/256, cosine to 0, 4 warm-up epochs from 1e-4·lr, batch 512 (64×8 GPUs), 800 epochs, SyncBN
        "arch": "resnet50",
        "image_size": 224,
        "batch_size": 512,
        "epochs": 800,
        "optimizer": "sgd",
        "lr": 0.2,
        "lr_scaling": "linear",
        "weight_decay": 1e-4,
        "optim_momentum": 0.9,
        "warmup_epochs": 4.0,
        "warmup_start_factor": 1e-4,
        # with --optimizer lars (e.g. UniVIP's ImageNet recipe "following BYOL"): BYOL's optax LARS applies
        # the lr after the momentum [C deepmind-research/byol utils/optimizers.py]
        "lars_lr_placement": "outside",
        "sync_bn": True,
        # BYOL §3.2 / ORL: τ_base 0.99, cosine to 1 per iteration; heads 4096 → 256 (spec §2.1)
        "ema_momentum": 0.99,
        "ema_schedule": "cosine",
        "proj_hidden_dim": 4096,
        "proj_dim": 256,
        "pred_hidden_dim": 4096,
    }
    HELP = {
        "ema_momentum": "target EMA momentum τ at step 0",
        "ema_schedule": "cosine (τ → 1 over training) or constant",
        "proj_hidden_dim": "projector hidden width",
        "proj_dim": "projection (and prediction) dimension",
        "pred_hidden_dim": "predictor hidden width",
    }

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.build_online_target(cfg)

    @classmethod
    def make_transform(cls, cfg: dict):
        return MultiView(tune_views(byol_views(cfg["image_size"]), cfg["blur_reference_size"], cfg["view_aug"]))

    @classmethod
    def validate(cls, cfg: dict) -> None:
        check_ema_settings(cfg)

    def forward_train(self, batch) -> dict[str, torch.Tensor]:
        v1, v2 = batch
        p1 = self.predictor(self.projector(self.backbone(v1)))
        p2 = self.predictor(self.projector(self.backbone(v2)))
        with torch.no_grad():
            z1 = self.target_projector(self.target_backbone(v1))
            z2 = self.target_projector(self.target_backbone(v2))
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)
        return {"loss": loss}
