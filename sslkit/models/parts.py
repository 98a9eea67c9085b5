"""Detector parts a method pretrains beside the backbone (MCL: the FPN and the box-head convs), and
their key maps. Backbone keys are :mod:`sslkit.models.convert`'s business; this module maps the rest.

A part's own layout (its ``state_dict`` keys, what ``Method.export_parts`` prefixes point at):

* ``fpn`` — :class:`sslkit.models.fpn.FPN` = torchvision ``FeaturePyramidNetwork`` with BN:
  ``inner_blocks.{i}.0.weight`` (1×1 lateral conv on C{i+2}), ``inner_blocks.{i}.1.*`` (its BN),
  ``layer_blocks.{i}.0.weight`` (3×3 output conv of P{i+2}), ``layer_blocks.{i}.1.*``, i = 0..3;
* ``head`` — :func:`sslkit.models.heads.box_head_convs`, 4 × (``{i}.0.weight`` conv 3×3,
  ``{i}.1.*`` BN), i = 0..3: the convs of a 4conv1fc box head (detectron2 ``FastRCNNConvFCHead``
  NUM_CONV 4, NUM_FC 1, NORM BN/SyncBN).

Where they go:

* detectron2 names (bare, like the exported backbone; ``matching_heuristics`` finds them under
  ``backbone.`` and ``roi_heads.``): ``fpn_lateral{2..5}.weight`` + ``.norm.*``,
  ``fpn_output{2..5}.weight`` + ``.norm.*``, ``box_head.conv{1..4}.weight`` + ``.norm.*``
  (``num_batches_tracked`` dropped, recreated as 0 on the way back);
* the torchvision detection layout (``sslkit detect``'s Mask R-CNN, and torchvision's
  ``maskrcnn_resnet50_fpn_v2``): ``backbone.body.*`` (the backbone), ``backbone.fpn.*``,
  ``roi_heads.box_head.{0..3}.*``. An export with parts uses it; it loads with ``strict=False``
  into those models (the RPN, the box fc and predictors, the mask head stay theirs).
"""

from __future__ import annotations

import re

import numpy as np
import torch

PARTS = ("fpn", "head")
#: part → key prefix in the torchvision detection layout
DETECTION_PREFIX = {"fpn": "backbone.fpn.", "head": "roi_heads.box_head."}
BACKBONE_DETECTION_PREFIX = "backbone.body."
#: the detector's box head: 4 convs (4conv1fc)
HEAD_CONVS = 4
LEVELS = 4

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_TO_D2 = {
    "fpn": [(re.compile(r"inner_blocks\.([0-3])\.0\.weight"), lambda m: f"fpn_lateral{int(m[1]) + 2}.weight"),
            (re.compile(rf"inner_blocks\.([0-3])\.1\.{_BN}"), lambda m: f"fpn_lateral{int(m[1]) + 2}.norm.{m[2]}"),
            (re.compile(r"layer_blocks\.([0-3])\.0\.weight"), lambda m: f"fpn_output{int(m[1]) + 2}.weight"),
            (re.compile(rf"layer_blocks\.([0-3])\.1\.{_BN}"), lambda m: f"fpn_output{int(m[1]) + 2}.norm.{m[2]}")],
    "head": [(re.compile(r"([0-3])\.0\.weight"), lambda m: f"box_head.conv{int(m[1]) + 1}.weight"),
             (re.compile(rf"([0-3])\.1\.{_BN}"), lambda m: f"box_head.conv{int(m[1]) + 1}.norm.{m[2]}")],
}
_FROM_D2 = {
    "fpn": [(re.compile(r"fpn_lateral([2-5])\.weight"), lambda m: f"inner_blocks.{int(m[1]) - 2}.0.weight"),
            (re.compile(rf"fpn_lateral([2-5])\.norm\.{_BN}"), lambda m: f"inner_blocks.{int(m[1]) - 2}.1.{m[2]}"),
            (re.compile(r"fpn_output([2-5])\.weight"), lambda m: f"layer_blocks.{int(m[1]) - 2}.0.weight"),
            (re.compile(rf"fpn_output([2-5])\.norm\.{_BN}"), lambda m: f"layer_blocks.{int(m[1]) - 2}.1.{m[2]}")],
    "head": [(re.compile(r"box_head\.conv([1-4])\.weight"), lambda m: f"{int(m[1]) - 1}.0.weight"),
             (re.compile(rf"box_head\.conv([1-4])\.norm\.{_BN}"), lambda m: f"{int(m[1]) - 1}.1.{m[2]}")],
}


class PartError(ValueError):
    """A part's tensors do not have the layout the detector expects."""


def _map(rules, key: str) -> str | None:
    for pat, fn in rules:
        m = pat.fullmatch(key)
        if m:
            return fn(m)
    return None


def expected_keys(part: str) -> set[str]:
    """The keys of a part (``num_batches_tracked`` included)."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    if part == "fpn":
        return {f"{blk}.{i}.{x}" for blk in ("inner_blocks", "layer_blocks") for i in range(LEVELS)
                for x in ["0.weight"] + [f"1.{b}" for b in bn]}
    if part == "head":
        return {f"{i}.{x}" for i in range(HEAD_CONVS) for x in ["0.weight"] + [f"1.{b}" for b in bn]}
    raise PartError(f"unknown part {part!r} (parts: {', '.join(PARTS)})")


def check_part(part: str, sd: dict[str, torch.Tensor]) -> int:
    """Raise :class:`PartError` unless ``sd`` is exactly a detector ``part``; return its width (channels)."""
    want = expected_keys(part)
    have = set(sd)
    if part == "head":
        convs = sorted({int(k.split(".")[0]) for k in have if k.split(".")[0].isdigit()})
        if len(convs) != HEAD_CONVS:
            raise PartError(f"the detector's box head has {HEAD_CONVS} convs; these weights have {len(convs)} "
                            "(pretrain with head_convs=4 to transfer the head)")
    missing = sorted(want - have - {k for k in want if k.endswith("num_batches_tracked")})
    unexpected = sorted(have - want)
    if missing or unexpected:
        shown = [f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in unexpected[:3]]
        raise PartError(f"{part}: not the detector's layout ({', '.join(shown)})")
    key = "layer_blocks.0.0.weight" if part == "fpn" else "0.0.weight"
    width = int(sd[key].shape[0])
    for k, v in sd.items():
        if k.endswith(".0.weight") and (v.ndim != 4 or v.shape[0] != width):
            raise PartError(f"{part}: {k} has shape {tuple(v.shape)}, expected {width} output channels")
    return width


def to_detectron2(part: str, sd: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A part's tensors with detectron2's names (numpy float32; ``num_batches_tracked`` dropped)."""
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        new = _map(_TO_D2[part], k)
        if new is None:
            raise PartError(f"{part}: {k} has no detectron2 name")
        a = v.detach().cpu()
        out[new] = (a.float() if a.is_floating_point() else a).numpy().copy()
    return out


def split_detectron2(model: dict) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """A detectron2 weights dict → (its other keys, ``{part: part state_dict}`` for the parts it holds)."""
    rest: dict = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in model.items():
        for part, rules in _FROM_D2.items():
            new = _map(rules, k)
            if new is not None:
                parts.setdefault(part, {})[new] = torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) \
                    else torch.as_tensor(v).clone()
                break
        else:
            rest[k] = v
    for sd in parts.values():
        for k in [k for k in sd if k.endswith(".running_mean")]:
            sd.setdefault(k[: -len("running_mean")] + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    return rest, parts


def is_detection_layout(sd: dict) -> bool:
    return any(k.startswith(BACKBONE_DETECTION_PREFIX) for k in sd)


def split_detection_layout(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """A torchvision detection-layout state_dict → (backbone, ``{part: state_dict}``); other keys are errors."""
    backbone = {k[len(BACKBONE_DETECTION_PREFIX):]: v for k, v in sd.items() if k.startswith(BACKBONE_DETECTION_PREFIX)}
    parts: dict[str, dict] = {}
    for part, prefix in DETECTION_PREFIX.items():
        got = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if got:
            parts[part] = got
    known = (BACKBONE_DETECTION_PREFIX, *DETECTION_PREFIX.values())
    other = [k for k in sd if not k.startswith(known)]
    if other:
        raise PartError(f"keys outside the backbone and the known parts: {', '.join(other[:4])}")
    return backbone, parts


def to_detection_layout(backbone: dict[str, torch.Tensor], parts: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Backbone and parts under the torchvision detection names (``backbone.body.``, ``backbone.fpn.``, …)."""
    out = {BACKBONE_DETECTION_PREFIX + k: v for k, v in backbone.items()}
    for part, sd in parts.items():
        out.update({DETECTION_PREFIX[part] + k: v for k, v in sd.items()})
    return out
