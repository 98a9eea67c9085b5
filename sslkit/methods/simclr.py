"""SimCLR (Chen, Kornblith, Norouzi, Hinton, ICML 2020), v1 recipe.

One encoder: backbone → projector (2048 → 2048 → 128, BN in both layers, TF-code layout). Both
views go through the network as one batch (as the TF code and OpenSelfSup do). NT-Xent at
temperature 0.1 over the GLOBAL batch: every rank's embeddings are all-gathered with gradient,
so each of the 2B views has 2B − 2 negatives whatever the number of ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslkit import dist
from sslkit.methods.base import Method
from sslkit.models.heads import simclr_projector
from sslkit.transforms import MultiView, simclr_views, tune_views


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent (SimCLR eq. 1) averaged over all 2N views, with negatives from every rank.

    ``z1``, ``z2``: this rank's (n, D) embeddings of the two views (normalised here). The keys are
    the all-gathered (N, D) embeddings (differentiable), so the loss and its gradient equal those of
    one process holding the whole global batch. Returns ``(loss, top-1 accuracy of the positive)``.
    """
    z1 = F.normalize(z1.float(), dim=1)
    z2 = F.normalize(z2.float(), dim=1)
    n = z1.shape[0]
    k1, k2 = dist.all_gather_with_grad(z1), dist.all_gather_with_grad(z2)
    big_n = k1.shape[0]
    own = torch.arange(n, device=z1.device) + dist.rank() * n  # global indices of this rank's images
    queries = torch.cat([z1, z2])
    with torch.autocast(z1.device.type, enabled=False):  # float32 logits (bf16 would round them to ~1%)
        logits = queries @ torch.cat([k1, k2]).T / temperature  # (2n, 2N)
    rows = torch.arange(2 * n, device=z1.device)
    self_cols = torch.cat([own, own + big_n])
    logits = logits.index_put((rows, self_cols), torch.tensor(float("-inf"), device=z1.device))
    positives = torch.cat([own + big_n, own])
    loss = F.cross_entropy(logits, positives)
    acc = (logits.argmax(dim=1) == positives).float().mean()
    return loss, acc


class SimCLR(Method):
    name = "simclr"
    default_encoder = "encoder"
    DEFAULTS = {
        # SimCLR §2.3 "default setting" + appendix B.1 and the official code: LARS (m=0.9, η=1e-3,
        # BN/bias excluded), lr 0.3×B/256 (4.8 at 4096), wd 1e-6, 10 warm-up epochs then cosine,
        # batch 4096, 100 epochs (1000 for the headline numbers), global BN, T=0.1 (Table 5, and the
        # official ImageNet command)
        "arch": "resnet50",
        "image_size": 224,
        "batch_size": 4096,
        "epochs": 100,
        "optimizer": "lars",
        "lr": 0.3,
        "lr_scaling": "linear",
        "weight_decay": 1e-6,
        "optim_momentum": 0.9,
        "lars_eta": 1e-3,
        "warmup_epochs": 10.0,
        "warmup_start_factor": 0.0,
        "sync_bn": True,
        "temperature": 0.1,
        "proj_hidden_dim": 2048,
        "proj_dim": 128,
    }
    HELP = {
        "temperature": "NT-Xent temperature τ",
        "proj_hidden_dim": "projector hidden width",
        "proj_dim": "embedding dimension",
    }

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.projector = simclr_projector(self.feat_dim, cfg["proj_hidden_dim"], cfg["proj_dim"])
        self.temperature = cfg["temperature"]

    @classmethod
    def make_transform(cls, cfg: dict):
        return MultiView(tune_views(simclr_views(cfg["image_size"]), cfg["blur_reference_size"], cfg["view_aug"]))

    @classmethod
    def validate(cls, cfg: dict) -> None:
        from sslkit.errors import UserError

        if cfg["temperature"] <= 0:
            raise UserError("temperature must be > 0")

    def encoders(self) -> dict[str, str]:
        return {"encoder": "backbone."}

    def forward_train(self, batch) -> dict[str, torch.Tensor]:
        v1, v2 = batch
        z = self.projector(self.backbone(torch.cat([v1, v2])))
        z1, z2 = z.chunk(2)
        loss, acc = nt_xent(z1, z2, self.temperature)
        return {"loss": loss, "acc": acc}
