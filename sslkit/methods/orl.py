"""ORL stage 3: object-level BYOL (Xie et al., "Unsupervised Object-Level Representation Learning
from Scene Images", NeurIPS 2021, §3.1 "Stage 3", §3.2; spec ../shared/specs/orl.md §2.4, docs/orl.md).

BYOL (:mod:`sslkit.methods.byol`) plus two RoI losses, all of BYOL's form (ℓ = 2 − 2·cos, symmetric):
    L_ORL = L_image(v, v′) + λ_intra · L_intra-RoI(p, p′) + λ_inter · L_inter-RoI(p1, p2)      (Eq. 2)

* global views v, v′: BYOL's two 224 px pipelines (ORL §3.2 "Image augmentations");
* intra-RoI p, p′: a filtered box of the image and a spatially jittered copy of it;
* inter-RoI p1, p2: a box of the image and its corresponding box in a kNN image (stage-2 pairs);
  RoI patches are 96 × 96, cropped from the unaugmented images (:mod:`sslkit.views.orl`).

Backbone and projector are shared by the three branches, each branch has its own predictor ("the
weights of predictor are not shared", §3.2); λ = 1 for every term (§3.1). Each of the six views
is its own forward pass through the online and the target network (12 forwards; separate BN
batch statistics per branch, as the authors' code) [C]. Target = EMA of backbone + projector with
τ 0.99 → 1 (cosine), identical to stage 1 (§3.2). Stage 3 starts from random weights as the
authors' config does (``pretrained=None``) [C]; ``init_from`` starts it from a stage-1 checkpoint.

A term with weight 0 is not computed at all (its patches are not even made, and its predictor
does not exist): that is how the Table 5(a) ablations run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sslkit.console import warn
from sslkit.errors import UserError
from sslkit.methods.byol import BYOL, byol_loss
from sslkit.models.heads import byol_mlp
from sslkit.models.pretrained import checkpoint_heads
from sslkit.views.orl import ORLDataset, ORLViews
from sslkit.views.orl_pairs import OrlPairs
from sslkit.views.orl_stage2 import OrlPairsStage
from sslkit.views.plan.orl import ORLPlan


def _check_head_sizes(cfg: dict, path, projector, predictor) -> None:
    """A stage-1 projector / predictor must have this run's sizes to be loaded (``init_from``)."""
    want = {"projector": (cfg["proj_hidden_dim"], cfg["proj_dim"]), "predictor": (cfg["pred_hidden_dim"], cfg["proj_dim"])}
    for name, state in (("projector", projector), ("predictor", predictor)):
        if state is not None and (state["0.weight"].shape[0], state["3.weight"].shape[0]) != want[name]:
            got = (state["0.weight"].shape[0], state["3.weight"].shape[0])
            raise UserError(f"its {name} is hidden {got[0]} → {got[1]}, this run's {want[name][0]} → {want[name][1]}",
                            path, "use stage 1's proj_hidden_dim / proj_dim / pred_hidden_dim for init_from")


class ORL(BYOL):
    name = "orl"
    PATH_KEYS = ("views", "init_from")
    summary = "ORL stage 3: BYOL + intra-RoI + inter-RoI losses on stage-2 pairs (SGD 0.2×B/256, EMA 0.99)"
    DEFAULTS = {
        **BYOL.DEFAULTS,  # §3.2: "For pre-training in Stage 1 and Stage 3, we use the same training hyper-parameters"
        "views": "",
        "patch_size": 96,  # §3.1: "resize each patch to 96×96"
        "intra_weight": 1.0,  # λ2 (Eq. 2; "We set all loss weights to 1")
        "inter_weight": 1.0,  # λ3
        "knn_k_used": 0,  # Table 5(b) "# of NNs": use the first k neighbours of the file (0: all, K = 10)
        "pair_ratio_used": 0.0,  # Table 5(b) "# of RoI pairs": the first max(1, int(r·B_q)) of each slot (0: all)
        "init_from": "",  # [C] pretrained=None: stage 3 starts from random weights
    }
    view_stage = OrlPairsStage  # stage 2: the kNN RoI pairs (sslkit sample-views -m orl)
    HELP = {
        **BYOL.HELP,
        "views": "orl-pairs file from `sslkit sample-views --method orl` (or --views)",
        "patch_size": "side of the RoI patches (px)",
        "intra_weight": "λ of the intra-RoI loss (0: off, not computed)",
        "inter_weight": "λ of the inter-RoI loss (0: off, not computed)",
        "knn_k_used": "use only the first k neighbour slots of the views file (0: all)",
        "pair_ratio_used": "use only the best max(1, int(r·B_q)) pairs per neighbour, r ≤ the file's (0: all)",
        "init_from": "start from this checkpoint's online backbone, projector and predictor (e.g. stage1/last.pth)",
    }

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.intra_weight = cfg["intra_weight"]
        self.inter_weight = cfg["inter_weight"]
        if self.intra_weight > 0:
            self.predictor_intra = byol_mlp(cfg["proj_dim"], cfg["pred_hidden_dim"], cfg["proj_dim"])
        if self.inter_weight > 0:
            self.predictor_inter = byol_mlp(cfg["proj_dim"], cfg["pred_hidden_dim"], cfg["proj_dim"])
        if cfg["init_from"]:
            self.load_stage1(cfg["init_from"], cfg["arch"])

    # -- data ------------------------------------------------------------------------------------
    @staticmethod
    def branches(cfg: dict) -> tuple[str, ...]:
        return ("global",) + tuple(b for b in ("intra", "inter") if cfg[f"{b}_weight"] > 0)

    @classmethod
    def make_transform(cls, cfg: dict):
        return ORLViews(cfg["image_size"], cfg["patch_size"], cfg["blur_reference_size"], cfg["view_aug"])

    @classmethod
    def make_dataset(cls, cfg: dict, source):
        return ORLDataset(source, OrlPairs(cfg["views"]), cls.make_transform(cfg), cfg["seed"],
                          k_used=cfg["knn_k_used"], pair_ratio_used=cfg["pair_ratio_used"], branches=cls.branches(cfg))

    @classmethod
    def make_plan_dataset(cls, cfg: dict, source, mode: str):
        return ORLPlan(source, OrlPairs(cfg["views"]), cfg["seed"], mode, cfg["image_size"], cfg["patch_size"],
                       cfg["blur_reference_size"], cfg["view_aug"], k_used=cfg["knn_k_used"],
                       pair_ratio_used=cfg["pair_ratio_used"], branches=cls.branches(cfg))

    @classmethod
    def validate(cls, cfg: dict) -> None:
        super().validate(cfg)
        if not cfg["views"]:
            raise UserError("orl needs the stage-2 pairs", None,
                            "make them with `sslkit sample-views IMAGES --method orl --proposals props.h5 "
                            "--ckpt stage1/last.pth -o pairs.h5` and pass --views pairs.h5")
        for name in ("intra_weight", "inter_weight", "pair_ratio_used"):
            if cfg[name] < 0:
                raise UserError(f"{name} must be >= 0 (got {cfg[name]})")
        if cfg["patch_size"] < 32:
            raise UserError(f"patch_size {cfg['patch_size']} is too small for a ResNet (minimum 32)")
        if cfg["knn_k_used"] < 0:
            raise UserError(f"knn_k_used must be >= 0 (got {cfg['knn_k_used']})")

        pairs = OrlPairs(cfg["views"])
        if cfg["knn_k_used"] > pairs.k:
            raise UserError(f"knn_k_used={cfg['knn_k_used']} but the views file has K = {pairs.k} neighbours",
                            cfg["views"], "lower knn_k_used or rerun sample-views with a larger --knn")
        if cfg["pair_ratio_used"] > pairs.pair_ratio:
            raise UserError(f"pair_ratio_used={cfg['pair_ratio_used']} exceeds the file's pair ratio "
                            f"{pairs.pair_ratio}", cfg["views"], "rerun sample-views with a larger --pair-ratio")
        if cfg["init_from"]:
            if not Path(cfg["init_from"]).is_file():
                raise UserError("no such file (init_from)", cfg["init_from"])
            _, _, projector, predictor = checkpoint_heads(cfg["init_from"], arch=cfg["arch"])
            _check_head_sizes(cfg, cfg["init_from"], projector, predictor)
        st = pairs.stats()
        if st["images_without_boxes"] or st["images_without_pairs"]:
            warn(f"{cfg['views']}: {st['images_without_boxes']} of {st['images']} images have no boxes (the whole "
                 f"image is their box) and {st['images_without_pairs']} no RoI pairs (their intra pair is used); "
                 "the per-step fractions are logged as no_boxes / no_pairs")

    # -- model -----------------------------------------------------------------------------------
    def load_stage1(self, path: str, arch: str) -> None:
        """Online backbone (+ projector and global predictor when they have BYOL's layout and sizes)
        of a stage-1 checkpoint; the target network restarts as a copy of the loaded online one."""
        sd, _, projector, predictor = checkpoint_heads(path, arch=arch)
        self.backbone.load_state_dict(sd, strict=True)
        self.target_backbone.load_state_dict(sd, strict=True)
        for name, state in (("projector", projector), ("predictor", predictor)):
            if state is not None:
                getattr(self, name).load_state_dict(state, strict=True)
        self.target_projector.load_state_dict(self.projector.state_dict(), strict=True)

    def _pair_loss(self, predictor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """ℓ(a, b) + ℓ(b, a): each view its own online and target forward."""
        qa = predictor(self.projector(self.backbone(a)))
        qb = predictor(self.projector(self.backbone(b)))
        with torch.no_grad():
            za = self.target_projector(self.target_backbone(a))
            zb = self.target_projector(self.target_backbone(b))
        return byol_loss(qa, zb) + byol_loss(qb, za)

    def forward_train(self, batch) -> dict[str, torch.Tensor]:
        loss_image = self._pair_loss(self.predictor, *batch["global"])
        out = {"loss_image": loss_image.detach()}
        loss = loss_image
        if self.intra_weight > 0:
            loss_intra = self._pair_loss(self.predictor_intra, *batch["intra"])
            loss = loss + self.intra_weight * loss_intra
            out["loss_intra"] = loss_intra.detach()
        if self.inter_weight > 0:
            loss_inter = self._pair_loss(self.predictor_inter, *batch["inter"])
            loss = loss + self.inter_weight * loss_inter
            out["loss_inter"] = loss_inter.detach()
        fb = batch["fallback"].float().mean(0)
        out.update(no_boxes=fb[0], jitter_fallback=fb[1], no_pairs=fb[2])
        return {"loss": loss, **out}
