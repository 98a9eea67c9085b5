"""``sslkit detect WEIGHTS --train COCO --val COCO --out RUN_DIR``: Mask R-CNN R-FPN transfer of a backbone."""

from __future__ import annotations

import enum
from pathlib import Path

import typer

from sslkit.cli.common import console, print_json, stdout, warn
from sslkit.errors import UserError

HELP = """Fine-tune Mask R-CNN R-FPN from a backbone; report COCO box and mask AP.

The protocol of ORL, UniVIP and DetCon's baselines (PyContrast/InfoMin
R50-FPN 1x): all backbone stages trained; SyncBN in backbone, FPN and heads
(plain BN in one process); 4conv1fc box head; train short side 640-800, test
800; SGD lr 0.02 at 16 images (scaled x batch/16), momentum 0.9, wd 1e-4
(0 on norm layers); 1000-iteration warm-up; x0.1 twice; Precise BN.
--schedule 1x is 90k iterations x 16 images on COCO (12.17 epochs) and the
same number of epochs on other data (--iters overrides); 2x, 6x, 0.5x
multiply. --min-size S scales the sizes (train 0.8S-S, test S) for small
images. See docs/detect.md.

Reads WEIGHTS (a training checkpoint, an export .pth / detectron2 .pkl, or
'random' with --arch) and two COCO instances jsons (polygon or RLE masks).
Weights that also hold a pretrained FPN and box-head convs (MCL; sslkit
export --include chooses) initialise those too, at their width; the log
names the parts that came from the weights.
Writes RUN_DIR/config.yaml, last.pth (rerunning the command resumes it),
log.jsonl, tb/, metrics.json (bbox and segm AP, AP50, AP75, APs/m/l,
per-category AP; also -o FILE / --json), predictions.json with
--save-predictions (draw it with sslkit show), skipped_images.tsv.
--engine detectron2 writes d2_config.yaml + backbone_d2.pkl and trains with
detectron2 when it is installed (--dry-run: only write them).

\b
Examples:
  sslkit detect r50.pth --train coco/annotations/instances_train2017.json \\
      --val coco/annotations/instances_val2017.json --out runs/det --gpus 8
  sslkit detect random --arch resnet50 --train t.json --val v.json \\
      --out runs/rand --schedule 2x
  sslkit detect byol/last.pth --train demo/train.json --val demo/val.json \\
      --out runs/d --min-size 256 --max-size 427 --batch-size 4
  sslkit detect --out runs/det --eval-only --save-predictions
  sslkit detect r50.pkl --train t.json --val v.json --out runs/d2 \\
      --engine detectron2 --dry-run
"""


class Engine(str, enum.Enum):
    torchvision = "torchvision"
    detectron2 = "detectron2"


class Norm(str, enum.Enum):
    syncbn = "syncbn"
    bn = "bn"


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, enum.Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


def _ints(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    try:
        vals = [int(t) for t in text.replace(":", ",").split(",") if t.strip()]
    except ValueError:
        vals = []
    if not vals:
        raise UserError(f"{name} {text!r} is not a comma-separated list of integers")
    return vals


def print_table(rec: dict) -> None:
    from rich.table import Table

    from sslkit.eval.detect.evaluate import METRICS

    w = rec["weights"]
    src = "random init" if w.get("weights") == "random" else Path(str(w.get("weights"))).name
    stdout.print(f"[bold]Mask R-CNN {w.get('arch')}-FPN[/] · {src} · {rec['engine']} · schedule "
                 f"{rec['schedule']['name']} ({rec['schedule']['iters']} it) · val {rec['val']['num_images']} images",
                 highlight=False)
    t = Table()
    t.add_column("task")
    for m in METRICS:
        t.add_column(m, justify="right")
    for iou in ("bbox", "segm"):
        if iou in rec:
            t.add_row(iou, *("–" if rec[iou][m] is None else f"{rec[iou][m]:.2f}" for m in METRICS))
    stdout.print(t)


def register(app: typer.Typer) -> None:
    @app.command("detect", help=HELP)
    def detect_cmd(
        weights: str | None = typer.Argument(None, help="Checkpoint, exported .pth / .pkl, or 'random' (with --arch); optional when resuming."),
        out: Path = typer.Option(..., "--out", help="Run folder (checkpoints, logs, metrics); rerun to resume."),
        train: Path | None = typer.Option(None, "--train", help="Training COCO instances json."),
        val: Path | None = typer.Option(None, "--val", help="Evaluation COCO instances json (same categories)."),
        image_root: Path | None = typer.Option(None, "--image-root", help="Image folder of the jsons [default: found next to each json]."),
        val_image_root: Path | None = typer.Option(None, "--val-image-root", help="Image folder of --val [default: --image-root]."),
        arch: str | None = typer.Option(None, "--arch", help="Backbone architecture (required with 'random'; otherwise checked)."),
        encoder: str | None = typer.Option(None, "--encoder", help="Encoder of a training checkpoint [default: its default]."),
        schedule: str | None = typer.Option(None, "--schedule", help="1x (90k it × 16 images on COCO; same epochs elsewhere), 2x, 6x, 0.5x… [default: 1x]"),
        iters: int | None = typer.Option(None, "--iters", help="Total iterations (replaces the schedule's length)."),
        batch_size: int | None = typer.Option(None, "--batch-size", help="GLOBAL images per iteration [default: 16]."),
        lr: float | None = typer.Option(None, "--lr", help="Base lr at 16 images, scaled × batch/16 [default: 0.02]."),
        weight_decay: float | None = typer.Option(None, "--weight-decay", help="Weight decay (norm layers: 0) [default: 1e-4]."),
        warmup_iters: int | None = typer.Option(None, "--warmup-iters", help="Linear warm-up iterations [default: 1000 of a 90k 1x, scaled]."),
        steps: str | None = typer.Option(None, "--steps", help="lr ×0.1 at these iterations, e.g. 60000,80000 [default: from the schedule]."),
        min_size: int | None = typer.Option(None, "--min-size", help="Test short side; training samples 0.8×..1× of it (640–800 at 800) [default: 800]."),
        max_size: int | None = typer.Option(None, "--max-size", help="Longest side cap [default: 1333]."),
        train_sizes: str | None = typer.Option(None, "--train-sizes", help="Explicit training short sides, e.g. 480,512,544."),
        norm: Norm | None = typer.Option(None, "--norm", help="syncbn: SyncBN across GPUs (BN in one process); bn: never synced [default: syncbn]."),
        freeze_at: int | None = typer.Option(None, "--freeze-at", help="Frozen backbone parts: 0 none, 1 stem, 2 +res2, … 5 all [default: 0]."),
        fpn_channels: int | None = typer.Option(None, "--fpn-channels", help="FPN/head width (box fc: 4×) [default: 256]."),
        precise_bn_iters: int | None = typer.Option(None, "--precise-bn-iters", help="Batches for Precise BN before evaluation (0: off) [default: 3200 images, at most one epoch]."),
        seed: int | None = typer.Option(None, "--seed", help="Seed of the heads' init, data order, flips [default: 0]."),
        engine: Engine = typer.Option(Engine.torchvision, "--engine", help="torchvision (built in) or detectron2 (if installed)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Resolve and write the config (and the detectron2 .pkl) without training."),
        config: Path | None = typer.Option(None, "--config", "-c", help="YAML/TOML file of settings (keys of --print-config)."),
        set_: list[str] = typer.Option([], "--set", help="KEY=VALUE for any setting (repeatable)."),
        print_config: bool = typer.Option(False, "--print-config", help="Print the resolved settings and exit."),
        device: Device = typer.Option(Device.auto, "--device", help="auto (CUDA if visible), cpu or cuda."),
        gpus: int | None = typer.Option(None, "--gpus", help="CUDA processes on this node [default: all visible]."),
        procs: int | None = typer.Option(None, "--procs", help="CPU processes (gloo DDP)."),
        nodes: int = typer.Option(1, "--nodes", help="Number of nodes."),
        node_rank: int | None = typer.Option(None, "--node-rank", help="This node's rank (static rendezvous)."),
        rdzv_endpoint: str | None = typer.Option(None, "--rdzv-endpoint", help="HOST:PORT of the rendezvous (multi-node)."),
        precision: Precision | None = typer.Option(None, "--precision", help="auto (bf16 on a bf16 GPU, else fp32), fp32, bf16, fp16."),
        workers: int | None = typer.Option(None, "--workers", help="Data loading processes per rank [default: CPUs per rank − 1, ≤ 8]."),
        log_every: int | None = typer.Option(None, "--log-every", help="Log every N iterations [default: 20]."),
        save_every: int | None = typer.Option(None, "--save-every", help="Write last.pth every N iterations [default: 5000 of a 90k run, scaled]."),
        max_iters: int | None = typer.Option(None, "--max-iters", help="Stop (with a checkpoint) after N total iterations; rerun to continue."),
        eval_batch_size: int | None = typer.Option(None, "--eval-batch-size", help="Images per inference batch per rank [default: 2]."),
        save_predictions: bool = typer.Option(False, "--save-predictions", help="Write RUN_DIR/predictions.json (COCO results)."),
        tensorboard: bool = typer.Option(True, "--tensorboard/--no-tensorboard", help="TensorBoard logs in RUN_DIR/tb."),
        eval_only: bool = typer.Option(False, "--eval-only", help="Evaluate RUN_DIR/last.pth without training."),
        resume: bool | None = typer.Option(None, "--resume/--no-resume", help="Continue RUN_DIR/last.pth (default: if it exists) / start over."),
        metrics_out: Path | None = typer.Option(None, "-o", "--metrics", help="Also write the metrics JSON here."),
        as_json: bool = typer.Option(False, "--json", help="Print the metrics JSON to stdout (instead of the table)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ):
        from sslkit.io.atomic import check_writable

        check_writable(metrics_out)  # before any work: no hour lost to a typo
        flags = dict(train=train, val=val, image_root=image_root, val_image_root=val_image_root, arch=arch,
                     encoder=encoder, schedule=schedule, iters=iters, batch_size=batch_size, lr=lr,
                     weight_decay=weight_decay, warmup_iters=warmup_iters, steps=_ints(steps, "--steps"),
                     min_size=min_size, max_size=max_size, train_sizes=_ints(train_sizes, "--train-sizes"),
                     norm=norm.value if norm else None, freeze_at=freeze_at, fpn_channels=fpn_channels,
                     precise_bn_iters=precise_bn_iters, seed=seed,
                     precision=precision.value if precision else None, workers=workers, log_every=log_every,
                     save_every=save_every, max_iters=max_iters, eval_batch_size=eval_batch_size,
                     save_predictions=save_predictions or None, tensorboard=None if tensorboard else False)
        if flags["schedule"] is not None:
            from sslkit.eval.detect.schedule import parse_schedule

            parse_schedule(flags["schedule"])
        from sslkit.config import load_config_file, parse_set
        from sslkit.eval.detect.run import run_detect
        from sslkit.io.artefacts import command_line

        flags = {k: str(v) if isinstance(v, Path) else v for k, v in flags.items() if v is not None}
        layers = [(str(config), load_config_file(config) if config else {}), ("--set", parse_set(set_)),
                  ("command line", flags)]
        rec = run_detect(weights, out, layers, engine=engine.value, device=device.value, gpus=gpus, procs=procs,
                         nodes=nodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, resume=resume,
                         eval_only=eval_only, dry_run=dry_run, print_config=print_config, quiet=quiet or as_json,
                         command=command_line())
        if isinstance(rec, str):
            stdout.print(rec, markup=False, highlight=False, end="")
            return
        if rec is None:
            return
        if rec.get("dry_run"):
            if as_json:
                print_json(rec)
            elif not quiet:
                s = rec["resolved"]["schedule"]
                stdout.print(f"{rec['engine']}: {s['iters']} iterations ({s['epochs']} epochs) of {s['batch_size']} "
                             f"images, lr {s['base_lr']:.4g}, warm-up {s['warmup_iters']}, steps {s['steps']}, train "
                             f"sizes {rec['resolved']['train_sizes']}, test {rec['resolved']['test_size']}; "
                             f"config → {rec['config']}" + (f", weights → {rec['weights']}" if "weights" in rec else ""),
                             highlight=False)
            return
        if "finished" in rec and not rec["finished"] and "bbox" not in rec:
            if as_json:
                print_json(rec)
            elif not quiet:
                stdout.print(f"stopped at iteration {rec['iteration']}/{rec['total_iters']} → {rec['checkpoint']} "
                             "(rerun without --max-iters, or with a larger one, to continue)", highlight=False)
            return
        if metrics_out is not None:
            from sslkit.io.images import write_json

            write_json(metrics_out, rec)
        if as_json:
            print_json(rec)
            return
        if not quiet:
            for note in rec.get("notes", []):
                warn(note)
            print_table(rec)
            console.print(f"metrics → {Path(rec['run_dir']) / 'metrics.json'}"
                          + (f" and {metrics_out}" if metrics_out else "")
                          + (f"; predictions → {rec['predictions']}" if rec.get("predictions") else ""))
