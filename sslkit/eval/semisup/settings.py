"""The settings of ``sslkit semisup`` as a typed spec for :func:`sslkit.config.resolve`, the resolved
settings as a dataclass, and the lr schedule (ORL §4.2 / OpenSelfSup: ×0.2 at 60 % and 80 % of the epochs)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, fields

from sslkit.config import Key
from sslkit.errors import UserError

LISTING = "sslkit semisup --print-config"
_PRECISIONS = ("auto", "fp32", "bf16", "fp16")

#: every setting of a semi-supervised run (the ORL/OpenSelfSup protocol; see the module docstring)
KEYS: dict[str, Key] = {
    "weights": Key(None, str, "a checkpoint, an export, or 'random' (with arch)", optional=True, runtime=True),
    "arch": Key(None, str, "architecture (required with 'random'; otherwise checked)", optional=True),
    "encoder": Key(None, str, "encoder of a training checkpoint (default: its default)", optional=True),
    "train": Key(None, str, "training split: class-folder tree or COCO json", optional=True, runtime=True, path=True),
    "val": Key(None, str, "evaluation split, same kind", optional=True, runtime=True, path=True),
    "task": Key(None, str, "objects: one sample per box of a COCO json", optional=True, choices=("objects",)),
    "image_root": Key(None, str, "image folder of the COCO json(s)", optional=True, runtime=True, path=True),
    "val_image_root": Key(None, str, "image folder of val", optional=True, runtime=True, path=True),
    "fraction": Key(None, float, "class-balanced labelled fraction, e.g. 0.01 or 0.1", optional=True),
    "subset_file": Key(None, str, "labelled files, one name per line", optional=True, path=True),
    "epochs": Key(20, int, "fine-tuning epochs"),
    "batch_size": Key(256, int, "GLOBAL images per step (lr scaled × batch/256)"),
    "lr": Key(0.01, float, "backbone lr at batch 256"),
    "head_lr_mult": Key(100.0, float, "head lr = lr × this"),
    "momentum": Key(0.9, float, "SGD momentum"),
    "weight_decay": Key(None, float, "weight decay (default: 0 for ≤ 1 %, 1e-4 above)", optional=True),
    "milestones": Key([0.6, 0.8], list, "lr ×gamma at these fractions of the epochs", item=float),
    "gamma": Key(0.2, float, "lr factor at each milestone"),
    "image_size": Key(224, int, "crop side"),
    "resize": Key(256, int, "test: shorter side before the centre crop"),
    "box_scale": Key(1.0, float, "objects: scale each box about its centre before cropping"),
    "min_box": Key(8.0, float, "objects: ignore boxes smaller than this many pixels on a side"),
    "seed": Key(0, int, "seed of the subset, head init, data order and augmentation"),
    # runtime: may differ between a run and its resumption
    "workers": Key(None, int, "image decoding processes per rank (default: CPUs, at most 8)", optional=True,
                   runtime=True),
    "device": Key("auto", str, "auto, cpu, cuda or cuda:N", runtime=True),
    "world_size": Key(1, int, "number of ranks (recorded)", runtime=True),
    "precision": Key("auto", str, "autocast precision", choices=_PRECISIONS, runtime=True),
    "eval_batch_size": Key(256, int, "images per evaluation batch", runtime=True),
    "save_every": Key(None, int, "with a run folder: also write last.pth every N steps", optional=True, runtime=True),
    "max_steps": Key(None, int, "with a run folder: stop (with a checkpoint) after N total steps; rerun to continue",
                     optional=True, runtime=True),
}

DEFAULTS: dict = {k: v.default for k, v in KEYS.items()}


@dataclass
class SemisupConfig:
    """The resolved settings a run uses (defaults: :data:`KEYS`)."""

    fraction: float | None = KEYS["fraction"].default
    subset_file: str | None = KEYS["subset_file"].default
    epochs: int = KEYS["epochs"].default
    batch_size: int = KEYS["batch_size"].default
    lr: float = KEYS["lr"].default
    head_lr_mult: float = KEYS["head_lr_mult"].default
    momentum: float = KEYS["momentum"].default
    weight_decay: float | None = KEYS["weight_decay"].default
    milestones: tuple[float, ...] = tuple(KEYS["milestones"].default)
    gamma: float = KEYS["gamma"].default
    image_size: int = KEYS["image_size"].default
    resize: int = KEYS["resize"].default
    box_scale: float = KEYS["box_scale"].default
    min_box: float = KEYS["min_box"].default
    seed: int = KEYS["seed"].default
    workers: int = 4
    device: str = KEYS["device"].default
    precision: str = KEYS["precision"].default
    eval_batch_size: int = KEYS["eval_batch_size"].default

    @classmethod
    def of(cls, cfg: dict) -> SemisupConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k == "milestones" else v) for k, v in cfg.items() if k in names})

    def milestone_epochs(self) -> list[int]:
        return [int(round(m * self.epochs)) for m in self.milestones]


def validate(cfg: dict) -> None:
    if (cfg["fraction"] is None) == (cfg["subset_file"] is None):
        raise UserError("pass --fraction F or --subset-file LIST (one of them)")
    for name in ("epochs", "batch_size", "image_size", "eval_batch_size"):
        if cfg[name] < 1:
            raise UserError(f"--{name.replace('_', '-')} must be ≥ 1 (got {cfg[name]})")
    if cfg["lr"] <= 0 or cfg["head_lr_mult"] <= 0 or (cfg["weight_decay"] is not None and cfg["weight_decay"] < 0):
        raise UserError("--lr and --head-lr-mult must be > 0, --wd ≥ 0")
    if (cfg["workers"] or 0) < 0 or cfg["resize"] < cfg["image_size"] or cfg["box_scale"] <= 0:
        raise UserError("need --workers ≥ 0, --resize ≥ --image-size and --box-scale > 0")
    for name in ("save_every", "max_steps"):
        if cfg[name] is not None and cfg[name] < 1:
            raise UserError(f"{name} must be ≥ 1 (got {cfg[name]})")
    if cfg["batch_size"] % cfg["world_size"] or cfg["batch_size"] // cfg["world_size"] < 2:
        raise UserError(f"--batch-size {cfg['batch_size']} must split into ≥ 2 images on each of "
                        f"{cfg['world_size']} ranks")


def lr_factor(cfg: SemisupConfig, epoch: int) -> float:
    return cfg.gamma ** bisect.bisect_right(cfg.milestone_epochs(), epoch)
