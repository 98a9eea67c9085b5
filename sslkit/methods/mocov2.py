"""MoCo v2 (Chen, Fan, Girshick, He 2020, "Improved Baselines with Momentum Contrastive Learning";
He et al. CVPR 2020 for MoCo).

Query encoder: backbone → MLP projector (2048 → 2048 → 128, no BN). Key encoder: momentum copy,
m = 0.999 fixed. InfoNCE with temperature 0.2 against the positive key and a FIFO queue of
K = 65536 keys from previous batches (all ranks' keys are enqueued). Shuffle-BN across ranks for
the key encoder (one rank: plain BN on the key batch). Loss in one direction, as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslkit import dist
from sslkit.errors import UserError
from sslkit.methods.base import Method
from sslkit.methods.numerics import fp32_loss
from sslkit.models.ema import check_ema_settings, ema_momentum, ema_update, frozen_copy
from sslkit.models.heads import mocov2_projector
from sslkit.transforms import MultiView, mocov2_views, tune_views


@fp32_loss
def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo's InfoNCE: cross-entropy of ``[q·k, q·queue]/T`` with the positive at index 0.

    ``q``, ``k``: (N, D) L2-normalised; ``queue``: (K, D) L2-normalised negatives. Returns
    ``(loss, top-1 accuracy of the positive)``. Float32, autocast off.
    """
    k, queue = k.detach(), queue.detach()
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue.T
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    loss = F.cross_entropy(logits, labels)
    acc = (logits.argmax(dim=1) == 0).float().mean()
    return loss, acc


@torch.no_grad()
def enqueue(queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor) -> None:
    """Write ``keys`` (all ranks' keys of this step) into the FIFO ``queue`` at ``ptr``, wrapping around
    the end, and advance ``ptr`` (a 0-d long buffer) in place."""
    n, size = keys.shape[0], queue.shape[0]
    idx = (ptr + torch.arange(n, device=keys.device)) % size
    queue[idx] = keys.to(queue.dtype)
    ptr.copy_((ptr + n) % size)


class MoCoV2(Method):
    name = "mocov2"
    default_encoder = "query"
    DEFAULTS = {
        # MoCo v2 paper §3 + main_moco.py (--mlp --aug-plus --cos): SGD m=0.9, wd 1e-4 on all params,
        # lr 0.03 for batch 256, cosine, no warm-up, 200 epochs; shuffle-BN instead of SyncBN
        "arch": "resnet50",
        "image_size": 224,
        "batch_size": 256,
        "epochs": 200,
        "optimizer": "sgd",
        "lr": 0.03,
        "lr_scaling": "linear",
        "weight_decay": 1e-4,
        "optim_momentum": 0.9,
        "warmup_epochs": 0.0,
        "sync_bn": False,
        "ema_momentum": 0.999,
        "ema_schedule": "constant",
        "queue_size": 65536,
        "temperature": 0.2,
        "proj_hidden_dim": 2048,
        "proj_dim": 128,
        "shuffle_bn": True,
    }
    HELP = {
        "ema_momentum": "key-encoder momentum m",
        "ema_schedule": "constant (MoCo) or cosine (m → 1 over training)",
        "queue_size": "number of negative keys K in the queue",
        "temperature": "InfoNCE temperature T",
        "proj_hidden_dim": "projector hidden width",
        "proj_dim": "embedding dimension",
        "shuffle_bn": "shuffle the key batch across ranks before the key encoder (MoCo's shuffle-BN)",
    }

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.projector = mocov2_projector(self.feat_dim, cfg["proj_hidden_dim"], cfg["proj_dim"])
        self.key_backbone = frozen_copy(self.backbone)
        self.key_projector = frozen_copy(self.projector)
        self.temperature = cfg["temperature"]
        self.shuffle_bn = cfg["shuffle_bn"]
        self.ema_base = cfg["ema_momentum"]
        self.ema_schedule = cfg["ema_schedule"]
        self.momentum = self.ema_base
        self.register_buffer("queue", F.normalize(torch.randn(cfg["queue_size"], cfg["proj_dim"]), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @classmethod
    def make_transform(cls, cfg: dict):
        return MultiView(tune_views(mocov2_views(cfg["image_size"]), cfg["blur_reference_size"], cfg["view_aug"]))

    @classmethod
    def validate(cls, cfg: dict) -> None:
        if cfg["queue_size"] < cfg["batch_size"]:
            raise UserError(f"queue_size {cfg['queue_size']} is smaller than the global batch {cfg['batch_size']}",
                            None, "raise --queue-size")
        if cfg["temperature"] <= 0:
            raise UserError("temperature must be > 0")
        check_ema_settings(cfg)

    def encoders(self) -> dict[str, str]:
        return {"query": "backbone.", "key": "key_backbone."}

    @torch.no_grad()
    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        if self.shuffle_bn:
            x, unshuffle = dist.batch_shuffle(x)
        k = F.normalize(self.key_projector(self.key_backbone(x)).float(), dim=1)
        return dist.batch_unshuffle(k, unshuffle) if self.shuffle_bn else k

    def _enqueue(self, keys: torch.Tensor) -> None:
        enqueue(self.queue, self.queue_ptr, keys)

    def momentum_pairs(self) -> dict[str, str]:
        """``{key module: query module}`` (attribute names) that the momentum update moves, in order."""
        return {"key_backbone": "backbone", "key_projector": "projector"}

    def forward_train(self, batch) -> dict[str, torch.Tensor]:
        x_q, x_k = batch
        q = F.normalize(self.projector(self.backbone(x_q)).float(), dim=1)
        k = self._keys(x_k)
        loss, acc = info_nce(q, k, self.queue.clone(), self.temperature)
        self._enqueue(dist.all_gather(k))
        return {"loss": loss, "acc": acc}

    def on_after_step(self, step: int, total_steps: int) -> dict[str, float]:
        # MoCo updates the key encoder at the start of the next forward; after the step is the same
        # sequence (the step-0 update is a no-op there because key == query at init)
        self.momentum = ema_momentum(self.ema_schedule, step, total_steps, self.ema_base)
        for key, query in self.momentum_pairs().items():
            ema_update(getattr(self, key), getattr(self, query), self.momentum)
        return {"momentum": self.momentum}

    def ema_state(self) -> dict:
        return {"momentum": self.momentum, "base_momentum": self.ema_base, "schedule": self.ema_schedule,
                "pairs": {f"{k}.": f"{q}." for k, q in self.momentum_pairs().items()}}
