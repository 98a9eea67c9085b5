"""The one training loop: any :class:`~sslkit.methods.base.Method`, one process or DDP, AMP,
schedules, EMA hooks, checkpoint/resume and logging.

Step ``k`` (0-based) of a run:

1. lr ← schedule(k) on every parameter group;
2. the batch of step ``k`` (see :mod:`sslkit.engine.data`) → ``method(batch)`` under autocast →
   backward (GradScaler with fp16) → optimizer step;
3. ``method.on_after_step(k, total)`` (EMA / momentum encoders);
4. every ``log_every`` steps: rank-averaged scalars to log.jsonl/TensorBoard/progress;
   every ``save_every`` steps: ``last.pth``; at each epoch end: ``epoch_NNNN.pth`` (+ ``last.pth``).

A checkpoint holds everything the next step depends on (weights incl. EMA targets and queues,
optimizer, scaler, RNG, step); the data order and augmentations are functions of (seed, step), and
the lr/momentum schedules of the step. So on CPU a resumed run ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sslkit import dist
from sslkit.console import warn
from sslkit.engine.config import dump_yaml, resolve_precision
from sslkit.engine.data import StepBatchSampler
from sslkit.engine.feed import make_feed, to_device  # noqa: F401 (to_device: its home was here)
from sslkit.engine.logger import RunLogger
from sslkit.engine.optim import build_optimizer
from sslkit.engine.schedules import WarmupCosine, scaled_lr
from sslkit.errors import UserError
from sslkit.io.atomic import atomic_path, write_text_atomic
from sslkit.io.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

LAST = "last.pth"
SKIPPED = "skipped_images.tsv"
RUN_OUTPUTS = ("last.pth", "log.jsonl", "tb", SKIPPED, "config.yaml")


@dataclass(frozen=True)
class RunOptions:
    run_dir: str
    resume_from: str | None = None  # checkpoint to continue from
    fresh: bool = False  # clear an earlier run's outputs in run_dir first (--no-resume)
    quiet: bool = False
    command: str = ""


def epoch_checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pth"


def clear_run_outputs(run_dir: Path) -> None:
    """Remove what an earlier run wrote (checkpoints, logs); other files are left alone."""
    for name in RUN_OUTPUTS:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for p in run_dir.glob("epoch_*.pth"):
        p.unlink()


class Amp:
    """Autocast at ``precision`` (fp32: none) and the GradScaler fp16 needs (disabled otherwise)."""

    def __init__(self, precision: str, device: str):
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.device = device
        self.scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=self.dtype)


class SkippedImages:
    """Unreadable images: warn once per file on the rank that met it; rank 0 lists them all."""

    def __init__(self, path: Path, main: bool):
        self.path = path
        self.main = main
        self.seen: set[str] = set()
        self.new: list[tuple[str, str]] = []
        if main and path.exists():
            self.seen = {line.split("\t", 1)[0] for line in path.read_text().splitlines()[1:] if line}

    def add(self, items: list[tuple[str, str]]) -> None:
        for name, reason in items:
            if name not in self.seen:
                self.seen.add(name)
                self.new.append((name, reason))
                warn(f"skipping unreadable image {name}: {reason}")

    def flush(self) -> None:
        """Collective: gather every rank's new entries; rank 0 appends them to the list."""
        gathered = dist.all_gather_objects(self.new)
        self.new = []
        if not self.main:
            return
        rows = {}
        for items in gathered:
            for name, reason in items:
                rows.setdefault(name, reason)
        if not rows:
            return
        old = self.path.read_text() if self.path.exists() else "file_name\treason\n"
        with atomic_path(self.path) as tmp:
            Path(tmp).write_text(old + "".join(f"{n}\t{r}\n" for n, r in rows.items()))


def train_step(module: nn.Module, model, optimizer: torch.optim.Optimizer, amp: Amp, batch, lr: float,
               step: int, total_steps: int) -> tuple[dict, dict]:
    """One optimizer step as the loop runs it: set lr, forward (through DDP when ``module`` is the
    DDP wrapper of ``model``), backward, step, then the method's after-step hook.
    Returns (the method's outputs, the hook's values)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with amp.autocast():
        out = module(batch)
    optimizer.zero_grad(set_to_none=True)
    amp.scaler.scale(out["loss"]).backward()
    amp.scaler.step(optimizer)
    amp.scaler.update()
    return out, model.on_after_step(step, total_steps)


def _compile_encoders(model) -> None:
    for prefix in model.encoders().values():
        model.get_submodule(prefix.rstrip(".")).compile()


def train(cfg: dict, opts: RunOptions) -> dict | None:
    """Run (or continue) the training ``cfg`` describes; returns the summary on rank 0."""
    with dist.running(cfg["device"]) as info:
        return _train(cfg, opts, info)


def _train(cfg: dict, opts: RunOptions, info: dist.DistInfo) -> dict | None:
    from sslkit.io.images import ImageSource
    from sslkit.methods import get_method

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
        run_dir.mkdir(parents=True, exist_ok=True)
        if opts.fresh:
            clear_run_outputs(run_dir)
        write_text_atomic(run_dir / "config.yaml",
                          dump_yaml(cfg, f"# sslkit pretrain: resolved config\n# {opts.command}\n"))
    dist.barrier()

    method_cls = get_method(cfg["method"])
    torch.manual_seed(cfg["seed"])
    source = ImageSource.from_arg(cfg["images"], cfg["image_root"])
    feed = make_feed(method_cls, cfg, source, device)
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
                                cfg["optim_momentum"], cfg["lars_eta"])
    amp = Amp(cfg["precision"], cfg["device"])

    step, elapsed_before = 0, 0.0
    if opts.resume_from:
        ck = load_checkpoint(opts.resume_from)
        data = ck.get("data") or {}
        if data.get("num_images") != len(dataset) or data.get("global_batch") != global_batch:
            raise UserError(f"the checkpoint was made with {data.get('num_images')} images and batch "
                            f"{data.get('global_batch')}; now {len(dataset)} and {global_batch}",
                            opts.resume_from, "resume with the same images, or start a new --out")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if ck.get("scaler") and amp.scaler.is_enabled():
            amp.scaler.load_state_dict(ck["scaler"])
        set_rng_state(ck["rng"])
        step = int(ck["step"])
        elapsed_before = float((ck.get("metrics") or {}).get("elapsed_s", 0.0))
        del ck
    if cfg["compile"]:
        _compile_encoders(model)
    ddp = _wrap_ddp(model, device) if world > 1 else model

    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg["workers"], pin_memory=device.type == "cuda",
        persistent_workers=cfg["workers"] > 0, collate_fn=feed.collate,
        generator=torch.Generator())
    skipped = SkippedImages(run_dir / SKIPPED, main)
    logger = RunLogger(run_dir, main, opts.quiet, cfg["tensorboard"], total, step, global_batch, spe,
                       resumed=opts.resume_from is not None)
    state = {"metrics": {}, "t_start": time.monotonic()}

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - state["t_start"]

    def save(epoch_end: bool) -> None:
        skipped.flush()
        if not main:
            return
        payload = {
            "command": opts.command, "method": cfg["method"], "config": cfg,
            "epoch": step // spe, "step": step,
            "model": model.state_dict(), "encoders": model.encoders(), "default_encoder": model.default_encoder,
            "optimizer": optimizer.state_dict(),
            "scaler": amp.scaler.state_dict() if amp.scaler.is_enabled() else None,
            "scheduler": {**schedule.state_dict(), "step": step},
            "ema": model.ema_state(), "rng": rng_state(),
            "data": {"epoch": step // spe, "step_in_epoch": step % spe, "steps_per_epoch": spe,
                     "num_images": len(dataset), "global_batch": global_batch, "seed": cfg["seed"]},
            "metrics": {**state["metrics"], "elapsed_s": elapsed()},
        }
        if epoch_end:
            path = save_checkpoint(run_dir / epoch_checkpoint_name(step // spe), payload)
            _link_or_copy(path, run_dir / LAST)
            _prune_epochs(run_dir, cfg["keep_last"])
        else:
            save_checkpoint(run_dir / LAST, payload)

    end = min(total, cfg["max_steps"] or total)
    if step >= end:
        logger.message(f"{run_dir / LAST} is already at step {step} (of {total}); nothing to do")
    elif main:
        what = f"resuming at step {step}/{total}" if step else f"training {total} steps"
        logger.message(f"{cfg['method']} {cfg['arch']}: {len(dataset)} images, {spe} steps/epoch × "
                       f"{cfg['epochs']} epochs, batch {global_batch} ({global_batch // world}/rank × {world}), "
                       f"peak lr {peak:.4g}; {what}")

    sums: dict[str, torch.Tensor] = {}
    n_sum, t_log, step_log = 0, time.monotonic(), step
    stop = False
    try:
        for epoch in range(step // spe, cfg["epochs"]):
            if stop or step >= end:
                break
            sampler.set_epoch(epoch, step - epoch * spe)
            for batch, bad in feed.batches(loader):
                if bad:
                    skipped.add(bad)
                lr = schedule(step)
                out, extra = train_step(ddp, model, optimizer, amp, batch, lr, step, total)
                step += 1
                for k, v in out.items():
                    v = v.detach().float()
                    sums[k] = sums[k] + v if k in sums else v
                n_sum += 1
                logger.advance(step)
                stop = step >= end
                if step % cfg["log_every"] == 0 or step == total or stop:
                    means = dist.all_reduce_mean(torch.stack([sums[k] for k in sums]) / n_sum).tolist()
                    rec = dict(zip(sums, means, strict=True))
                    if not all(map(_finite, rec.values())):
                        raise FloatingPointError(
                            f"loss is not finite at step {step} ({rec}); lower --lr, or use --precision fp32")
                    now = time.monotonic()
                    rec = {"step": step, "epoch": round(step / spe, 4), **rec, "lr": lr, **extra,
                           "img_per_s": (step - step_log) * global_batch / max(now - t_log, 1e-9),
                           "elapsed_s": round(elapsed(), 3), "time": round(time.time(), 3)}
                    state["metrics"] = {k: v for k, v in rec.items() if k != "time"}
                    logger.log(rec)
                    sums, n_sum, t_log, step_log = {}, 0, now, step
                if step % spe == 0:
                    save(epoch_end=True)
                elif stop or (cfg["save_every"] and step % cfg["save_every"] == 0):
                    save(epoch_end=False)
                if stop:
                    break
    finally:
        logger.close()
    dist.barrier()
    if not main:
        return None
    return {"run_dir": str(run_dir), "checkpoint": str(run_dir / LAST), "method": cfg["method"],
            "step": step, "total_steps": total, "finished": step >= total, **state["metrics"]}


def _wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP that syncs buffers once at start but not every forward: BN running stats stay per rank
    (identical under SyncBN) and MoCo's queue is updated identically on every rank by construction,
    so re-broadcasting it (32 MB at K=65536) each step would be waste."""
    import inspect

    DDP = nn.parallel.DistributedDataParallel
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
               else {"broadcast_buffers": False})
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
               gradient_as_bucket_view=True, **no_sync)


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` atomically (a hard link where the filesystem allows)."""
    with atomic_path(dst) as tmp:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def _prune_epochs(run_dir: Path, keep: int) -> None:
    if keep <= 0:
        return
    for p in sorted(run_dir.glob("epoch_*.pth"))[:-keep]:
        p.unlink()
