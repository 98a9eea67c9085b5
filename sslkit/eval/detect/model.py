"""Mask R-CNN R-FPN on an sslkit backbone, as close to the InfoMin/PyContrast detectron2 config as
torchvision allows (the differences are listed in docs/detect.md).

* Backbone: the pretrained torchvision ResNet, every stage trainable (``FREEZE_AT=0``), its
  BatchNorm layers fine-tuned (``RESNETS.NORM=SyncBN``; converted to ``SyncBatchNorm`` when
  training runs on several GPUs).  ``freeze_at=k`` freezes the stem (1) and the first ``k-1``
  stages, parameters and BN statistics, as detectron2's ``FREEZE_AT``.
* FPN over res2–res5 with a max-pooled P6 (``LastLevelMaxPool``), BN after every FPN conv
  (``FPN.NORM``), 256 channels.
* RPN: detectron2's ``StandardRPNHead`` (one 3×3 conv), anchors 32–512 × {0.5, 1, 2}, 2000
  pre-NMS proposals per level for training / 1000 for testing, 1000 post-NMS per image.
* RoI heads: RoIAlign *aligned* (detectron2's ``ROIAlignV2``, adaptive sampling), box head
  4conv1fc with BN (``FastRCNNConvFCHead``, ``NUM_CONV=4``, ``NUM_FC=1``, ``NORM``), mask head
  4 conv with BN + deconv (``MaskRCNNConvUpsampleHead``, ``NORM``); predictors initialised
  as detectron2's (cls σ=0.01, box σ=0.001, mask σ=0.001, zero biases).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from sslkit.errors import FormatError, UserError

#: detectron2 names of the backbone parts FREEZE_AT counts: 1 = stem, 2 = stem + res2, …
FREEZE_PARTS = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


class ROIAlignV2(MultiScaleRoIAlign):
    """Multi-level RoIAlign with ``aligned=True`` (the half-pixel correction of detectron2's
    ``ROIAlignV2``) and adaptive sampling (``POOLER_SAMPLING_RATIO: 0``); same level assignment
    as torchvision (``floor(4 + log2(sqrt(wh) / 224))`` clamped to the levels)."""

    def __init__(self, featmap_names: list[str], output_size: int):
        super().__init__(featmap_names, output_size, sampling_ratio=0)

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        from torchvision.ops.poolers import _setup_scales

        feats = [v for k, v in x.items() if k in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(feats, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        levels = self.map_levels(boxes)
        out = feats[0].new_zeros((len(rois), feats[0].shape[1], *self.output_size))
        for level, (f, scale) in enumerate(zip(feats, self.scales, strict=True)):
            idx = torch.where(levels == level)[0]
            if len(idx):
                out[idx] = roi_align(f, rois[idx], self.output_size, scale, self.sampling_ratio,
                                     aligned=True).to(out.dtype)
        return out


class DetectorMaskRCNN(MaskRCNN):
    """torchvision ``MaskRCNN`` with separate train/test resize settings, whose frozen backbone
    stages keep their BatchNorm layers in eval mode."""

    def __init__(self, *args, train_sizes: tuple[int, ...], test_size: int, frozen: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, min_size=tuple(train_sizes), **kwargs)
        self.train_sizes = tuple(int(s) for s in train_sizes)
        self.test_size = int(test_size)
        self.frozen = tuple(frozen)  # module names under backbone.body

    def train(self, mode: bool = True):
        super().train(mode)
        # torchvision picks a random min_size per image in training and min_size[-1] in eval
        self.transform.min_size = self.train_sizes if mode else (self.test_size,)
        for name in self.frozen:
            self.backbone.body.get_submodule(name).eval()
        return self


def frozen_parts(freeze_at: int) -> tuple[str, ...]:
    if not 0 <= freeze_at <= 5:
        raise UserError(f"--freeze-at must be 0..5 (got {freeze_at})", None,
                        "0: train everything, 1: freeze the stem, 2: stem + res2, …, 5: the whole backbone")
    return tuple(n for part in FREEZE_PARTS[:freeze_at] for n in part)


def _init_like_detectron2(model: MaskRCNN) -> None:
    box = model.roi_heads.box_predictor
    nn.init.normal_(box.cls_score.weight, std=0.01)
    nn.init.normal_(box.bbox_pred.weight, std=0.001)
    for b in (box.cls_score.bias, box.bbox_pred.bias):
        nn.init.zeros_(b)
    for m in model.roi_heads.box_head.modules():  # c2_xavier_fill on the fc
        if isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=1)
            nn.init.zeros_(m.bias)
    pred = model.roi_heads.mask_predictor
    nn.init.zeros_(pred.conv5_mask.bias)
    nn.init.normal_(pred.mask_fcn_logits.weight, std=0.001)
    nn.init.zeros_(pred.mask_fcn_logits.bias)


def build_mask_rcnn(backbone: nn.Module, num_classes: int, *, train_sizes: tuple[int, ...], test_size: int,
                    max_size: int, fpn_channels: int = 256, freeze_at: int = 0,
                    pixel_mean=(0.485, 0.456, 0.406), pixel_std=(0.229, 0.224, 0.225)) -> DetectorMaskRCNN:
    """Mask R-CNN with ``num_classes`` foreground classes on ``backbone`` (an sslkit ResNet, ``stage_dims`` set).

    Images are resized in the model (torchvision's ``GeneralizedRCNNTransform``): training picks
    the short side uniformly from ``train_sizes`` per image, testing uses ``test_size``; the long
    side is capped at ``max_size``.
    """
    frozen = frozen_parts(freeze_at)
    for name in frozen:
        for p in backbone.get_submodule(name).parameters():
            p.requires_grad_(False)
    dims = list(backbone.stage_dims[1:])
    norm = nn.BatchNorm2d
    body = BackboneWithFPN(backbone, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}, dims,
                           fpn_channels, extra_blocks=LastLevelMaxPool(), norm_layer=norm)
    ch = fpn_channels
    model = DetectorMaskRCNN(
        body, train_sizes=train_sizes, test_size=test_size, frozen=frozen,
        max_size=max_size, image_mean=list(pixel_mean), image_std=list(pixel_std),
        rpn_head=RPNHead(ch, 3, conv_depth=1),
        rpn_pre_nms_top_n_train=2000, rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_train=1000, rpn_post_nms_top_n_test=1000,
        box_roi_pool=ROIAlignV2(["0", "1", "2", "3"], 7),
        box_head=FastRCNNConvFCHead((ch, 7, 7), [ch] * 4, [4 * ch], norm_layer=norm),
        box_predictor=FastRCNNPredictor(4 * ch, num_classes + 1),
        mask_roi_pool=ROIAlignV2(["0", "1", "2", "3"], 14),
        mask_head=MaskRCNNHeads(ch, [ch] * 4, 1, norm_layer=norm),
        mask_predictor=MaskRCNNPredictor(ch, ch, num_classes + 1),
    )
    _init_like_detectron2(model)
    return model.train()


def optimizer_param_groups(model: nn.Module, weight_decay: float, weight_decay_norm: float = 0.0) -> list[dict]:
    """detectron2's ``get_default_optimizer_params``: normalisation layers' parameters get
    ``weight_decay_norm`` (``SOLVER.WEIGHT_DECAY_NORM``, 0), every other trainable parameter
    (conv and fc weights and biases) ``weight_decay``."""
    norm, rest, seen = [], [], set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (norm if isinstance(module, NORM_TYPES) else rest).append(p)
    groups = [{"params": rest, "weight_decay": weight_decay, "name": "default"}]
    if norm:
        groups.append({"params": norm, "weight_decay": weight_decay_norm, "name": "norm"})
    return groups


#: what each pretrained part initialises in the detector, for the log
PART_NAMES = {"fpn": "FPN (lateral + output convs with BN)", "head": "box-head convs 1-4 (with BN)"}


def parts_settings(meta: dict, given: dict) -> dict:
    """The detect settings a weights file's detector parts imply: ``init_parts`` (the parts it holds)
    and, when it holds any, ``fpn_channels`` (their width; a different ``--fpn-channels`` is an error)."""

    parts = list(meta.get("parts") or [])
    if not parts:
        return {"init_parts": []}
    width = int(meta["fpn_channels"])
    if given.get("fpn_channels") not in (None, width):
        raise UserError(f"--fpn-channels {given['fpn_channels']} contradicts the weights, whose "
                        f"{' and '.join(parts)} are {width} channels wide", meta.get("source"),
                        "drop --fpn-channels, or export the backbone only (sslkit export --include backbone)")
    return {"init_parts": parts, "fpn_channels": width}


def load_parts(model: MaskRCNN, parts: dict[str, dict]) -> str:
    """Initialise the detector's FPN / the 4 convs of its box head from pretrained ``parts``
    (:mod:`sslkit.models.parts` layouts), every key and shape checked; returns a log line of what
    came from the weights and what starts from scratch."""

    targets = {"fpn": model.backbone.fpn, "head": nn.Sequential(*list(model.roi_heads.box_head)[:4])}
    for part, sd in parts.items():
        try:
            targets[part].load_state_dict(sd, strict=True)
        except RuntimeError as e:
            detail = " ".join(str(e).split())[:300]
            raise FormatError(f"the pretrained {part} does not fit the detector ({detail})", None,
                              "export matching weights (sslkit export --include) or use --include backbone") from e
    loaded = ["backbone"] + [PART_NAMES[p] for p in ("fpn", "head") if p in parts]
    scratch = [n for p, n in (("fpn", "FPN"), ("head", "box-head convs")) if p not in parts]
    scratch += ["RPN", "box fc + predictor", "mask head"]
    return f"initialised from the weights: {', '.join(loaded)}; from scratch: {', '.join(scratch)}"
