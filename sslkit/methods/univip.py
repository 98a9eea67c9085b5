"""UniVIP (Li et al., "UniVIP: A Unified Framework for Self-Supervised Visual Pre-training", CVPR 2022;
../shared/papers/univip.txt, spec ../shared/specs/univip.md).

BYOL (§3.1) with object priors from selective search, on views sampled by
:mod:`sslkit.views.univip`: two scene views whose overlap holds K instances, and the K instances
cropped at 96 px. Three equally weighted terms (Eq. 12):

* scene–scene (Eq. 3): symmetric BYOL between the scene views;
* scene–instance (Eq. 4–6): the K online instance outputs concatenated, mapped by ``f_linear`` to
  the embedding dimension, pulled toward the target embeddings of *both* scene views;
* instance–instance (Eq. 7–11): optimal transport between the K online and K target instance
  embeddings, cost 1 − cos (Eq. 8), marginals from each instance's agreement with the other
  branch's scene embeddings (Eq. 9–10, raw dot products as printed; ``ot_marginals``), solved by
  log-domain Sinkhorn–Knopp (following OTA), the loss the plan-weighted cosine.

Every term uses BYOL's ``2 − 2·cos`` form (spec §2.4 [I]: twice the paper's −cos plus a constant,
so the 1:1:1 weights hold and ORL's lr, which UniVIP adopts, applies). The network is BYOL's:
online backbone → projector → predictor, EMA target backbone → projector, one predictor for scenes
and instances (spec §6.7 [I]). ``num_instances = 0`` is BYOL on overlapping scene views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslkit.errors import UserError
from sslkit.methods.byol import BYOL, byol_loss
from sslkit.methods.numerics import fp32_loss
from sslkit.ops.sinkhorn import MARGINAL_FLOOR, OT_EPS, OT_ITERS, normalize_marginal, sinkhorn_log  # noqa: F401
from sslkit.proposals.filters import ORL_DEFAULTS, BoxFilter
from sslkit.views.candidates import SEGMENT_KEYS, CandidateBoxes, SegmentRule
from sslkit.views.plan.univip import UniVIPPlan
from sslkit.views.univip import PairSampler, UniVIPDataset, UniVIPViews
from sslkit.views.univip_stage import UniVIPCandidatesStage

#: the vectors of Eq. 9–10: ``raw`` dot products as the paper writes them [P], or ``normalized``
#: (L2-normalised vectors, cosines; the digest's [I] recommendation, spec §6.8); docs/univip.md says why raw
OT_MARGINALS = ("raw", "normalized")


@fp32_loss
def ot_marginals(o: torch.Tensor, t: torch.Tensor, f_o: tuple[torch.Tensor, torch.Tensor],
                 f_t: tuple[torch.Tensor, torch.Tensor], mode: str = "raw") -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9–10, without gradient, in float32 with autocast off.

    ``o``/``t`` (B, K, D): online / target instance embeddings; ``f_o`` the online predictions and
    ``f_t`` the target projections of the two scene views, each (B, D). Returns
    ``b_m = max(o_m · (f_t1 + f_t2)/2, 0)`` (online suppliers) and
    ``a_n = max(t_n · (f_o1 + f_o2)/2, 0)`` (target demanders), each (B, K), not yet normalised.
    ``mode="raw"`` uses the vectors as they are (the paper's equations); ``"normalized"`` L2-normalises
    every vector first (spec §6.8 [I]), so each weight is the cosine with the mean scene direction and an
    instance's embedding norm no longer scales its mass.
    """
    if mode not in OT_MARGINALS:
        raise ValueError(f"mode must be one of {OT_MARGINALS} (got {mode!r})")
    with torch.no_grad():
        def vec(x):
            x = x.detach()
            return F.normalize(x, dim=-1) if mode == "normalized" else x

        scene_t = (vec(f_t[0]) + vec(f_t[1])) / 2
        scene_o = (vec(f_o[0]) + vec(f_o[1])) / 2
        b = torch.einsum("bkd,bd->bk", vec(o), scene_t).clamp_min(0)
        a = torch.einsum("bkd,bd->bk", vec(t), scene_o).clamp_min(0)
    return b, a


@fp32_loss
def instance_loss(o: torch.Tensor, t: torch.Tensor, f_o: tuple[torch.Tensor, torch.Tensor],
                  f_t: tuple[torch.Tensor, torch.Tensor], eps: float = OT_EPS,
                  iters: int = OT_ITERS, marginals: str = "raw") -> tuple[torch.Tensor, torch.Tensor]:
    """L_instance (Eq. 11) in the ``2 − 2·cos`` form: the batch mean of ``2·Σ_mn Y*_mn (1 − cos(o_m, t_n))``.

    ``Y*`` = :func:`sinkhorn_log` of cost ``1 − cos`` (Eq. 8) with row marginals ``b`` (online) and
    column marginals ``a`` (target) from :func:`ot_marginals` (``marginals``: its ``mode``); plan and
    marginals carry no gradient, which flows through ``cos(o_m, t_n)`` into the online instance branch
    only (``t`` is detached). Since ``ΣY* = 1`` this is ``2 − 2·Σ Y* cos`` = 2 × Eq. 11 + 2. Float32
    with autocast off. Returns (loss, plan (B, K, K)).
    """
    cos = F.normalize(o, dim=-1) @ F.normalize(t.detach(), dim=-1).transpose(-1, -2)
    b, a = ot_marginals(o, t, f_o, f_t, marginals)
    plan = sinkhorn_log(1.0 - cos, b, a, eps, iters)
    return (2.0 * (plan * (1.0 - cos)).sum((-2, -1))).mean(), plan


class UniVIP(BYOL):
    name = "univip"
    PATH_KEYS = ("views",)
    default_encoder = "online"
    DEFAULTS = {
        # §4 "Optimization": "for COCO(+) we fully follow the setting of ORL" — BYOL's/ORL's recipe:
        # SGD 0.2×B/256, wd 1e-4, batch 512, 800 epochs, 4 warm-up epochs, EMA 0.99 → 1 (cosine)
        **BYOL.DEFAULTS,
        "views": "",
        "candidate_field": "boxes",
        # the candidate filter applied on the fly to raw selective-search boxes [ORL values, spec §2.1]
        "filter_min_size": ORL_DEFAULTS["min_size"],
        "filter_max_ratio": ORL_DEFAULTS["max_ratio"],
        "filter_max_iou": ORL_DEFAULTS["max_iou"],
        "filter_top_n": ORL_DEFAULTS["top_n"],
        # a label-map file as candidates: each segment's bounding box, largest segments first (docs/swap.md) [I]
        "segment_fields": SEGMENT_KEYS["segment_fields"].default,
        "segment_order": SEGMENT_KEYS["segment_order"].default,
        "num_instances": 4,  # K, §3.2 / Table 8(c)
        "instance_size": 96,  # §3.3
        "scene_overlap": True,  # Table 8(a)
        "naive_only": False,  # Table 8(b) "naive"
        "naive_min_size": 64,  # §3.2 naive strategy
        "naive_max_ratio": 3.0,
        "naive_max_iou": 0.5,
        "overlap_tries": 50,  # spec §2.2 [I]
        "scene_weight": 1.0,  # Eq. 12: equal weights; Table 7 ablations
        "scene_instance_weight": 1.0,
        "instance_weight": 1.0,
        "ot_eps": OT_EPS,
        "ot_iters": OT_ITERS,
        "ot_marginals": "raw",  # Eq. 9–10 as printed [P]; the digest's normalised variant is [I]
    }
    view_stage = UniVIPCandidatesStage  # the candidate boxes, once per dataset (sslkit sample-views -m univip)
    HELP = {
        **BYOL.HELP,
        "views": "candidate boxes: a univip-candidates file (sslkit sample-views --method univip) or a "
                 "proposals file (sslkit propose): boxes, or label maps whose segments' boxes are the candidates",
        "candidate_field": "box field of --views: boxes (raw selective search of a proposals file, filtered "
                           "on the fly with filter_*; a candidates file's only field) or e.g. boxes_filtered",
        "filter_min_size": "on-the-fly filter of raw proposals: min box side (px, original image; 0: off)",
        "filter_max_ratio": "on-the-fly filter: max aspect ratio (0: off)",
        "filter_max_iou": "on-the-fly filter: greedy IoU bound in selective-search order (1: off)",
        "filter_top_n": "on-the-fly filter: keep the first N survivors (0: all)",
        "segment_fields": SEGMENT_KEYS["segment_fields"].help,
        "segment_order": SEGMENT_KEYS["segment_order"].help,
        "num_instances": "K instances in the scene overlap (0: BYOL on overlapping views)",
        "instance_size": "side of the instance crops (px)",
        "scene_overlap": "scene views overlap around the K instances (false: independent crops, Table 8a)",
        "naive_only": "ignore the candidates: all K boxes from the naive generator (Table 8b)",
        "naive_min_size": "naive boxes: min side (px)",
        "naive_max_ratio": "naive boxes: max aspect ratio",
        "naive_max_iou": "naive boxes: max IoU with the boxes already chosen",
        "overlap_tries": "scene-pair draws per image before keeping the best attempt",
        "scene_weight": "weight of L_scene (Eq. 3)",
        "scene_instance_weight": "weight of L_scene-instance (Eq. 6)",
        "instance_weight": "weight of L_instance, the optimal-transport term (Eq. 11)",
        "ot_eps": "Sinkhorn entropic regulariser ε",
        "ot_iters": "Sinkhorn iterations",
        "ot_marginals": "OT marginals (Eq. 9–10): raw dot products (paper) or normalized (cosines)",
    }

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        k = cfg["num_instances"]
        self.scene_weight = cfg["scene_weight"]
        self.scene_instance_weight = cfg["scene_instance_weight"] if k else 0.0
        self.instance_weight = cfg["instance_weight"] if k else 0.0
        self.ot_eps, self.ot_iters, self.ot_marginals = cfg["ot_eps"], cfg["ot_iters"], cfg["ot_marginals"]
        if self.scene_instance_weight:
            # Eq. 4: f_linear maps concat(o_1..o_K) (K·d) to the scene embedding dimension d; online only
            self.f_linear = nn.Linear(k * cfg["proj_dim"], cfg["proj_dim"])

    @staticmethod
    def uses_instances(cfg: dict) -> bool:
        """Whether any loss term needs the instance crops."""
        return cfg["num_instances"] > 0 and (cfg["scene_instance_weight"] > 0 or cfg["instance_weight"] > 0)

    @classmethod
    def make_transform(cls, cfg: dict):
        sampler = PairSampler(k=cfg["num_instances"], tries=cfg["overlap_tries"], naive_min_size=cfg["naive_min_size"],
                              naive_max_ratio=cfg["naive_max_ratio"], naive_max_iou=cfg["naive_max_iou"],
                              overlap=cfg["scene_overlap"], naive_only=cfg["naive_only"])
        return UniVIPViews(sampler, cfg["image_size"], cfg["instance_size"], cls.uses_instances(cfg),
                           cfg["blur_reference_size"], cfg["view_aug"])

    @staticmethod
    def needs_candidates(cfg: dict) -> bool:
        return cfg["num_instances"] > 0 and not cfg["naive_only"]

    @staticmethod
    def candidates(cfg: dict):
        """The candidate boxes of ``cfg["views"]`` as this run reads them
        (:class:`sslkit.views.candidates.CandidateBoxes`)."""

        filt = BoxFilter(cfg["filter_min_size"], cfg["filter_max_ratio"], cfg["filter_max_iou"],
                         cfg["filter_top_n"], fallback=False)
        return CandidateBoxes.open(cfg["views"], filt, field=cfg["candidate_field"], accept_views=True,
                                   segments=SegmentRule.from_settings(cfg))

    @classmethod
    def candidate_store(cls, cfg: dict):
        """The candidate boxes (None when no term needs them)."""
        return cls.candidates(cfg) if cls.needs_candidates(cfg) else None

    @classmethod
    def make_dataset(cls, cfg: dict, source):
        return UniVIPDataset(source, cls.candidate_store(cfg), cls.make_transform(cfg), cfg["seed"])

    @classmethod
    def make_plan_dataset(cls, cfg: dict, source, mode: str):
        views = cls.make_transform(cfg)
        return UniVIPPlan(source, cls.candidate_store(cfg), views.sampler, cfg["seed"], mode, cfg["image_size"],
                          cfg["instance_size"], views.instances, cfg["blur_reference_size"], cfg["view_aug"])

    @classmethod
    def validate(cls, cfg: dict) -> None:
        super().validate(cfg)
        if cls.needs_candidates(cfg) and not cfg["views"]:
            raise UserError("univip needs candidate boxes", None,
                            "pass --views candidates.h5 (sslkit sample-views IMAGES --method univip --proposals "
                            "props.h5) or a proposals file from sslkit propose")
        if cfg["num_instances"] < 0:
            raise UserError(f"num_instances must be >= 0 (got {cfg['num_instances']})")
        if cfg["instance_size"] < 32:
            raise UserError(f"instance_size {cfg['instance_size']} is too small for a ResNet (minimum 32)")
        weights = ("scene_weight", "scene_instance_weight", "instance_weight")
        if any(cfg[w] < 0 for w in weights):
            raise UserError("loss weights must be >= 0")
        if cfg["scene_weight"] == 0 and not cls.uses_instances(cfg):
            raise UserError("every loss term is off", None, "set scene_weight > 0, or num_instances > 0 with an "
                            "instance term")
        if cfg["naive_min_size"] < 1 or cfg["naive_max_ratio"] < 1 or not 0 <= cfg["naive_max_iou"] <= 1:
            raise UserError("naive boxes need naive_min_size >= 1, naive_max_ratio >= 1, 0 <= naive_max_iou <= 1")
        if cfg["filter_min_size"] < 0 or cfg["filter_max_ratio"] < 0 or cfg["filter_top_n"] < 0 or \
                not 0 <= cfg["filter_max_iou"] <= 1:
            raise UserError("filter_min_size, filter_max_ratio, filter_top_n must be >= 0 and filter_max_iou in [0, 1]")
        if cfg["overlap_tries"] < 1:
            raise UserError(f"overlap_tries must be >= 1 (got {cfg['overlap_tries']})")
        if cfg["ot_eps"] <= 0 or cfg["ot_iters"] < 1:
            raise UserError("Sinkhorn needs ot_eps > 0 and ot_iters >= 1")
        if cfg["ot_marginals"] not in OT_MARGINALS:
            raise UserError(f"ot_marginals must be raw or normalized (got {cfg['ot_marginals']!r})")
        if cls.needs_candidates(cfg):
            cls.candidates(cfg).close()  # the file, its fields and the segment settings, checked before training

    def forward_train(self, batch) -> dict[str, torch.Tensor]:
        s1, s2, inst_a, inst_b, stats = batch
        # without the scene term the scene predictions only feed the (gradient-free) OT marginals
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.scene_weight > 0):
            p1 = self.predictor(self.projector(self.backbone(s1)))
            p2 = self.predictor(self.projector(self.backbone(s2)))
        with torch.no_grad():
            z1 = self.target_projector(self.target_backbone(s1))
            z2 = self.target_projector(self.target_backbone(s2))
        out: dict[str, torch.Tensor] = {}
        loss = torch.zeros((), device=s1.device)
        if self.scene_weight:
            out["loss_scene"] = byol_loss(p1, z2) + byol_loss(p2, z1)  # Eq. 3
            loss = loss + self.scene_weight * out["loss_scene"]
        if self.scene_instance_weight or self.instance_weight:
            b, k = inst_a.shape[:2]
            # the engine makes 4-D inputs channels_last when asked; the (B, K, …) instances follow s1
            fmt = torch.channels_last if s1.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
            inst_a, inst_b = (x.flatten(0, 1).contiguous(memory_format=fmt) for x in (inst_a, inst_b))
            o = self.predictor(self.projector(self.backbone(inst_a))).view(b, k, -1)
            if self.scene_instance_weight:
                inst = self.f_linear(o.flatten(1))  # Eq. 4
                out["loss_scene_instance"] = byol_loss(inst, z1) + byol_loss(inst, z2)  # Eq. 5–6
                loss = loss + self.scene_instance_weight * out["loss_scene_instance"]
            if self.instance_weight:
                with torch.no_grad():
                    t = self.target_projector(self.target_backbone(inst_b)).view(b, k, -1)
                out["loss_instance"], _ = instance_loss(o, t, (p1, p2), (z1, z2), self.ot_eps, self.ot_iters,
                                                          self.ot_marginals)
                loss = loss + self.instance_weight * out["loss_instance"]
        n_boxes = stats[:, :2].sum()
        out = {"loss": loss, **{k: v.detach() for k, v in out.items()},
               "naive_fraction": stats[:, 1].sum() / n_boxes.clamp_min(1),
               "naive_forced": stats[:, 2].sum() / n_boxes.clamp_min(1),
               "whole_image": stats[:, 3].mean()}
        return out
