"""ORL's views: stage-2 correspondence discovery and the stage-3 training samples
(Xie et al., "Unsupervised Object-Level Representation Learning from Scene Images", NeurIPS 2021;
../shared/papers/orl.txt, spec ../shared/specs/orl.md, docs/orl.md).

Provenance tags as in the spec: [P] paper, [C] authors' code (OpenSelfSup-based ORL repo),
[I] an sslkit choice the paper and code leave open.

**Stage 2** (:func:`sample_orl_views`, ``sslkit sample-views --method orl``; paper §3.1 "Stage 2",
spec §2.3):

1. image embeddings: Resize(256) → CenterCrop(224) of every image through the stage-1 online
   network in eval mode; the feature is the L2-normalised projector output (256-d for BYOL) [C],
   or the global-average-pooled backbone feature when the checkpoint has no BYOL projector [I];
2. kNN: top ``K = 10`` images by cosine [P], exact (blocked GEMM), the query itself excluded by
   index (the code drops rank 0; duplicates of the query stay eligible), ties → lower row [I];
3. proposals filtered with ORL's filter (min side 96, aspect ≤ 3, greedy IoU ≤ 0.5, first 100,
   ``boxes[0]`` fallback; spec §2.3 (iv)) — ``boxes_filtered`` of the proposals file when it was
   made with exactly these values, else refiltered from its raw ``boxes``;
4. RoI embeddings: every kept box cropped from the *unaugmented* image (rounded to whole pixels,
   as ORL's integer ``xywh`` boxes), resized to 224 × 224 without keeping the aspect ratio
   (bilinear, antialiased), backbone → GAP → L2 (2048-d) [C]; no RoIAlign;
5. pairs: for query ``x`` with ``B_q`` boxes and neighbour ``N_k`` with ``B_k`` boxes, the
   ``n = max(1, int(0.1 · B_q))`` largest entries of the flattened ``B_q × B_k`` cosine matrix,
   in descending order (ties → lower flat index) [C: "10%" is a count per neighbour, not a
   percentage of the matrix]; boxes may repeat across pairs.

**Stage 3** (:class:`ORLDataset`, used by ``sslkit pretrain --method orl``; paper §3.1 "Stage 3",
§3.2, spec §2.4): per image, two 224 global views (BYOL pipelines), an intra-RoI pair (a kept box
and a jittered copy, :func:`jitter_box`) and an inter-RoI pair (a random neighbour slot, a random
pair of it); RoI patches are cropped from the unaugmented images and resized to 96 × 96, then go
through the BYOL pipelines without RandomResizedCrop; ``p`` and ``p1`` get pipeline 1 (blur 1.0,
no solarize), ``p′`` and ``p2`` pipeline 2 (blur 0.1, solarize 0.2) [C, spec §6.8].

The file both stages share is an ``sslkit.views`` artefact with ``views_kind = "orl-pairs"``
(layout in docs/artefacts.md and docs/orl.md; reader :class:`OrlPairs`).
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sslkit.errors import UserError
from sslkit.io.images import ImageSource
from sslkit.proposals.filters import ORL_DEFAULTS
from sslkit.views.dataset import ImageDataset

FORMAT = "sslkit.views"
VIEWS_KIND = "orl-pairs"

#: stage 2 (paper §3.2 "For correspondence generation…", spec §2.3, §3 "Stage 2")
KNN = 10  # K nearest images [P]
PAIR_RATIO = 0.1  # N = 10% of the query's RoIs per (image, neighbour) [P] with the code's meaning [C]
IMAGE_SIZE = 224  # centre crop of the image embedding, after resizing the short side to 256 [C]
ROI_SIZE = 224  # RoIs are "crop[ped] and resize[d] to 224×224" [P]
#: stage 3 (paper §3.1 "Stage 3", spec §2.4.2)
PATCH_SIZE = 96  # RoI patches 96×96 [P]
JITTER_TRIES = 200  # attempts before the box itself is used [C]
JITTER_AREA = (0.5, 2.0)  # area scaled 50%..200% [P]
JITTER_ASPECT = (0.5, 2.0)  # new absolute aspect w'/h', log-uniform [P range, C sampling]
JITTER_SHIFT = 0.5  # centre shift within ±50% of w / h [P]
JITTER_MIN_IOU = 0.5  # accept only IoU(b', b) > 0.5 [C]

#: test hook, shared with ``sslkit propose``: SIGKILL this process after saving that many chunks
KILL_AFTER_ENV = "SSLKIT_TEST_KILL_AFTER_CHUNKS"
#: images per resumable chunk of the image-embedding phase
EMBED_CHUNK = 512


# =============================================================================================
# Pure pieces (unit-tested against brute force / hand-built inputs)
# =============================================================================================

def knn_search(feats: torch.Tensor, k: int, block_bytes: int = 256 << 20,
               progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` neighbours of every row of ``feats`` (L2-normalised) by dot product.

    The query's own row is excluded explicitly (an identical image elsewhere is a valid
    neighbour); results are sorted by decreasing similarity, ties (incl. at the k-th place)
    broken by the lower row. Queries run in blocks of ``block_bytes`` of similarities
    (``rows × N × 4`` bytes), so memory is ``N·d + block`` whatever N is. Returns
    ``(ids (N, k) int64, sims (N, k) float32)``; ``k`` must be ``< N``.
    """
    n = feats.shape[0]
    if not 0 < k < n:
        raise ValueError(f"k={k} needs 0 < k < N={n}")
    rows = int(max(1, min(n, block_bytes // (4 * n))))
    ids = np.empty((n, k), np.int64)
    sims = np.empty((n, k), np.float32)
    for s in range(0, n, rows):
        e = min(n, s + rows)
        sim = feats[s:e] @ feats.T
        sim[torch.arange(e - s), torch.arange(s, e)] = -math.inf
        v, i = sim.topk(k, dim=1)
        o = torch.argsort(i, dim=1)  # ties inside the top k: lower row first (stable sort by -sim next)
        i, v = i.gather(1, o), v.gather(1, o)
        o = torch.argsort(-v, dim=1, stable=True)
        i, v = i.gather(1, o), v.gather(1, o)
        # rows with more than k candidates tied at the k-th value: take the lowest rows among them
        crowded = torch.nonzero((sim >= v[:, -1:]).sum(1) > k).flatten().tolist()
        for r in crowded:
            cand = torch.nonzero(sim[r] >= v[r, -1]).flatten()
            cand = cand[torch.argsort(-sim[r, cand], stable=True)][:k]  # nonzero is ascending: stable keeps it
            i[r], v[r] = cand, sim[r, cand]
        ids[s:e] = i.cpu().numpy()
        sims[s:e] = v.float().cpu().numpy()
        if progress is not None:
            progress(e - s)
    return ids, sims


def pair_count(num_query_boxes: int, ratio: float = PAIR_RATIO) -> int:
    """RoI pairs kept per (image, neighbour): ``max(1, int(ratio · B_q))`` [C]; 0 without boxes."""
    return max(1, int(num_query_boxes * ratio)) if num_query_boxes > 0 else 0


def top_pairs(sim: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``n`` largest entries of a ``(B_q, B_k)`` similarity matrix, flattened row-major, in
    descending order (ties → lower flat index). Returns (query box idx, neighbour box idx, score)."""
    bk = sim.shape[1]
    flat = sim.reshape(-1)
    n = min(n, flat.numel())
    order = torch.sort(flat, descending=True, stable=True).indices[:n]
    return order // bk, order % bk, flat[order]


def pixel_box(box, height: int, width: int) -> tuple[int, int, int, int]:
    """A float ``xyxy`` box as whole pixels inside the image (at least 1 × 1): ORL crops integer boxes."""
    x1, y1, x2, y2 = (float(v) for v in box)
    a = min(max(round(x1), 0), width - 1)
    b = min(max(round(y1), 0), height - 1)
    c = min(max(round(x2), a + 1), width)
    d = min(max(round(y2), b + 1), height)
    return a, b, c, d


def jitter_box(box, height: int, width: int, generator: torch.Generator | None = None,
               tries: int = JITTER_TRIES) -> tuple[np.ndarray, bool]:
    """ORL's intra-RoI box jitter (paper §3.1 "Stage 3"; spec §2.4.2, acceptance rule [C]).

    With ``(x, y, w, h)`` the box in whole pixels, each attempt draws an area ``U(0.5, 2)·w·h``,
    an absolute aspect ``w′/h′ = exp(U(ln ½, ln 2))`` and a centre shift ``U(−½, ½)·(w, h)``,
    rounds to whole pixels, and is accepted iff it lies inside the image and IoU(b′, b) > 0.5.
    All ``tries`` attempts are drawn at once (same distribution as drawing them in turn); the
    first accepted one is returned with True, else the box itself with False. Returns ``xyxy``.
    """
    x1, y1, x2, y2 = pixel_box(box, height, width)
    w, h = x2 - x1, y2 - y1
    u = torch.rand(tries, 4, generator=generator, dtype=torch.float64)
    area = (JITTER_AREA[0] + (JITTER_AREA[1] - JITTER_AREA[0]) * u[:, 0]) * (w * h)
    lo, hi = math.log(JITTER_ASPECT[0]), math.log(JITTER_ASPECT[1])
    r = torch.exp(lo + (hi - lo) * u[:, 1])
    nw = torch.round(torch.sqrt(area * r))
    nh = torch.round(torch.sqrt(area / r))
    cx = x1 + w / 2 + (u[:, 2] - 0.5) * (2 * JITTER_SHIFT) * w
    cy = y1 + h / 2 + (u[:, 3] - 0.5) * (2 * JITTER_SHIFT) * h
    nx = torch.round(cx - nw / 2)
    ny = torch.round(cy - nh / 2)
    iw = (torch.minimum(nx + nw, torch.tensor(float(x2))) - torch.maximum(nx, torch.tensor(float(x1)))).clamp(min=0)
    ih = (torch.minimum(ny + nh, torch.tensor(float(y2))) - torch.maximum(ny, torch.tensor(float(y1)))).clamp(min=0)
    inter = iw * ih
    iou = inter / (nw * nh + w * h - inter)
    ok = (nx >= 0) & (ny >= 0) & (nx + nw <= width) & (ny + nh <= height) & (nw >= 1) & (nh >= 1) & \
        (iou > JITTER_MIN_IOU)
    hit = torch.nonzero(ok).flatten()
    if len(hit) == 0:
        return np.array([x1, y1, x2, y2], np.float32), False
    j = int(hit[0])
    return np.array([nx[j], ny[j], nx[j] + nw[j], ny[j] + nh[j]], np.float32), True


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


# =============================================================================================
# The pairs file
# =============================================================================================

def ragged_fields(k: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The ragged fields of an orl-pairs file (docs/artefacts.md, "sslkit.views: orl-pairs")."""
    return {
        "boxes": ("float32", (4,)),  # filtered boxes, xyxy original pixels, proposal order
        "knn_ids": ("int64", (k,)),  # one row: neighbour rows of /images, nearest first
        "knn_image_ids": ("int64", (k,)),  # one row: their image ids
        "knn_sims": ("float32", (k,)),  # one row: cosine similarities
        "pairs": ("int32", (3,)),  # [neighbour slot k, query box, neighbour box], by slot, best first
        "pair_scores": ("float32", ()),  # cosine of each pair's RoI features
    }


class OrlPairs:
    """An ``sslkit.views`` file of kind ``orl-pairs``, validated and held in memory (numpy).

    For stage 3 the tables are read once in the main process; DataLoader workers fork and
    share them. ``boxes(i)``, ``neighbours(i)``, ``pairs(i)`` index rows of ``/images``.
    """

    def __init__(self, path: str | os.PathLike, allow_shard: bool = False):
        from sslkit.io.artefacts import Artefact

        self.path = Path(path)
        with Artefact(path, FORMAT) as a:
            kind = a.attrs.get("views_kind")
            if kind != VIEWS_KIND:
                raise UserError(f"is a views file of kind {kind!r}, expected {VIEWS_KIND!r}", path,
                                "make ORL pairs with: sslkit sample-views IMAGES --method orl --proposals P.h5 "
                                "--ckpt STAGE1.pth -o pairs.h5")
            self.params = a.params
            if self.params.get("shard") and not allow_shard:
                s = self.params["shard"]
                raise UserError(f"is shard {s['index']}/{s['count']} of a sample-views job", path,
                                "join the shards first: sslkit sample-views --method orl --merge part*.h5 -o pairs.h5")
            missing = [f for f in ragged_fields(1) if f not in a.ragged_names]
            if missing:
                raise UserError(f"damaged orl-pairs file (no field {missing[0]!r})", path)
            self.attrs = a.attrs
            self.file_name = list(a.file_name)
            self.image_id = a.image_id.copy()
            self.height = a.height.copy()
            self.width = a.width.copy()
            self.skipped = a.skipped
            f = a._f
            self.box_offsets = a.offsets("boxes")
            self.box_data = f["boxes"]["data"][:]
            self.knn_ids = f["knn_ids"]["data"][:]
            self.knn_sims = f["knn_sims"]["data"][:]
            self.pair_offsets = a.offsets("pairs")
            self.pair_data = f["pairs"]["data"][:]
            self.pair_scores = f["pair_scores"]["data"][:]
        n = len(self.file_name)
        if self.knn_ids.shape[0] != n or (n and self.knn_ids.shape[1] < 1):
            raise UserError("damaged orl-pairs file (knn_ids does not have one row per image)", path)
        self.k = int(self.knn_ids.shape[1]) if n else 0
        self.pair_ratio = float(self.params.get("pair_ratio", PAIR_RATIO))
        self.row = {name: i for i, name in enumerate(self.file_name)}

    def __len__(self) -> int:
        return len(self.file_name)

    def boxes(self, i: int) -> np.ndarray:
        return self.box_data[self.box_offsets[i]:self.box_offsets[i + 1]]

    def neighbours(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.knn_ids[i], self.knn_sims[i]

    def pairs(self, i: int, slot: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(P, 3) pair rows ``[slot, query box, neighbour box]`` and their scores; of one slot if given."""
        lo, hi = self.pair_offsets[i], self.pair_offsets[i + 1]
        p, s = self.pair_data[lo:hi], self.pair_scores[lo:hi]
        if slot is None:
            return p, s
        a, b = np.searchsorted(p[:, 0], [slot, slot + 1])  # rows are grouped by slot, in slot order
        return p[a:b], s[a:b]

    def stats(self) -> dict:
        nb = np.diff(self.box_offsets)
        npairs = np.diff(self.pair_offsets)
        return {"images": len(self), "k": self.k, "images_without_boxes": int((nb == 0).sum()),
                "images_without_pairs": int((npairs == 0).sum()), "pairs": int(npairs.sum())}


# =============================================================================================
# Stage 2
# =============================================================================================

@dataclass(frozen=True)
class Stage2Params:
    """Everything that determines the content of an orl-pairs file (recorded in its ``params``)."""

    knn: int = KNN
    pair_ratio: float = PAIR_RATIO
    image_size: int = IMAGE_SIZE
    roi_size: int = ROI_SIZE
    image_feature: str = "auto"  # auto | projector | backbone
    roi_feature: str = "backbone"  # backbone | projector
    encoder: str | None = None  # the checkpoint's default encoder when None
    filter: dict = field(default_factory=lambda: {**ORL_DEFAULTS, "fallback": True})  # spec §2.3 (iv)

    def check(self) -> None:
        if self.knn < 1:
            raise UserError(f"--knn must be at least 1 (got {self.knn})")
        if not 0 < self.pair_ratio <= 1:
            raise UserError(f"--pair-ratio must be in (0, 1] (got {self.pair_ratio})")
        for name in ("image_size", "roi_size"):
            if getattr(self, name) < 32:
                raise UserError(f"--{name.replace('_', '-')} must be at least 32 (got {getattr(self, name)})")
        if self.image_feature not in ("auto", "projector", "backbone"):
            raise UserError(f"--image-feature {self.image_feature!r} is not auto, projector or backbone")
        if self.roi_feature not in ("projector", "backbone"):
            raise UserError(f"--roi-feature {self.roi_feature!r} is not backbone or projector")
        f = self.filter
        if f["min_size"] < 0 or f["max_ratio"] < 0 or f["top_n"] < 0 or not 0 <= f["max_iou"] <= 1:
            raise UserError("filter values: --min-size, --max-ratio, --top-n >= 0 and 0 <= --max-iou <= 1")


@dataclass(frozen=True)
class RunOptions:
    """How stage 2 runs. Not recorded as content; the device type, ``batch_size`` and ``chunk_size``
    fix the float arithmetic (last-bit differences), so they are part of the resume key."""

    device: str = "auto"
    batch_size: int = 256  # images (embedding phase) or RoI crops (RoI phase) per forward
    chunk_size: int = 32  # query images per resumable chunk of the RoI phase
    workers: int = 2  # decoding processes
    knn_block_mb: int = 256  # similarity block of the kNN search
    shard: tuple[int, int] | None = None
    overwrite: bool = False
    quiet: bool = False


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


def load_embedder(ckpt: str | os.PathLike, p: Stage2Params) -> tuple[Embedder, dict]:
    """The embedder of any weights file sslkit reads, and what it is (recorded in the output).

    Any sslkit checkpoint works through its default encoder (or ``p.encoder``); its projector is
    used when it has BYOL's layout (BYOL, ORL, DetCon-B, UniVIP), otherwise (DetCon-S, MoCo v2,
    SimCLR, exported backbones) the image kNN falls back to the GAP backbone feature.
    """
    from sslkit.methods.orl import checkpoint_heads
    from sslkit.models.backbones import build_backbone

    sd, meta, projector_sd, _ = checkpoint_heads(ckpt, p.encoder)
    backbone = build_backbone(meta["arch"])
    backbone.load_state_dict(sd, strict=True)
    projector = None
    if projector_sd is not None:
        from sslkit.models.heads import byol_mlp

        hidden, dim = projector_sd["0.weight"].shape[0], projector_sd["3.weight"].shape[0]
        projector = byol_mlp(backbone.feat_dim, hidden, dim)
        projector.load_state_dict(projector_sd, strict=True)
    want_proj = {"auto": projector is not None, "projector": True, "backbone": False}[p.image_feature]
    if (want_proj or p.roi_feature == "projector") and projector is None:
        raise UserError(f"has no BYOL-style projector (method {meta.get('method') or 'unknown'})", ckpt,
                        "use --image-feature backbone --roi-feature backbone")
    roi_proj = p.roi_feature == "projector"
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
    if p.image_feature == "auto" and not want_proj:
        info["image_feature"]["note"] = "no BYOL-style projector in the checkpoint: GAP backbone feature used"
    return net, info


def _digest_records(records) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.image_id}\t{r.file_name}\n".encode())
    return h.hexdigest()


class _CandidateBoxes:
    """The filtered boxes of every source image, joined by file name: selective-search proposals of
    an ``sslkit.proposals`` file, or the ground-truth boxes of a COCO json (Table 5(d), "GT")."""

    def __init__(self, boxes: dict[str, np.ndarray], hw: dict[str, tuple[int, int]], record: dict):
        self.boxes = boxes
        self.hw = hw
        self.record = record  # what the output's params say about the boxes

    def get(self, file_name: str) -> np.ndarray:
        return self.boxes.get(file_name, np.zeros((0, 4), np.float32))

    @staticmethod
    def _filter(arr: np.ndarray, filt: dict) -> np.ndarray:
        from sslkit.proposals.filters import orl_filter

        keep = orl_filter(arr, filt["min_size"] or None, filt["max_ratio"] or None,
                          filt["max_iou"] if filt["max_iou"] < 1 else None, filt["top_n"] or None, filt["fallback"])
        return np.asarray(arr[keep], np.float32).reshape(-1, 4)

    @classmethod
    def from_proposals(cls, path: Path, source: ImageSource, filt: dict) -> _CandidateBoxes:
        from sslkit.io.artefacts import Artefact

        with Artefact(path, "sslkit.proposals") as a:
            if "boxes" not in a.ragged_names:
                raise UserError("has no boxes (it holds label maps)", path,
                                "make boxes with: sslkit propose IMAGES --algo selective-search -o props.h5")
            params = a.params
            skipped = {fn for fn, _ in a.skipped}
            missing = [r.file_name for r in source if r.file_name not in a._index_by_name and r.file_name not in skipped]
            if missing:
                raise UserError(f"has no proposals for {len(missing)} of the {len(source)} images "
                                f"(e.g. {missing[0]})", path, "run sslkit propose on the same images (folder or COCO json)")
            stored = dict(params.get("filter") or {})
            same = "boxes_filtered" in a.ragged_names and bool(stored) and all(
                float(stored.get(k, -1)) == float(filt[k]) for k in ("min_size", "max_ratio", "max_iou", "top_n")) \
                and bool(stored.get("fallback", True)) == bool(filt["fallback"])
            name = "boxes_filtered" if same else "boxes"
            field = name if same else "boxes (refiltered)"
            if not same and params.get("max_boxes"):
                field += f"; the file kept only the first {params['max_boxes']} raw boxes"
            want = {r.file_name for r in source}
            boxes, hw = {}, {}
            for i, arr in a.iter_ragged(name):
                fn = a.file_name[i]
                if fn in want:
                    boxes[fn] = np.asarray(arr, np.float32).reshape(-1, 4) if same else cls._filter(arr, filt)
                    hw[fn] = (int(a.height[i]), int(a.width[i]))
            record = {"source": "proposals", "path": str(Path(path).resolve()), "created": a.attrs.get("created"),
                      "field": field, **{k: params.get(k) for k in ("algo", "mode", "max_side", "opencv_version")}}
        return cls(boxes, hw, record)

    @classmethod
    def from_coco(cls, path: Path, source: ImageSource, filt: dict) -> _CandidateBoxes:
        from sslkit.io.coco import annotations_by_image, coco_boxes_xyxy, load_coco

        coco = load_coco(path)
        by_name = {im["file_name"]: im for im in coco["images"]}
        missing = [r.file_name for r in source if r.file_name not in by_name]
        if missing:
            raise UserError(f"has no entry for {len(missing)} of the {len(source)} images (e.g. {missing[0]})", path,
                            "pass the COCO json of the same images")
        anns = annotations_by_image(coco)
        boxes, hw = {}, {}
        for r in source:
            im = by_name[r.file_name]
            boxes[r.file_name] = cls._filter(coco_boxes_xyxy(anns.get(im["id"], [])), filt)
            if im.get("height") and im.get("width"):
                hw[r.file_name] = (int(im["height"]), int(im["width"]))
        record = {"source": "gt", "path": str(Path(path).resolve()),
                  "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
                  "field": "COCO boxes (non-crowd, annotation order), filtered"}
        return cls(boxes, hw, record)


class _EmbedImages(torch.utils.data.Dataset):
    """Item ``i`` → ``(i, (1, 3, S, S) input or None, (h, w), reason)``: Resize(S/0.875) → CenterCrop(S)."""

    def __init__(self, records, prep):
        self.records = records
        self.prep = prep

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        from sslkit.io.images import ImageDecodeError, load_rgb

        try:
            arr, _ = load_rgb(self.records[i].path)
        except ImageDecodeError as e:
            return i, None, (0, 0), e.reason
        return i, self.prep.image(arr), arr.shape[:2], None


class _DecodeImages(torch.utils.data.Dataset):
    """Item ``i`` → ``((chunk, row), (3, H, W) uint8 tensor or None, reason)`` for ``tasks[i] = (chunk, row)``
    (an int array: N·(1+K) tasks of a COCO-sized run stay a few MB)."""

    def __init__(self, tasks: np.ndarray, paths: list[str]):
        self.tasks = tasks
        self.paths = paths

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int):
        from sslkit.io.images import ImageDecodeError, load_rgb

        c, j = (int(v) for v in self.tasks[i])
        try:
            arr, _ = load_rgb(self.paths[j])
        except ImageDecodeError as e:
            return (c, j), None, e.reason
        arr = arr if arr.flags.writeable else arr.copy()  # PIL-backed arrays are read-only
        return (c, j), torch.from_numpy(arr).permute(2, 0, 1).contiguous(), None


def _loader(ds, workers: int, pin: bool):
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


@dataclass
class Stage2Summary:
    output: Path
    num_images: int
    skipped: list[tuple[str, str]]
    seconds: dict
    stats: dict
    resumed: dict

    def as_dict(self) -> dict:
        return {"output": str(self.output), "num_images": self.num_images,
                "skipped": [{"file_name": f, "reason": r} for f, r in self.skipped],
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}, **self.stats,
                "resumed": self.resumed}


def _maybe_kill(saved: int) -> None:
    n = int(os.environ.get(KILL_AFTER_ENV, "0") or 0)
    if n and saved >= n:
        os.kill(os.getpid(), signal.SIGKILL)


def sample_orl_views(source: ImageSource, proposals: Path | None, ckpt: Path, output: Path, p: Stage2Params,
                     run: RunOptions, coco: Path | None = None) -> Stage2Summary:
    """Stage 2 of ORL over ``source`` into the orl-pairs artefact ``output``; resumable.

    The boxes come from ``proposals`` (an ``sslkit.proposals`` file) or, for the paper's Table 5(d),
    the ground truth of the COCO json ``coco``; either way through ORL's filter ``p.filter``.
    Progress is staged in ``OUTPUT.partial/``: ``embed/`` (chunks of image embeddings),
    ``knn.npz`` and ``pairs/`` (chunks of ``chunk_size`` query images: their boxes, neighbours
    and pairs). A rerun of the same command after any interruption continues from there and
    writes the same file as an uninterrupted run; the folder is removed at the end.
    """
    from sslkit import __version__
    from sslkit.console import info, progress
    from sslkit.eval.features import Preprocess
    from sslkit.io.artefacts import ArtefactWriter, ChunkStage, check_output
    from sslkit.io.atomic import atomic_path
    from sslkit.proposals.driver import job_id, shard_range, source_params

    p.check()
    for name in ("batch_size", "chunk_size", "knn_block_mb"):
        if getattr(run, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if run.workers < 0:
        raise UserError("--workers must be >= 0")
    output = Path(output)
    check_output(output, FORMAT, run.overwrite)
    device = resolve_device(run.device)
    if (proposals is None) == (coco is None):
        raise UserError("pass the boxes as either --proposals P.h5 or --source gt --coco FILE")
    props = (_CandidateBoxes.from_proposals(Path(proposals), source, p.filter) if proposals is not None
             else _CandidateBoxes.from_coco(Path(coco), source, p.filter))
    net, ck_info = load_embedder(ckpt, p)
    net.to(device)
    prep = Preprocess(p.image_size)

    content = {"method": "orl", "stage2": asdict(p), "source": source_params(source), "proposals": props.record,
               "checkpoint": ck_info}
    # what the output depends on, paths left out (inputs may move between a kill and the rerun); the
    # device type and batch/chunk sizes fix the float arithmetic, so a resumed run equals an uninterrupted one
    job = {"stage2": content["stage2"], "images": _digest_records(source.records),
           "proposals": {k: v for k, v in content["proposals"].items() if k != "path"},
           "checkpoint": {k: v for k, v in ck_info.items() if k != "path"}, "device": device.type,
           "batch_size": run.batch_size, "chunk_size": run.chunk_size, "knn_block_mb": run.knn_block_mb,
           "embed_chunk": EMBED_CHUNK, "sslkit_version": __version__}
    job_key = job_id({"job": job}, source)
    stage_root = output.with_name(output.name + ".partial")
    if run.overwrite and stage_root.exists():
        _remove_stage(stage_root)
    try:
        embed_stage = ChunkStage(stage_root / "embed", job)
        pair_stage = ChunkStage(stage_root / "pairs", {**job, "shard": list(run.shard) if run.shard else None})
    except UserError as e:
        raise UserError(e.what, e.path, "rerun the same command, or pass --overwrite to start over") from None
    resumed = {"embed_chunks": len(embed_stage.done()), "pair_chunks": len(pair_stage.done())}
    if resumed["embed_chunks"] or resumed["pair_chunks"]:
        info(f"resuming from {stage_root}: {resumed['embed_chunks']} embedding and {resumed['pair_chunks']} "
             "pair chunks done", run.quiet)
    seconds: dict[str, float] = {}
    pin = device.type == "cuda"

    with progress(run.quiet) as bar:
        # -- 1. image embeddings -----------------------------------------------------------------
        t0 = time.perf_counter()
        recs = source.records
        chunks = [list(range(s, min(len(recs), s + EMBED_CHUNK))) for s in range(0, len(recs), EMBED_CHUNK)]
        done = embed_stage.done() & set(range(len(chunks)))
        task = bar.add_task("embed images", total=len(recs), completed=sum(len(chunks[c]) for c in done))
        todo = [c for c in range(len(chunks)) if c not in done]
        if todo:
            order = [i for c in todo for i in chunks[c]]
            it = iter(_loader(_EmbedImages([recs[i] for i in order], prep), run.workers, pin))
            with torch.inference_mode():
                for c in todo:
                    embed_stage.save(c, *_embed_chunk(net, it, len(chunks[c]), recs, order, props, run.batch_size,
                                                      device, lambda: bar.advance(task)))
        rows, skipped_all, feats = [], [], []
        for c in range(len(chunks)):
            rs, sk = embed_stage.load(c)
            rows += rs
            skipped_all += sk
            feats += [r.ragged["feat"][0] for r in rs]
        seconds["embed"] = time.perf_counter() - t0
        n = len(rows)
        if n < 2:
            raise UserError(f"only {n} readable image(s); ORL's kNN needs at least 2", source.root)
        k = min(p.knn, n - 1)
        if k < p.knn:
            from sslkit.console import warn

            warn(f"only {n} images: using K = {k} neighbours instead of {p.knn}")

        # -- 2. kNN --------------------------------------------------------------------------------
        t0 = time.perf_counter()
        knn_path = stage_root / "knn.npz"
        ids = sims = None
        if knn_path.exists():
            with np.load(knn_path) as z:
                if str(z["job"]) == job_key:
                    ids, sims = z["ids"], z["sims"]
        if ids is None:
            task = bar.add_task("kNN search", total=n)
            bank = torch.from_numpy(np.stack(feats)).to(device)
            ids, sims = knn_search(bank, k, run.knn_block_mb << 20, progress=lambda m: bar.advance(task, m))
            del bank
            with atomic_path(knn_path) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, ids=ids, sims=sims, job=np.array(job_key))
        seconds["knn"] = time.perf_counter() - t0

        # -- 3. RoI embeddings and pairs -----------------------------------------------------------
        t0 = time.perf_counter()
        boxes = [props.get(r.file_name) for r in rows]
        lo, hi = shard_range(n, *run.shard) if run.shard else (0, n)
        qchunks = [list(range(s, min(hi, s + run.chunk_size))) for s in range(lo, hi, run.chunk_size)]
        done = pair_stage.done() & set(range(len(qchunks)))
        todo = [c for c in range(len(qchunks)) if c not in done]
        # each chunk embeds the RoIs of its queries and their neighbours once: sorted unique rows
        unions = {c: np.union1d(qchunks[c], ids[qchunks[c]].ravel()) for c in todo}
        task = bar.add_task("RoI pairs", total=hi - lo, completed=sum(len(qchunks[c]) for c in done))
        tasks = np.concatenate([np.stack([np.full(len(unions[c]), c), unions[c]], 1) for c in todo]) \
            if todo else np.zeros((0, 2), np.int64)
        if len(tasks):
            paths = [str(source.by_name(r.file_name).path) for r in rows]
            it = iter(_loader(_DecodeImages(tasks, paths), run.workers, pin))
            with torch.inference_mode():
                for saved, c in enumerate(todo, start=1):
                    roi = _embed_rois(net, it, c, unions[c], rows, boxes, p.roi_size, prep.mean, prep.std,
                                      run.batch_size, device)
                    out = []
                    for q in qchunks[c]:
                        out.append(_pairs_record(q, rows, boxes[q], ids[q], sims[q], roi, p.pair_ratio))
                        bar.advance(task)
                    pair_stage.save(c, out, [])
                    _maybe_kill(saved)
        seconds["pairs"] = time.perf_counter() - t0

    # -- 4. assemble: rows in table order; another shard's rows get boxes and neighbours, no pairs --
    t0 = time.perf_counter()
    shard_info = None
    if run.shard:
        shard_info = {"index": run.shard[0], "count": run.shard[1], "start": lo, "stop": hi, "num_images": n,
                      "job": job_key}
    params = {**content, "knn": k, "pair_ratio": p.pair_ratio, "shard": shard_info}
    stats = {"pairs": 0, "images_without_boxes": sum(1 for b in boxes if len(b) == 0), "images_without_pairs": 0}

    def records():
        for j in range(lo):
            yield _pairs_record(j, rows, boxes[j], ids[j], sims[j], None, p.pair_ratio)
        for c in range(len(qchunks)):
            yield from pair_stage.load(c)[0]
        for j in range(hi, n):
            yield _pairs_record(j, rows, boxes[j], ids[j], sims[j], None, p.pair_ratio)

    with ArtefactWriter(output, FORMAT, params=params, ragged=ragged_fields(k), attrs=_attrs(k, p, ck_info)) as w:
        for s in skipped_all:
            w.add_skipped(*s)
        for j, rec in enumerate(records()):
            npairs = len(rec.ragged["pairs"])
            stats["pairs"] += npairs
            stats["images_without_pairs"] += int(npairs == 0 and lo <= j < hi)
            w.add(rec)
        w._f.attrs.update(num_pairs=stats["pairs"], images_without_boxes=stats["images_without_boxes"],
                          images_without_pairs=stats["images_without_pairs"])
    _remove_stage(stage_root)
    seconds["write"] = time.perf_counter() - t0
    return Stage2Summary(output, n, skipped_all, seconds, {"k": k, **stats}, resumed)


def merge_orl_shards(inputs: Sequence[Path], output: Path, *, overwrite: bool = False,
                     quiet: bool = False) -> Stage2Summary:
    """Join the ``--shard i/n`` files of one stage-2 job into the file a single run writes.

    Every shard file holds the whole image table with boxes and neighbours; each computed the
    pairs of its contiguous range of query rows, which are taken from it.
    """
    from sslkit.console import progress
    from sslkit.io.artefacts import Artefact, ArtefactWriter, Record, check_output

    output = Path(output)
    if any(Path(q).resolve() == output.resolve() for q in inputs):
        raise UserError("the merge output is one of its inputs", output, "choose another -o")
    check_output(output, FORMAT, overwrite)
    t0 = time.perf_counter()
    shards = []
    try:
        for q in inputs:
            a = Artefact(q, FORMAT)
            shards.append(a)
            if a.attrs.get("views_kind") != VIEWS_KIND:
                raise UserError(f"is a {a.attrs.get('views_kind')!r} views file, not an ORL shard", q)
            if not a.params.get("shard"):
                raise UserError("not a shard (it was made without --shard)", q, "merge only files made with --shard i/n")
        first = shards[0].params["shard"]
        seen: dict[int, Path] = {}
        for a in shards:
            s = a.params["shard"]
            if s["job"] != first["job"] or s["count"] != first["count"] or a.file_name != shards[0].file_name:
                raise UserError(f"is a shard of another job than {shards[0].path} (other images, checkpoint or "
                                "parameters)", a.path, "merge the shards of one sample-views job")
            if s["index"] in seen:
                raise UserError(f"shard {s['index']}/{s['count']} is given twice ({seen[s['index']]})", a.path)
            seen[s["index"]] = a.path
        missing = sorted(set(range(first["count"])) - set(seen))
        if missing:
            raise UserError(f"missing shard(s) {', '.join(map(str, missing))} of {first['count']}", shards[0].path,
                            "pass every shard file of the job")
        shards.sort(key=lambda a: a.params["shard"]["index"])
        base = shards[0]
        k = int(base.attrs["knn"])
        params = {**base.params, "shard": None}
        attrs = {key: base.attrs[key] for key in _attrs(k, Stage2Params(), _NO_CK) if key in base.attrs}
        stats = {"pairs": 0, "images_without_boxes": 0, "images_without_pairs": 0}
        with progress(quiet) as bar, ArtefactWriter(output, FORMAT, params=params, ragged=ragged_fields(k),
                                                    attrs=attrs) as w:
            task = bar.add_task("merge", total=len(base))
            for fn, why in base.skipped:
                w.add_skipped(fn, why)
            for a in shards:
                s = a.params["shard"]
                for j in range(s["start"], s["stop"]):
                    rag = {name: a.ragged(name, j) for name in ragged_fields(k)}
                    stats["pairs"] += len(rag["pairs"])
                    stats["images_without_boxes"] += int(len(rag["boxes"]) == 0)
                    stats["images_without_pairs"] += int(len(rag["pairs"]) == 0)
                    w.add(Record(int(a.image_id[j]), a.file_name[j], int(a.height[j]), int(a.width[j]), rag))
                    bar.advance(task)
            w._f.attrs.update(num_pairs=stats["pairs"], images_without_boxes=stats["images_without_boxes"],
                              images_without_pairs=stats["images_without_pairs"])
        return Stage2Summary(output, len(base), base.skipped, {"merge": time.perf_counter() - t0},
                             {"k": k, **stats}, {})
    finally:
        for a in shards:
            a.close()


_NO_CK = {"image_feature": {"name": ""}, "roi_feature": {"name": ""}}


def _attrs(k: int, p: Stage2Params, ck: dict) -> dict:
    return {"views_kind": VIEWS_KIND, "knn": k, "pair_ratio": p.pair_ratio,
            "image_feature": ck["image_feature"]["name"], "roi_feature": ck["roi_feature"]["name"],
            "box_format": "xyxy", "pairs_columns": "neighbour_slot,query_box,neighbour_box"}


def _embed_chunk(net: Embedder, it, count: int, recs, order: list[int], props: _CandidateBoxes, batch_size: int,
                 device, advance) -> tuple[list, list[tuple[str, str]]]:
    """The next ``count`` images of ``it`` as records holding their image feature (field ``feat``),
    in forward passes of ``batch_size`` images; unreadable ones as ``(file_name, reason)``."""
    from sslkit.io.artefacts import Record

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
        want = props.hw.get(r.file_name)
        if want is not None and tuple(hw) != want:
            raise UserError(f"is {hw[0]}x{hw[1]} but the proposals were made on a {want[0]}x{want[1]} image", r.path,
                            "were the proposals made from other images?")
        batch.append((r, x, hw))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return out, skipped


def _embed_rois(net: Embedder, it, chunk: int, union: np.ndarray, rows, boxes, size: int, mean, std,
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


def _pairs_record(q: int, rows, boxes: np.ndarray, ids: np.ndarray, sims: np.ndarray, roi, ratio: float):
    """Row ``q`` of the output: its boxes, neighbours and (when ``roi`` features are given) its pairs,
    grouped by neighbour slot in slot order, each slot's best pair first."""
    from sslkit.io.artefacts import Record

    pairs, scores = [np.zeros((0, 3), np.int32)], [np.zeros(0, np.float32)]
    if roi is not None and len(boxes):
        n = pair_count(len(boxes), ratio)
        for slot, j in enumerate(ids.tolist()):
            if roi[j].shape[0] == 0:  # a neighbour without boxes gives no pairs
                continue
            qi, ni, sc = top_pairs(roi[q] @ roi[j].T, n)
            pairs.append(np.stack([np.full(len(qi), slot), qi.cpu().numpy(), ni.cpu().numpy()], 1).astype(np.int32))
            scores.append(sc.float().cpu().numpy())
    r = rows[q]
    return Record(r.image_id, r.file_name, r.height, r.width, {
        "boxes": boxes, "knn_ids": ids[None], "knn_image_ids": np.array([[rows[j].image_id for j in ids]], np.int64),
        "knn_sims": sims[None], "pairs": np.concatenate(pairs), "pair_scores": np.concatenate(scores)})


def _remove_stage(root: Path) -> None:
    import shutil

    if root.exists():
        shutil.rmtree(root)


# =============================================================================================
# Stage 3
# =============================================================================================

def patch_pipeline(aug):
    """A view pipeline of :func:`~sslkit.transforms.build_view` without its RandomResizedCrop: for
    RoI patches, where "the crop is the box" (paper §3.2 "Image augmentations"). Input: a PIL
    image already cropped and resized to the patch size."""
    from torchvision.transforms import v2

    from sslkit.transforms import build_view

    steps = build_view(aug).transforms
    if not isinstance(steps[0], v2.RandomResizedCrop):
        raise RuntimeError("build_view no longer starts with RandomResizedCrop; update patch_pipeline")
    return v2.Compose(steps[1:])


class ORLViews:
    """The pixel side of a stage-3 sample: BYOL's two global pipelines and the two patch pipelines.

    Random draws come from torch's global generator (the engine seeds it per sample).
    """

    def __init__(self, image_size: int = IMAGE_SIZE, patch_size: int = PATCH_SIZE, blur_reference: int | None = None,
                 view_aug: str | None = None):
        from sslkit.transforms import build_view, byol_views, tune_views

        self.image_size = image_size
        self.patch_size = patch_size
        self.global_views = [build_view(v) for v in tune_views(byol_views(image_size), blur_reference, view_aug)]
        self.patch_views = [patch_pipeline(v) for v in tune_views(byol_views(patch_size), blur_reference, view_aug)]

    def crop(self, image, box) -> object:
        """The whole-pixel box of a PIL image resized to ``patch_size²`` (bilinear; aspect not kept)."""
        from PIL import Image

        return image.resize((self.patch_size, self.patch_size), Image.Resampling.BILINEAR,
                            box=pixel_box(box, image.height, image.width))

    def patches(self, image_a, box_a, image_b, box_b) -> tuple[torch.Tensor, torch.Tensor]:
        """The first patch through pipeline 1 (blur 1.0, no solarize), the second through pipeline 2."""
        return self.patch_views[0](self.crop(image_a, box_a)), self.patch_views[1](self.crop(image_b, box_b))


class ORLDataset(ImageDataset):
    """Stage-3 samples: a dict of ``global`` (v, v′), ``intra`` (p, p′), ``inter`` (p1, p2) and
    ``fallback`` (3,) = [image had no boxes, jitter fell back to the box, no pair (intra pair used)].

    Per sample (paper §3.1 "Stage 3", spec §2.4): a uniform box of the image's filtered boxes and its
    jitter; a uniform neighbour slot among the first ``k_used`` that have pairs, then a uniform pair of
    it (of its first ``max(1, int(pair_ratio_used · B_q))`` when that is set) [C draws a slot among all
    K; sslkit skips slots without pairs, which only happens when a neighbour has no boxes]. Images
    without boxes use the whole image as their box; without a usable pair, the intra pair's boxes
    (re-augmented) form the inter pair. Branches not in ``branches`` are not computed.
    """

    def __init__(self, source: ImageSource, pairs: OrlPairs, views: ORLViews, seed: int, k_used: int = 0,
                 pair_ratio_used: float = 0.0, branches: Sequence[str] = ("global", "intra", "inter")):
        skipped = {fn for fn, _ in pairs.skipped}
        missing = [r.file_name for r in source if r.file_name not in pairs.row and r.file_name not in skipped]
        if missing:
            raise UserError(f"has no views for {len(missing)} of the {len(source)} training images "
                            f"(e.g. {missing[0]})", pairs.path,
                            "run sslkit sample-views on the same images (folder or COCO json) as pretrain")
        super().__init__(source, views, seed)
        self.pairs = pairs
        self.k_used = k_used or pairs.k
        self.pair_ratio_used = pair_ratio_used
        self.branches = tuple(branches)

    def _neighbour_path(self, file_name: str) -> Path:
        rec = self.source.by_name(file_name)
        return rec.path if rec is not None else Path(self.source.root) / file_name

    def _pick_pair(self, row: int) -> tuple[int, np.ndarray] | None:
        """(neighbour row, one pair row [slot, query box, neighbour box]) or None when no slot has pairs."""
        pairs, _ = self.pairs.pairs(row)
        if len(pairs) == 0:
            return None
        slots = np.unique(pairs[:, 0])
        slots = slots[slots < self.k_used]
        if len(slots) == 0:
            return None
        slot = int(slots[int(torch.randint(len(slots), ()))])
        cand, _ = self.pairs.pairs(row, slot)
        if self.pair_ratio_used:
            cand = cand[:pair_count(len(self.pairs.boxes(row)), self.pair_ratio_used)]
        pick = cand[int(torch.randint(len(cand), ()))]
        return int(self.pairs.knn_ids[row, slot]), pick

    def make_sample(self, image: np.ndarray, record):
        from PIL import Image

        from sslkit.io.images import ImageDecodeError, load_rgb

        views: ORLViews = self.transform
        pil = Image.fromarray(image)
        h, w = image.shape[:2]
        row = self.pairs.row.get(record.file_name)
        if row is not None and (int(self.pairs.height[row]), int(self.pairs.width[row])) != (h, w):
            raise UserError(f"{record.file_name} is {h}x{w} but the views were made on a "
                            f"{self.pairs.height[row]}x{self.pairs.width[row]} image", self.pairs.path,
                            "were the views made from other images?")
        out: dict[str, object] = {}
        if "global" in self.branches:
            out["global"] = (views.global_views[0](pil), views.global_views[1](pil))
        boxes = self.pairs.boxes(row) if row is not None else np.zeros((0, 4), np.float32)
        no_boxes = len(boxes) == 0
        box = np.array([0, 0, w, h], np.float32) if no_boxes else boxes[int(torch.randint(len(boxes), ()))]
        jittered, moved = jitter_box(box, h, w)
        if "intra" in self.branches:
            out["intra"] = views.patches(pil, box, pil, jittered)
        no_pair = True
        if "inter" in self.branches:
            pick = self._pick_pair(row) if row is not None else None
            if pick is not None:
                nrow, (_, qi, ni) = pick
                try:
                    nimg, _ = load_rgb(self._neighbour_path(self.pairs.file_name[nrow]))
                    nb = Image.fromarray(nimg)
                    if (nb.height, nb.width) != (int(self.pairs.height[nrow]), int(self.pairs.width[nrow])):
                        raise ImageDecodeError(self.pairs.file_name[nrow], "size differs from the views file")
                    out["inter"] = views.patches(pil, self.pairs.boxes(row)[qi], nb, self.pairs.boxes(nrow)[ni])
                    no_pair = False
                except ImageDecodeError:
                    pass  # an unreadable neighbour: the intra pair below stands in, counted as no_pairs
            if no_pair:
                out["inter"] = views.patches(pil, box, pil, jittered)
        out["fallback"] = torch.tensor([no_boxes, not moved, no_pair and "inter" in self.branches], dtype=torch.float32)
        return out
