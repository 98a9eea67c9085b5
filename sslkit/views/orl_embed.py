"""ORL stage 2's networks and pixels (paper §3.1 "Stage 2", spec orl.md §2.3): the stage-1 model
as an embedder, the decoding datasets, and the two embedding passes (whole images; RoI crops).

Image embedding: Resize(S/0.875) → CenterCrop(S) through the online network in eval mode; the
feature is the L2-normalised projector output when the checkpoint has a BYOL projector [C], else
the GAP backbone feature [I]. RoI embedding: each box rounded to whole pixels (ORL's integer
``xywh`` boxes), cropped from the *unaugmented* image, resized to S × S without keeping the aspect
ratio (bilinear, antialiased), backbone → GAP → L2 [C]; no RoIAlign.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sslkit.errors import UserError
from sslkit.io.artefacts import Record
from sslkit.io.images import ImageDecodeError, load_rgb
from sslkit.models.backbones import build_backbone
from sslkit.models.heads import byol_mlp
from sslkit.models.pretrained import checkpoint_heads
from sslkit.ops.boxes import pixel_box
from sslkit.views.candidates import CandidateBoxes


def roi_crops(image: torch.Tensor, boxes: np.ndarray, size: int, mean: Sequence[float],
              std: Sequence[float]) -> torch.Tensor:
    """(3, H, W) uint8 image (any device) and (k, 4) xyxy boxes → (k, 3, size, size) normalised crops:
    each box rounded to whole pixels, resized bilinearly with antialiasing (aspect not kept)."""
    _, h, w = image.shape
    m = torch.tensor(mean, device=image.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=image.device).view(1, 3, 1, 1)
    out = []
    for box in np.asarray(boxes, np.float64).reshape(-1, 4):
        a, b, c, d = pixel_box(box, h, w)
        crop = image[None, :, b:d, a:c].float()
        out.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True))
    x = torch.cat(out) if out else image.new_zeros((0, 3, size, size), dtype=torch.float32)
    return (x / 255.0 - m) / s


class Embedder(torch.nn.Module):
    """The stage-1 network as stage 2 uses it: online backbone (eval BN) + optional BYOL projector."""

    def __init__(self, backbone: torch.nn.Module, projector: torch.nn.Module | None, image_head: bool,
                 roi_head: bool):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.image_head = image_head
        self.roi_head = roi_head

    def _embed(self, x: torch.Tensor, head: bool) -> torch.Tensor:
        f = self.backbone(x)
        if head:
            f = self.projector(f)
        return F.normalize(f.float(), dim=1)

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed(x, self.image_head)

    def roi_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed(x, self.roi_head)


def load_embedder(ckpt: str | os.PathLike, encoder: str | None, image_feature: str,
                  roi_feature: str) -> tuple[Embedder, dict]:
    """The embedder of any weights file sslkit reads, and what it is (recorded in the output).

    Any sslkit checkpoint works through its default encoder (or ``encoder``); its projector is
    used when it has BYOL's layout (BYOL, ORL, DetCon-B, UniVIP), otherwise (DetCon-S, MoCo v2,
    SimCLR, exported backbones) the image kNN falls back to the GAP backbone feature.
    """
    sd, meta, projector_sd, _ = checkpoint_heads(ckpt, encoder)
    backbone = build_backbone(meta["arch"])
    backbone.load_state_dict(sd, strict=True)
    projector = None
    if projector_sd is not None:
        hidden, dim = projector_sd["0.weight"].shape[0], projector_sd["3.weight"].shape[0]
        projector = byol_mlp(backbone.feat_dim, hidden, dim)
        projector.load_state_dict(projector_sd, strict=True)
    want_proj = {"auto": projector is not None, "projector": True, "backbone": False}[image_feature]
    if (want_proj or roi_feature == "projector") and projector is None:
        raise UserError(f"has no BYOL-style projector (method {meta.get('method') or 'unknown'})", ckpt,
                        "use --image-feature backbone --roi-feature backbone")
    roi_proj = roi_feature == "projector"
    net = Embedder(backbone, projector, want_proj, roi_proj).eval()

    def describe(head: bool) -> dict:
        dim = int(projector[-1].out_features) if head else int(backbone.feat_dim)
        return {"kind": "projector" if head else "backbone_gap", "dim": dim, "l2_normalised": True,
                "name": f"{'projector' if head else 'backbone'}{dim}_{'' if head else 'gap_'}l2"}

    info = {"path": str(Path(ckpt).resolve()), "sha256": meta["sha256"], "kind": meta["kind"],
            "method": meta.get("method"), "encoder": meta.get("encoder"), "arch": meta["arch"],
            "epoch": meta.get("epoch"), "step": meta.get("step"), "backbone_sha256": meta["backbone_sha256"],
            "projector": None if projector is None else f"BYOL MLP {backbone.feat_dim}→{projector[0].out_features}"
                                                        f"→{projector[-1].out_features}",
            "image_feature": describe(want_proj), "roi_feature": describe(roi_proj)}
    if image_feature == "auto" and not want_proj:
        info["image_feature"]["note"] = "no BYOL-style projector in the checkpoint: GAP backbone feature used"
    return net, info


class EmbedImages(torch.utils.data.Dataset):
    """Item ``i`` → ``(i, (1, 3, S, S) input or None, (h, w), reason)``: Resize(S/0.875) → CenterCrop(S)."""

    def __init__(self, records, prep):
        self.records = records
        self.prep = prep

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        try:
            arr, _ = load_rgb(self.records[i].path)
        except ImageDecodeError as e:
            return i, None, (0, 0), e.reason
        return i, self.prep.image(arr), arr.shape[:2], None


class DecodeImages(torch.utils.data.Dataset):
    """Item ``i`` → ``((chunk, row), (3, H, W) uint8 tensor or None, reason)`` for ``tasks[i] = (chunk, row)``
    (an int array: N·(1+K) tasks of a COCO-sized run stay a few MB)."""

    def __init__(self, tasks: np.ndarray, paths: list[str]):
        self.tasks = tasks
        self.paths = paths

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int):
        c, j = (int(v) for v in self.tasks[i])
        try:
            arr, _ = load_rgb(self.paths[j])
        except ImageDecodeError as e:
            return (c, j), None, e.reason
        arr = arr if arr.flags.writeable else arr.copy()  # PIL-backed arrays are read-only
        return (c, j), torch.from_numpy(arr).permute(2, 0, 1).contiguous(), None


def loader(ds, workers: int, pin: bool):
    return torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin,
                                       prefetch_factor=4 if workers > 0 else None)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} but no CUDA device is visible", None, "use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a torch device", None, "use auto, cpu, cuda or cuda:N") from None


def embed_chunk(net: Embedder, it, count: int, recs, order: list[int], props: CandidateBoxes, batch_size: int,
                device, advance) -> tuple[list, list[tuple[str, str]]]:
    """The next ``count`` images of ``it`` as records holding their image feature (field ``feat``),
    in forward passes of ``batch_size`` images; unreadable ones as ``(file_name, reason)``."""
    out, skipped, batch = [], [], []

    def flush():
        f = net.image_features(torch.cat([b[1] for b in batch]).to(device, non_blocking=True)).cpu().numpy()
        out.extend(Record(r.image_id, r.file_name, int(hw[0]), int(hw[1]), {"feat": v[None]})
                   for (r, _, hw), v in zip(batch, f, strict=True))
        batch.clear()

    for _ in range(count):
        j, x, hw, reason = next(it)
        r = recs[order[j]]
        advance()
        if x is None:
            skipped.append((r.file_name, reason))
            continue
        want = props.size(r.file_name)
        if want is not None and tuple(hw) != want:
            raise UserError(f"is {hw[0]}x{hw[1]} but the proposals were made on a {want[0]}x{want[1]} image", r.path,
                            "were the proposals made from other images?")
        batch.append((r, x, hw))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return out, skipped


def embed_rois(net: Embedder, it, chunk: int, union: np.ndarray, rows, boxes, size: int, mean, std,
                batch_size: int, device) -> dict[int, torch.Tensor]:
    """RoI features of every image of ``union`` (decoded in order by ``it``), grouped into forward
    passes of at most ``batch_size`` crops without splitting an image (order fixed by the chunk)."""
    feats: dict[int, torch.Tensor] = {}
    group: list[tuple[int, torch.Tensor]] = []
    count = 0

    def run_group():
        x = torch.cat([g[1] for g in group])
        f = torch.cat([net.roi_features(x[s:s + batch_size]) for s in range(0, len(x), batch_size)])
        o = 0
        for j, crops in group:
            feats[j] = f[o:o + len(crops)]
            o += len(crops)
        group.clear()

    for j in union.tolist():
        (c, jj), img, reason = next(it)
        if (c, jj) != (chunk, j):
            raise RuntimeError(f"internal: decode order out of step ({c}, {jj}) != ({chunk}, {j})")
        if img is None:
            raise RuntimeError(f"{rows[j].file_name} became unreadable during the run ({reason})")
        b = boxes[j]
        if len(b) == 0:
            feats[j] = torch.zeros((0, 1), device=device)
            continue
        if count and count + len(b) > batch_size:
            run_group()
            count = 0
        group.append((j, roi_crops(img.to(device, non_blocking=True), b, size, mean, std)))
        count += len(b)
    if group:
        run_group()
    return feats
