"""DetCon-S and DetCon-B (Hénaff et al., "Efficient Visual Pretraining with Contrastive Detection",
ICCV 2021; ../shared/papers/detcon.txt, spec ../shared/specs/detcon.md).

Both change only the objective of their image-level parent (§3.1): the backbone's final feature
map (7×7 at 224 px) is average-pooled inside each of 16 sampled masks per view, the pooled
vectors are projected (and predicted, for -B), and the contrastive detection loss pulls together
the same segment across the two views against every other mask of both views of every image in
the global batch (τ = 0.1).

* DetCon-S: SimCLR architecture, one network for both views, projector 2048→2048→128 with BN
  (spec §2.4, §6.7), gradient through both views.
* DetCon-B: BYOL architecture, online backbone+projector+predictor and an EMA target
  (backbone+projector, λ cosine-annealed from λ₀ to 1); both networks see both views and the loss
  is symmetrised (spec §2.4). The loss is contrastive, not BYOL's MSE.

Masks come from an ``sslkit propose`` artefact (``--masks``): Felzenszwalb–Huttenlocher, a spatial
grid, or COCO ground truth; every label-map field in it is used (spec §6.2, "union"). A file of boxes
(selective search, a user's own) is painted into label maps per image (``box_order``, ``filter_*``;
docs/swap.md).
"""

from __future__ import annotations

import abc
from dataclasses import replace

import torch

from sslkit import dist
from sslkit.errors import UserError
from sslkit.methods.base import Method
from sslkit.methods.byol import OnlineTarget
from sslkit.methods.detcon_ops import TEMPERATURE, detcon_loss
from sslkit.models.backbones import res5
from sslkit.models.heads import simclr_projector
from sslkit.ops.masks import NUM_MASKS, mask_pool, mask_weights
from sslkit.ops.regions import BOX_ORDERS
from sslkit.proposals.filters import ORL_DEFAULTS, BoxFilter
from sslkit.transforms import ViewAug, byol_views, tune_views
from sslkit.views.detcon import BoxMasks, DetConDataset, DetConViews, MaskStore
from sslkit.views.plan.detcon import DetConPlan

#: keys shared by both variants
_COMMON_DEFAULTS = {
    "image_size": 224,  # §3.1: "images are resized to 224×224"
    "batch_size": 4096,  # §4 / appendix A.3: 4096 over 128 TPU workers
    "optimizer": "lars",  # appendix: LARS (η = 1e-3), bias and BN excluded [C]
    "lars_lr_placement": "outside",  # optax lars: momentum, then optax.scale(-lr) [C] (-S: same code base [I])
    "lr_scaling": "linear",
    "optim_momentum": 0.9,
    "warmup_start_factor": 0.0,  # linear warm-up from lr 0 [C] (schedules.learning_schedule)
    "sync_bn": True,  # cross-replica BN [C]
    "masks": "",
    "mask_fields": "all",
    "num_masks": NUM_MASKS,  # §3.1: 16 (possibly redundant) masks per view
    "temperature": TEMPERATURE,  # §3.1: τ = 0.1
    "mask_pool": "hard",  # official code: one owner segment per cell (spec §2.3.2)
    "negatives": "global",  # Table 5: negatives gathered from all workers
    "local_negatives": True,  # other masks of the same image are negatives (code default)
    # a boxes file as masks (docs/swap.md) [I]: DetCon never rasterises boxes. The filter is ORL's candidate
    # filter with its values and fallback (spec orl.md §2.3 (iv)), so DetCon paints the boxes ORL starts from
    "box_order": "large-first",  # larger boxes painted first, smaller on top: nested boxes stay visible
    "filter_min_size": ORL_DEFAULTS["min_size"],
    "filter_max_ratio": ORL_DEFAULTS["max_ratio"],
    "filter_max_iou": ORL_DEFAULTS["max_iou"],
    "filter_top_n": ORL_DEFAULTS["top_n"],
}
_COMMON_HELP = {
    "masks": "region file: label maps (propose --algo felzenszwalb|grid|coco-gt) or boxes (propose, a user's "
             "own; painted into label maps)",
    "mask_fields": "fields to use: 'all' (every label map; a boxes file: its boxes) or a comma list of label-map "
                   "and box fields (their union)",
    "box_order": "boxes as masks: which box is on top where boxes overlap: large-first (smaller boxes on top), "
                 "small-first, or rank (the file's first box on top)",
    "filter_min_size": "boxes as masks: drop raw boxes with a side < this (px, original image; 0: off)",
    "filter_max_ratio": "boxes as masks: drop raw boxes with w/h or h/w > this (0: off)",
    "filter_max_iou": "boxes as masks: greedy IoU bound in the file's order (1: off)",
    "filter_top_n": "boxes as masks: keep the first N survivors (0: all)",
    "num_masks": "masks sampled per view and image",
    "temperature": "τ of the contrastive detection loss",
    "mask_pool": "hard (majority owner per feature cell, official code) or soft (average-pooled masks, paper)",
    "negatives": "global (gathered across ranks) or local (this rank's images only)",
    "local_negatives": "use the other masks of the same image as negatives",
}


class _DetCon(Method):
    """What DetCon-S and -B share: views with tracked masks, mask pooling, the loss."""

    default_encoder = "online"
    PATH_KEYS = ("masks",)

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.tau = cfg["temperature"]
        self.soft = cfg["mask_pool"] == "soft"
        self.global_negatives = cfg["negatives"] == "global"
        self.local_negatives = cfg["local_negatives"]

    # -- data ------------------------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def view_augs(cls, size: int) -> tuple[ViewAug, ViewAug]:
        """The two views' augmentation recipes (appendix table, DetCon_S or DetCon_B columns)."""

    @classmethod
    def make_transform(cls, cfg: dict):
        views = tune_views(cls.view_augs(cfg["image_size"]), cfg["blur_reference_size"], cfg["view_aug"])
        return DetConViews(views, cfg["num_masks"], keep_labels=cfg["mask_pool"] == "soft")

    @staticmethod
    def box_masks(cfg: dict):
        """How a boxes file becomes masks (:class:`sslkit.views.detcon.BoxMasks`) under ``cfg``."""

        filt = BoxFilter.from_settings({k: cfg[f"filter_{k}"] for k in ORL_DEFAULTS}, fallback=True)
        return BoxMasks(filt, cfg["box_order"])

    @classmethod
    def mask_store(cls, cfg: dict):
        """The masks of ``cfg["masks"]`` as this run reads them (:class:`sslkit.views.detcon.MaskStore`)."""

        return MaskStore(cfg["masks"], cfg["mask_fields"], cls.box_masks(cfg))

    @classmethod
    def make_dataset(cls, cfg: dict, source):
        return DetConDataset(source, cls.mask_store(cfg), cls.make_transform(cfg), cfg["seed"])

    @classmethod
    def make_plan_dataset(cls, cfg: dict, source, mode: str):
        t = cls.make_transform(cfg)
        return DetConPlan(source, cls.mask_store(cfg), t.views, t.num_masks, t.keep_labels, cfg["seed"], mode)

    @classmethod
    def validate(cls, cfg: dict) -> None:
        if not cfg["masks"]:
            raise UserError(f"{cls.name} needs masks", None,
                            "make them with `sslkit propose IMAGES --algo felzenszwalb -o masks.h5` "
                            "and pass --masks masks.h5")
        if cfg["mask_pool"] not in ("hard", "soft"):
            raise UserError(f"mask_pool must be hard or soft (got {cfg['mask_pool']!r})")
        if cfg["negatives"] not in ("global", "local"):
            raise UserError(f"negatives must be global or local (got {cfg['negatives']!r})")
        if cfg["num_masks"] < 1:
            raise UserError(f"num_masks must be at least 1 (got {cfg['num_masks']})")
        if cfg["box_order"] not in BOX_ORDERS:
            raise UserError(f"box_order must be one of {', '.join(BOX_ORDERS)} (got {cfg['box_order']!r})")
        cls.mask_store(cfg)  # the file, its fields and the filter values, checked before anything starts

    # -- model -----------------------------------------------------------------------------------
    def pooled(self, backbone, x, owners, ids, labels=None) -> torch.Tensor:
        """(B, K, D) mask-pooled final features of view ``x`` for the sampled ``ids``."""
        feat = res5(backbone, x)
        if labels is not None:
            w = torch.stack([mask_weights(ids, labels=labels[:, s], grid=feat.shape[-2:])
                             for s in range(labels.shape[1])]).sum(0)
        else:
            w = (owners[:, :, None] == ids[:, None, :, None, None]).any(1).float()
        return mask_pool(feat.float(), w)

    def project(self, head, pooled: torch.Tensor) -> torch.Tensor:
        b, k, d = pooled.shape
        return head(pooled.reshape(b * k, d)).reshape(b, k, -1)

    def loss(self, q1, q2, t1, t2, ids1, ids2, gather) -> torch.Tensor:
        return detcon_loss(q1, q2, t1, t2, ids1, ids2, tau=self.tau, rank=dist.rank() if self.global_negatives else 0,
                           gather=gather if self.global_negatives else None, local_negatives=self.local_negatives)

    @staticmethod
    def _unpack(batch):
        v1, v2, o1, o2, i1, i2, *maps = batch
        return v1, v2, o1, o2, i1, i2, (maps[0] if maps else None), (maps[1] if maps else None)

    @staticmethod
    def _stats(o1, o2, i1, i2) -> dict[str, torch.Tensor]:
        paired = (i1[:, :, None] == i2[:, None, :]).any(-1).float().mean()
        segs = torch.tensor([float(torch.unique(o).numel()) for o in o1]).mean()
        return {"paired_masks": paired.detach(), "segments_per_view": segs}


class DetConS(_DetCon):
    name = "detcon-s"
    summary = "DetCon-S: SimCLR + contrastive detection over mask-pooled features (LARS 0.3×B/256)"
    DEFAULTS = {
        **_COMMON_DEFAULTS,
        "lr": 0.3,  # SimCLR: 0.3 × B/256 (spec §3)
        "weight_decay": 1e-6,
        "epochs": 1000,
        "warmup_epochs": 10.0,  # SimCLR v1 (spec §6.7)
        "proj_hidden_dim": 2048,
        "proj_dim": 128,
    }
    HELP = {**_COMMON_HELP, "proj_hidden_dim": "projector hidden width", "proj_dim": "projection dimension"}

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.projector = simclr_projector(self.feat_dim, cfg["proj_hidden_dim"], cfg["proj_dim"])

    @classmethod
    def view_augs(cls, size: int) -> tuple[ViewAug, ViewAug]:
        # appendix table, DetCon_S columns: colour strength 0.8/0.8/0.8/0.2, blur 1.0 / 0.0, no solarize,
        # bicubic resize (spec §2.2)
        v1 = ViewAug(size=size, interpolation="bicubic", brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
                     blur_p=1.0, solarize_p=0.0)
        return v1, replace(v1, blur_p=0.0)

    def encoders(self) -> dict[str, str]:
        return {"online": "backbone."}

    def forward_train(self, batch) -> dict[str, torch.Tensor]:
        v1, v2, o1, o2, i1, i2, l1, l2 = self._unpack(batch)
        z1 = self.project(self.projector, self.pooled(self.backbone, v1, o1, i1, l1))
        z2 = self.project(self.projector, self.pooled(self.backbone, v2, o2, i2, l2))
        loss = self.loss(z1, z2, z1, z2, i1, i2, dist.all_gather_with_grad)
        return {"loss": loss, **self._stats(o1, o2, i1, i2)}


class DetConB(OnlineTarget, _DetCon):
    name = "detcon-b"
    summary = "DetCon-B: BYOL + contrastive detection over mask-pooled features (LARS 0.2×B/256, EMA 0.996)"
    DEFAULTS = {
        **_COMMON_DEFAULTS,
        "lr": 0.2,  # 1000 ep: 0.2 × B/256 (paper appendix; code default)
        "weight_decay": 1.5e-6,  # 1000 ep
        "epochs": 1000,
        "warmup_epochs": 10.0,  # ⌊epochs/100⌋ [C]
        "ema_momentum": 0.996,  # λ₀ for 1000 ep [P], code default [C]
        "ema_schedule": "cosine",
        "proj_hidden_dim": 4096,
        "proj_dim": 256,
        "pred_hidden_dim": 4096,
    }
    HELP = {**_COMMON_HELP, "ema_momentum": "target EMA momentum λ at step 0 (cosine to 1)",
            "ema_schedule": "cosine or constant", "proj_hidden_dim": "projector hidden width",
            "proj_dim": "projection dimension", "pred_hidden_dim": "predictor hidden width"}

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.build_online_target(cfg)

    @classmethod
    def view_augs(cls, size: int) -> tuple[ViewAug, ViewAug]:
        # appendix table, DetCon_B columns = BYOL's pipelines, with the paper's bicubic resize
        v1, v2 = byol_views(size)
        return replace(v1, interpolation="bicubic"), replace(v2, interpolation="bicubic")

    def forward_train(self, batch) -> dict[str, torch.Tensor]:
        v1, v2, o1, o2, i1, i2, l1, l2 = self._unpack(batch)
        q1 = self.project(self.predictor, self.project(self.projector, self.pooled(self.backbone, v1, o1, i1, l1)))
        q2 = self.project(self.predictor, self.project(self.projector, self.pooled(self.backbone, v2, o2, i2, l2)))
        with torch.no_grad():
            t1 = self.project(self.target_projector, self.pooled(self.target_backbone, v1, o1, i1, l1))
            t2 = self.project(self.target_projector, self.pooled(self.target_backbone, v2, o2, i2, l2))
        loss = self.loss(q1, q2, t1, t2, i1, i2, dist.all_gather)
        return {"loss": loss, **self._stats(o1, o2, i1, i2)}
