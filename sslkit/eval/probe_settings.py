"""The settings of ``sslkit linprobe`` as a typed spec for :func:`sslkit.config.resolve`, and the
:class:`~sslkit.eval.linprobe.ProbeSettings` they make (protocols and sources: docs/linprobe.md)."""

from __future__ import annotations

import os
from pathlib import Path

from sslkit.config import Key
from sslkit.errors import UserError
from sslkit.eval.features import parse_layers
from sslkit.eval.linear import WD_GRID, LinearConfig
from sslkit.eval.linprobe import ProbeSettings

LISTING = "sslkit linprobe --print-config"

#: every setting of a probe
KEYS: dict[str, Key] = {
    "weights": Key(None, str, "a checkpoint, an export, or 'random' (with arch)", optional=True),
    "arch": Key(None, str, "architecture (required with 'random'; otherwise checked against the file)", optional=True),
    "encoder": Key(None, str, "encoder of a training checkpoint (default: its default_encoder)", optional=True),
    "train": Key(None, str, "training split: class-folder tree or COCO json", optional=True, path=True),
    "val": Key(None, str, "evaluation split, same kind", optional=True, path=True),
    "task": Key(None, str, "COCO json splits: objects (box crops) or multilabel (image presence)", optional=True,
                choices=("objects", "multilabel")),
    "image_root": Key(None, str, "image folder of the COCO json(s)", optional=True, path=True),
    "val_image_root": Key(None, str, "image folder of the val json", optional=True, path=True),
    "protocol": Key("linear", str, "classifier on the frozen features", choices=("linear", "knn", "svm")),
    "layers": Key("res5", str, "stages to probe: comma list of conv1,res2,res3,res4,res5, or 'all'"),
    "pool": Key("avg", str, "avg: global average pool; spec: Goyal et al./ORL fixed pools", choices=("avg", "spec")),
    "image_size": Key(224, int, "network input side"),
    "box_scale": Key(1.0, float, "objects: scale each box about its centre before cropping"),
    "min_box": Key(8.0, float, "objects: ignore boxes smaller than this many pixels on a side"),
    "batch_size": Key(64, int, "images per feature-extraction batch"),
    "workers": Key(None, int, "image decoding processes (0: in the main process; default: CPUs, at most 8)",
                   optional=True),
    "device": Key("auto", str, "auto, cpu, cuda, cuda:N"),
    "epochs": Key(28, int, "linear: epochs over the cached features (ORL ImageNet: 28)"),
    "lr": Key(0.01, float, "linear: base learning rate"),
    "wd": Key("1e-4", str, "linear: weight decay; a comma list or 'auto' chooses one by cross-validation"),
    "cv_group": Key("image", str, "linear with several wd: folds keep whole groups (image, or an annotation field)"),
    "linear_batch_size": Key(256, int, "linear: SGD batch size"),
    "solver": Key("sgd", str, "linear: sgd (the protocol) or lbfgs (full batch, small data)", choices=("sgd", "lbfgs")),
    "k": Key(20, int, "knn: neighbours"),
    "temperature": Key(0.07, float, "knn: vote temperature"),
    "costs": Key([1.0, 10.0, 100.0], list, "svm: SVM costs to cross-validate", item=float),
    "folds": Key(3, int, "svm, and linear with several wd: cross-validation folds"),
    "svm_jobs": Key(1, int, "svm: classes fitted in parallel (processes)"),
    "low_shot": Key(None, list, "svm: also run the low-shot benchmark with these shots per class", optional=True),
    "low_shot_samples": Key(5, int, "svm: independent draws per shot count"),
    "seed": Key(0, int, "seed of the classifier (and of 'random' weights)"),
    "cache_dir": Key(None, str, "feature cache folder (default: $SSLKIT_CACHE_DIR or ~/.cache/sslkit/features)",
                     optional=True),
    "cache": Key(True, bool, "read and keep cached features"),
}


def default_cache_dir() -> Path:
    base = os.environ.get("SSLKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sslkit")
    return Path(base) / "features"


def parse_wd(text: str) -> tuple[float, tuple[float, ...]]:
    """``wd``: one value (fixed), ``auto`` (the default grid) or a comma list → (fixed value, grid)."""
    if text.strip() == "auto":
        return WD_GRID[0], WD_GRID
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(v < 0 for v in values):
        raise UserError(f"--wd {text!r} is not a weight decay ≥ 0, a comma-separated list of them, or 'auto'",
                        None, "e.g. --wd 1e-4, --wd 1e-4,1e-3,1e-2 or --wd auto")
    grid = tuple(sorted(set(values)))
    return (grid[0], ()) if len(grid) == 1 else (grid[0], grid)


def probe_settings(cfg: dict) -> ProbeSettings:
    """The checked :class:`~sslkit.eval.linprobe.ProbeSettings` of resolved settings ``cfg``."""
    for name in ("image_size", "batch_size", "epochs", "linear_batch_size", "k", "svm_jobs"):
        if cfg[name] < 1:
            raise UserError(f"--{name.replace('_', '-')} must be ≥ 1 (got {cfg[name]})")
    if cfg["folds"] < 2:
        raise UserError(f"--folds must be ≥ 2 (got {cfg['folds']})")
    workers = min(8, os.cpu_count() or 1) if cfg["workers"] is None else cfg["workers"]
    if workers < 0:
        raise UserError(f"--workers must be ≥ 0 (got {workers})")
    if cfg["box_scale"] <= 0 or cfg["temperature"] <= 0 or cfg["lr"] <= 0:
        raise UserError("--box-scale, --temperature and --lr must be > 0")
    costs = tuple(cfg["costs"])
    if not costs or any(c <= 0 for c in costs):
        raise UserError(f"--costs {cfg['costs']!r} is not a comma-separated list of positive numbers", None,
                        "e.g. --costs 1,10,100")
    wd_value, wd_grid = parse_wd(cfg["wd"])
    if wd_grid and cfg["protocol"] != "linear":
        raise UserError(f"--wd {cfg['wd']} (a cross-validated choice) is for --protocol linear", None,
                        "the svm protocol cross-validates --costs")
    if cfg["cv_group"] != "image" and not wd_grid:
        raise UserError("--cv-group only applies when --wd names several values or 'auto'")
    shots: tuple[int, ...] = ()
    if cfg["low_shot"] is not None:
        if cfg["protocol"] != "svm":
            raise UserError("--low-shot is part of the SVM protocol", None, "add --protocol svm")
        shots = tuple(cfg["low_shot"])
        if not shots or min(shots) < 1 or cfg["low_shot_samples"] < 1:
            raise UserError(f"--low-shot {cfg['low_shot']!r} is not a list of positive integers", None,
                            "e.g. --low-shot 1,2,4,8,16,32,64,96")
    cache_dir = None if not cfg["cache"] else Path(cfg["cache_dir"]) if cfg["cache_dir"] else default_cache_dir()
    return ProbeSettings(
        protocol=cfg["protocol"], layers=parse_layers(cfg["layers"]), pool=cfg["pool"], image_size=cfg["image_size"],
        box_scale=cfg["box_scale"], min_box=cfg["min_box"], batch_size=cfg["batch_size"], workers=workers,
        device=cfg["device"],
        linear=LinearConfig(epochs=cfg["epochs"], batch_size=cfg["linear_batch_size"], lr=cfg["lr"],
                            weight_decay=wd_value, solver=cfg["solver"], seed=cfg["seed"]),
        wd_grid=wd_grid, cv_group=cfg["cv_group"], k=cfg["k"], temperature=cfg["temperature"], costs=costs,
        folds=cfg["folds"], svm_jobs=cfg["svm_jobs"], low_shot=shots, low_shot_samples=cfg["low_shot_samples"],
        cache_dir=cache_dir, seed=cfg["seed"])
