"""Frozen-backbone features for linear probes, extracted once and cached.

**Stages.**  ``conv1`` (after conv1 + BN + ReLU, before the max-pool, as OpenSelfSup's
``out_indices=0``), ``res2`` … ``res5`` (the outputs of ``layer1`` … ``layer4``).

**Pooling.**  ``avg``: global average pooling (res5 → 2048-d on a ResNet-50).  ``spec``: the
fixed average pools of Goyal et al. 2019 that ORL/OpenSelfSup use for their linear and VOC07
SVM benchmarks, giving ≈9k dims per stage at 224 px::
    conv1 AvgPool2d(10, 10, 4) → 64×12×12   res2 (16, 8, 0) → 256×6×6   res3 (13, 5, 0) → 512×4×4
    res4  (8, 3, 0)           → 1024×3×3    res5 (6, 1, 0)  → 2048×2×2

When a stage's map has another size (another ``--image-size``), adaptive average pooling to
the same grid is used instead, so the dimension stays the same.

**Pixels.**  Image tasks: resize the shorter side to ``round(image_size / 0.875)`` (256 for
224), centre-crop ``image_size``.  ``objects``: the box, optionally scaled about its centre by
``box_scale`` and clipped to the image, is resized to ``image_size × image_size`` (aspect not
kept, as ORL's RoI crops).  Resizing is bilinear with antialiasing; then ``/255`` and
ImageNet mean/std normalisation (RGB).

**Cache.**  One ``sslkit.features`` HDF5 artefact per split (see docs/linprobe.md), named by
the sha256 of its key — backbone tensors' digest, data fingerprint, task, transform, stages,
pooling — and reused whenever a later run asks for the same key.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from sslkit.errors import UserError
from sslkit.eval.data import LabelledSplit
from sslkit.io.artefacts import Artefact, ArtefactWriter, Record
from sslkit.io.images import ImageDecodeError, load_rgb
from sslkit.transforms.preprocess import Preprocess

STAGES = ("conv1", "res2", "res3", "res4", "res5")
#: (kernel, stride, padding) of the "specified" pooling at 224 px, and the grid it produces
SPEC_POOL = {"conv1": (10, 10, 4), "res2": (16, 8, 0), "res3": (13, 5, 0), "res4": (8, 3, 0), "res5": (6, 1, 0)}
SPEC_GRID = {"conv1": 12, "res2": 6, "res3": 4, "res4": 3, "res5": 2}
POOLS = ("avg", "spec")
FEATURES_KEY_VERSION = 2


def parse_layers(text: str) -> list[str]:
    """``"res5"``, ``"res4,res5"`` or ``"all"`` → stage names in network order."""

    if text.strip() == "all":
        return list(STAGES)
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in STAGES]
    if bad or not names:
        raise UserError(f"unknown --layers {', '.join(bad) or repr(text)}", None,
                        f"choose from {', '.join(STAGES)} (comma-separated) or 'all'")
    return [s for s in STAGES if s in names]


def stage_maps(net, x: torch.Tensor, wanted: list[str]) -> dict[str, torch.Tensor]:
    """Feature maps of the ``wanted`` stages; stops after the last one needed."""
    out = {}
    x = net.relu(net.bn1(net.conv1(x)))
    if "conv1" in wanted:
        out["conv1"] = x
    x = net.maxpool(x)
    for name, layer in zip(STAGES[1:], (net.layer1, net.layer2, net.layer3, net.layer4), strict=True):
        if len(out) == len(wanted):
            break
        x = layer(x)
        if name in wanted:
            out[name] = x
    return out


def pool_map(x: torch.Tensor, stage: str, mode: str) -> torch.Tensor:
    """(N, C, H, W) → (N, D) by ``avg`` (global) or ``spec`` (Goyal et al. fixed pools) pooling."""
    if mode == "avg":
        return x.mean(dim=(2, 3))
    k, s, p = SPEC_POOL[stage]
    g = SPEC_GRID[stage]
    h, w = x.shape[-2:]
    if (h + 2 * p - k) // s + 1 == g and (w + 2 * p - k) // s + 1 == g and min(h, w) + 2 * p >= k:
        y = F.avg_pool2d(x, k, s, p)
    else:
        y = F.adaptive_avg_pool2d(x, g)
    return y.flatten(1)


def feature_channels(stage: str, pool: str, dim: int) -> int:
    """Channels of a pooled, flattened feature of ``dim`` values (``spec``: a C × g × g map)."""
    return dim if pool == "avg" else dim // SPEC_GRID[stage] ** 2


class _SplitImages(Dataset):
    """Item ``i`` of a split → ``(i, input tensor or None, (height, width), error or None)``."""

    def __init__(self, split: LabelledSplit, prep: Preprocess):
        self.split = split
        self.prep = prep

    def __len__(self) -> int:
        return len(self.split.items)

    def __getitem__(self, i: int):
        it = self.split.items[i]
        try:
            arr, _ = load_rgb(it.path)
        except ImageDecodeError as e:
            return i, None, (0, 0), e.reason
        x = self.prep.crops(arr, it.boxes) if it.boxes is not None else self.prep.image(arr)
        return i, x, arr.shape[:2], None


def _collate(batch):
    return batch


@dataclass
class FeatureSet:
    """Features of one split, one row per sample, in split order (skipped images left out)."""

    features: dict[str, np.ndarray]  # stage → (M, D) float32
    labels: np.ndarray  # (M,) int64, or (M, C) int8 in {1, 0, -1 ignored}
    image_index: np.ndarray  # (M,) row → index of its image among the images written (skipped ones left out)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    path: Path | None = None
    cache_hit: bool = False
    image_ids: np.ndarray | None = None  # (M,) row → its image's id

    def row_groups(self, split: LabelledSplit) -> np.ndarray:
        """(M,) each row's ``Item.groups`` value (the split must be loaded with a ``group_field``)."""
        by_id = {it.image_id: it for it in split.items}
        _, first_row = np.unique(self.image_index, return_index=True)  # rows of an image are contiguous
        return np.array([g for i in self.image_ids[first_row] for g in by_id[int(i)].groups], object)


def feature_key(weights_meta: dict, split: LabelledSplit, prep: Preprocess, layers: list[str], pool: str) -> dict:
    """Everything the features depend on; equal keys mean equal features."""
    return {"features_key_version": FEATURES_KEY_VERSION, "backbone_sha256": weights_meta["backbone_sha256"],
            "arch": weights_meta["arch"], "data": split.fingerprint, "task": split.task,
            "num_classes": split.num_classes, "transform": prep.describe(), "layers": list(layers), "pool": pool}


def _key_name(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _read(path: Path, key: dict, layers: list[str]) -> FeatureSet | None:
    """The cached features at ``path`` if it is a complete artefact with exactly this key."""
    import h5py

    try:
        with Artefact(path, "sslkit.features") as a:
            if a.params != json.loads(json.dumps(key, sort_keys=True)):
                return None
            counts = a.counts("label")
            skipped = a.skipped
            image_ids = np.repeat(np.asarray(a.image_id, np.int64), counts)
    except UserError:
        return None
    with h5py.File(path, "r") as f:
        feats = {s: f[f"feat_{s}"]["data"][:] for s in layers}
        labels = f["label"]["data"][:]
    return FeatureSet(feats, labels, np.repeat(np.arange(len(counts)), counts), skipped, path, cache_hit=True,
                      image_ids=image_ids)


def extract(net, split: LabelledSplit, prep: Preprocess, layers: list[str], pool: str, out: Path, key: dict,
            device: torch.device, batch_size: int = 64, workers: int = 4, progress=None,
            attrs: dict | None = None) -> FeatureSet:
    """Run the frozen ``net`` over ``split`` and write an ``sslkit.features`` artefact to ``out``."""
    from torch.utils.data import DataLoader

    net = net.to(device).eval()
    with torch.inference_mode():
        probe = stage_maps(net, torch.zeros(1, 3, prep.image_size, prep.image_size, device=device), layers)
        dims = {s: int(pool_map(probe[s], s, pool).shape[1]) for s in layers}
    label_spec = ("int8", (split.num_classes,)) if split.multilabel else ("int64", ())
    ragged = {f"feat_{s}": ("float32", (dims[s],)) for s in layers}
    ragged["label"] = label_spec
    if split.task == "objects":
        ragged["boxes"] = ("float32", (4,))
    writer = ArtefactWriter(out, "sslkit.features", params=key, ragged=ragged, attrs={
        "task": split.task, "classes": json.dumps(split.classes), "layers": json.dumps(layers), "pool": pool,
        "source": split.source, **(attrs or {})})
    loader = DataLoader(_SplitImages(split, prep), batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_collate, pin_memory=device.type == "cuda",
                        persistent_workers=False, prefetch_factor=2 if workers > 0 else None)
    task = progress.add_task(f"features {Path(split.source).name}", total=len(split.items)) if progress else None
    try:
        with torch.inference_mode():
            for batch in loader:
                good = [b for b in batch if b[1] is not None]
                pooled: dict[str, list[torch.Tensor]] = {s: [] for s in layers}
                if good:
                    x = torch.cat([b[1] for b in good])
                    for s0 in range(0, len(x), batch_size):
                        maps = stage_maps(net, x[s0:s0 + batch_size].to(device, non_blocking=True), layers)
                        for s in layers:
                            pooled[s].append(pool_map(maps[s], s, pool).float().cpu())
                    cat = {s: torch.cat(pooled[s]).numpy() for s in layers}
                row = 0
                for i, x_i, hw, err in batch:
                    it = split.items[i]
                    if x_i is None:
                        writer.add_skipped(it.file_name, err)
                        continue
                    n = len(x_i)
                    rag = {f"feat_{s}": cat[s][row:row + n] for s in layers}
                    rag["label"] = it.labels
                    if it.boxes is not None:
                        rag["boxes"] = it.boxes
                    writer.add(Record(it.image_id, it.file_name, int(hw[0]), int(hw[1]), rag))
                    row += n
                if progress:
                    progress.advance(task, len(batch))
    except BaseException:
        writer.abort()
        raise
    writer.close()
    fs = _read(out, key, layers)
    fs.cache_hit = False
    return fs


def cached_features(net, weights_meta: dict, split: LabelledSplit, prep: Preprocess, layers: list[str], pool: str,
                    cache_dir: Path, name: str, device: torch.device, batch_size: int = 64, workers: int = 4,
                    progress=None) -> FeatureSet:
    """Features of ``split`` from ``cache_dir`` when a run with the same key made them, else extracted now."""
    key = feature_key(weights_meta, split, prep, layers, pool)
    path = Path(cache_dir) / f"{name}-{_key_name(key)}.h5"
    if path.exists() and (fs := _read(path, key, layers)) is not None:
        return fs
    os.makedirs(cache_dir, exist_ok=True)
    return extract(net, split, prep, layers, pool, path, key, device, batch_size, workers, progress,
                   attrs={"weights": str(weights_meta.get("source"))})
