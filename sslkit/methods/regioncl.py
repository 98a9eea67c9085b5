"""RegionCL (Xu, Zhang, Zhang, Tao, ECCV 2022; ../shared/papers/regioncl.txt, spec
../shared/specs/regioncl.md) on its three bases: RegionCL-M (MoCo v2), RegionCL-S (SimSiam) and
RegionCL-D (DenseCL).

Each step, the (augmented, normalised) query batch is region-swapped on the device
(:mod:`sslkit.views.regioncl`: one box of 3–5 cells of R = 32 px for the rank's batch, partner
``B − 1 − i``). The composites go through the online backbone in a separate call (their own BN
batch statistics, as the authors' code [C]); the last feature map is mask-pooled inside (paste) and
outside (canvas) the box cells, both rows go through the base's projector in one call, and
(:mod:`sslkit.methods.regioncl_ops`):

* RegionCL-M: ``L = L_ins + w·L_reg`` with L_reg eq. 2 (τ 0.2; canvas/paste positive with their
  source's key, the other region of the same composite as a stop-gradient hard negative, the MoCo
  queue as negatives; region features are never enqueued) [P][C]; w = ``reg_weight`` = 1 [P].
* RegionCL-D: ``L = (1 − λ)·(L_global + w·L_reg) + λ·L_dense`` (the weighting is not given; spec
  §2.5 [I] keeps instance:region at 1:1), region features through the global head.
* RegionCL-S: SimSiam's loss + ``w``·½[D(pred(canvas_i), sg(z2_i)) + D(pred(paste_j), sg(z2_j))]
  (positives only, [P] §3.2; form and weight [I] spec §2.5), composites from view 1.

``reg_weight = 0`` skips the region branch: the method is then exactly its base. The Table 10
switches are ``regioncl_canvas``, ``regioncl_paste`` and (M, D) ``regioncl_intra_negative``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslkit import dist
from sslkit.console import warn
from sslkit.errors import UserError
from sslkit.methods.densecl import DenseCL
from sslkit.methods.mocov2 import MoCoV2, info_nce
from sslkit.methods.regioncl_ops import mask_pool_regions, region_info_nce, region_simsiam_loss
from sslkit.methods.simsiam import SimSiam, simsiam_loss
from sslkit.models.backbones import res5
from sslkit.views.regioncl import (
    ORIGINS,
    STRIDE,
    RegionCLSwapStage,
    cells_problem,
    grid_side,
    partner_index,
    region_valid,
    sample_box,
    swap_generator,
    swap_regions,
)

#: settings every variant has
_SWAP_DEFAULTS = {
    "regioncl_cells_min": 3,  # §3.1 / Table 9: C_L = 3
    "regioncl_cells_max": 5,  # C_U = 5, inclusive [P] (the code's randint(3, 6) [C])
    "regioncl_origin": "aligned",  # [I]; "official" = the authors' pixel rule [C]
    "reg_weight": 1.0,  # eq. 3: L_ins + L_reg, 1 : 1 [P]
    "regioncl_canvas": True,  # Table 10 "Canvas"
    "regioncl_paste": True,  # Table 10 "Paste"
}
_SWAP_HELP = {
    "regioncl_cells_min": "C_L: fewest feature cells (of R = 32 px) per box side",
    "regioncl_cells_max": "C_U: most feature cells per box side (inclusive; at most grid - 1)",
    "regioncl_origin": f"box origin: {' or '.join(ORIGINS)} (the authors' pixel rule, may be off the grid)",
    "reg_weight": "weight of the region loss (0: the base method exactly)",
    "regioncl_canvas": "use the canvas views as positives",
    "regioncl_paste": "use the paste views as positives",
}
_NEGATIVE_DEFAULTS = {"regioncl_intra_negative": True}  # Table 10 "Neg"
_NEGATIVE_HELP = {"regioncl_intra_negative": "the other region of the same composite is a (stop-gradient) negative"}


class RegionSwap:
    """The region branch every variant adds to its base: settings, the per-step swap and the pooled
    paste/canvas features. A mixin placed before the base method in the bases."""

    view_stage = RegionCLSwapStage

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.build_swap(cfg)

    @classmethod
    def validate(cls, cfg: dict) -> None:
        super().validate(cfg)
        cls.validate_swap(cfg)

    def build_swap(self, cfg: dict) -> None:
        self.cells = (cfg["regioncl_cells_min"], cfg["regioncl_cells_max"])
        self.origin = cfg["regioncl_origin"]
        self.reg_weight = cfg["reg_weight"]
        self.use_canvas, self.use_paste = cfg["regioncl_canvas"], cfg["regioncl_paste"]
        self.swap_seed = cfg["seed"]
        self.intra_negative = cfg.get("regioncl_intra_negative", False)  # M, D: Table 10 "Neg"; S has none
        # the next step's index: in the checkpoint (resume draws the same boxes), mirrored in Python so
        # drawing a box never waits for the device
        self.register_buffer("swap_step", torch.zeros((), dtype=torch.long))
        self._swap_next: int | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_swap_next", None))

    @property
    def region_on(self) -> bool:
        return self.reg_weight != 0 and (self.use_canvas or self.use_paste)

    @classmethod
    def validate_swap(cls, cfg: dict) -> None:
        if cfg["reg_weight"] < 0:
            raise UserError(f"reg_weight must be >= 0 (got {cfg['reg_weight']})")
        if cfg["reg_weight"] and not (cfg["regioncl_canvas"] or cfg["regioncl_paste"]):
            raise UserError("regioncl_canvas and regioncl_paste are both off", None,
                            "turn one on, or set reg_weight=0 for the base method")
        size = cfg["image_size"]
        try:
            grid = grid_side(size)
        except ValueError as e:
            raise UserError(str(e), None, f"use --image-size {max(STRIDE, size // STRIDE * STRIDE)} or "
                            f"{(size // STRIDE + 1) * STRIDE}") from None
        problem = cells_problem(grid, cfg["regioncl_cells_min"], cfg["regioncl_cells_max"])
        if problem:
            raise UserError(f"{problem} at --image-size {size}", None,
                            f"e.g. --set regioncl_cells_min=1 --set regioncl_cells_max={max(1, grid - 1)} "
                            f"(RegionCL's 3-5 need views of at least {6 * STRIDE} px)")
        per_rank = cfg["batch_size"] // max(1, cfg["world_size"])
        if per_rank % 2:
            warn(f"{cls.name}: the per-rank batch {per_rank} is odd, so the middle image of each batch pairs "
                 "with itself; its region terms are left out")

    def _next_swap_step(self) -> int:
        if self._swap_next is None:
            self._swap_next = int(self.swap_step)
        step = self._swap_next
        self._swap_next += 1
        self.swap_step.fill_(self._swap_next)
        return step

    def region_pooled(self, x_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Swap this step's query batch and pool the composites' C5 map: ``(paste_in, canvas, partner, valid)``,
        features (B, C) per *composite* (see :mod:`sslkit.methods.regioncl_ops`)."""
        b, _, h, w = x_q.shape
        box = sample_box(swap_generator(self.swap_seed, dist.rank(), self._next_swap_step()), h, w, *self.cells,
                         origin=self.origin)
        partner = partner_index(b, x_q.device)
        paste_in, canvas = mask_pool_regions(res5(self.backbone, swap_regions(x_q, box, partner)), box)
        return paste_in, canvas, partner, region_valid(b, x_q.device)

    def region_loss(self, x_q, k, queue, project) -> tuple[torch.Tensor, torch.Tensor]:
        """L_reg of this step (eq. 2) for the MoCo-family bases, ``project`` their global head (canvas and
        paste rows in one call, as the authors' neck [C]); returns (loss, top-1 accuracy)."""
        paste_in, canvas, partner, valid = self.region_pooled(x_q)
        cv, ps = F.normalize(project(torch.cat([canvas, paste_in])).float(), dim=1).chunk(2)
        return region_info_nce(cv, ps, k, queue, partner, valid, self.temperature, use_canvas=self.use_canvas,
                               use_paste=self.use_paste, intra_negative=self.intra_negative)


class RegionCLM(RegionSwap, MoCoV2):
    """RegionCL-M: MoCo v2 + region swapping (§3.2). Key encoder with shuffle-BN as MoCo."""

    name = "regioncl-m"
    DEFAULTS = {
        **MoCoV2.DEFAULTS,
        # the authors' regionCLM-r50.py and log [C]: 8 GPUs × 128 = 1024 at lr 0.15 (= 0.0375 × 1024/256),
        # SGD m 0.9, wd 1e-4, cosine to 0 without warm-up, 200 epochs; the rest is MoCo v2's (spec §3)
        "batch_size": 1024,
        "lr": 0.0375,
        **_SWAP_DEFAULTS,
        **_NEGATIVE_DEFAULTS,
    }
    HELP = {**MoCoV2.HELP, **_SWAP_HELP, **_NEGATIVE_HELP}

    def forward_train(self, batch) -> dict[str, torch.Tensor]:
        x_q, x_k = batch
        q = F.normalize(self.projector(self.backbone(x_q)).float(), dim=1)
        k = self._keys(x_k)
        queue = self.queue.clone()
        loss, acc = info_nce(q, k, queue, self.temperature)
        out = {"loss_ins": loss.detach(), "acc": acc}
        if self.region_on:
            loss_reg, acc_reg = self.region_loss(x_q, k, queue, self.projector)
            loss = loss + self.reg_weight * loss_reg
            out.update(loss_reg=loss_reg.detach(), acc_reg=acc_reg)
        else:
            self._next_swap_step()
        self._enqueue(dist.all_gather(k))  # the instance keys only: region features are never enqueued [P][C]
        return {"loss": loss, **out}


class RegionCLD(RegionSwap, DenseCL):
    """RegionCL-D: DenseCL + RegionCL-M's region loss (§3.2 "Extension"), region features through the
    global head; ``(1 − λ)·(L_global + w·L_reg) + λ·L_dense`` [I]."""

    name = "regioncl-d"
    DEFAULTS = {**DenseCL.DEFAULTS, **_SWAP_DEFAULTS, **_NEGATIVE_DEFAULTS}  # §4: "same settings as the base"
    HELP = {**DenseCL.HELP, **_SWAP_HELP, **_NEGATIVE_HELP}

    def forward_train(self, batch) -> dict[str, torch.Tensor]:
        x_q, x_k = batch
        terms, k, queue = self.densecl_losses(x_q, x_k)
        instance = terms["loss_global"]
        out = {n: v.detach() for n, v in terms.items()}
        if self.region_on:
            loss_reg, acc_reg = self.region_loss(x_q, k, queue, self.projector)
            instance = instance + self.reg_weight * loss_reg
            out.update(loss_reg=loss_reg.detach(), acc_reg=acc_reg)
        else:
            self._next_swap_step()
        loss = (1 - self.loss_lambda) * instance + self.loss_lambda * terms["loss_dense"]
        self._enqueue(dist.all_gather(k))
        return {"loss": loss, **out}


class RegionCLS(RegionSwap, SimSiam):
    """RegionCL-S: SimSiam + paste/canvas positives (§3.2 "Extension"); no negatives, no intra term."""

    name = "regioncl-s"
    DEFAULTS = {**SimSiam.DEFAULTS, **_SWAP_DEFAULTS}  # §4: SimSiam's settings, 100 epochs
    HELP = {**SimSiam.HELP, **_SWAP_HELP}

    def forward_train(self, batch) -> dict[str, torch.Tensor]:
        v1, v2 = batch
        z1, p1 = self.embed(v1)
        z2, p2 = self.embed(v2)
        loss = simsiam_loss(p1, p2, z1, z2)
        out = {"loss_ins": loss.detach(), "z_std": self.collapse_std(z1)}
        if self.region_on:
            paste_in, canvas, partner, valid = self.region_pooled(v1)
            pred_canvas, pred_paste = self.predictor(self.projector(torch.cat([canvas, paste_in]))).chunk(2)
            loss_reg = region_simsiam_loss(pred_canvas, pred_paste, z2, partner, valid, use_canvas=self.use_canvas,
                                      use_paste=self.use_paste)
            loss = loss + self.reg_weight * loss_reg
            out["loss_reg"] = loss_reg.detach()
        else:
            self._next_swap_step()
        return {"loss": loss, **out}
