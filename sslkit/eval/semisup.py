"""Semi-supervised fine-tuning (``sslkit semisup``): the whole backbone + a linear classifier on GAP,
trained on a small labelled subset, evaluated top-1 / top-5.

**Protocol** (ORL §4.2, OpenSelfSup's ``benchmarks/semi_classification`` configs, used by ORL and
UniVIP for ImageNet 1 % / 10 %): SGD momentum 0.9, batch 256, 20 epochs; lr 0.01 for the
backbone and 1.0 for the head (``lr_mult=100``), both ×0.2 at epochs 12 and 16 (60 % / 80 % of
``--epochs``); weight decay 0 for 1 % and 1e-4 for 10 % (the paper; the only released 10 %
config is named ``wd0`` — see docs/semisup.md); the head ``Linear(C_res5, classes)`` is
initialised N(0, 0.01).  Train: RandomResizedCrop 224 (scale 0.08–1) + horizontal flip; test:
shorter side 256 → centre crop 224; ImageNet mean/std.  The lr is scaled linearly with the batch
(×B/256) when another ``--batch-size`` is used.

**Subsets.** ``--fraction f``: a class-balanced subset of ``round(f·N)`` samples (at least one per
class), equal shares per class as in SimCLR's 1 %/10 % lists ("~12.8 / ~128 images per class"),
a class with fewer samples than its share giving the rest to the others; which samples is a
seeded function of (seed, class name, sorted file names), so the same seed gives the same files
whatever order the data is listed in.  ``--subset-file``: one file name per line (a path
relative to the split root, or a bare file name such as SimCLR's ``n01440764_10026.JPEG``).

**Data** as linprobe's (:func:`sslkit.eval.data.load_split`): class folders (one sample per
image) or a COCO json with ``--task objects`` (one sample per box; the box, scaled by
``box_scale``, is cropped first; the test crop is the box resized to ``image_size²``).
"""

from __future__ import annotations

import bisect
import math
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sslkit.errors import UserError

ONE_PERCENT_WD = 0.0
TEN_PERCENT_WD = 1e-4


@dataclass
class SemisupConfig:
    fraction: float | None = None
    subset_file: str | None = None
    epochs: int = 20
    batch_size: int = 256
    lr: float = 0.01  # backbone lr at batch 256
    head_lr_mult: float = 100.0
    momentum: float = 0.9
    weight_decay: float | None = None  # None: 0 for ≤ 1 % subsets, 1e-4 above (ORL)
    milestones: tuple[float, ...] = (0.6, 0.8)  # fractions of the epochs (12 and 16 of 20)
    gamma: float = 0.2
    image_size: int = 224
    resize: int = 256
    box_scale: float = 1.0
    min_box: float = 8.0
    seed: int = 0
    workers: int = 4
    device: str = "auto"
    precision: str = "auto"
    eval_batch_size: int = 256

    def milestone_epochs(self) -> list[int]:
        return [int(round(m * self.epochs)) for m in self.milestones]


def default_weight_decay(fraction: float) -> float:
    """ORL §4.2: weight decay 0 for the 1 % subset, 1e-4 for 10 % (applied to any fraction: ≤ 1 % → 0)."""
    return ONE_PERCENT_WD if fraction <= 0.01 + 1e-9 else TEN_PERCENT_WD


@dataclass(frozen=True)
class Sample:
    path: Path
    key: str  # file name (and box number for objects): what subsets and listings name
    file_name: str
    label: int
    box: tuple[float, float, float, float] | None = None


def split_samples(split) -> list[Sample]:
    """One :class:`Sample` per image (class folders) or per box (COCO objects) of a LabelledSplit."""
    out = []
    for it in split.items:
        for r, label in enumerate(it.labels.tolist()):
            box = None if it.boxes is None else tuple(float(v) for v in it.boxes[r])
            key = it.file_name if box is None else f"{it.file_name}#{r}"
            out.append(Sample(Path(it.path), key, it.file_name, int(label), box))
    return out


def class_balanced_subset(labels: np.ndarray, keys: list[str], class_names: list[str], fraction: float,
                          seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced ``fraction`` of the samples (≥ 1 per class present).

    The total ``max(C, round(fraction·N))`` is shared equally among the classes (classes with
    fewer samples than their share keep all of theirs and the rest is shared by the others);
    within a class the samples are ranked by a permutation seeded by ``(seed, crc32(class name))``
    of the samples sorted by key.
    """
    if not 0 < fraction <= 1:
        raise UserError(f"--fraction must be in (0, 1] (got {fraction})")
    labels = np.asarray(labels)
    present = sorted(set(labels.tolist()))
    members = {c: sorted(np.flatnonzero(labels == c).tolist(), key=lambda i: keys[i]) for c in present}
    total = max(len(present), round(fraction * len(labels)))
    quota, remaining = {}, total
    order = sorted(present, key=lambda c: (len(members[c]), class_names[c]))
    for k, c in enumerate(order):
        share = remaining // (len(order) - k)
        quota[c] = min(len(members[c]), max(1, share))
        remaining -= quota[c]
    chosen = []
    for c in present:
        rng = np.random.default_rng([seed, zlib.crc32(class_names[c].encode())])
        perm = rng.permutation(len(members[c]))
        chosen += [members[c][j] for j in perm[:quota[c]]]
    return np.array(sorted(chosen), dtype=np.int64)


def subset_from_file(samples: list[Sample], path: str | Path) -> np.ndarray:
    """Indices of the samples whose file is listed in ``path`` (relative path or bare file name per line)."""
    p = Path(path)
    if not p.is_file():
        raise UserError("no such subset file", p)
    names = [ln.strip() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise UserError("lists no file names", p, "one file name per line, e.g. n01440764_10026.JPEG")
    wanted = set(names)
    chosen, found = [], set()
    for i, s in enumerate(samples):
        base = s.file_name.rsplit("/", 1)[-1]
        hit = s.file_name if s.file_name in wanted else base if base in wanted else None
        if hit is not None:
            chosen.append(i)
            found.add(hit)
    missing = [n for n in names if n not in found]
    if missing:
        raise UserError(f"{len(missing)} of its {len(names)} names are not in the training split "
                        f"(e.g. {missing[0]})", p, "check that the list belongs to this --train data")
    return np.array(chosen, dtype=np.int64)


class _Images(Dataset):
    """``key`` → ``(index, tensor or None, label, error or None)``; training keys are ``(epoch, index)``."""

    def __init__(self, samples: list[Sample], cfg: SemisupConfig, train: bool, mean, std):
        self.samples = samples
        self.cfg = cfg
        self.train = train
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def _pixels(self, s: Sample) -> torch.Tensor:
        from sslkit.io.images import load_rgb

        arr, _ = load_rgb(s.path)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy()).permute(2, 0, 1)
        if s.box is not None:
            h, w = arr.shape[:2]
            x0, y0, x1, y1 = s.box
            cx, cy, bw, bh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * self.cfg.box_scale, (y1 - y0) * self.cfg.box_scale
            a = int(np.clip(np.floor(cx - bw / 2), 0, w - 1))
            b = int(np.clip(np.floor(cy - bh / 2), 0, h - 1))
            c = int(np.clip(np.ceil(cx + bw / 2), a + 1, w))
            d = int(np.clip(np.ceil(cy + bh / 2), b + 1, h))
            t = t[:, b:d, a:c]
        return t

    def __getitem__(self, key):
        from torchvision.transforms import v2 as T
        from torchvision.transforms.v2 import functional as TF

        from sslkit.io.images import ImageDecodeError
        from sslkit.views.dataset import sample_seed

        epoch, i = key if self.train else (0, key)
        s = self.samples[i]
        try:
            t = self._pixels(s)
        except ImageDecodeError as e:
            return i, None, s.label, e.reason
        size = self.cfg.image_size
        if self.train:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.cfg.seed, epoch, i))
                t = T.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True)(t)
                t = T.RandomHorizontalFlip()(t)
        elif s.box is not None:
            t = TF.resize(t, [size, size], antialias=True)
        else:
            t = TF.center_crop(TF.resize(t, [self.cfg.resize], antialias=True), [size, size])
        return i, (t.float() / 255.0 - self.mean) / self.std, s.label, None


def _collate(items):
    good = [(i, x, y) for i, x, y, err in items if x is not None]
    bad = [(i, err) for i, x, y, err in items if x is None]
    if not good:
        return None, None, None, bad
    return (torch.tensor([g[0] for g in good]), torch.stack([g[1] for g in good]),
            torch.tensor([g[2] for g in good]), bad)


def epoch_batches(n: int, batch: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """The batches of one epoch: a seeded permutation cut into ``batch``-sized pieces (a last piece of
    one sample joins the one before, since BatchNorm needs two)."""
    from sslkit.views.dataset import sample_seed

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(sample_seed(seed, 1, epoch))).tolist()
    out = [perm[k:k + batch] for k in range(0, n, batch)]
    if len(out) > 1 and len(out[-1]) == 1:
        last = out.pop()
        out[-1] = out[-1] + last
    return [[(epoch, i) for i in b] for b in out]


class Classifier(nn.Module):
    """The backbone (torchvision ResNet, ``fc = Identity``: global average pooling) and ``Linear`` head."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feat_dim, num_classes)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def lr_factor(cfg: SemisupConfig, epoch: int) -> float:
    return cfg.gamma ** bisect.bisect_right(cfg.milestone_epochs(), epoch)


@torch.no_grad()
def predict(model: nn.Module, samples: list[Sample], cfg: SemisupConfig, device, amp, mean, std, progress=None):
    """Scores (M, C) float32, labels (M,), skipped [(file, reason)] over ``samples`` (centre crops)."""
    loader = DataLoader(_Images(samples, cfg, False, mean, std), batch_size=cfg.eval_batch_size, shuffle=False,
                        num_workers=cfg.workers, collate_fn=_collate, pin_memory=device.type == "cuda")
    task = progress.add_task("evaluating", total=len(samples)) if progress is not None else None
    model.eval()
    scores, labels, skipped = [], [], []
    for idx, x, y, bad in loader:
        skipped += [(samples[i].key, err) for i, err in bad]
        if x is not None:
            with amp.autocast():
                scores.append(model(x.to(device, non_blocking=True)).float().cpu())
            labels.append(y)
        if progress is not None:
            progress.advance(task, (0 if idx is None else len(idx)) + len(bad))
    if not scores:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), skipped
    return torch.cat(scores).numpy(), torch.cat(labels).numpy(), skipped


def run_semisup(weights: str, train: str, val: str, cfg: SemisupConfig, *, task: str | None = None,
                image_root=None, val_image_root=None, arch: str | None = None, encoder: str | None = None,
                subset_out: str | Path | None = None, progress=None, log=None) -> dict:
    """Fine-tune ``weights`` on a subset of ``train`` and evaluate on ``val``; returns the metrics record."""
    from sslkit import __version__
    from sslkit.engine.config import resolve_precision
    from sslkit.engine.trainer import Amp
    from sslkit.eval.data import load_split
    from sslkit.eval.linprobe import resolve_device
    from sslkit.eval.metrics import topk_accuracy
    from sslkit.io.artefacts import command_line
    from sslkit.models.convert import load_backbone

    t0 = time.perf_counter()
    if (cfg.fraction is None) == (cfg.subset_file is None):
        raise UserError("pass --fraction F or --subset-file LIST (one of them)")
    for name, v in (("--epochs", cfg.epochs), ("--batch-size", cfg.batch_size), ("--image-size", cfg.image_size),
                    ("--eval-batch-size", cfg.eval_batch_size)):
        if v < 1:
            raise UserError(f"{name} must be ≥ 1 (got {v})")
    if cfg.lr <= 0 or cfg.head_lr_mult <= 0 or (cfg.weight_decay is not None and cfg.weight_decay < 0):
        raise UserError("--lr and --head-lr-mult must be > 0, --wd ≥ 0")
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device.type)
    net, meta = load_backbone(weights, arch=arch, encoder=encoder, seed=cfg.seed)
    tr = load_split(train, task, image_root, cfg.min_box)
    va = load_split(val, task, val_image_root if val_image_root is not None else image_root, cfg.min_box, reference=tr)
    if tr.multilabel:
        raise UserError("semisup fine-tunes a single-label classifier; --task multilabel is not supported", train,
                        "use class folders or --task objects")
    samples = split_samples(tr)
    labels = np.array([s.label for s in samples])
    if cfg.subset_file is not None:
        idx = subset_from_file(samples, cfg.subset_file)
        how = {"subset_file": str(cfg.subset_file)}
    else:
        idx = class_balanced_subset(labels, [s.key for s in samples], tr.classes, cfg.fraction, cfg.seed)
        how = {"fraction": cfg.fraction, "seed": cfg.seed}
    chosen = [samples[i] for i in idx]
    frac = len(chosen) / len(samples)
    wd = cfg.weight_decay if cfg.weight_decay is not None else default_weight_decay(cfg.fraction or frac)
    counts = np.bincount([s.label for s in chosen], minlength=tr.num_classes)
    if subset_out is not None:
        from sslkit.io.atomic import write_text_atomic

        write_text_atomic(subset_out, "".join(s.key + "\n" for s in chosen))

    torch.manual_seed(cfg.seed)
    model = Classifier(net, tr.num_classes).to(device)
    scale = cfg.batch_size / 256.0
    base_lr, head_lr = cfg.lr * scale, cfg.lr * cfg.head_lr_mult * scale
    optimizer = torch.optim.SGD([{"params": model.backbone.parameters(), "lr": base_lr, "base_lr": base_lr},
                                 {"params": model.head.parameters(), "lr": head_lr, "base_lr": head_lr}],
                                lr=base_lr, momentum=cfg.momentum, weight_decay=wd)
    amp = Amp(precision, device.type)
    mean, std = tuple(meta["pixel_mean"]), tuple(meta["pixel_std"])
    dataset = _Images(chosen, cfg, True, mean, std)
    steps_per_epoch = len(epoch_batches(len(chosen), cfg.batch_size, cfg.seed, 0))
    task_id = progress.add_task("semisup", total=cfg.epochs * len(chosen)) if progress is not None else None
    loss_fn = nn.CrossEntropyLoss()
    skipped: dict[str, str] = {}
    history = []
    for epoch in range(cfg.epochs):
        factor = lr_factor(cfg, epoch)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        loader = DataLoader(dataset, batch_sampler=epoch_batches(len(chosen), cfg.batch_size, cfg.seed, epoch),
                            num_workers=cfg.workers, collate_fn=_collate, pin_memory=device.type == "cuda")
        model.train()
        tot, correct, seen, t_ep = 0.0, 0, 0, time.perf_counter()
        for idx_b, x, y, bad in loader:
            for i, err in bad:
                skipped.setdefault(chosen[i].key, err)
            if x is not None and len(x) > 1:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with amp.autocast():
                    logits = model(x)
                    loss = loss_fn(logits.float(), y)
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"loss is not finite in epoch {epoch}; lower --lr or use --precision fp32")
                optimizer.zero_grad(set_to_none=True)
                amp.scaler.scale(loss).backward()
                amp.scaler.step(optimizer)
                amp.scaler.update()
                tot += loss.item() * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
            if progress is not None:
                progress.advance(task_id, (0 if idx_b is None else len(idx_b)) + len(bad))
        rec = {"epoch": epoch + 1, "loss": tot / max(1, seen), "train_top1": 100.0 * correct / max(1, seen),
               "lr_backbone": base_lr * factor, "lr_head": head_lr * factor,
               "img_per_s": seen / max(time.perf_counter() - t_ep, 1e-9)}
        history.append(rec)
        if log is not None:
            log(rec)
    t_train = time.perf_counter()
    val_samples = split_samples(va)
    scores, vlabels, vbad = predict(model, val_samples, cfg, device, amp, mean, std, progress)
    if len(vlabels) == 0:
        raise UserError("no val image could be decoded", val)
    metrics = topk_accuracy(scores, vlabels)
    notes = list(meta.get("notes", []))
    if skipped:
        notes.append(f"{len(skipped)} training images could not be decoded and were skipped")
    if vbad:
        notes.append(f"{len(vbad)} val images could not be decoded and are left out")
    if cfg.subset_file is None and cfg.fraction not in (0.01, 0.1) and cfg.weight_decay is None:
        notes.append(f"weight decay {wd:g} chosen by the ORL rule (0 for 1 %, 1e-4 for 10 %) for fraction {cfg.fraction:g}")
    vcounts = np.bincount(vlabels, minlength=tr.num_classes)
    return {
        "sslkit_version": __version__, "command": command_line(), "protocol": "semisup",
        "weights": {k: meta.get(k) for k in ("source", "kind", "arch", "method", "encoder", "epoch", "step",
                                             "sha256", "backbone_sha256", "seed") if meta.get(k) is not None},
        "train": {**tr.describe(), "subset": {**how, "num_samples": len(chosen), "fraction_of_samples": round(frac, 6),
                                              "per_class_min": int(counts[counts > 0].min()),
                                              "per_class_max": int(counts.max()),
                                              "classes_covered": int((counts > 0).sum()),
                                              "file": None if subset_out is None else str(subset_out)},
                  "skipped": [{"file_name": k, "reason": v} for k, v in skipped.items()]},
        "val": {**va.describe(), "num_samples_used": int(len(vlabels)),
                "skipped": [{"file_name": k, "reason": v} for k, v in vbad]},
        "num_classes": tr.num_classes, "classes": tr.classes,
        "settings": {**{k: v for k, v in asdict(cfg).items() if k not in ("fraction", "subset_file", "workers",
                                                                          "device")},
                     "weight_decay": wd, "milestone_epochs": cfg.milestone_epochs(), "lr_backbone": base_lr,
                     "lr_head": head_lr, "precision": precision, "device": str(device),
                     "steps_per_epoch": steps_per_epoch, "head": f"Linear({net.feat_dim}, {tr.num_classes}) on GAP"},
        "results": metrics, "history": history,
        "chance": {"top1_uniform": 100.0 / tr.num_classes,
                   "top1_majority": float(vcounts.max() / vcounts.sum() * 100)},
        "notes": notes,
        "time_s": {"train": round(t_train - t0, 3), "total": round(time.perf_counter() - t0, 3)},
    }
