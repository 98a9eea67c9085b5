"""The settings of ``sslkit detect`` (the InfoMin/PyContrast R50-FPN 1× protocol; docs/detect.md lists the
source of each), as a typed spec for :func:`sslkit.config.resolve`, and the settings derived from the data.

Keys marked ``runtime`` may differ between a run and its resumption: where the data and weights are
(their content is checked), the device layout, logging, checkpoint cadence and the stop point.
"""

from __future__ import annotations

import math

from sslkit.config import Key
from sslkit.errors import UserError
from sslkit.eval.detect.data import load_detection_split
from sslkit.eval.detect.schedule import make_schedule

_PRECISIONS = ("auto", "fp32", "bf16", "fp16")

#: every setting of a detection run
KEYS: dict[str, Key] = {
    "engine": Key("torchvision", str, "torchvision (built in) or detectron2 (if installed)",
                  choices=("torchvision", "detectron2")),
    "weights": Key(None, str, "the backbone: a checkpoint, an export, or 'random'", optional=True, runtime=True),
    "arch": Key(None, str, "backbone architecture (required with 'random'; otherwise checked)", optional=True),
    "encoder": Key(None, str, "encoder of a training checkpoint (default: its default)", optional=True),
    "train": Key(None, str, "training COCO instances json", optional=True, runtime=True, path=True),
    "val": Key(None, str, "evaluation COCO instances json", optional=True, runtime=True, path=True),
    "image_root": Key(None, str, "image folder of the jsons", optional=True, runtime=True, path=True),
    "val_image_root": Key(None, str, "image folder of --val", optional=True, runtime=True, path=True),
    "schedule": Key("1x", str, "multiple of the 1x schedule: 1x, 2x, 0.5x, …"),
    "iters": Key(None, int, "total iterations (replaces the schedule's length)", optional=True),
    "batch_size": Key(16, int, "GLOBAL images per iteration"),
    "lr": Key(0.02, float, "base lr at 16 images, scaled × batch/16"),
    "momentum": Key(0.9, float, "SGD momentum"),
    "weight_decay": Key(1e-4, float, "weight decay"),
    "weight_decay_norm": Key(0.0, float, "weight decay of norm layers"),
    "warmup_iters": Key(None, int, "linear warm-up iterations (default: 1000 of a 90k 1x, scaled)", optional=True),
    "steps": Key(None, list, "lr ×0.1 at these iterations (default: from the schedule)", optional=True),
    "min_size": Key(800, int, "test short side; training samples 0.8×..1× of it"),
    "max_size": Key(1333, int, "longest side cap"),
    "train_sizes": Key(None, list, "explicit training short sides", optional=True),
    "norm": Key("syncbn", str, "syncbn: SyncBN across GPUs (BN in one process); bn: never synced",
                choices=("syncbn", "bn")),
    "freeze_at": Key(0, int, "frozen backbone parts: 0 none, 1 stem, 2 +res2, … 5 all"),
    "fpn_channels": Key(256, int, "FPN/head width (box fc: 4×)"),
    "precise_bn_iters": Key(None, int, "batches for Precise BN before evaluation (0: off)", optional=True),
    "init_parts": Key(None, list, "detector parts (fpn, head) initialised from the weights beside the backbone "
                      "(set from the weights file: an MCL export holds both)", optional=True, item=str),
    "seed": Key(0, int, "seed of the heads' init, data order, flips"),
    # runtime: may differ between a run and its resumption
    "device": Key("cpu", str, "cpu or cuda (set from --device/--gpus/--procs)", choices=("cpu", "cuda"),
                  runtime=True),
    "world_size": Key(1, int, "number of ranks (recorded)", runtime=True),
    "precision": Key("auto", str, "autocast precision", choices=_PRECISIONS, runtime=True),
    "workers": Key(None, int, "data loading processes per rank", optional=True, runtime=True),
    "log_every": Key(20, int, "log every N iterations", runtime=True),
    "save_every": Key(None, int, "write last.pth every N iterations", optional=True, runtime=True),
    "max_iters": Key(None, int, "stop (with a checkpoint) after N total iterations", optional=True, runtime=True),
    "eval_batch_size": Key(2, int, "images per inference batch per rank", runtime=True),
    "save_predictions": Key(False, bool, "write RUN_DIR/predictions.json", runtime=True),
    "tensorboard": Key(True, bool, "TensorBoard logs in RUN_DIR/tb", runtime=True),
}
DEFAULTS: dict = {k: v.default for k, v in KEYS.items()}
#: where the data and weights are: may move between a run and its resumption (their content is checked)
DATA_KEYS = {"train", "val", "image_root", "val_image_root", "weights"}
RUNTIME = {k for k, v in KEYS.items() if v.runtime}
#: detectron2's multi-scale training sizes at MIN_SIZE_TEST 800 (INPUT.MIN_SIZE_TRAIN)
REF_TRAIN_SIZES = (640, 672, 704, 736, 768, 800)
REF_TEST_SIZE = 800
#: detectron2's TEST.PRECISE_BN.NUM_ITER at 16 images per iteration
REF_PRECISE_BN_IMAGES = 200 * 16




def validate(cfg: dict) -> None:
    for key, low in (("batch_size", 1), ("eval_batch_size", 1), ("log_every", 1), ("fpn_channels", 1),
                     ("min_size", 1), ("max_size", 1)):
        if cfg[key] < low:
            raise UserError(f"--{key.replace('_', '-')} must be ≥ {low} (got {cfg[key]})")
    for key in ("iters", "max_iters", "save_every", "precise_bn_iters", "warmup_iters", "workers"):
        if cfg[key] is not None and cfg[key] < 0:
            raise UserError(f"--{key.replace('_', '-')} must be ≥ 0 (got {cfg[key]})")
    if cfg["lr"] <= 0 or cfg["weight_decay"] < 0:
        raise UserError("--lr must be > 0 and --weight-decay ≥ 0")


def train_sizes(min_size: int, explicit: list[int] | None = None) -> list[int]:
    """Short sides sampled in training: detectron2's 640:32:800 scaled to a test size of ``min_size``."""
    if explicit:
        if any(s < 1 for s in explicit):
            raise UserError(f"--train-sizes {explicit} must be positive")
        return sorted(set(int(s) for s in explicit))
    return sorted({max(1, round(s * min_size / REF_TEST_SIZE)) for s in REF_TRAIN_SIZES})


def resolve_data(cfg: dict) -> dict:
    """Derived settings that depend on the data: usable training images, schedule, sizes, Precise BN
    length, categories.  Stored in ``cfg["resolved"]``."""

    tr = load_detection_split(cfg["train"], cfg["image_root"])
    va = load_detection_split(cfg["val"], cfg["val_image_root"] or cfg["image_root"], reference=tr)
    usable = tr.trainable()
    if not usable:
        raise UserError("no image has an annotation with a non-empty box", cfg["train"],
                        "pass a COCO instances json with annotations")
    if not va.records:
        raise UserError("has no images", cfg["val"])
    b = cfg["batch_size"]
    if b % cfg["world_size"]:
        raise UserError(f"--batch-size {b} does not split evenly over {cfg['world_size']} processes")
    sched = make_schedule(cfg["schedule"], len(usable), b, lr=cfg["lr"], iters=cfg["iters"],
                          warmup_iters=cfg["warmup_iters"], steps=cfg["steps"])
    if cfg["min_size"] < 1 or cfg["max_size"] < cfg["min_size"]:
        raise UserError(f"need 1 ≤ --min-size ≤ --max-size (got {cfg['min_size']}, {cfg['max_size']})")
    pbn = cfg["precise_bn_iters"]
    if pbn is None:
        pbn = min(math.ceil(REF_PRECISE_BN_IMAGES / b), math.ceil(len(usable) / b))
    save_every = cfg["save_every"] or max(1, round(sched.iters * 5000 / 90000))
    return {"num_train_images": len(tr.records), "num_train_images_used": len(usable),
            "num_val_images": len(va.records), "categories": tr.categories(), "schedule": sched.describe(),
            "train_sizes": train_sizes(cfg["min_size"], cfg["train_sizes"]), "test_size": cfg["min_size"],
            "precise_bn_iters": int(pbn), "save_every": int(save_every)}
