"""MCL: Multi-Level Contrastive Learning for dense prediction (Guo et al.; ../shared/papers/mcl.txt,
spec ../shared/specs/mcl.md; authors' code github.com/GuoQiushan/MCL, ``openselfsup/models/mcl.py``).

BYOL's architecture with InfoNCE over a batch of targets, on montages (§3):

* input: per image 2·L augmentations (L = 4 levels × views q, k), tiled per level into montages of
  ratio 2^s (:mod:`sslkit.views.mcl`), the levels concatenated into one batch per view [C];
* network: backbone C2–C5 → FPN with BN (P2–P5) → a tile at ratio 2^s is exactly one
  ``(S/32)²`` window of P_{5−s}; each window goes as its own sample through the box-head conv tower
  (4 × conv 3×3 + BN + ReLU, shared by all levels), is average-pooled and projected
  (256 → 2048 → 256, last BN without affine); one predictor per level [C];
* target: an EMA (cosine 0.99 → 1 per step) of backbone + FPN + head + projector [P][C]; it runs on
  the same montage batches, in train mode (batch statistics), as the authors' code;
* loss: :func:`sslkit.methods.mcl_loss.mcl_loss` — every online tile picks out the target
  embedding of the full-resolution image of the other view among all targets of the global batch
  (mode a), symmetric, level weights 1/2, 1/4, 1/8, 1/8, T = 1 with the 2T factor [C].

Which windows the head sees (``head_windows``): the authors' code runs the head on every window
of every pyramid level of all montages and keeps the matched (level, montage) pairs, so a level's
head BatchNorm statistics come from all montages; ``matched`` (default [I]) runs it on the windows
that enter the loss only — the same tiles, about 23× less head compute at 4 levels (the code's
choice, ``all``, costs more than the backbone; docs/mcl.md). The target computes only the
pyramid levels its loss mode needs (P5 for mode a).

Transfer: backbone, FPN and the box-head convs (:meth:`MCL.export_parts`); ``sslkit export`` writes
detectron2's ``fpn_lateral*``/``fpn_output*``/``box_head.conv*`` and ``sslkit detect`` loads them.
"""

from __future__ import annotations

import torch
from torch import nn

from sslkit import dist
from sslkit.errors import UserError
from sslkit.methods.base import Method
from sslkit.methods.mcl_loss import LOSS_MODES, TEMPERATURE, mcl_loss, needed_target_levels
from sslkit.models.backbones import stage_features
from sslkit.models.ema import check_ema_settings, ema_momentum, ema_update, frozen_copy
from sslkit.models.fpn import build_neck
from sslkit.models.heads import box_head_convs, mcl_predictor, mcl_projector
from sslkit.transforms import tune_views
from sslkit.views.mcl import (
    DOWNSAMPLE_MODES,
    MAX_LEVELS,
    MONTAGE_FRACTIONS,
    MCLViews,
    level_weights,
    mcl_collate,
    mcl_view_augs,
    montage_counts,
    montage_views,
    parse_fractions,
    windows,
)
from sslkit.views.mcl_stage import MCLMontageStage
from sslkit.views.plan.mcl import MCLPlan

#: the networks EMA'd into the target, online prefix → target prefix
_PAIRS = {"backbone": "target_backbone", "fpn": "target_fpn", "box_head": "target_box_head",
          "projector": "target_projector"}


class MCL(Method):
    name = "mcl"
    summary = "MCL: montages of 4 scales, FPN + box-head windows, multi-level InfoNCE (LARS 1.0×B/256, EMA 0.99)"
    default_encoder = "online"
    view_stage = MCLMontageStage
    collate = staticmethod(mcl_collate)
    DEFAULTS = {
        # §4.1 + MCL.py [C]: LARS (η 1e-3, BN/bias excluded), lr 1.0 × B/256, wd 1e-5, batch 4096 (32 × 128),
        # 100 ImageNet epochs (COCO: 530), 10 warm-up epochs from 1e-4, cosine to min_lr 1e-4, SyncBN,
        # grad-clip 500 (code only), EMA 0.99 → 1 cosine per iteration
        "arch": "resnet50",
        "image_size": 224,
        "batch_size": 4096,
        "epochs": 100,
        "optimizer": "lars",
        "lr": 1.0,
        "lr_scaling": "linear",
        "weight_decay": 1e-5,
        "optim_momentum": 0.9,
        "lars_eta": 1e-3,
        "warmup_epochs": 10.0,
        "warmup_start_factor": 1e-4,
        "min_lr": 1e-4,
        "sync_bn": True,
        "grad_clip": 500.0,
        "ema_momentum": 0.99,
        "ema_schedule": "cosine",
        # montages [C]: 4 levels (ratios 1, 2, 4, 8 → P5..P2), B·(1, 1/4, 1/16, 1/32) montages, nearest
        "levels": MAX_LEVELS,
        "montage_fractions": MONTAGE_FRACTIONS,
        "downsample": "nearest",
        # loss [C]: T = 1 (2T factor), weights 1/2, 1/4, 1/8, 1/8; mode a [P]
        "temperature": TEMPERATURE,
        "level_weights": "auto",
        "loss_mode": "a",
        # network [C]: FPN 256 with BN, 4-conv BN head, projector 256→2048→256 (+BN affine=False),
        # 4 predictors 256→2048→256
        "neck": "fpn",
        "fpn_dim": 256,
        "head_convs": 4,
        "head_windows": "matched",
        "proj_hidden_dim": 2048,
        "proj_dim": 256,
        "pred_hidden_dim": 2048,
    }
    HELP = {
        "ema_momentum": "target EMA momentum at step 0 (cosine to 1)",
        "ema_schedule": "cosine or constant",
        "levels": "montage levels L (1-4): ratios 1, 2, 4, 8 on P5, P4, P3, P2 (Table 10a: 3 vs 4)",
        "montage_fractions": "montages per level as fractions of the batch per rank (the batch must make each "
                             "a whole number)",
        "downsample": "tile downsampling: nearest (the code's), area or bilinear (antialiased)",
        "temperature": "InfoNCE temperature T (the loss is scaled by 2T)",
        "level_weights": "loss weight per level: auto (1/2, 1/4, ..., last two equal) or a comma list",
        "loss_mode": "a: every level targets level 0 of the other view; b: the same level; c: the level above; "
                     "d: every level (Fig. 3)",
        "neck": "fpn (P2-P5 with BN) or linear (the non-FPN variant: C5 → 1x1 conv, upsampled)",
        "fpn_dim": "FPN / box-head width",
        "head_convs": "convs in the box-head tower (the detector's box head has 4)",
        "head_windows": "matched: the head sees the windows that enter the loss; all: every window of every "
                        "level of all montages (the authors' code; ~23x the head compute)",
        "proj_hidden_dim": "projector hidden width",
        "proj_dim": "projection (and prediction) dimension",
        "pred_hidden_dim": "predictor hidden width",
    }

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.levels = cfg["levels"]
        self.fractions = parse_fractions(cfg["montage_fractions"], self.levels)
        self.weights = level_weights(cfg["level_weights"], self.levels)
        self.tau = cfg["temperature"]
        self.mode = cfg["loss_mode"]
        self.downsample = cfg["downsample"]
        self.all_windows = cfg["head_windows"] == "all"
        self.has_fpn = cfg["neck"] == "fpn"
        dim = cfg["fpn_dim"]
        self.fpn = build_neck(cfg["neck"], self.backbone.stage_dims[1:], dim)
        self.box_head = box_head_convs(dim, cfg["head_convs"])
        self.projector = mcl_projector(dim, cfg["proj_hidden_dim"], cfg["proj_dim"])
        self.predictors = nn.ModuleList(mcl_predictor(cfg["proj_dim"], cfg["pred_hidden_dim"])
                                        for _ in range(self.levels))
        for online, target in _PAIRS.items():
            setattr(self, target, frozen_copy(getattr(self, online)))
        self.ema_base = cfg["ema_momentum"]
        self.ema_schedule = cfg["ema_schedule"]
        self.momentum = self.ema_base

    # -- contract --------------------------------------------------------------------------------
    def encoders(self) -> dict[str, str]:
        return {"online": "backbone.", "target": "target_backbone."}

    def export_parts(self) -> dict[str, dict[str, str]]:
        fpn = {"fpn": "fpn."} if self.has_fpn else {}  # FPNLinear is no detector FPN
        tfpn = {"fpn": "target_fpn."} if self.has_fpn else {}
        return {"online": {**fpn, "head": "box_head."}, "target": {**tfpn, "head": "target_box_head."}}

    def on_after_step(self, step: int, total_steps: int) -> dict[str, float]:
        self.momentum = ema_momentum(self.ema_schedule, step, total_steps, self.ema_base)
        for online, target in _PAIRS.items():
            ema_update(getattr(self, target), getattr(self, online), self.momentum)
        return {"momentum": self.momentum}

    def ema_state(self) -> dict:
        return {"momentum": self.momentum, "base_momentum": self.ema_base, "schedule": self.ema_schedule,
                "pairs": {f"{t}.": f"{o}." for o, t in _PAIRS.items()}}

    @classmethod
    def make_transform(cls, cfg: dict):
        return MCLViews(tune_views(mcl_view_augs(cfg["image_size"]), cfg["blur_reference_size"], cfg["view_aug"]),
                        cfg["levels"])

    @classmethod
    def make_plan_dataset(cls, cfg: dict, source, mode: str):
        views = cls.make_transform(cfg)
        return MCLPlan(source, views.views, views.levels, cfg["seed"], mode)

    @classmethod
    def validate(cls, cfg: dict) -> None:
        check_ema_settings(cfg)
        if not 1 <= cfg["levels"] <= MAX_LEVELS:
            raise UserError(f"levels must be 1..{MAX_LEVELS} (got {cfg['levels']})", None,
                            "ratios 1, 2, 4, 8 use P5, P4, P3, P2")
        if cfg["image_size"] % 32:
            raise UserError(f"MCL needs an image_size that is a multiple of 32 (got {cfg['image_size']})", None,
                            "every tile must cover whole windows of side image_size/32 (224: 7, 64: 2)")
        choices = {"loss_mode": LOSS_MODES, "neck": ("fpn", "linear"), "head_windows": ("matched", "all"),
                   "downsample": DOWNSAMPLE_MODES}
        for key, allowed in choices.items():
            if cfg[key] not in allowed:
                raise UserError(f"{key} must be one of {', '.join(allowed)} (got {cfg[key]!r})")
        for key in ("fpn_dim", "head_convs", "proj_hidden_dim", "proj_dim", "pred_hidden_dim"):
            if cfg[key] < 1:
                raise UserError(f"{key} must be at least 1 (got {cfg[key]})")
        if cfg["temperature"] <= 0:
            raise UserError(f"temperature must be > 0 (got {cfg['temperature']})")
        per_rank = cfg["batch_size"] // max(1, cfg["world_size"])
        try:
            montage_counts(per_rank, parse_fractions(cfg["montage_fractions"], cfg["levels"]))
            level_weights(cfg["level_weights"], cfg["levels"])
        except ValueError as e:
            raise UserError(str(e), None, "set --batch-size to a multiple of it times the number of ranks"
                            if "multiple" in str(e) else "see sslkit pretrain -m mcl --print-config") from None

    # -- model -----------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor, counts: list[int], levels: list[int], target: bool) -> dict[int, torch.Tensor]:
        """Projections (n_s, D) of the level-s tiles of montage batch ``x`` for each of ``levels``, by the
        online or the target network. Pyramid level of montage level s: index 3 − s of [P2..P5]."""
        pre = "target_" if target else ""
        backbone, fpn, head, proj = (getattr(self, pre + n) for n in ("backbone", "fpn", "box_head", "projector"))
        feats = stage_features(backbone, x)[1:]
        wanted = levels if target or self.levels == MAX_LEVELS else range(MAX_LEVELS)
        pyramid = fpn(feats, levels=[MAX_LEVELS - 1 - s for s in wanted])
        starts = [sum(counts[:s]) for s in range(len(counts))]
        out = {}
        for s in levels:
            p, ratio = pyramid[MAX_LEVELS - 1 - s], 2 ** s
            rows = slice(starts[s], starts[s] + counts[s])
            z = head(windows(p if self.all_windows else p[rows], ratio)).mean((2, 3))
            z = proj(z)
            if self.all_windows:  # the code's head over every montage; keep the matched (level, montage) pairs
                z = z.reshape(p.shape[0], ratio * ratio, -1)[rows].reshape(-1, z.shape[-1])
            out[s] = z
        if not target and self.levels < MAX_LEVELS:  # unused pyramid outputs join with weight 0 (DDP: every
            used = {MAX_LEVELS - 1 - s for s in levels}  # parameter takes part in the loss)
            out[0] = out[0] + sum(0.0 * p.float().mean() for i, p in enumerate(pyramid) if i not in used and p is not None)
        return out

    def forward_train(self, batch) -> dict[str, torch.Tensor]:
        views, seed = batch  # (B, 2L, 3, S, S), the batch seed (mcl_collate)
        b = views.shape[0]
        counts = montage_counts(b, self.fractions)
        (qx, qsrc), (kx, ksrc) = montage_views(views, seed, counts, self.downsample)
        if self.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last):
            qx, kx = (x.contiguous(memory_format=torch.channels_last) for x in (qx, kx))
        every = list(range(self.levels))
        q = self.embed(qx, counts, every, target=False)
        k = self.embed(kx, counts, every, target=False)
        q_on = [self.predictors[s](q[s]) for s in every]
        k_on = [self.predictors[s](k[s]) for s in every]
        need = needed_target_levels(self.mode, self.levels)
        with torch.no_grad():
            qt = self.embed(qx, counts, need, target=True)
            kt = self.embed(kx, counts, need, target=True)
        loss, stats = mcl_loss(q_on, qsrc, k_on, ksrc, qt, {t: qsrc[t] for t in need}, kt, {t: ksrc[t] for t in need},
                               weights=self.weights, tau=self.tau, mode=self.mode, batch=b, rank=dist.rank(),
                               gather=dist.all_gather)
        return {"loss": loss, **stats}
