"""SimCLR (Chen, Kornblith, Norouzi, Hinton, ICML 2020), v1 recipe.

One encoder: backbone → projector (2048 → 2048 → 128, BN in both layers, TF-code layout). Both
views go through the network as one batch (as the TF code and OpenSelfSup do). NT-Xent at
temperature 0.1 over the GLOBAL batch: every rank's embeddings are all-gathered with gradient,
so each of the 2B views has 2B − 2 negatives whatever the number of ranks. The loss adds the two
directions' mean cross-entropies, as the official TF code does (``loss_directions: sum``); the paper's
Algorithm 1 averages them (``mean``), which halves the gradient against the weight decay under LARS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslkit import dist
from sslkit.errors import UserError
from sslkit.methods.base import Method
from sslkit.methods.numerics import fp32_loss
from sslkit.models.heads import simclr_projector
from sslkit.transforms import MultiView, simclr_views, tune_views

#: how the two directions (view 1 → 2 and 2 → 1) combine: ``sum`` = google-research/simclr
#: ``objective.py`` (``loss_a + loss_b``, each a batch mean) [C]; ``mean`` = the paper's Algorithm 1
#: (1/2N over all 2N views) [P]
LOSS_DIRECTIONS = ("sum", "mean")


@fp32_loss
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, directions: str = "sum"
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent (SimCLR eq. 1) with negatives from every rank, in float32 with autocast off.

    ``z1``, ``z2``: this rank's (n, D) embeddings of the two views (normalised here). The keys are
    the all-gathered (N, D) embeddings (differentiable), so the loss and its gradient equal those of
    one process holding the whole global batch. ``directions``: ``sum`` adds the mean cross-entropy
    of the view-1 rows and of the view-2 rows (official TF code, the default); ``mean`` averages all
    2n rows (paper, half of ``sum``). Returns ``(loss, top-1 accuracy of the positive)``.
    """
    if directions not in LOSS_DIRECTIONS:
        raise ValueError(f"directions must be one of {LOSS_DIRECTIONS} (got {directions!r})")
    z1 = F.normalize(z1, dim=1)
    z2 = F.normalize(z2, dim=1)
    n = z1.shape[0]
    k1, k2 = dist.all_gather_with_grad(z1), dist.all_gather_with_grad(z2)
    big_n = k1.shape[0]
    own = torch.arange(n, device=z1.device) + dist.rank() * n  # global indices of this rank's images
    queries = torch.cat([z1, z2])
    with torch.autocast(z1.device.type, enabled=False):  # float32 logits (bf16 would round them to ~1%)
        logits = queries @ torch.cat([k1, k2]).T / temperature  # (2n, 2N)
    rows = torch.arange(2 * n, device=z1.device)
    self_cols = torch.cat([own, own + big_n])
    logits = logits.index_put((rows, self_cols), logits.new_tensor(float("-inf")))
    positives = torch.cat([own + big_n, own])
    loss = F.cross_entropy(logits, positives)  # mean over the 2n rows
    if directions == "sum":
        loss = 2.0 * loss  # = mean over view-1 rows + mean over view-2 rows
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
        "lars_lr_placement": "inside",  # TF LARSOptimizer classic_momentum=True: lr inside the momentum [C]
        "temperature": 0.1,
        "loss_directions": "sum",  # objective.py: loss_a + loss_b [C] (paper Algorithm 1: their mean)
        "proj_hidden_dim": 2048,
        "proj_dim": 128,
    }
    HELP = {
        "temperature": "NT-Xent temperature τ",
        "loss_directions": "sum: add the two directions' mean losses (official TF code); mean: average them "
                           "(paper, half the gradient)",
        "proj_hidden_dim": "projector hidden width",
        "proj_dim": "embedding dimension",
    }

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.projector = simclr_projector(self.feat_dim, cfg["proj_hidden_dim"], cfg["proj_dim"])
        self.temperature = cfg["temperature"]
        self.loss_directions = cfg["loss_directions"]

    @classmethod
    def make_transform(cls, cfg: dict):
        return MultiView(tune_views(simclr_views(cfg["image_size"]), cfg["blur_reference_size"], cfg["view_aug"]))

    @classmethod
    def validate(cls, cfg: dict) -> None:
        if cfg["temperature"] <= 0:
            raise UserError("temperature must be > 0")
        if cfg["loss_directions"] not in LOSS_DIRECTIONS:
            raise UserError(f"loss_directions must be sum or mean (got {cfg['loss_directions']!r})")

    def encoders(self) -> dict[str, str]:
        return {"encoder": "backbone."}

    def forward_train(self, batch) -> dict[str, torch.Tensor]:
        v1, v2 = batch
        z = self.projector(self.backbone(torch.cat([v1, v2])))
        z1, z2 = z.chunk(2)
        loss, acc = nt_xent(z1, z2, self.temperature, self.loss_directions)
        return {"loss": loss, "acc": acc}
