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

**Subsets**: :mod:`sslkit.eval.subsets` (``--fraction f``, class-balanced and seeded, or ``--subset-file``).

**Data** as linprobe's (:func:`sslkit.eval.data.load_split`): class folders (one sample per
image) or a COCO json with ``--task objects`` (one sample per box; the box, scaled by
``box_scale``, is cropped first; the test crop is the box resized to ``image_size²``).

**The run** is an adapter on :class:`~sslkit.engine.loop.Loop`: step ``k`` is batch ``k mod S`` of
epoch ``k // S`` (``S`` batches per epoch), the lr of both groups ×``gamma`` at each milestone.
With ``run_dir`` it checkpoints ``last.pth`` at every epoch end (and every ``save_every`` steps) and a
rerun resumes it exactly (the per-epoch history and skipped files travel in the checkpoint).
Several ranks (``--gpus N`` / ``--procs N``) split every global batch (SyncBN on GPUs); a step is
skipped on every rank when any rank has fewer than two readable images in it.
"""


from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from sslkit import __version__, dist
from sslkit.config import absolute_paths, dump_yaml, frozen_error, resolve
from sslkit.console import console, progress
from sslkit.dist import detect_launcher, resolve_device
from sslkit.engine.config import resolve_precision
from sslkit.engine.launch import device_layout, launch
from sslkit.engine.loop import Amp, CheckpointHook, Hook, Loop
from sslkit.engine.rundir import LAST, clear_outputs, elapsed_of, make_run_dir, plan, restore
from sslkit.errors import UserError
from sslkit.eval.data import load_split
from sslkit.eval.metrics import topk_accuracy
from sslkit.eval.semisup.data import Images, collate, epoch_batches
from sslkit.eval.semisup.settings import DEFAULTS, KEYS, LISTING, SemisupConfig, lr_factor, validate
from sslkit.eval.subsets import (
    Sample,
    class_balanced_subset,
    default_weight_decay,
    split_samples,
    subset_from_file,
)
from sslkit.io.atomic import write_text_atomic
from sslkit.io.checkpoint import rng_state, save_checkpoint
from sslkit.io.lock import exclusive
from sslkit.models.convert import load_backbone

ENTRY = "sslkit.eval.semisup.run:train"
RUN_OUTPUTS = (LAST, "config.yaml")


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


@torch.no_grad()
def predict(model: nn.Module, samples: list[Sample], cfg: SemisupConfig, device, amp, mean, std, progress=None):
    """Scores (M, C) float32, labels (M,), skipped [(file, reason)] over ``samples`` (centre crops)."""
    loader = DataLoader(Images(samples, cfg, False, mean, std), batch_size=cfg.eval_batch_size, shuffle=False,
                        num_workers=cfg.workers, collate_fn=collate, pin_memory=device.type == "cuda")
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




@dataclass(frozen=True)
class RunOptions:
    run_dir: str | None = None  # checkpoint here every epoch; a rerun resumes
    resume_from: str | None = None
    fresh: bool = False
    quiet: bool = False  # no progress bar and no per-epoch lines
    command: str = ""
    subset_out: str | None = None  # write the chosen samples here


def train(cfg: dict, opts: RunOptions) -> dict | None:
    """Entry point of every rank (also what the elastic launcher runs); rank 0 returns the metrics record."""
    with dist.running(resolve_device(cfg["device"]).type) as info:
        return _run(cfg, opts, info)


class _EpochLog(Hook):
    """At each epoch end: the epoch's loss, train top-1 (summed over ranks), lr and throughput into ``history``."""

    def __init__(self, state: dict, spe: int, base_lr: float, head_lr: float, c: SemisupConfig, device, say: bool):
        self.state, self.spe, self.base_lr, self.head_lr, self.c = state, spe, base_lr, head_lr, c
        self.device, self.say = device, say

    def after_step(self, loop: Loop, out) -> None:
        if loop.step % self.spe:
            return
        st = self.state
        tot, correct, seen = dist.all_reduce_mean(torch.tensor(
            [st["tot"], st["correct"], st["seen"]], dtype=torch.float64, device=self.device)).mul(dist.world_size()).tolist()
        epoch = loop.step // self.spe
        factor = lr_factor(self.c, epoch - 1)
        rec = {"epoch": epoch, "loss": tot / max(1, seen), "train_top1": 100.0 * correct / max(1, seen),
               "lr_backbone": self.base_lr * factor, "lr_head": self.head_lr * factor,
               "img_per_s": seen / max(time.perf_counter() - st["t"], 1e-9)}
        st["history"].append(rec)
        st.update(tot=0.0, correct=0, seen=0, t=time.perf_counter())
        if self.say:
            console.print(f"epoch {rec['epoch']}/{self.c.epochs}: loss {rec['loss']:.4f}, train top-1 "
                          f"{rec['train_top1']:.2f}, lr {rec['lr_backbone']:.3g}/{rec['lr_head']:.3g}, "
                          f"{rec['img_per_s']:.1f} img/s", highlight=False)


def _run(cfg: dict, opts: RunOptions, info: dist.DistInfo) -> dict | None:
    t0 = time.perf_counter()
    main, world, rank = info.is_main, info.world_size, info.rank
    c = SemisupConfig.of(cfg)
    device = resolve_device(cfg["device"]) if world == 1 else (
        torch.device("cuda", torch.cuda.current_device()) if cfg["device"] != "cpu" and torch.cuda.is_available()
        else torch.device("cpu"))
    precision = resolve_precision(c.precision, device.type)
    run_dir = Path(opts.run_dir) if opts.run_dir else None
    if run_dir is not None and main:
        make_run_dir(run_dir)
        if opts.fresh:
            clear_outputs(run_dir, RUN_OUTPUTS)
        write_text_atomic(run_dir / "config.yaml", dump_yaml(cfg, f"# sslkit semisup: resolved config\n# {opts.command}\n"))
    dist.barrier()

    net, meta = load_backbone(cfg["weights"], arch=cfg["arch"], encoder=cfg["encoder"], seed=c.seed)
    tr = load_split(cfg["train"], cfg["task"], cfg["image_root"], c.min_box)
    va = load_split(cfg["val"], cfg["task"], cfg["val_image_root"] if cfg["val_image_root"] is not None
                    else cfg["image_root"], c.min_box, reference=tr)
    if tr.multilabel:
        raise UserError("semisup fine-tunes a single-label classifier; --task multilabel is not supported",
                        cfg["train"], "use class folders or --task objects")
    samples = split_samples(tr)
    labels = np.array([s.label for s in samples])
    if c.subset_file is not None:
        idx = subset_from_file(samples, c.subset_file)
        how = {"subset_file": str(c.subset_file)}
    else:
        idx = class_balanced_subset(labels, [s.key for s in samples], tr.classes, c.fraction, c.seed)
        how = {"fraction": c.fraction, "seed": c.seed}
    chosen = [samples[i] for i in idx]
    frac = len(chosen) / len(samples)
    wd = c.weight_decay if c.weight_decay is not None else default_weight_decay(c.fraction or frac)
    counts = np.bincount([s.label for s in chosen], minlength=tr.num_classes)
    if opts.subset_out is not None and main:
        write_text_atomic(opts.subset_out, "".join(s.key + "\n" for s in chosen))

    torch.manual_seed(c.seed)
    model = Classifier(net, tr.num_classes)
    if world > 1 and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    scale = c.batch_size / 256.0
    base_lr, head_lr = c.lr * scale, c.lr * c.head_lr_mult * scale
    optimizer = torch.optim.SGD([{"params": model.backbone.parameters(), "lr": base_lr, "base_lr": base_lr},
                                 {"params": model.head.parameters(), "lr": head_lr, "base_lr": head_lr}],
                                lr=base_lr, momentum=c.momentum, weight_decay=wd)
    amp = Amp(precision, device.type)
    mean, std = tuple(meta["pixel_mean"]), tuple(meta["pixel_std"])
    dataset = Images(chosen, c, True, mean, std)
    spe = len(epoch_batches(len(chosen), c.batch_size, c.seed, 0))
    total = c.epochs * spe
    # what the record reports about training, carried by checkpoints so that a resumed run reports the same
    state = {"history": [], "skipped": {}, "tot": 0.0, "correct": 0, "seen": 0, "t": time.perf_counter()}
    step, elapsed_before = 0, 0.0
    if opts.resume_from:
        ck = restore(opts.resume_from, model, optimizer, amp, num_samples=len(chosen), global_batch=c.batch_size)
        step, elapsed_before = int(ck["step"]), elapsed_of(ck)
        saved = ck["metrics"]
        state.update(history=list(saved["history"]), skipped=dict(saved["skipped"]), **saved["epoch_stats"])
        del ck
    module = model if world == 1 else nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    loss_fn = nn.CrossEntropyLoss()
    bar = progress(quiet=opts.quiet or not main)
    p = bar.__enter__()
    task_id = p.add_task("semisup", total=c.epochs * len(chosen), completed=step * len(chosen) // spe)

    def forward(batch):
        idx_b, x, y, bad = batch
        for i, err in bad:
            state["skipped"].setdefault(chosen[i].key, err)
        p.advance(task_id, ((0 if idx_b is None else len(idx_b)) + len(bad)) * world)
        ok = x is not None and len(x) > 1
        if world > 1:
            ok = bool(dist.all_reduce_mean(torch.tensor(float(ok), device=device)).item() == 1.0)
        if not ok:
            return None
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = module(x)
        loss = loss_fn(logits.float(), y)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is not finite in epoch {loop.step // spe}; lower --lr or use --precision fp32")
        state["tot"] += loss.item() * len(y)
        state["correct"] += int((logits.argmax(1) == y).sum())
        state["seen"] += len(y)
        return {"loss": loss}

    def lr_at(s: int) -> list[float]:
        f = lr_factor(c, s // spe)
        return [base_lr * f, head_lr * f]

    loop = Loop(optimizer, amp, forward, lr_at, total, start=step, stop=cfg["max_steps"], elapsed_before=elapsed_before)

    def batches():
        for epoch in range(loop.step // spe, c.epochs):
            eb = epoch_batches(len(chosen), c.batch_size, c.seed, epoch)[loop.step - epoch * spe:]
            mine = [b[rank * len(b) // world:(rank + 1) * len(b) // world] for b in eb]
            yield from DataLoader(dataset, batch_sampler=mine, num_workers=c.workers, collate_fn=collate,
                                  pin_memory=device.type == "cuda")

    def save(_epoch_end: bool) -> None:
        skipped = {}
        for part in dist.all_gather_objects(state["skipped"]):
            for k, v in part.items():
                skipped.setdefault(k, v)
        if not main:
            return
        save_checkpoint(run_dir / LAST, {
            "command": opts.command, "method": "semisup", "config": cfg, "epoch": loop.step // spe,
            "step": loop.step, "model": model.state_dict(), "encoders": {"backbone": "backbone."},
            "default_encoder": "backbone", "optimizer": optimizer.state_dict(),
            "scaler": amp.scaler.state_dict() if amp.scaler.is_enabled() else None, "rng": rng_state(),
            "data": {"num_samples": len(chosen), "global_batch": c.batch_size, "seed": c.seed},
            "metrics": {"history": state["history"], "skipped": skipped, "elapsed_s": loop.elapsed(),
                        "epoch_stats": {k: state[k] for k in ("tot", "correct", "seen")}}})

    hooks: list[Hook] = [_EpochLog(state, spe, base_lr, head_lr, c, device, main and not opts.quiet)]
    if run_dir is not None:
        hooks.append(CheckpointHook(save, cfg["save_every"] or spe, at_stop=True))
    model.train()
    try:
        loop.run(batches(), hooks)
        if loop.step < total:  # stopped by max_steps (checkpointed): the rest is for a rerun
            dist.barrier()
            return {"finished": False, "step": loop.step, "total_steps": total, "run_dir": opts.run_dir,
                    "checkpoint": str(run_dir / LAST)} if main else None
        t_train = time.perf_counter()
        skipped = {}
        for part in dist.all_gather_objects(state["skipped"]):
            for k, v in part.items():
                skipped.setdefault(k, v)
        if not main:
            dist.barrier()
            return None
        val_samples = split_samples(va)
        scores, vlabels, vbad = predict(model, val_samples, c, device, amp, mean, std, p)
    finally:
        bar.__exit__(None, None, None)
    dist.barrier()
    if len(vlabels) == 0:
        raise UserError("no val image could be decoded", cfg["val"])
    metrics = topk_accuracy(scores, vlabels)
    notes = list(meta.get("notes", []))
    if skipped:
        notes.append(f"{len(skipped)} training images could not be decoded and were skipped")
    if vbad:
        notes.append(f"{len(vbad)} val images could not be decoded and are left out")
    if c.subset_file is None and c.fraction not in (0.01, 0.1) and c.weight_decay is None:
        notes.append(f"weight decay {wd:g} chosen by the ORL rule (0 for 1 %, 1e-4 for 10 %) for fraction {c.fraction:g}")
    vcounts = np.bincount(vlabels, minlength=tr.num_classes)
    return {
        "sslkit_version": __version__, "command": opts.command, "protocol": "semisup",
        "weights": {k: meta.get(k) for k in ("source", "kind", "arch", "method", "encoder", "epoch", "step",
                                             "sha256", "backbone_sha256", "seed") if meta.get(k) is not None},
        "train": {**tr.describe(), "subset": {**how, "num_samples": len(chosen), "fraction_of_samples": round(frac, 6),
                                              "per_class_min": int(counts[counts > 0].min()),
                                              "per_class_max": int(counts.max()),
                                              "classes_covered": int((counts > 0).sum()),
                                              "file": opts.subset_out},
                  "skipped": [{"file_name": k, "reason": v} for k, v in skipped.items()]},
        "val": {**va.describe(), "num_samples_used": int(len(vlabels)),
                "skipped": [{"file_name": k, "reason": v} for k, v in vbad]},
        "num_classes": tr.num_classes, "classes": tr.classes,
        "settings": {**{k: v for k, v in asdict(c).items() if k not in ("fraction", "subset_file", "workers",
                                                                        "device")},
                     "weight_decay": wd, "milestone_epochs": c.milestone_epochs(), "lr_backbone": base_lr,
                     "lr_head": head_lr, "precision": precision, "device": str(device), "world_size": world,
                     "steps_per_epoch": spe, "head": f"Linear({net.feat_dim}, {tr.num_classes}) on GAP"},
        "results": metrics, "history": state["history"],
        "chance": {"top1_uniform": 100.0 / tr.num_classes,
                   "top1_majority": float(vcounts.max() / vcounts.sum() * 100)},
        "notes": notes, "run_dir": opts.run_dir,
        "time_s": {"train": round(t_train - t0, 3), "total": round(time.perf_counter() - t0, 3)},
    }


def run_semisup(weights: str | None, layers: list[tuple[str, dict]], *, run_dir: Path | None = None,
                resume: bool | None = None, gpus: int | None = None, procs: int | None = None, nodes: int = 1,
                node_rank: int | None = None, rdzv_endpoint: str | None = None, subset_out: str | None = None,
                print_config: bool = False, quiet: bool = False, command: str = "") -> dict | str | None:
    """``sslkit semisup``: resolve the settings (over the run's checkpoint when ``run_dir`` has one),
    then fine-tune and evaluate here or on launched ranks. Returns rank 0's record, or the YAML
    with ``print_config``."""
    rp = plan(run_dir, resume, RUN_OUTPUTS) if run_dir is not None else None
    base = None
    if rp is not None and rp.config is not None:
        base = {**rp.config, **{k: DEFAULTS[k] for k, key in KEYS.items() if key.runtime and k not in
                                ("weights", "train", "val", "image_root", "val_image_root")}}
    if weights is not None:
        layers = [*layers, ("WEIGHTS", {"weights": str(weights)})]
    cfg = resolve(KEYS, layers, base, owner="semisup", listing=LISTING)
    if not print_config and (cfg["fraction"] is None) == (cfg["subset_file"] is None):
        raise UserError("pass --fraction F or --subset-file LIST (one of them)")
    cfg = absolute_paths(cfg, KEYS)
    if base is not None:
        err = frozen_error(KEYS, rp.config, cfg, run_dir / LAST,
                           "keep the original settings, or pass --no-resume / a new --run-dir")
        if err is not None:
            raise err
    ext = detect_launcher()
    if gpus is None and procs is None and ext is None:
        nproc, world = 1, 1
    else:
        dev, nproc, world = device_layout(gpus, procs, nodes, ext)
        if cfg["device"] == "auto" or (dev == "cpu") != (cfg["device"] == "cpu"):
            cfg["device"] = dev
    cfg["world_size"] = world
    if cfg["workers"] is None:
        cfg["workers"] = min(8, os.cpu_count() or 1)
    if print_config:
        return dump_yaml(cfg)
    for key in ("train", "val"):
        if cfg[key] is None:
            raise UserError(f"--{key} is required")
    if cfg["weights"] is None:
        raise UserError("which weights? pass WEIGHTS (a checkpoint, an export, or 'random' with --arch)")
    if cfg["max_steps"] is not None and run_dir is None:
        raise UserError("max_steps stops a run to continue later: it needs --run-dir")
    validate(cfg)
    resolve_device(cfg["device"])
    resolve_precision(cfg["precision"], resolve_device(cfg["device"]).type)
    opts = RunOptions(run_dir=str(run_dir) if run_dir is not None else None,
                      resume_from=rp.resume_from if rp else None, fresh=bool(rp and rp.fresh), quiet=quiet,
                      command=command, subset_out=subset_out)
    locked = run_dir is not None and (ext is None or ext.rank == 0)
    if locked:
        make_run_dir(run_dir)
    with exclusive(run_dir, "run folder") if locked else contextlib.nullcontext():
        if ext is not None or nproc * nodes == 1:
            return train(cfg, opts)
        return launch(cfg, opts, nproc, nodes, node_rank, rdzv_endpoint, entry=ENTRY)
