"""The pretraining config: one flat mapping, resolved as

    engine defaults  <  the method's DEFAULTS  <  --config FILE (YAML/TOML)  <  --set KEY=VALUE  <  flags

On resume the checkpoint's config replaces the first two layers; only keys marked ``runtime``
(speed, logging and checkpoint cadence, workers, the device layout) may then differ from it.
The resolved mapping is saved as ``RUN_DIR/config.yaml`` and in every checkpoint's ``config``.
"""

from __future__ import annotations

from dataclasses import replace

from sslkit.config import Key, apply_layer, default_workers, dump_yaml, load_config_file, parse_set  # noqa: F401
from sslkit.config import frozen_changes as _frozen_changes
from sslkit.config import resolve as _resolve
from sslkit.errors import UserError
from sslkit.transforms import parse_view_aug

#: keys every method has; a method's DEFAULTS override these defaults and add its own keys
ENGINE_KEYS: dict[str, Key] = {
    "method": Key(None, str, "pretraining method"),
    "images": Key(None, str, "image folder or COCO json (absolute path; may move between resumes)",
                  runtime=True, path=True),
    "image_root": Key(None, str, "image folder of a COCO json", optional=True, runtime=True, path=True),
    "arch": Key("resnet50", str, "backbone: any torchvision ResNet/ResNeXt/Wide-ResNet, or resnet_tiny"),
    "image_size": Key(224, int, "side of the square training views (px)"),
    "batch_size": Key(256, int, "GLOBAL batch size, split evenly across ranks"),
    "epochs": Key(100, int, "training epochs"),
    "optimizer": Key("sgd", str, "optimizer", choices=("sgd", "lars", "adamw")),
    "lr": Key(0.1, float, "base learning rate, scaled by lr_scaling (linear: ×batch/256)"),
    "lr_scaling": Key("linear", str, "peak lr = lr×B/256 (linear), lr×√B (sqrt) or lr (none)",
                      choices=("linear", "sqrt", "none")),
    "weight_decay": Key(1e-4, float, "weight decay"),
    "optim_momentum": Key(0.9, float, "SGD/LARS momentum"),
    "lars_eta": Key(1e-3, float, "LARS trust coefficient"),
    "lars_lr_placement": Key("inside", str, "LARS: lr inside the momentum buffer (SimCLR's TF code) or outside "
                             "it (BYOL's/DetCon's optax code); same at constant lr", choices=("inside", "outside")),
    "warmup_epochs": Key(0.0, float, "linear lr warm-up length (epochs)"),
    "warmup_start_factor": Key(1e-4, float, "warm-up starts at this fraction of the peak lr"),
    "min_lr": Key(0.0, float, "cosine schedule end value (absolute)"),
    "grad_clip": Key(0.0, float, "clip the gradients' global L2 norm to this before each step (0: off)"),
    "blur_reference_size": Key(None, int, "rescale the Gaussian-blur σ range (given for views of this side, "
                               "e.g. 224) to each view's side; unset: σ in pixels as the papers give it",
                               optional=True),
    "view_aug": Key(None, str, "override the method's view augmentations: space/comma-separated [1.|2.]FIELD=VALUE, "
                    "e.g. 'saturation=0.8 2.solarize_p=0 crop_scale=0.2:1' (fields: docs/pretrain.md)", optional=True),
    "sync_bn": Key(False, bool, "SyncBatchNorm across GPUs (ignored on CPU and for one rank)"),
    "seed": Key(0, int, "seed of the init, the sampler permutation and every augmentation draw"),
    # runtime: may change on resume
    "device": Key("cpu", str, "cpu or cuda", choices=("cpu", "cuda"), runtime=True),
    "world_size": Key(1, int, "number of ranks (recorded)", runtime=True),
    "precision": Key("auto", str, "autocast precision (auto: bf16 on a bf16-capable GPU, else fp32)",
                     choices=("auto", "fp32", "bf16", "fp16"), runtime=True),
    "channels_last": Key(False, bool, "NHWC memory format", runtime=True),
    "data_path": Key("cpu", str, "where views are decoded and augmented: cpu (loader workers: OpenCV, reduced-size "
                     "JPEG decoding), gpu (workers read file bytes; nvJPEG decoding and augmentation batched on the "
                     "training device; needs sslkit[gpu]) or pil (the torchvision/PIL reference pipelines); all three "
                     "draw the same views", choices=("cpu", "gpu", "pil"), runtime=True),
    "data_prefetch": Key(2, int, "data_path gpu on CUDA: batches decoded and augmented ahead on a side stream "
                         "(0: in the loop)", runtime=True),
    "compile": Key(False, bool, "torch.compile the backbones", runtime=True),
    "workers": Key(None, int, "DataLoader workers per rank (default: CPUs per rank − 1, at most 8)",
                   runtime=True, optional=True),
    "save_every": Key(1000, int, "write RUN_DIR/last.pth every N steps (0: only at epoch ends)", runtime=True),
    "keep_last": Key(3, int, "epoch checkpoints to keep (0: keep all)", runtime=True),
    "log_every": Key(10, int, "log.jsonl / TensorBoard / progress line every N steps", runtime=True),
    "max_steps": Key(None, int, "stop (with a checkpoint) after this many total steps; the schedule is "
                     "unchanged", runtime=True, optional=True),
    "tensorboard": Key(True, bool, "write TensorBoard event files to RUN_DIR/tb", runtime=True),
}


def method_keys(method_cls) -> dict[str, Key]:
    """All keys of a method: the engine's with the method's defaults, plus its own hyper-parameters
    (those named in ``PATH_KEYS`` are files: made absolute and checked when resolved)."""
    keys = dict(ENGINE_KEYS)
    keys["method"] = Key(method_cls.name, str, ENGINE_KEYS["method"].help, choices=(method_cls.name,))
    for name, value in method_cls.DEFAULTS.items():
        if name in keys:
            keys[name] = replace(keys[name], default=value)
        else:
            kind = type(value)
            if kind not in (bool, int, float, str):
                raise TypeError(f"{method_cls.__name__}.DEFAULTS[{name!r}] must be a bool/int/float/str")
            keys[name] = Key(value, kind, method_cls.HELP.get(name, ""), path=name in method_cls.PATH_KEYS)
    return keys


#: settings added after runs were made whose default is not what those runs did: a checkpoint without
#: the key resumes with the value it was trained with, not the new default
BEFORE_THE_KEY: dict[str, object] = {
    "lars_lr_placement": "inside",  # LARS had the lr inside the momentum only
    "loss_directions": "mean",  # SimCLR averaged the two directions
    "ot_marginals": "normalized",  # UniVIP's marginals used L2-normalised vectors
}


def resolve(method_cls, layers: list[tuple[str, dict]], base: dict | None = None) -> dict:
    """Defaults (or ``base``, a checkpoint's config) overlaid by ``layers`` ``[(where, mapping), …]``."""
    keys = method_keys(method_cls)
    if base is not None:
        base = {**{k: v for k, v in BEFORE_THE_KEY.items() if k in keys}, **base}
    return _resolve(keys, layers, base, owner=method_cls.name,
                    listing=f"sslkit pretrain --method {method_cls.name} --print-config")


def frozen_changes(method_cls, old: dict, new: dict) -> list[str]:
    """Keys that define the run and differ between ``old`` (the checkpoint's) and ``new``."""
    return _frozen_changes(method_keys(method_cls), old, new)


def validate(cfg: dict) -> None:
    """Checks that need several keys or the machine; method-specific ones live in ``Method.validate``."""
    for name in ("image_size", "batch_size", "epochs"):
        if cfg[name] < 1:
            raise UserError(f"{name} must be at least 1 (got {cfg[name]})")
    if cfg["image_size"] < 32:
        raise UserError(f"image_size {cfg['image_size']} is too small for a ResNet (minimum 32)")
    if cfg["batch_size"] % cfg["world_size"]:
        raise UserError(f"batch size {cfg['batch_size']} does not split evenly over {cfg['world_size']} ranks",
                        None, "make --batch-size a multiple of the number of GPUs/processes")
    if cfg["batch_size"] // cfg["world_size"] < 2:
        raise UserError("each rank needs at least 2 images per batch for BatchNorm", None,
                        "raise --batch-size or use fewer ranks")
    for name in ("lr", "weight_decay", "warmup_epochs", "min_lr", "grad_clip"):
        if cfg[name] < 0:
            raise UserError(f"{name} must be >= 0 (got {cfg[name]})")
    if not 0.0 <= cfg["warmup_start_factor"] <= 1.0:
        raise UserError(f"warmup_start_factor must be in [0, 1] (got {cfg['warmup_start_factor']})")
    if cfg["warmup_epochs"] > cfg["epochs"]:
        raise UserError(f"warmup_epochs {cfg['warmup_epochs']} is longer than epochs {cfg['epochs']}", None,
                        f"pass --warmup-epochs {min(cfg['warmup_epochs'], cfg['epochs'] / 10):g} (or any value ≤ "
                        f"--epochs), or train longer")
    if cfg["data_prefetch"] < 0:
        raise UserError("data_prefetch must be >= 0")
    if cfg["workers"] is not None and cfg["workers"] < 0:
        raise UserError("workers must be >= 0")
    if cfg["max_steps"] is not None and cfg["max_steps"] < 1:
        raise UserError("max_steps must be at least 1")
    if cfg["blur_reference_size"] is not None and cfg["blur_reference_size"] < 1:
        raise UserError(f"blur_reference_size must be at least 1 px (got {cfg['blur_reference_size']})")
    if cfg["view_aug"] is not None:
        try:
            parse_view_aug(cfg["view_aug"])
        except ValueError as e:
            raise UserError(f"view_aug: {e}") from None
    for name in ("save_every", "keep_last", "log_every"):
        if cfg[name] < 0 or (name == "log_every" and cfg[name] == 0):
            raise UserError(f"{name} must be {'>= 1' if name == 'log_every' else '>= 0'}")
    if cfg["device"] == "cpu" and cfg["precision"] == "fp16":
        raise UserError("fp16 autocast needs a GPU", None, "use --precision bf16 or fp32 on CPU")


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` → bf16 on a bf16-capable GPU, else fp32. Called in the training process: asking
    CUDA in the launching process would give it a CUDA context (and fail on exclusive-mode GPUs)."""
    if device != "cuda":
        return "fp32" if precision == "auto" else precision
    import torch

    bf16 = torch.cuda.is_bf16_supported()
    if precision == "auto":
        return "bf16" if bf16 else "fp32"
    if precision == "bf16" and not bf16:
        raise UserError("this GPU has no bf16 support", None, "use --precision fp16")
    return precision


