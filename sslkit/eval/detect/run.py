"""``sslkit detect`` as a library call: resolve the settings (layers over the defaults, or over the run's
checkpoint when resuming), derive the data-dependent ones, then train/evaluate with the torchvision
engine (here or on launched ranks) or hand over to detectron2."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from sslkit.config import absolute_paths, default_workers, dump_yaml, frozen_error, resolve
from sslkit.console import warn
from sslkit.dist import detect_launcher
from sslkit.engine.config import resolve_precision
from sslkit.engine.launch import device_layout, launch
from sslkit.engine.rundir import LAST, make_run_dir, plan
from sslkit.errors import UserError
from sslkit.eval.detect import d2
from sslkit.eval.detect import settings as S
from sslkit.eval.detect import train as T
from sslkit.eval.detect.model import parts_settings
from sslkit.io.atomic import write_text_atomic
from sslkit.io.lock import exclusive
from sslkit.models.convert import backbone_state_dict, load_backbone

LISTING = "sslkit detect --print-config"


def layout(device: str, gpus: int | None, procs: int | None, nodes: int, ext) -> tuple[str, int, int]:
    """(device, ranks to start here, world size) for ``--device auto|cpu|cuda`` with ``--gpus``/``--procs``."""
    if device == "cpu":
        if gpus:
            raise UserError("--device cpu contradicts --gpus", None, "use --procs N for several CPU processes")
        gpus = 0 if procs is None else None
    elif device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda but no CUDA device is visible", None, "use --device cpu")
        if procs is not None:
            raise UserError("--procs starts CPU processes; with --device cuda use --gpus N")
    return device_layout(gpus, procs, nodes, ext)


def backbone_meta(weights: str, arch: str | None, encoder: str | None, seed: int) -> dict:
    if weights == "random":
        return load_backbone("random", arch=arch, encoder=encoder, seed=seed)[1]
    p = Path(weights).expanduser()
    if not p.is_file():
        raise UserError("no such weights file", p, "pass a checkpoint, an export, or 'random' with --arch")
    meta = backbone_state_dict(p, encoder=encoder, arch=arch)[1]
    meta["source"] = str(p.resolve())
    return meta


def run_detect(weights: str | None, out: Path, layers: list[tuple[str, dict]], *, engine: str = "torchvision",
               device: str = "auto", gpus: int | None = None, procs: int | None = None, nodes: int = 1,
               node_rank: int | None = None, rdzv_endpoint: str | None = None, resume: bool | None = None,
               eval_only: bool = False, dry_run: bool = False, print_config: bool = False, quiet: bool = False,
               command: str = "") -> dict | str | None:
    """Returns the metrics record (rank 0), a summary for ``dry_run``, the YAML for ``print_config``, or None."""
    rp = plan(out, resume, T.RUN_OUTPUTS, eval_only=eval_only) if engine == "torchvision" else None
    base = None
    if rp is not None and rp.config is not None:
        ck_cfg = rp.config
        if ck_cfg.get("engine") != "torchvision" or "resolved" not in ck_cfg:
            raise UserError("holds a checkpoint that 'sslkit detect' did not write", out / LAST,
                            "pass another --out, or --no-resume to start over")
        # per-invocation settings do not carry over (a stop point, workers sized for that machine, …)
        base = {**ck_cfg, **{k: S.DEFAULTS[k] for k in S.RUNTIME if k not in S.DATA_KEYS}}
    cfg = absolute_paths(resolve(S.KEYS, layers, base, owner="detect", listing=LISTING), S.KEYS)
    cfg["engine"] = engine if base is None else cfg["engine"]
    if base is not None:
        err = frozen_error(S.KEYS, rp.config, cfg, out / LAST,
                           "keep the original settings, or pass --no-resume / a new --out")
        if err is not None:
            raise err
        if weights is not None:
            meta = backbone_meta(weights, cfg["arch"], cfg["encoder"], cfg["seed"])
            if meta["backbone_sha256"] != cfg["backbone_sha256"]:
                raise UserError("these weights differ from the ones this run started from", weights,
                                "pass the original WEIGHTS (or none), or a new --out")
    elif not print_config:
        if weights is None:
            raise UserError("which weights? pass WEIGHTS (a checkpoint, an export, or 'random' with --arch)")
        for key in ("train", "val"):
            if cfg[key] is None:
                raise UserError(f"--{key} COCO_JSON is required")
        meta = backbone_meta(weights, cfg["arch"], cfg["encoder"], cfg["seed"])
        cfg.update(weights=meta["source"], arch=meta["arch"], backbone_sha256=meta["backbone_sha256"])
        given = {k: v for _, layer in layers for k, v in layer.items()}
        cfg.update(parts_settings(meta, given))  # a pretrained FPN / box head (MCL): loaded, and its width
        for note in meta.get("notes", []):
            if not quiet:
                warn(note)
    S.validate(cfg)

    ext = detect_launcher()
    dev, nproc, world = layout(device, gpus, procs, nodes, ext)
    cfg["device"], cfg["world_size"] = dev, world
    cfg["precision"] = resolve_precision(cfg["precision"], dev)
    if cfg["workers"] is None:
        cfg["workers"] = default_workers(ext.local_world_size if ext else max(1, nproc))
    if print_config:
        return dump_yaml({k: v for k, v in cfg.items() if k != "resolved"})
    resolved = S.resolve_data(cfg)
    if base is not None:
        old = rp.config["resolved"]
        for key in ("num_train_images_used", "schedule", "train_sizes", "categories"):
            if old.get(key) != resolved[key]:
                raise UserError(f"the data or settings no longer give the run's {key.replace('_', ' ')}", out / LAST,
                                "resume with the same json and settings, or start a new --out")
    cfg["resolved"] = resolved

    if engine == "detectron2":
        n_gpus = world if dev == "cuda" else 0
        if dry_run:
            pkl, yml = d2.prepare(cfg, out, n_gpus, command)
            return {"dry_run": True, "engine": "detectron2", "config": str(yml), "weights": str(pkl),
                    "resolved": resolved}
        if ext is not None:
            raise UserError("--engine detectron2 starts its own processes (detectron2.engine.launch)", None,
                            "run sslkit detect directly, with --gpus N")
        return d2.run(cfg, out, nproc if dev == "cuda" else 0, nodes=nodes, node_rank=node_rank or 0,
                      dist_url=f"tcp://{rdzv_endpoint}" if rdzv_endpoint else None, eval_only=eval_only,
                      resume=resume is not False, command=command)
    if dry_run:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.yaml", dump_yaml(cfg, f"# sslkit detect: resolved config (dry run)\n# {command}\n"))
        return {"dry_run": True, "engine": "torchvision", "config": str(out / "config.yaml"), "resolved": resolved}

    if rp.fresh and not quiet:
        warn(f"--no-resume: removing the earlier run's checkpoint, logs and metrics in {out}")
    opts = T.DetectOptions(run_dir=str(out), resume_from=rp.resume_from, fresh=rp.fresh, eval_only=eval_only,
                           quiet=quiet, command=command)
    make_run_dir(out)
    with exclusive(out, "run folder") if ext is None or ext.rank == 0 else contextlib.nullcontext():
        if ext is not None or nproc * nodes == 1:
            return T.train(cfg, opts)
        return launch(cfg, opts, nproc, nodes, node_rank, rdzv_endpoint, entry=T.ENTRY)
