"""DenseCL (Wang, Zhang, Shen, Kong, Li, "Dense Contrastive Learning for Self-Supervised Visual
Pre-Training", CVPR 2021) as the authors' ``WXinlong/DenseCL`` trains it
(``configs/selfsup/densecl/densecl_imagenet_200ep.py``, ``openselfsup/models/densecl.py``).

MoCo v2 with a second, dense head and a second queue (§3.2):

* global head: MoCo v2's projector d → 2048 → 128 on the pooled C5 feature (Kaiming-normal Linear
  init, zero biases: the authors' ``init_weights(init_linear='kaiming')`` [C]);
* dense head: ``Conv1×1(d, 2048) → ReLU → Conv1×1(2048, 128)`` on the C5 map (S×S = 7×7 at 224 px);
* dense correspondence (§3.3): each query cell's positive is the key cell whose *backbone* feature
  is most similar (argmax cosine of the L2-normalised C5 vectors; the key view's dense projection at
  that cell is the positive);
* negatives: a queue of 65,536 global keys (as MoCo) and a second queue of 65,536 *pooled dense*
  keys (the mean of the key's dense projection over its cells, L2-normalised [C]);
* loss (eq. 5): ``(1 − λ)·L_global + λ·L_dense``, λ = 0.5, both InfoNCE at τ = 0.2;
* key encoder: momentum 0.999 over backbone and both heads, shuffle-BN across ranks (as MoCo);
* optimisation (§4 / config): SGD lr 0.03 at batch 256 (32 × 8 GPUs), momentum 0.9, wd 1e-4, cosine
  to 0, 200 epochs; MoCo v2's views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslkit import dist
from sslkit.errors import UserError
from sslkit.methods.mocov2 import MoCoV2, enqueue, info_nce
from sslkit.methods.numerics import fp32_loss
from sslkit.models.backbones import res5
from sslkit.models.ema import frozen_copy


def dense_head(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> nn.Sequential:
    """DenseCL's dense projection (§3.2): two 1×1 convolutions with a ReLU between (PyTorch's init [C])."""
    return nn.Sequential(nn.Conv2d(in_dim, hidden_dim, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden_dim, out_dim, 1))


@fp32_loss
def dense_correspondence(f_q: torch.Tensor, f_k: torch.Tensor) -> torch.Tensor:
    """(B, S_q) index of the most similar key cell for each query cell (§3.3).

    ``f_q`` (B, C, S_q), ``f_k`` (B, C, S_k): L2-normalised backbone features per cell (flattened
    row-major). Ties go to the first maximal key cell. The similarities are float32 with autocast off (as
    the losses: a bf16 similarity could pick another cell).
    """
    return torch.bmm(f_q.transpose(1, 2), f_k).max(dim=2).indices


@fp32_loss
def dense_info_nce(q_grid: torch.Tensor, k_grid: torch.Tensor, match: torch.Tensor, queue: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """L_dense (eq. 4): InfoNCE of every query cell against its matched key cell and the dense queue.

    ``q_grid`` (B, D, S_q) and ``k_grid`` (B, D, S_k): L2-normalised dense projections; ``match`` (B, S_q)
    from :func:`dense_correspondence`; ``queue`` (K, D). Mean over the B·S_q cells. Float32, autocast off.
    """
    k_grid, queue = k_grid.detach(), queue.detach()
    positive = torch.gather(k_grid, 2, match.unsqueeze(1).expand(-1, k_grid.shape[1], -1))  # (B, D, S_q)
    l_pos = (q_grid * positive).sum(1).reshape(-1, 1)
    cells = q_grid.transpose(1, 2).reshape(-1, q_grid.shape[1])
    logits = torch.cat([l_pos, cells @ queue.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


class DenseCL(MoCoV2):
    name = "densecl"
    default_encoder = "query"
    DEFAULTS = {
        **MoCoV2.DEFAULTS,
        # densecl_imagenet_200ep.py [C] (§4 "Pre-training setup"): SGD lr 0.03 for batch 256, wd 1e-4,
        # momentum 0.9, cosine to 0, 200 epochs; MoCo's queue 65,536, m 0.999, τ 0.2, heads 2048 → 128
        "lr": 0.03,
        "batch_size": 256,
        "epochs": 200,
        "loss_lambda": 0.5,  # eq. 5: λ = 0.5
    }
    HELP = {
        **MoCoV2.HELP,
        "queue_size": "number of negatives K in each of the two queues (global and dense)",
        "proj_hidden_dim": "hidden width of the global and dense heads",
        "proj_dim": "embedding dimension of both heads",
        "loss_lambda": "λ: loss = (1 − λ)·global + λ·dense",
    }

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        for m in self.projector.modules():  # the authors' Kaiming init of the global head [C]
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self.key_projector.load_state_dict(self.projector.state_dict())
        self.dense_head = dense_head(self.feat_dim, cfg["proj_hidden_dim"], cfg["proj_dim"])
        self.key_dense_head = frozen_copy(self.dense_head)
        self.loss_lambda = cfg["loss_lambda"]
        self.register_buffer("queue2", F.normalize(torch.randn(cfg["queue_size"], cfg["proj_dim"]), dim=1))
        self.register_buffer("queue2_ptr", torch.zeros((), dtype=torch.long))

    @classmethod
    def validate(cls, cfg: dict) -> None:
        super().validate(cfg)
        if not 0.0 <= cfg["loss_lambda"] <= 1.0:
            raise UserError(f"loss_lambda must be in [0, 1] (got {cfg['loss_lambda']})")

    def momentum_pairs(self) -> dict[str, str]:
        return {**super().momentum_pairs(), "key_dense_head": "dense_head"}

    def query_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q (B, D) unit, q_grid (B, D, S) unit per cell, backbone cells (B, C, S) unit per cell)."""
        fmap = res5(self.backbone, x)
        q = F.normalize(self.projector(self.backbone.avgpool(fmap).flatten(1)).float(), dim=1)
        q_grid = F.normalize(self.dense_head(fmap).flatten(2).float(), dim=1)
        return q, q_grid, F.normalize(fmap.detach().flatten(2).float(), dim=1)

    @torch.no_grad()
    def dense_keys(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(k, k_grid, k2, key backbone cells) of the key view, through shuffle-BN (one gather back)."""
        if self.shuffle_bn:
            x, unshuffle = dist.batch_shuffle(x)
        fmap = res5(self.key_backbone, x)
        k = F.normalize(self.key_projector(self.key_backbone.avgpool(fmap).flatten(1)).float(), dim=1)
        grid = self.key_dense_head(fmap).flatten(2).float()
        k2 = F.normalize(grid.mean(2), dim=1)
        k_grid = F.normalize(grid, dim=1)
        f_k = F.normalize(fmap.flatten(2).float(), dim=1)
        if not self.shuffle_bn:
            return k, k_grid, k2, f_k
        shapes = [t.shape[1:] for t in (k, k_grid, k2, f_k)]
        flat = dist.batch_unshuffle(torch.cat([t.flatten(1) for t in (k, k_grid, k2, f_k)], 1), unshuffle)
        parts = flat.split([s.numel() for s in shapes], dim=1)
        return tuple(p.reshape(-1, *s) for p, s in zip(parts, shapes, strict=True))

    def densecl_losses(self, x_q, x_k) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """DenseCL's two terms on a batch (before λ) and what the region terms reuse: (terms, k, queue)."""
        q, q_grid, f_q = self.query_features(x_q)
        k, k_grid, k2, f_k = self.dense_keys(x_k)
        queue = self.queue.clone()
        loss_global, acc = info_nce(q, k, queue, self.temperature)
        match = dense_correspondence(f_q, f_k)
        loss_dense = dense_info_nce(q_grid, k_grid, match, self.queue2.clone(), self.temperature)
        enqueue(self.queue2, self.queue2_ptr, dist.all_gather(k2))
        return {"loss_global": loss_global, "loss_dense": loss_dense, "acc": acc}, k, queue

    def forward_train(self, batch) -> dict[str, torch.Tensor]:
        x_q, x_k = batch
        terms, k, _ = self.densecl_losses(x_q, x_k)
        loss = (1 - self.loss_lambda) * terms["loss_global"] + self.loss_lambda * terms["loss_dense"]
        self._enqueue(dist.all_gather(k))
        return {"loss": loss, **{n: v.detach() for n, v in terms.items()}}
