"""Linear probing of a frozen backbone: features once (cached), then a linear / kNN / SVM classifier.

See docs/linprobe.md for the protocols and their sources.  :func:`run_linprobe` is what
``sslkit linprobe`` calls; it returns the metrics record the command prints and writes.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from sslkit import __version__
from sslkit.dist import resolve_device
from sslkit.errors import UserError
from sslkit.eval.data import load_split
from sslkit.eval.features import Preprocess, cached_features, feature_channels
from sslkit.eval.knn import knn_scores
from sslkit.eval.linear import LinearConfig, predict, select_weight_decay, train_linear
from sslkit.eval.metrics import mean_ap, topk_accuracy
from sslkit.eval.svm import low_shot_svm, svm_scores
from sslkit.io.artefacts import command_line
from sslkit.models.convert import load_backbone

PROTOCOLS = ("linear", "knn", "svm")


@dataclass
class ProbeSettings:
    protocol: str = "linear"
    layers: list[str] = field(default_factory=lambda: ["res5"])
    pool: str = "avg"
    image_size: int = 224
    box_scale: float = 1.0
    min_box: float = 8.0
    batch_size: int = 64
    workers: int = 4
    device: str = "auto"
    linear: LinearConfig = field(default_factory=LinearConfig)
    wd_grid: tuple[float, ...] = ()  # linear: ≥ 2 values → weight decay chosen by grouped cross-validation
    cv_group: str = "image"  # linear with wd_grid: "image", or an annotation field (--task objects)
    k: int = 20
    temperature: float = 0.07
    costs: tuple[float, ...] = (1.0, 10.0, 100.0)
    folds: int = 3
    svm_jobs: int = 1
    low_shot: tuple[int, ...] = ()
    low_shot_samples: int = 5
    cache_dir: Path | None = None
    seed: int = 0

    def protocol_settings(self) -> dict:
        if self.protocol == "linear":
            d = asdict(self.linear)
            if self.linear.solver == "sgd":
                d.pop("lbfgs_iters")
                d["milestones"] = self.linear.milestones
            else:
                for k in ("epochs", "batch_size", "lr", "momentum", "nesterov"):
                    d.pop(k)
            d["head"] = "BatchNorm(affine=False, per channel) -> Linear"
            if self.wd_grid:
                d["weight_decay"] = "cross-validated"
                d.update(wd_grid=list(self.wd_grid), cv_folds=self.folds, cv_group=self.cv_group)
            return d
        if self.protocol == "knn":
            return {"k": self.k, "temperature": self.temperature, "similarity": "cosine"}
        d = {"costs": list(self.costs), "folds": self.folds, "class_weight": {"1": 2, "-1": 1},
             "feature_normalisation": "l2"}
        if self.low_shot:
            d.update(low_shot=list(self.low_shot), low_shot_samples=self.low_shot_samples)
        return d


def _classify(protocol: str, xtr, ytr, xva, num_classes: int, multilabel: bool, s: ProbeSettings,
              device: torch.device, progress, layer: str, groups: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    if protocol == "linear":
        from dataclasses import replace

        channels = feature_channels(layer, s.pool, xtr.shape[1])
        cfg, extra = s.linear, {}
        if s.wd_grid:
            wd, extra["wd_search"] = select_weight_decay(xtr, ytr, groups, num_classes, multilabel, cfg, s.wd_grid,
                                                         s.folds, device, channels, progress, desc=f"linear {layer}")
            cfg = replace(cfg, weight_decay=wd)
        head = train_linear(xtr, ytr, num_classes, multilabel, cfg, device, progress, desc=f"linear {layer}",
                            channels=channels)
        return predict(head, xva, device), {"train_scores": predict(head, xtr, device), **extra}
    if protocol == "knn":
        return knn_scores(xtr, ytr, xva, num_classes, s.k, s.temperature, device, progress=progress,
                          desc=f"knn {layer}"), {}

    scores, info = svm_scores(xtr, ytr, xva, num_classes, s.costs, s.folds, s.svm_jobs, progress, desc=f"svm {layer}")
    return scores, {"svm": info}


def _low_shot(xtr, ytr, xva, yva, num_classes: int, s: ProbeSettings, progress, layer: str, source: str) -> dict:
    try:
        return low_shot_svm(xtr, ytr, xva, yva, num_classes, s.low_shot, s.low_shot_samples, s.costs, s.seed,
                            s.svm_jobs, progress, desc=f"low-shot {layer}")
    except ValueError as e:
        raise UserError(f"too little training data for --low-shot: {e}", source, "use smaller shot counts") from e


def _phase(progress, unit: str):
    return progress(unit) if progress is not None else contextlib.nullcontext(None)


def _score(scores: np.ndarray, labels: np.ndarray, multilabel: bool) -> dict:
    return mean_ap(scores, labels) if multilabel else topk_accuracy(scores, labels)


def run_linprobe(weights: str, train: str, val: str, *, task: str | None = None, image_root: str | None = None,
                 val_image_root: str | None = None, arch: str | None = None, encoder: str | None = None,
                 settings: ProbeSettings | None = None, progress=None) -> dict:
    """Probe ``weights`` on ``train`` → ``val``; returns the metrics record (percentages).

    ``progress``, if given, is called with a unit name ("img", "epoch", "query", "class") and returns a
    context manager yielding a progress object (``add_task`` / ``advance``), one per phase.
    """

    s = settings or ProbeSettings()
    t0 = time.perf_counter()
    device = resolve_device(s.device)
    net, meta = load_backbone(weights, arch=arch, encoder=encoder, seed=s.seed)
    searching = bool(s.wd_grid) and s.protocol == "linear"
    by_field = searching and s.cv_group != "image"
    tr = load_split(train, task, image_root, s.min_box, group_field=s.cv_group if by_field else None)
    va = load_split(val, task, val_image_root if val_image_root is not None else image_root, s.min_box, reference=tr)
    prep = Preprocess(s.image_size, s.box_scale, tuple(meta["pixel_mean"]), tuple(meta["pixel_std"]))
    notes = list(meta.get("notes", []))

    with contextlib.ExitStack() as stack:
        cache_dir = s.cache_dir
        if cache_dir is None:
            cache_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sslkit-features-")))
        fs = {}
        with _phase(progress, "img") as p:
            for name, split in (("train", tr), ("val", va)):
                fs[name] = cached_features(net, meta, split, prep, s.layers, s.pool, cache_dir, name, device,
                                           s.batch_size, s.workers, p)
        t_feat = time.perf_counter()
        ftr, fva = fs["train"], fs["val"]
        if len(ftr.labels) < 2 or len(fva.labels) < 1:
            raise UserError(f"too few usable samples (train {len(ftr.labels)}, val {len(fva.labels)})",
                            train, "check the data and the skipped files (sslkit info on the cached features)")
        if not tr.multilabel and len(np.unique(ftr.labels)) < 2:
            raise UserError("the training samples all have the same class", train, "a probe needs ≥ 2 classes")
        if s.protocol == "linear" and s.linear.solver == "sgd":
            steps = s.linear.epochs * math.ceil(len(ftr.labels) / s.linear.batch_size)
            if steps < 500:
                notes.append(f"only {steps} SGD steps ({len(ftr.labels)} samples, {s.linear.epochs} epochs of batch "
                             f"{s.linear.batch_size}); small data converges better with --solver lbfgs or more --epochs")
        groups = None
        if searching:
            groups = ftr.row_groups(tr) if by_field else ftr.image_ids
            n_groups = len(np.unique(groups))
            if n_groups < s.folds:
                raise UserError(f"{n_groups} {s.cv_group} groups in the training split cannot make "
                                f"{s.folds} cross-validation folds", train, "lower --folds or pass a single --wd")
        results = {}
        extra_out = {}
        unit = {"linear": "epoch", "knn": "query", "svm": "class"}[s.protocol]
        low_shot = {}
        with _phase(progress, unit) as p:
            fitted = {layer: _classify(s.protocol, ftr.features[layer], ftr.labels, fva.features[layer],
                                       tr.num_classes, tr.multilabel, s, device, p, layer, groups)
                      for layer in s.layers}
            if s.low_shot:
                low_shot = {layer: _low_shot(ftr.features[layer], ftr.labels, fva.features[layer], fva.labels,
                                             tr.num_classes, s, p, layer, train) for layer in s.layers}
        for layer in s.layers:
            xtr = ftr.features[layer]
            scores, extra = fitted[layer]
            r = {"dim": int(xtr.shape[1]), **_score(scores, fva.labels, tr.multilabel)}
            if "train_scores" in extra:
                tr_metrics = _score(extra["train_scores"], ftr.labels, tr.multilabel)
                r["train"] = {k: v for k, v in tr_metrics.items() if k in ("top1", "top5", "mAP")}
            if "wd_search" in extra:
                r["weight_decay"] = extra["wd_search"]["chosen"]
                r["wd_search"] = extra["wd_search"]
            if "svm" in extra:
                extra_out.setdefault("svm", {})[layer] = extra["svm"]
                if extra["svm"]["convergence_warnings"]:
                    notes.append(f"{layer}: {extra['svm']['convergence_warnings']} SVM fits stopped at max_iter=2000")
            if layer in low_shot:
                r["low_shot"] = low_shot[layer]
            results[layer] = r
        cache = {name: {"path": None if s.cache_dir is None else str(f.path), "hit": f.cache_hit,
                        "skipped": [{"file_name": a, "reason": b} for a, b in f.skipped]} for name, f in fs.items()}

    primary = "mAP" if tr.multilabel else "top1"
    best = max(s.layers, key=lambda layer: -np.inf if np.isnan(results[layer][primary]) else results[layer][primary])
    val_labels = fva.labels
    rec = {
        "sslkit_version": __version__, "command": command_line(),
        "protocol": s.protocol, "task": tr.task, "primary_metric": primary,
        "weights": {k: meta.get(k) for k in ("source", "kind", "arch", "method", "encoder", "epoch", "step",
                                             "sha256", "backbone_sha256", "seed") if meta.get(k) is not None},
        "train": {**tr.describe(), "num_samples_used": int(len(ftr.labels)), "cache": cache["train"]},
        "val": {**va.describe(), "num_samples_used": int(len(val_labels)), "cache": cache["val"]},
        "num_classes": tr.num_classes, "classes": tr.classes,
        "features": {"layers": s.layers, "pool": s.pool, **prep.describe()},
        "settings": s.protocol_settings(),
        "results": results, "best_layer": best, "best": {primary: results[best][primary], "layer": best},
        "notes": notes,
        "time_s": {"features": round(t_feat - t0, 3), "total": round(time.perf_counter() - t0, 3)},
    }
    if not tr.multilabel:
        counts = np.bincount(val_labels, minlength=tr.num_classes)
        rec["chance"] = {"top1_uniform": 100.0 / tr.num_classes, "top1_majority": float(counts.max() / counts.sum() * 100)}
    rec.update(extra_out)
    return rec
