"""The ``sslkit detect`` run (torchvision engine): fine-tune, Precise BN, evaluate; resumable, distributed.

A run lives in ``RUN_DIR``::
    config.yaml           the resolved settings (also inside every checkpoint)
    last.pth              model, optimizer, scaler, schedule, RNG and iteration (weights_only loadable);
                          its ``encoders`` table makes the fine-tuned backbone usable by linprobe/export
    log.jsonl, tb/        training losses, lr, throughput (rank 0)
    metrics.json          bbox/segm AP (sslkit.detect_metrics)
    predictions.json      COCO results of the val images (--save-predictions), + predictions.meta.json
    skipped_images.tsv    images that could not be decoded

Iteration ``k``: lr ← schedule(k) → the batch of iteration ``k`` (:mod:`~sslkit.eval.detect.data`) →
losses under autocast → backward (GradScaler for fp16) → SGD step.  After the last iteration
the BatchNorm statistics are recomputed on training batches (Precise BN, detectron2's
``TEST.PRECISE_BN``), the final checkpoint is written and the val split is evaluated, each rank
taking every ``world``-th image.  On CPU a resumed run ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from sslkit import __version__, dist
from sslkit.console import console, progress
from sslkit.engine.bn import average_bn_stats, precise_bn
from sslkit.engine.config import dump_yaml
from sslkit.engine.logger import RunLogger
from sslkit.engine.loop import Amp, CheckpointHook, LogHook, Loop
from sslkit.engine.rundir import (
    LAST,
    SKIPPED,
    SkippedImages,
    clear_outputs,
    elapsed_of,
    make_run_dir,
    restore,
)
from sslkit.errors import UserError
from sslkit.eval.detect import (
    METRICS_FORMAT,
    METRICS_VERSION,
    PREDICTIONS_FORMAT,
    PREDICTIONS_VERSION,
    predictions_meta_path,
)
from sslkit.eval.detect.data import (
    EvalImages,
    RankBatches,
    TrainImages,
    collate,
    eval_collate,
    load_detection_split,
)
from sslkit.eval.detect.evaluate import evaluate, has_masks, to_coco_results
from sslkit.eval.detect.model import build_mask_rcnn, load_parts, optimizer_param_groups
from sslkit.eval.detect.schedule import DetectionSchedule
from sslkit.io.atomic import write_text_atomic
from sslkit.io.checkpoint import rng_state, save_checkpoint
from sslkit.io.images import write_json
from sslkit.models.backbones import build_backbone
from sslkit.models.convert import PIXEL_MEAN, PIXEL_STD, file_sha256, load_backbone, weights_state_dicts

METRICS = "metrics.json"
RUN_OUTPUTS = (LAST, "log.jsonl", "tb", SKIPPED, "config.yaml", METRICS, "predictions.json",
               "predictions.meta.json")
ENTRY = "sslkit.eval.detect.train:train"


@dataclass(frozen=True)
class DetectOptions:
    run_dir: str
    resume_from: str | None = None
    fresh: bool = False
    eval_only: bool = False
    quiet: bool = False
    command: str = ""


def build_model(cfg: dict, fresh_backbone: bool) -> tuple[nn.Module, str]:
    """The detector of ``cfg``; the backbone (and the ``init_parts``: FPN, box-head convs) from the weights
    file, or random when a checkpoint will replace them. Returns it and a log line of what was loaded."""

    parts: dict = {}
    if fresh_backbone:
        net, _ = load_backbone(cfg["weights"], arch=cfg["arch"], encoder=cfg["encoder"], seed=cfg["seed"])
        if cfg.get("init_parts"):
            _, found, _ = weights_state_dicts(cfg["weights"], encoder=cfg["encoder"], arch=cfg["arch"])
            parts = {p: found[p] for p in cfg["init_parts"]}
    else:
        net = build_backbone(cfg["arch"])
    r = cfg["resolved"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        model = build_mask_rcnn(net, len(r["categories"]), train_sizes=tuple(r["train_sizes"]),
                                test_size=r["test_size"], max_size=cfg["max_size"], fpn_channels=cfg["fpn_channels"],
                                freeze_at=cfg["freeze_at"], pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD)
    return model, (load_parts(model, parts) if fresh_backbone and cfg["weights"] != "random" else "")


def describe_model(cfg: dict, synced: bool) -> dict:
    norm = "SyncBN" if synced else "BN"
    return {"meta_architecture": "Mask R-CNN (torchvision)", "backbone": f"{cfg['arch']}-FPN",
            "freeze_at": cfg["freeze_at"], "norm": {"backbone": norm, "fpn": norm, "box_head": norm, "mask_head": norm},
            "fpn_channels": cfg["fpn_channels"], "rpn_head": "1 conv (StandardRPNHead)",
            "initialised_from_weights": ["backbone", *(cfg.get("init_parts") or [])],
            "box_head": f"4conv1fc ({cfg['fpn_channels']} ch, fc {4 * cfg['fpn_channels']})",
            "mask_head": "4conv + deconv, 28x28", "roi_align": "aligned (ROIAlignV2), adaptive sampling",
            "anchors": "32-512, ratios 0.5/1/2", "train_sizes": cfg["resolved"]["train_sizes"],
            "test_size": cfg["resolved"]["test_size"], "max_size": cfg["max_size"]}


def _images_to(images: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    return [im.to(device, non_blocking=True).float().div_(255.0) for im in images]


def _targets_to(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]


@torch.no_grad()
def run_inference(model: nn.Module, split, indices: list[int], device: torch.device, amp, batch_size: int,
                  workers: int, progress=None) -> tuple[list[dict], list[int], list[tuple[str, str]]]:
    """This rank's share (every ``world``-th of ``indices``) → COCO results, evaluated image ids, skipped files;
    gathered from every rank (all ranks get the full lists)."""
    from torch.utils.data import DataLoader

    label_to_cat = {c["label"]: c["id"] for c in split.categories()}
    mine = indices[dist.rank()::dist.world_size()]
    loader = DataLoader(EvalImages(split, mine), batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=eval_collate, pin_memory=device.type == "cuda")
    task = progress.add_task("evaluating", total=len(indices)) if progress is not None else None
    model.eval()
    results, done, skipped = [], [], []
    for items in loader:
        good = [(i, im) for i, im, err in items if im is not None]
        skipped += [(split.records[i].file_name, err) for i, im, err in items if im is None]
        if good:
            with amp.autocast():
                outs = model(_images_to([im for _, im in good], device))
            for (i, _), out in zip(good, outs, strict=True):
                image_id = split.records[i].image_id
                results += to_coco_results(image_id, out, label_to_cat)
                done.append(image_id)
        if progress is not None:
            progress.advance(task, len(items) * dist.world_size())
    parts = dist.all_gather_objects((results, done, skipped))
    return ([r for p in parts for r in p[0]], [d for p in parts for d in p[1]], [s for p in parts for s in p[2]])


def train(cfg: dict, opts: DetectOptions) -> dict | None:
    """Entry point of every rank (also what the elastic launcher runs); rank 0 returns the summary."""
    with dist.running(cfg["device"]) as info:
        return _run(cfg, opts, info)


def _run(cfg: dict, opts: DetectOptions, info: dist.DistInfo) -> dict | None:
    run_dir = Path(opts.run_dir)
    main, world = info.is_main, info.world_size
    if world != cfg["world_size"]:
        raise UserError(f"the launcher started {world} ranks but the config says {cfg['world_size']}")
    if cfg["device"] == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
        # multi-scale inputs change shape every iteration: no cudnn autotuning (detectron2's CUDNN_BENCHMARK off)
        torch.backends.cudnn.benchmark = False
    else:
        device = torch.device("cpu")
        if info.launcher == "sslkit":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.local_world_size))
    if main:
        make_run_dir(run_dir)
        if opts.fresh:
            clear_outputs(run_dir, RUN_OUTPUTS)
        if not opts.eval_only:
            write_text_atomic(run_dir / "config.yaml",
                              dump_yaml(cfg, f"# sslkit detect: resolved config\n# {opts.command}\n"))
    dist.barrier()

    r = cfg["resolved"]
    sd = dict(r["schedule"])
    sd["steps"] = tuple(sd["steps"])
    sd.pop("epochs")
    schedule = DetectionSchedule(**sd)
    tr = load_detection_split(cfg["train"], cfg["image_root"])
    va = load_detection_split(cfg["val"], cfg["val_image_root"] or cfg["image_root"], reference=tr)
    usable = tr.trainable()
    if len(usable) != r["num_train_images_used"]:
        raise UserError(f"the run was set up with {r['num_train_images_used']} usable training images; "
                        f"the json now gives {len(usable)}", cfg["train"], "resume with the same data or start a new --out")

    torch.manual_seed(cfg["seed"])  # the model's own draws: training sizes, RPN/RoI sampling (restored on resume)
    model, loaded = build_model(cfg, fresh_backbone=opts.resume_from is None)
    if loaded:
        _say(main and not opts.quiet, loaded)
    synced = cfg["norm"] == "syncbn" and cfg["device"] == "cuda" and world > 1
    if synced:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    optimizer = torch.optim.SGD(optimizer_param_groups(model, cfg["weight_decay"], cfg["weight_decay_norm"]),
                                lr=schedule(0), momentum=cfg["momentum"])
    amp = Amp(cfg["precision"], device.type)

    it, elapsed_before, precise_done, log_state = 0, 0.0, False, None
    if opts.resume_from:
        ck = restore(opts.resume_from, model, None if opts.eval_only else optimizer, amp, num_images=len(usable),
                     global_batch=cfg["batch_size"])
        it, elapsed_before, precise_done = int(ck["step"]), elapsed_of(ck), bool(ck.get("precise_bn"))
        log_state = ck.get("log")
        del ck

    total = schedule.iters
    stop = min(total, cfg["max_iters"]) if cfg["max_iters"] is not None else total
    workers = cfg["workers"] or 0
    groups = tr.aspect_groups()[usable]
    skipped = SkippedImages(run_dir / SKIPPED, main)
    module = model
    if world > 1 and not opts.eval_only and it < stop:
        module = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                     broadcast_buffers=False)

    def forward(batch) -> dict:
        images, targets = batch
        losses = module(_images_to(images, device), _targets_to(targets, device))
        return {"loss": sum(losses.values()), **losses}

    loop = Loop(optimizer, amp, forward, schedule, total, start=it, stop=stop, elapsed_before=elapsed_before)

    def loader(start: int, stop_: int, salt: int):
        sampler = RankBatches(len(usable), cfg["batch_size"], info.rank, world, cfg["seed"], groups, start, stop_, salt)
        return DataLoader(TrainImages(tr, usable, cfg["seed"] + salt), batch_sampler=sampler, num_workers=workers,
                          collate_fn=collate, pin_memory=device.type == "cuda", generator=torch.Generator())

    def batches(start: int, stop_: int, salt: int):
        for images, targets, _, bad in loader(start, stop_, salt):
            if bad:
                skipped.add(bad)
            yield images, targets

    def save(metrics: dict, iteration: int) -> None:
        skipped.flush()
        if not main:
            return
        save_checkpoint(run_dir / LAST, {
            "command": opts.command, "method": "detect", "config": cfg,
            "epoch": iteration * cfg["batch_size"] // max(1, len(usable)), "step": iteration, "iteration": iteration,
            "model": model.state_dict(), "encoders": {"backbone": "backbone.body."}, "default_encoder": "backbone",
            "optimizer": optimizer.state_dict(),
            "scaler": amp.scaler.state_dict() if amp.scaler.is_enabled() else None,
            "scheduler": {**schedule.describe(), "iteration": iteration}, "rng": rng_state(),
            "precise_bn": precise_done,
            "data": {"num_images": len(usable), "global_batch": cfg["batch_size"], "seed": cfg["seed"],
                     "iteration": iteration},
            "metrics": {**metrics, "elapsed_s": round(loop.elapsed(), 3)},
            "log": hooks[0].state() if hooks else None,
        })

    def last_record() -> dict:
        return {**loop.metrics, "step": loop.step} if loop.metrics else {"step": loop.step}

    trained, hooks = False, []
    if not opts.eval_only and it < total:
        if it < stop:
            b = cfg["batch_size"]
            logger = RunLogger(run_dir, main, opts.quiet, cfg["tensorboard"], total, it, b,
                               max(1, len(usable) // b), resumed=it > 0, name="detect", unit="it")
            what = f"resuming at iteration {it}/{total}" if it else f"training {total} iterations"
            logger.message(f"Mask R-CNN {cfg['arch']}-FPN: {len(usable)} training images, batch {b} ({b // world}/rank "
                           f"× {world}), schedule {schedule.name} = {total} it ({schedule.epochs:.2f} epochs), lr "
                           f"{schedule.base_lr:.4g}, warm-up {schedule.warmup_iters}, steps {list(schedule.steps)}; "
                           f"{what}")
            model.train()
            hooks[:] = [LogHook(logger, cfg["log_every"], b, lambda s: s * b / len(usable), what="iteration",
                                hint="lower --lr or use --precision fp32", resume=log_state),
                        CheckpointHook(lambda _: save(last_record(), loop.step), r["save_every"], at_stop=False)]
            it = loop.run(batches(it, stop, 0), hooks)
            trained = True
        if it < total:  # stopped by --max-iters (checkpointed): leave the rest for a rerun
            dist.barrier()
            return {"finished": False, "iteration": it, "total_iters": total, "run_dir": str(run_dir),
                    "checkpoint": str(run_dir / LAST), **last_record()} if main else None
    if not opts.eval_only and not precise_done:
        n = r["precise_bn_iters"]
        if n > 0:
            _say(main and not opts.quiet, f"Precise BN: recomputing BatchNorm statistics over {n} training batches")
            model.train()

            def bn_forward(batch):
                with amp.autocast():
                    model(_images_to(batch[0], device), _targets_to(batch[1], device))

            precise_bn(model, batches(0, n, 1), bn_forward)
        average_bn_stats(model)
        precise_done = True
        save(last_record() if trained else {}, it)
    elif not opts.eval_only and not trained:
        _say(main and not opts.quiet, f"{run_dir / LAST} is already at the last iteration ({it}/{total}); evaluating")
    dist.barrier()

    t_eval = time.monotonic()
    with (progress(quiet=opts.quiet or not main, unit="img") if main else contextlib.nullcontext(None)) as p:
        results, done, bad = run_inference(model, va, list(range(len(va.records))), device, amp,
                                           cfg["eval_batch_size"], workers, p)
    if main:
        skipped.add(bad)
    skipped.flush()
    if not main:
        return None
    rec = _metrics_record(cfg, opts, schedule, va, results, done, bad, it, synced, precise_done,
                          time.monotonic() - t_eval, loop.elapsed())
    write_json(run_dir / METRICS, rec)
    if cfg["save_predictions"]:
        write_predictions(run_dir / "predictions.json", results, cfg, va, opts.command)
        rec["predictions"] = str(run_dir / "predictions.json")
    return rec


def _say(enabled: bool, text: str) -> None:
    if enabled:
        console.print(text)


def write_predictions(path: Path, results: list[dict], cfg: dict, val, command: str) -> None:
    """The COCO results list (what pycocotools' ``loadRes`` and detectron2 read) and its metadata sidecar."""
    import json

    write_text_atomic(path, json.dumps(results) + "\n")
    write_json(predictions_meta_path(path), {
        "format": PREDICTIONS_FORMAT, "format_version": PREDICTIONS_VERSION, "sslkit_version": __version__,
        "command": command, "file": path.name, "file_sha256": file_sha256(path), "coco": str(val.json_path),
        "image_root": str(val.root), "categories": val.categories(), "num_detections": len(results),
        "weights": cfg["weights"], "arch": cfg["arch"]})


def _metrics_record(cfg, opts, schedule, va, results, done, bad, it, synced, precise_done, t_eval, elapsed) -> dict:
    notes = []
    iou_types = ("bbox", "segm") if has_masks(va.coco) else ("bbox",)
    if "segm" not in iou_types:
        notes.append("some val annotations have no segmentation: mask AP is not computed")
    if not results:
        notes.append("the model made no detection on the val images: every AP is 0")
    if bad:
        notes.append(f"{len(bad)} val images could not be decoded and are left out of the evaluation")
    if it < schedule.iters:
        notes.append(f"evaluated at iteration {it} of {schedule.iters}: training is not finished")
    names = {c["id"]: c["name"] for c in va.categories()}
    ev = evaluate(va.coco, results, image_ids=done, iou_types=iou_types, category_names=names)
    r = cfg["resolved"]
    return {
        "format": METRICS_FORMAT, "format_version": METRICS_VERSION, "sslkit_version": __version__,
        "command": opts.command, "engine": "torchvision", "eval_only": opts.eval_only,
        "weights": {k: cfg[k] for k in ("weights", "arch", "encoder", "backbone_sha256")},
        "run_dir": opts.run_dir, "iteration": it, "finished": it >= schedule.iters, "precise_bn": precise_done,
        "train": {"json": cfg["train"], "num_images": r["num_train_images"],
                  "num_images_used": r["num_train_images_used"]},
        "val": {"json": cfg["val"], "num_images": len(va.records), "num_images_evaluated": len(done),
                "skipped": [{"file_name": a, "reason": b} for a, b in bad]},
        "categories": va.categories(), "schedule": schedule.describe(),
        "solver": {"optimizer": "SGD", "momentum": cfg["momentum"], "weight_decay": cfg["weight_decay"],
                   "weight_decay_norm": cfg["weight_decay_norm"], "precision": cfg["precision"],
                   "world_size": cfg["world_size"], "device": cfg["device"]},
        "model": describe_model(cfg, synced),
        **{k: v for k, v in ev.items() if k != "summary"},
        "cocoeval_summary": ev["summary"], "num_detections": len(results),
        "notes": notes, "time_s": {"train": round(elapsed, 3), "eval": round(t_eval, 3)},
    }
