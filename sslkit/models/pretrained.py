"""What a pretrained weights file offers beyond its backbone: the BYOL-layout projector and
predictor that go with the chosen encoder. ORL reads them twice: stage 2 embeds images with the
stage-1 projector (spec orl.md §2.3), and stage 3's ``init_from`` starts from the stage-1 heads."""

from __future__ import annotations

import os

import torch

from sslkit.io.checkpoint import load_checkpoint
from sslkit.models.backbones import build_backbone
from sslkit.models.convert import backbone_state_dict

#: key set of a BYOL-layout MLP head (Linear → BN → ReLU → Linear without bias): sslkit.models.heads.byol_mlp
BYOL_HEAD_KEYS = frozenset({"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                            "1.num_batches_tracked", "3.weight"})


def byol_head_state(model: dict[str, torch.Tensor], prefix: str, in_dim: int) -> dict[str, torch.Tensor] | None:
    """The tensors under ``prefix`` of a state_dict if they form a BYOL-layout MLP taking ``in_dim``
    inputs, else None (MoCo's and SimCLR's projectors have other layouts)."""
    sd = {k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)}
    if set(sd) != BYOL_HEAD_KEYS:
        return None
    hidden = sd["0.weight"].shape[0]
    if sd["0.weight"].shape[1] != in_dim or sd["1.weight"].shape != (hidden,) or sd["3.weight"].shape[1] != hidden:
        return None
    return sd


def checkpoint_heads(path: str | os.PathLike, encoder: str | None = None, arch: str | None = None):
    """What an image-level stage-1 model contributes to ORL: ``(backbone state_dict, its metadata,
    projector state or None, predictor state or None)``.

    ``path`` is any weights file :func:`sslkit.models.convert.backbone_state_dict` reads (an sslkit
    checkpoint of any method, an exported backbone). For a checkpoint, the heads that go with the
    chosen encoder are found by name (``backbone.`` → ``projector.``/``predictor.``,
    ``target_backbone.`` → ``target_projector.``) and kept only if they have BYOL's layout.
    """
    sd, meta = backbone_state_dict(path, encoder=encoder, arch=arch)
    projector = predictor = None
    if meta["kind"] == "checkpoint":
        ck = load_checkpoint(path)
        prefix = ck["encoders"][meta["encoder"]]
        if prefix.endswith("backbone."):
            head = prefix[: -len("backbone.")]
            with torch.device("meta"):
                feat_dim = build_backbone(meta["arch"]).feat_dim
            projector = byol_head_state(ck["model"], head + "projector.", feat_dim)
            if projector is not None and head == "":
                predictor = byol_head_state(ck["model"], "predictor.", projector["3.weight"].shape[0])
    return sd, meta, projector, predictor
