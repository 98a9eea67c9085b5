"""Pretraining on :class:`~sslkit.engine.loop.Loop`: any :class:`~sslkit.methods.base.Method`, one
process or DDP, AMP, schedules, EMA hooks, checkpoint/resume and logging.

The adapter gives the loop the method (through DDP when there are several ranks), the batches of
:mod:`sslkit.engine.data` from the run's step on, the warm-up/cosine lr schedule and the method's
after-step hook (EMA / momentum encoders). Checkpoints: ``last.pth`` every ``save_every`` steps and
where the run stops, ``epoch_NNNN.pth`` (+ ``last.pth``) at each epoch end.

A checkpoint holds everything the next step depends on (weights incl. EMA targets and queues,
optimizer, scaler, RNG, step); the data order and augmentations are functions of (seed, step), and
the lr/momentum schedules of the step. So on CPU a resumed run ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sslkit import dist
from sslkit.config import absolute_paths, frozen_error
from sslkit.console import warn
from sslkit.dist import detect_launcher
from sslkit.engine import config as C
from sslkit.engine.config import dump_yaml, resolve_precision
from sslkit.engine.data import StepBatchSampler
from sslkit.engine.feed import make_feed
from sslkit.engine.launch import device_layout, launch
from sslkit.engine.logger import RunLogger
from sslkit.engine.loop import Amp, CheckpointHook, LogHook, Loop
from sslkit.engine.optim import build_optimizer
from sslkit.engine.rundir import (
    LAST,
    SKIPPED,
    SkippedImages,
    clear_outputs,
    elapsed_of,
    epoch_checkpoint_name,
    link_or_copy,
    make_run_dir,
    plan,
    prune_epochs,
    restore,
)
from sslkit.engine.schedules import WarmupCosine, scaled_lr
from sslkit.errors import UserError
from sslkit.io.atomic import write_text_atomic
from sslkit.io.checkpoint import rng_state, save_checkpoint
from sslkit.io.images import ImageSource
from sslkit.io.lock import exclusive
from sslkit.methods import get_method

RUN_OUTPUTS = (LAST, "log.jsonl", "tb", SKIPPED, "config.yaml")
ENTRY = "sslkit.engine.pretrain:train"


@dataclass(frozen=True)
class RunOptions:
    run_dir: str
    resume_from: str | None = None  # checkpoint to continue from
    fresh: bool = False  # clear an earlier run's outputs in run_dir first (--no-resume)
    quiet: bool = False
    command: str = ""


def _compile_encoders(model) -> None:
    for prefix in model.encoders().values():
        model.get_submodule(prefix.rstrip(".")).compile()


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP that syncs buffers once at start but not every forward: BN running stats stay per rank
    (identical under SyncBN) and MoCo's queue is updated identically on every rank by construction,
    so re-broadcasting it (32 MB at K=65536) each step would be waste."""
    DDP = nn.parallel.DistributedDataParallel
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
               else {"broadcast_buffers": False})
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
               gradient_as_bucket_view=True, **no_sync)


def train(cfg: dict, opts: RunOptions) -> dict | None:
    """Run (or continue) the training ``cfg`` describes; returns the summary on rank 0."""
    with dist.running(cfg["device"]) as info:
        return _train(cfg, opts, info)


def _train(cfg: dict, opts: RunOptions, info: dist.DistInfo) -> dict | None:
    run_dir = Path(opts.run_dir)
    cfg = {**cfg, "precision": resolve_precision(cfg["precision"], cfg["device"])}
    main = info.is_main
    world = info.world_size
    if world != cfg["world_size"]:
        raise UserError(f"the launcher started {world} ranks but the config says {cfg['world_size']}")
    if cfg["device"] == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    else:
        device = torch.device("cpu")

    if main:
        make_run_dir(run_dir)
        if opts.fresh:
            clear_outputs(run_dir, RUN_OUTPUTS)
        write_text_atomic(run_dir / "config.yaml",
                          dump_yaml(cfg, f"# sslkit pretrain: resolved config\n# {opts.command}\n"))
    dist.barrier()

    method_cls = get_method(cfg["method"])
    torch.manual_seed(cfg["seed"])
    source = ImageSource.from_arg(cfg["images"], cfg["image_root"])
    feed = make_feed(method_cls, cfg, source, device)  # the data path: cpu (OpenCV), gpu (on the device) or pil
    dataset = feed.dataset
    global_batch = cfg["batch_size"]
    sampler = StepBatchSampler(len(dataset), global_batch, info.rank, world, cfg["seed"])
    spe = sampler.steps_per_epoch
    if spe == 0:
        raise UserError(f"only {len(dataset)} images, fewer than one batch of {global_batch}", cfg["images"],
                        "lower --batch-size")
    total = cfg["epochs"] * spe

    model = method_cls(cfg)
    if cfg["sync_bn"] and cfg["device"] == "cuda" and world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg["channels_last"]:
        model.to(memory_format=torch.channels_last)
    peak = scaled_lr(cfg["lr"], global_batch, cfg["lr_scaling"])
    schedule = WarmupCosine(peak, total, round(cfg["warmup_epochs"] * spe), cfg["warmup_start_factor"],
                            cfg["min_lr"])
    optimizer = build_optimizer(model, cfg["optimizer"], schedule(0), cfg["weight_decay"],
                                cfg["optim_momentum"], cfg["lars_eta"], cfg["lars_lr_placement"], peak_lr=peak)
    amp = Amp(cfg["precision"], cfg["device"])

    step, elapsed_before, log_state = 0, 0.0, None
    if opts.resume_from:
        ck = restore(opts.resume_from, model, optimizer, amp, num_images=len(dataset), global_batch=global_batch)
        step, elapsed_before, log_state = int(ck["step"]), elapsed_of(ck), ck.get("log")
        del ck
    if cfg["compile"]:
        _compile_encoders(model)
    module = wrap_ddp(model, device) if world > 1 else model

    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg["workers"], pin_memory=device.type == "cuda",
        persistent_workers=cfg["workers"] > 0, collate_fn=feed.collate,
        generator=torch.Generator())
    skipped = SkippedImages(run_dir / SKIPPED, main)
    logger = RunLogger(run_dir, main, opts.quiet, cfg["tensorboard"], total, step, global_batch, spe,
                       resumed=opts.resume_from is not None)
    loop = Loop(optimizer, amp, module, schedule,
                total, start=step, stop=cfg["max_steps"] or total, after_step=model.on_after_step,
                grad_clip=cfg.get("grad_clip"), elapsed_before=elapsed_before)

    def save(epoch_end: bool) -> None:
        skipped.flush()
        if not main:
            return
        s = loop.step
        payload = {
            "command": opts.command, "method": cfg["method"], "config": cfg,
            "epoch": s // spe, "step": s,
            "model": model.state_dict(), "encoders": model.encoders(), "default_encoder": model.default_encoder,
            "parts": model.export_parts(),
            "optimizer": optimizer.state_dict(),
            "scaler": amp.scaler.state_dict() if amp.scaler.is_enabled() else None,
            "scheduler": {**schedule.state_dict(), "step": s},
            "ema": model.ema_state(), "rng": rng_state(),
            "data": {"epoch": s // spe, "step_in_epoch": s % spe, "steps_per_epoch": spe,
                     "num_images": len(dataset), "global_batch": global_batch, "seed": cfg["seed"]},
            "metrics": {**loop.metrics, "elapsed_s": loop.elapsed()}, "log": log_hook.state(),
        }
        if epoch_end:
            path = save_checkpoint(run_dir / epoch_checkpoint_name(s // spe), payload)
            link_or_copy(path, run_dir / LAST)
            prune_epochs(run_dir, cfg["keep_last"])
        else:
            save_checkpoint(run_dir / LAST, payload)

    if loop.done:
        logger.message(f"{run_dir / LAST} is already at step {step} (of {total}); nothing to do")
    elif main:
        what = f"resuming at step {step}/{total}" if step else f"training {total} steps"
        logger.message(f"{cfg['method']} {cfg['arch']}: {len(dataset)} images, {spe} steps/epoch × "
                       f"{cfg['epochs']} epochs, batch {global_batch} ({global_batch // world}/rank × {world}), "
                       f"peak lr {peak:.4g}; {what}")

    def batches():
        for epoch in range(loop.step // spe, cfg["epochs"]):
            sampler.set_epoch(epoch, loop.step - epoch * spe)
            for batch, bad in feed.batches(loader):  # on the device, views made (gpu path) or moved there
                if bad:
                    skipped.add(bad)
                yield batch

    log_hook = LogHook(logger, cfg["log_every"], global_batch, lambda s: s / spe, resume=log_state)
    step = loop.run(batches(), [log_hook, CheckpointHook(save, cfg["save_every"], epoch_every=spe)])
    dist.barrier()
    if not main:
        return None
    return {"run_dir": str(run_dir), "checkpoint": str(run_dir / LAST), "method": cfg["method"],
            "step": step, "total_steps": total, "finished": step >= total, **loop.metrics}


def run(images: str | None, out: Path | None, layers: list[tuple[str, dict]], *, gpus: int | None = None,
        procs: int | None = None, nodes: int = 1, node_rank: int | None = None, rdzv_endpoint: str | None = None,
        resume: bool | None = None, print_config: bool = False, quiet: bool = False,
        command: str = "") -> dict | str | None:
    """``sslkit pretrain``: resolve the settings (``layers``: ``[(where, mapping), …]``, lowest first, over
    the method's defaults or the run's checkpoint), then train here or on launched ranks.

    Returns the summary of rank 0, the resolved config as YAML with ``print_config``, or None."""
    layers = [(where, dict(layer)) for where, layer in layers]
    if images is not None:
        layers[-1][1]["images"] = str(images)
    if out is None and not print_config:
        raise UserError("--out RUN_DIR is required")
    rp = plan(Path(out), resume, RUN_OUTPUTS) if out is not None else None
    ck_cfg = None
    if rp is not None and rp.config is not None:
        # per-invocation settings do not carry over: a stop point, and workers sized for that machine
        ck_cfg = {**rp.config, "max_steps": None, "workers": None}
    name = next((layer["method"] for _, layer in reversed(layers) if layer.get("method")), None) or \
        (ck_cfg or {}).get("method")
    if not name:
        raise UserError("which method? pass --method (see sslkit pretrain --list-methods)")
    method_cls = get_method(name)
    for _, layer in layers:  # the method is chosen; the layers' own choice is no setting to apply
        layer.pop("method", None)

    ext = detect_launcher()
    device, nproc, world = device_layout(gpus, procs, nodes, ext)
    keys = C.method_keys(method_cls)
    cfg = absolute_paths(C.resolve(method_cls, layers, base=ck_cfg), keys)
    if ck_cfg is not None:
        err = frozen_error(keys, ck_cfg, cfg, Path(out) / LAST,
                           "keep the original settings, or pass --no-resume / a new --out")
        if err is not None:
            raise err
    cfg["device"], cfg["world_size"] = device, world
    if cfg["workers"] is None:
        cfg["workers"] = C.default_workers(ext.local_world_size if ext else nproc)
    if cfg["images"] is None and not print_config:
        raise UserError("no IMAGES given (a folder or a COCO json)")
    C.validate(cfg)
    method_cls.validate(cfg)
    if print_config:
        return C.dump_yaml(cfg)
    if rp.fresh and not quiet:
        warn(f"--no-resume: removing the earlier run's checkpoints and logs in {out}")
    opts = RunOptions(run_dir=str(out), resume_from=rp.resume_from, fresh=rp.fresh, quiet=quiet, command=command)
    make_run_dir(Path(out))
    with exclusive(out, "run folder") if ext is None or ext.rank == 0 else contextlib.nullcontext():
        if ext is not None or nproc * nodes == 1:
            return train(cfg, opts)
        return launch(cfg, opts, nproc, nodes, node_rank, rdzv_endpoint, entry=ENTRY)
