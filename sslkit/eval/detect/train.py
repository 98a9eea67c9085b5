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
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sslkit import dist
from sslkit.errors import UserError

LAST = "last.pth"
METRICS = "metrics.json"
RUN_OUTPUTS = (LAST, "log.jsonl", "tb", "skipped_images.tsv", "config.yaml", METRICS, "predictions.json",
               "predictions.meta.json")
ENTRY = "sslkit.eval.detect.train:train"

#: the InfoMin/PyContrast R50-FPN 1× protocol (docs/detect.md lists the source of each)
DEFAULTS: dict = {
    "engine": "torchvision",
    "weights": None, "arch": None, "encoder": None, "backbone_sha256": None,
    "train": None, "val": None, "image_root": None, "val_image_root": None,
    "schedule": "1x", "iters": None, "batch_size": 16, "lr": 0.02, "momentum": 0.9,
    "weight_decay": 1e-4, "weight_decay_norm": 0.0, "warmup_iters": None, "steps": None,
    "min_size": 800, "max_size": 1333, "train_sizes": None,
    "norm": "syncbn", "freeze_at": 0, "fpn_channels": 256, "precise_bn_iters": None,
    "init_parts": None,  # detector parts (fpn, head) initialised from the weights, beside the backbone
    "seed": 0,
    # runtime: may differ between a run and its resumption
    "device": "cpu", "world_size": 1, "precision": "auto", "workers": None, "log_every": 20,
    "save_every": None, "max_iters": None, "eval_batch_size": 2, "save_predictions": False,
    "tensorboard": True,
}
#: where the data and weights are: may move between a run and its resumption (their content is checked)
DATA_KEYS = {"train", "val", "image_root", "val_image_root", "weights"}
RUNTIME = DATA_KEYS | {"device", "world_size", "precision", "workers", "log_every", "save_every", "max_iters",
                       "eval_batch_size", "save_predictions", "tensorboard"}
#: detectron2's multi-scale training sizes at MIN_SIZE_TEST 800 (INPUT.MIN_SIZE_TRAIN)
REF_TRAIN_SIZES = (640, 672, 704, 736, 768, 800)
REF_TEST_SIZE = 800
#: detectron2's TEST.PRECISE_BN.NUM_ITER at 16 images per iteration
REF_PRECISE_BN_IMAGES = 200 * 16


@dataclass(frozen=True)
class DetectOptions:
    run_dir: str
    resume_from: str | None = None
    fresh: bool = False
    eval_only: bool = False
    quiet: bool = False
    command: str = ""


def train_sizes(min_size: int, explicit: list[int] | None = None) -> list[int]:
    """Short sides sampled in training: detectron2's 640:32:800 scaled to a test size of ``min_size``."""
    if explicit:
        if any(s < 1 for s in explicit):
            raise UserError(f"--train-sizes {explicit} must be positive")
        return sorted(set(int(s) for s in explicit))
    return sorted({max(1, round(s * min_size / REF_TEST_SIZE)) for s in REF_TRAIN_SIZES})


def resolve(cfg: dict) -> dict:
    """Derived settings that depend on the data: usable training images, schedule, sizes, Precise BN
    length, categories.  Stored in ``cfg["resolved"]``."""
    from sslkit.eval.detect.data import load_detection_split
    from sslkit.eval.detect.schedule import make_schedule

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


def build_model(cfg: dict, fresh_backbone: bool) -> tuple[nn.Module, str]:
    """The detector of ``cfg``; the backbone (and the ``init_parts``: FPN, box-head convs) from the weights
    file, or random when a checkpoint will replace them. Returns it and a log line of what was loaded."""
    from sslkit.eval.detect.model import build_mask_rcnn, load_parts
    from sslkit.models.backbones import build_backbone
    from sslkit.models.convert import PIXEL_MEAN, PIXEL_STD, load_backbone, weights_state_dicts

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


def _bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def precise_bn(model: nn.Module, loader, device: torch.device, amp) -> int:
    """Replace the running statistics of every BatchNorm in training mode by their average over the
    batches of ``loader`` (fvcore's ``update_bn_stats``); returns the number of batches used."""
    bns = [m for m in _bn_layers(model) if m.training]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average of the batch statistics
    n = 0
    try:
        for images, targets, _, _ in loader:
            with amp.autocast():
                model(_images_to(images, device), _targets_to(targets, device))
            n += 1
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
    return n


@torch.no_grad()
def average_bn_stats(model: nn.Module) -> None:
    """Make every rank's BatchNorm running statistics the mean over ranks (no-op in one process)."""
    if dist.world_size() == 1:
        return
    for m in _bn_layers(model):
        if m.running_mean is not None:
            m.running_mean.copy_(dist.all_reduce_mean(m.running_mean))
            m.running_var.copy_(dist.all_reduce_mean(m.running_var))


@torch.no_grad()
def run_inference(model: nn.Module, split, indices: list[int], device: torch.device, amp, batch_size: int,
                  workers: int, progress=None) -> tuple[list[dict], list[int], list[tuple[str, str]]]:
    """This rank's share (every ``world``-th of ``indices``) → COCO results, evaluated image ids, skipped files;
    gathered from every rank (all ranks get the full lists)."""
    from torch.utils.data import DataLoader

    from sslkit.eval.detect.data import EvalImages, eval_collate
    from sslkit.eval.detect.evaluate import to_coco_results

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
    from sslkit.console import progress
    from sslkit.engine.config import dump_yaml
    from sslkit.engine.trainer import Amp, SkippedImages, clear_run_outputs
    from sslkit.eval.detect.data import load_detection_split
    from sslkit.eval.detect.model import optimizer_param_groups
    from sslkit.eval.detect.schedule import DetectionSchedule
    from sslkit.io.atomic import write_text_atomic
    from sslkit.io.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

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
        run_dir.mkdir(parents=True, exist_ok=True)
        if opts.fresh:
            clear_run_outputs(run_dir)
            for name in (METRICS, "predictions.json", "predictions.meta.json"):
                (run_dir / name).unlink(missing_ok=True)
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

    it, elapsed_before, precise_done = 0, 0.0, False
    if opts.resume_from:
        ck = load_checkpoint(opts.resume_from)
        data = ck.get("data") or {}
        if data.get("global_batch") != cfg["batch_size"] or data.get("num_images") != len(usable):
            raise UserError(f"the checkpoint was made with {data.get('num_images')} images and batch "
                            f"{data.get('global_batch')}; now {len(usable)} and {cfg['batch_size']}",
                            opts.resume_from, "resume with the same data, or start a new --out")
        model.load_state_dict(ck["model"])
        if not opts.eval_only:
            optimizer.load_state_dict(ck["optimizer"])
            if ck.get("scaler") and amp.scaler.is_enabled():
                amp.scaler.load_state_dict(ck["scaler"])
            set_rng_state(ck["rng"])
        it = int(ck["step"])
        precise_done = bool(ck.get("precise_bn"))
        elapsed_before = float((ck.get("metrics") or {}).get("elapsed_s", 0.0))
        del ck

    total = schedule.iters
    stop = min(total, cfg["max_iters"]) if cfg["max_iters"] is not None else total
    workers = cfg["workers"] or 0
    groups = tr.aspect_groups()[usable]
    skipped = SkippedImages(run_dir / "skipped_images.tsv", main)
    t_start = time.monotonic()

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - t_start

    def loader(start: int, stop_: int, salt: int):
        from torch.utils.data import DataLoader

        from sslkit.eval.detect.data import RankBatches, TrainImages, collate

        sampler = RankBatches(len(usable), cfg["batch_size"], info.rank, world, cfg["seed"], groups, start, stop_, salt)
        return DataLoader(TrainImages(tr, usable, cfg["seed"] + salt), batch_sampler=sampler, num_workers=workers,
                          collate_fn=collate, pin_memory=device.type == "cuda", generator=torch.Generator())

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
            "metrics": {**metrics, "elapsed_s": round(elapsed(), 3)},
        })

    last_rec: dict = {}
    if not opts.eval_only and it < total:
        if it < stop:
            last_rec = _train_loop(cfg, opts, info, model, optimizer, amp, schedule, it, stop, loader, skipped,
                                   elapsed, len(usable), save)
            it = last_rec["step"]
            if it < total:  # stopped by --max-iters: checkpoint, and leave the rest for a rerun
                save(last_rec, it)
        if it < total:
            dist.barrier()
            return {"finished": False, "iteration": it, "total_iters": total, "run_dir": str(run_dir),
                    "checkpoint": str(run_dir / LAST), **last_rec} if main else None
    if not opts.eval_only and not precise_done:
        n = r["precise_bn_iters"]
        if n > 0:
            _say(main and not opts.quiet, f"Precise BN: recomputing BatchNorm statistics over {n} training batches")
            model.train()
            precise_bn(model, loader(0, n, 1), device, amp)
        average_bn_stats(model)
        precise_done = True
        save(last_rec, it)
    elif not opts.eval_only and not last_rec:
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
                          time.monotonic() - t_eval, elapsed())
    from sslkit.io.images import write_json

    write_json(run_dir / METRICS, rec)
    if cfg["save_predictions"]:
        write_predictions(run_dir / "predictions.json", results, cfg, va, opts.command)
        rec["predictions"] = str(run_dir / "predictions.json")
    return rec


def _say(enabled: bool, text: str) -> None:
    if enabled:
        from sslkit.console import console

        console.print(text)


def _train_loop(cfg, opts, info, model, optimizer, amp, schedule, it, stop, loader, skipped, elapsed, num_images,
                save) -> dict:
    """Iterations ``it .. stop-1``; returns the last logged record (``step`` = the iteration reached)."""
    from sslkit.engine.logger import RunLogger

    run_dir, main, world, b = Path(opts.run_dir), info.is_main, info.world_size, cfg["batch_size"]
    device = next(model.parameters()).device
    ddp = model
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                  broadcast_buffers=False)
    total = schedule.iters
    logger = RunLogger(run_dir, main, opts.quiet, cfg["tensorboard"], total, it, b, max(1, num_images // b),
                       resumed=it > 0, name="detect", unit="it")
    what = f"resuming at iteration {it}/{total}" if it else f"training {total} iterations"
    logger.message(f"Mask R-CNN {cfg['arch']}-FPN: {num_images} training images, batch {b} ({b // world}/rank × "
                   f"{world}), schedule {schedule.name} = {total} it ({schedule.epochs:.2f} epochs), lr "
                   f"{schedule.base_lr:.4g}, warm-up {schedule.warmup_iters}, steps {list(schedule.steps)}; {what}")
    sums: dict[str, torch.Tensor] = {}
    n_sum, t_log, it_log = 0, time.monotonic(), it
    last: dict = {"step": it}
    model.train()
    try:
        for images, targets, _, bad in loader(it, stop, 0):
            if bad:
                skipped.add(bad)
            lr = schedule(it)
            for g in optimizer.param_groups:
                g["lr"] = lr
            with amp.autocast():
                losses = ddp(_images_to(images, device), _targets_to(targets, device))
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            amp.scaler.scale(loss).backward()
            amp.scaler.step(optimizer)
            amp.scaler.update()
            it += 1
            for k, v in {"loss": loss, **losses}.items():
                v = v.detach().float()
                sums[k] = sums[k] + v if k in sums else v
            n_sum += 1
            logger.advance(it)
            if it % cfg["log_every"] == 0 or it == stop:
                means = dist.all_reduce_mean(torch.stack(list(sums.values())) / n_sum).tolist()
                rec = dict(zip(sums, means, strict=True))
                if not all(math.isfinite(v) for v in rec.values()):
                    raise FloatingPointError(f"loss is not finite at iteration {it} ({rec}); "
                                             "lower --lr or use --precision fp32")
                now = time.monotonic()
                rec = {"step": it, "epoch": round(it * b / num_images, 4), **rec, "lr": lr,
                       "img_per_s": (it - it_log) * b / max(now - t_log, 1e-9),
                       "elapsed_s": round(elapsed(), 3), "time": round(time.time(), 3)}
                last = {k: v for k, v in rec.items() if k != "time"}
                logger.log(rec)
                sums, n_sum, t_log, it_log = {}, 0, now, it
            if it < stop and it % cfg["resolved"]["save_every"] == 0:
                save(last, it)
    finally:
        logger.close()
    last["step"] = it
    return last


def write_predictions(path: Path, results: list[dict], cfg: dict, val, command: str) -> None:
    """The COCO results list (what pycocotools' ``loadRes`` and detectron2 read) and its metadata sidecar."""
    import json

    from sslkit import __version__
    from sslkit.eval.detect import PREDICTIONS_FORMAT, PREDICTIONS_VERSION, predictions_meta_path
    from sslkit.io.atomic import write_text_atomic
    from sslkit.io.images import write_json
    from sslkit.models.convert import file_sha256

    write_text_atomic(path, json.dumps(results) + "\n")
    write_json(predictions_meta_path(path), {
        "format": PREDICTIONS_FORMAT, "format_version": PREDICTIONS_VERSION, "sslkit_version": __version__,
        "command": command, "file": path.name, "file_sha256": file_sha256(path), "coco": str(val.json_path),
        "image_root": str(val.root), "categories": val.categories(), "num_detections": len(results),
        "weights": cfg["weights"], "arch": cfg["arch"]})


def _metrics_record(cfg, opts, schedule, va, results, done, bad, it, synced, precise_done, t_eval, elapsed) -> dict:
    from sslkit import __version__
    from sslkit.eval.detect import METRICS_FORMAT, METRICS_VERSION
    from sslkit.eval.detect.evaluate import evaluate, has_masks

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
