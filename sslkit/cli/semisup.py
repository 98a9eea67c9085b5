"""``sslkit semisup``: fine-tune a whole backbone + linear head on a 1 % / 10 % labelled subset."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from sslkit.cli.common import console, print_json, progress, stdout, warn
from sslkit.errors import UserError

HELP = """Semi-supervised evaluation: fine-tune the whole network on a labelled subset.

ORL/UniVIP protocol (ImageNet 1 % / 10 %): backbone + Linear head on global
average pooling, SGD momentum 0.9, batch 256, 20 epochs, lr 0.01 (backbone)
and 1.0 (head), x0.2 at epochs 12 and 16, weight decay 0 (1 %) / 1e-4 (10 %);
RandomResizedCrop 224 + flip for training, resize 256 / centre crop 224 for
testing. See docs/semisup.md.

Reads WEIGHTS (a training checkpoint, an export .pth / .pkl, or 'random' with
--arch) and --train / --val splits: class folders ROOT/<class>/<image>, or
COCO jsons with --task objects (one sample per box). The subset: --fraction F
(class-balanced, seeded, at least one per class) or --subset-file LIST (one
file name per line, e.g. SimCLR's 1percent.txt). Writes top-1 / top-5
(percent) as JSON with -o / --json and prints a table; --save-subset FILE
lists the samples used.

\b
Examples:
  sslkit semisup r50.pth --train imagenet/train --val imagenet/val \\
      --subset-file 1percent.txt -o semi1.json
  sslkit semisup r50.pth --train imagenet/train --val imagenet/val \\
      --fraction 0.1 -o semi10.json
  sslkit semisup random --arch resnet18 --train demo/train.json \\
      --val demo/val.json --task objects --fraction 0.1 --image-size 64 \\
      --resize 73 --batch-size 32
"""


def register(app: typer.Typer) -> None:
    @app.command("semisup", help=HELP)
    def semisup_cmd(
        weights: str = typer.Argument(..., help="Checkpoint, exported .pth / .pkl, or 'random' (with --arch)."),
        train: Path = typer.Option(..., "--train", help="Training split: class-folder tree or COCO json."),
        val: Path = typer.Option(..., "--val", help="Evaluation split, same kind as --train."),
        fraction: float | None = typer.Option(None, "--fraction", help="Class-balanced labelled fraction, e.g. 0.01 or 0.1."),
        subset_file: Path | None = typer.Option(None, "--subset-file", help="Labelled files, one name per line (instead of --fraction)."),
        task: str | None = typer.Option(None, "--task", help="For COCO json splits: objects (one sample per box)."),
        image_root: Path | None = typer.Option(None, "--image-root", help="Image folder of the COCO json(s) [default: next to the json]."),
        val_image_root: Path | None = typer.Option(None, "--val-image-root", help="Image folder of --val [default: --image-root]."),
        arch: str | None = typer.Option(None, "--arch", help="Architecture (required with 'random'; otherwise checked)."),
        encoder: str | None = typer.Option(None, "--encoder", help="Encoder of a training checkpoint [default: its default]."),
        epochs: int = typer.Option(20, "--epochs", help="Fine-tuning epochs (lr ×0.2 at 60 % and 80 %)."),
        batch_size: int = typer.Option(256, "--batch-size", help="Images per step (lr scaled × batch/256)."),
        lr: float = typer.Option(0.01, "--lr", help="Backbone lr at batch 256."),
        head_lr_mult: float = typer.Option(100.0, "--head-lr-mult", help="Head lr = lr × this (1.0 at the defaults)."),
        wd: float | None = typer.Option(None, "--wd", help="Weight decay [default: 0 for ≤ 1 %, 1e-4 above]."),
        image_size: int = typer.Option(224, "--image-size", help="Crop side."),
        resize: int = typer.Option(256, "--resize", help="Test: shorter side before the centre crop."),
        box_scale: float = typer.Option(1.0, "--box-scale", help="objects: scale each box about its centre before cropping."),
        min_box: float = typer.Option(8.0, "--min-box", help="objects: ignore boxes smaller than this many pixels on a side."),
        seed: int = typer.Option(0, "--seed", help="Seed of the subset, head init, data order and augmentation."),
        workers: int = typer.Option(min(8, os.cpu_count() or 1), "--workers", help="Image decoding processes (0: in the main process)."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
        precision: str = typer.Option("auto", "--precision", help="auto (bf16 on a bf16 GPU, else fp32), fp32, bf16, fp16."),
        eval_batch_size: int = typer.Option(256, "--eval-batch-size", help="Images per evaluation batch."),
        save_subset: Path | None = typer.Option(None, "--save-subset", help="Write the chosen samples here (one per line)."),
        out: Path | None = typer.Option(None, "--out", "-o", help="Write the metrics JSON here."),
        as_json: bool = typer.Option(False, "--json", help="Print the metrics JSON to stdout (instead of the table)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or table."),
    ):
        from sslkit.eval.semisup import SemisupConfig, run_semisup
        from sslkit.io.images import write_json

        if task not in (None, "objects"):
            raise UserError(f"--task {task}: semisup trains a single-label classifier", None,
                            "use --task objects for COCO jsons (class folders need no --task)")
        if precision not in ("auto", "fp32", "bf16", "fp16"):
            raise UserError(f"unknown --precision {precision!r}", None, "use auto, fp32, bf16 or fp16")
        if workers < 0 or resize < image_size or box_scale <= 0:
            raise UserError("need --workers ≥ 0, --resize ≥ --image-size and --box-scale > 0")
        if out is not None and out.is_dir():
            raise UserError("is a folder, expected a metrics .json file name", out)
        cfg = SemisupConfig(fraction=fraction, subset_file=str(subset_file) if subset_file else None, epochs=epochs,
                            batch_size=batch_size, lr=lr, head_lr_mult=head_lr_mult, weight_decay=wd,
                            image_size=image_size, resize=resize, box_scale=box_scale, min_box=min_box, seed=seed,
                            workers=workers, device=device, precision=precision, eval_batch_size=eval_batch_size)
        loud = not (quiet or as_json)

        def log(rec: dict) -> None:
            if loud:
                console.print(f"epoch {rec['epoch']}/{epochs}: loss {rec['loss']:.4f}, train top-1 "
                              f"{rec['train_top1']:.2f}, lr {rec['lr_backbone']:.3g}/{rec['lr_head']:.3g}, "
                              f"{rec['img_per_s']:.1f} img/s", highlight=False)

        with progress(not loud) as p:
            rec = run_semisup(weights, str(train), str(val), cfg, task=task, image_root=image_root,
                              val_image_root=val_image_root, arch=arch, encoder=encoder, subset_out=save_subset,
                              progress=p, log=log)
        if out is not None:
            write_json(out, rec)
        if as_json:
            print_json(rec)
            return
        if quiet:
            return
        for note in rec["notes"]:
            warn(note)
        _table(rec)
        if out is not None:
            console.print(f"metrics → {out}")


def _table(rec: dict) -> None:
    from rich.table import Table

    w, s, sub = rec["weights"], rec["settings"], rec["train"]["subset"]
    what = f"{sub['fraction']:g}" if "fraction" in sub else Path(sub["subset_file"]).name
    stdout.print(f"[bold]semi-supervised · {w.get('arch')} ({w.get('method') or w.get('kind')}) · subset {what}: "
                 f"{sub['num_samples']} samples, {sub['per_class_min']}–{sub['per_class_max']} per class[/]",
                 highlight=False)
    t = Table()
    for col in ("top1", "top5", "epochs", "lr backbone/head", "wd"):
        t.add_column(col, justify="right")
    r = rec["results"]
    t.add_row(f"{r['top1']:.2f}", f"{r['top5']:.2f}" if "top5" in r else "–", str(s["epochs"]),
              f"{s['lr_backbone']:.3g}/{s['lr_head']:.3g}", f"{s['weight_decay']:g}")
    stdout.print(t)
    stdout.print(f"val {rec['val']['num_samples_used']} samples, {rec['num_classes']} classes; chance top-1 "
                 f"{rec['chance']['top1_uniform']:.2f} (uniform), {rec['chance']['top1_majority']:.2f} (majority)",
                 highlight=False)
