"""``sslkit semisup``: fine-tune a whole backbone + linear head on a 1 % / 10 % labelled subset."""

from __future__ import annotations

from pathlib import Path

import typer

from sslkit.cli.common import console, print_json, stdout, warn
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
lists the samples used. With --run-dir DIR the run checkpoints DIR/last.pth
at every epoch end and rerunning the command resumes it exactly; --gpus N /
--procs N fine-tune on N ranks (DDP; SyncBN on GPUs). Settings: defaults <
--config FILE < --set KEY=VALUE < flags (--print-config lists them).

\b
Examples:
  sslkit semisup r50.pth --train imagenet/train --val imagenet/val \\
      --subset-file 1percent.txt -o semi1.json
  sslkit semisup r50.pth --train imagenet/train --val imagenet/val \\
      --fraction 0.1 -o semi10.json
  sslkit semisup random --arch resnet18 --train demo/train.json \\
      --val demo/val.json --task objects --fraction 0.1 --image-size 64 \\
      --resize 73 --batch-size 32
  sslkit semisup r50.pth --train imagenet/train --val imagenet/val \\
      --fraction 0.1 --run-dir runs/semi10 --gpus 8
"""


def register(app: typer.Typer) -> None:
    @app.command("semisup", help=HELP)
    def semisup_cmd(
        weights: str | None = typer.Argument(None, help="Checkpoint, exported .pth / .pkl, or 'random' (with --arch); "
                                                        "optional when resuming a --run-dir."),
        train: Path | None = typer.Option(None, "--train", help="Training split: class-folder tree or COCO json."),
        val: Path | None = typer.Option(None, "--val", help="Evaluation split, same kind as --train."),
        fraction: float | None = typer.Option(None, "--fraction", help="Class-balanced labelled fraction, e.g. 0.01 or 0.1."),
        subset_file: Path | None = typer.Option(None, "--subset-file", help="Labelled files, one name per line (instead of --fraction)."),
        task: str | None = typer.Option(None, "--task", help="For COCO json splits: objects (one sample per box)."),
        image_root: Path | None = typer.Option(None, "--image-root", help="Image folder of the COCO json(s) [default: next to the json]."),
        val_image_root: Path | None = typer.Option(None, "--val-image-root", help="Image folder of --val [default: --image-root]."),
        arch: str | None = typer.Option(None, "--arch", help="Architecture (required with 'random'; otherwise checked)."),
        encoder: str | None = typer.Option(None, "--encoder", help="Encoder of a training checkpoint [default: its default]."),
        epochs: int | None = typer.Option(None, "--epochs", help="Fine-tuning epochs (lr ×0.2 at 60 % and 80 %) [default: 20]."),
        batch_size: int | None = typer.Option(None, "--batch-size", help="GLOBAL images per step (lr scaled × batch/256) [default: 256]."),
        lr: float | None = typer.Option(None, "--lr", help="Backbone lr at batch 256 [default: 0.01]."),
        head_lr_mult: float | None = typer.Option(None, "--head-lr-mult", help="Head lr = lr × this [default: 100, i.e. 1.0]."),
        wd: float | None = typer.Option(None, "--wd", help="Weight decay [default: 0 for ≤ 1 %, 1e-4 above]."),
        image_size: int | None = typer.Option(None, "--image-size", help="Crop side [default: 224]."),
        resize: int | None = typer.Option(None, "--resize", help="Test: shorter side before the centre crop [default: 256]."),
        box_scale: float | None = typer.Option(None, "--box-scale", help="objects: scale each box about its centre before cropping."),
        min_box: float | None = typer.Option(None, "--min-box", help="objects: ignore boxes smaller than this many pixels on a side."),
        seed: int | None = typer.Option(None, "--seed", help="Seed of the subset, head init, data order and augmentation."),
        workers: int | None = typer.Option(None, "--workers", help="Image decoding processes per rank (0: in the main process) [default: CPUs, ≤ 8]."),
        device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N."),
        precision: str | None = typer.Option(None, "--precision", help="auto (bf16 on a bf16 GPU, else fp32), fp32, bf16, fp16."),
        eval_batch_size: int | None = typer.Option(None, "--eval-batch-size", help="Images per evaluation batch."),
        run_dir: Path | None = typer.Option(None, "--run-dir", help="Checkpoint here every epoch; rerunning resumes."),
        resume: bool | None = typer.Option(None, "--resume/--no-resume", help="With --run-dir: continue its last.pth (default: if it exists) / start over."),
        gpus: int | None = typer.Option(None, "--gpus", help="CUDA processes on this node (DDP)."),
        procs: int | None = typer.Option(None, "--procs", help="CPU processes (gloo DDP)."),
        config: Path | None = typer.Option(None, "--config", "-c", help="YAML/TOML file of settings (keys of --print-config)."),
        set_: list[str] = typer.Option([], "--set", help="KEY=VALUE for any setting (repeatable)."),
        print_config: bool = typer.Option(False, "--print-config", help="Print the resolved settings and exit."),
        save_subset: Path | None = typer.Option(None, "--save-subset", help="Write the chosen samples here (one per line)."),
        out: Path | None = typer.Option(None, "--out", "-o", help="Write the metrics JSON here."),
        as_json: bool = typer.Option(False, "--json", help="Print the metrics JSON to stdout (instead of the table)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or table."),
    ):
        from sslkit.config import load_config_file, parse_set
        from sslkit.eval.semisup.run import run_semisup
        from sslkit.io.artefacts import command_line
        from sslkit.io.images import write_json

        if task not in (None, "objects"):
            raise UserError(f"--task {task}: semisup trains a single-label classifier", None,
                            "use --task objects for COCO jsons (class folders need no --task)")
        from sslkit.io.atomic import check_writable

        check_writable(out, save_subset)  # before any work: no hour lost to a typo
        flags = dict(train=train, val=val, fraction=fraction, subset_file=subset_file, task=task,
                     image_root=image_root, val_image_root=val_image_root, arch=arch, encoder=encoder, epochs=epochs,
                     batch_size=batch_size, lr=lr, head_lr_mult=head_lr_mult, weight_decay=wd, image_size=image_size,
                     resize=resize, box_scale=box_scale, min_box=min_box, seed=seed, workers=workers, device=device,
                     precision=precision, eval_batch_size=eval_batch_size)
        flags = {k: str(v) if isinstance(v, Path) else v for k, v in flags.items() if v is not None}
        layers = [(str(config), load_config_file(config) if config else {}), ("--set", parse_set(set_)),
                  ("command line", flags)]
        loud = not (quiet or as_json)
        rec = run_semisup(weights, layers, run_dir=run_dir, resume=resume, gpus=gpus, procs=procs,
                          subset_out=str(save_subset) if save_subset else None, print_config=print_config,
                          quiet=not loud, command=command_line())
        if isinstance(rec, str):
            stdout.print(rec, markup=False, highlight=False, end="")
            return
        if rec is None:
            return
        if rec.get("finished") is False:
            if as_json:
                print_json(rec)
            elif not quiet:
                stdout.print(f"stopped at step {rec['step']}/{rec['total_steps']} → {rec['checkpoint']} (rerun to "
                             "continue)", highlight=False)
            return
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
