"""``sslkit linprobe``: frozen-feature classification (linear, kNN, SVM) of a backbone."""

from __future__ import annotations

import enum
from pathlib import Path

import typer

from sslkit.cli.common import console, print_json, progress, stdout, warn
from sslkit.errors import UserError

HELP = """Probe a frozen backbone: features once (cached), then a classifier.

Reads WEIGHTS (a training checkpoint, an exported .pth or detectron2 .pkl,
or 'random' with --arch for the random-init baseline) and two labelled
splits, --train and --val, each one of:

  class-folder tree ROOT/<class>/<image>: one sample per image → top-1/5
  COCO json, --task objects: one sample per box crop → top-1/5
  COCO json, --task multilabel: category presence per image → VOC mAP

Protocols (--protocol):

  linear  ORL/OpenSelfSup head BN(affine=False)+FC; SGD lr 0.01, batch 256,
          momentum 0.9, wd 1e-4, ×0.1 at 2/7, 4/7, 6/7 of --epochs (28);
          --solver lbfgs for small data; --wd auto (or a list) picks the
          weight decay by cross-validation on --train, folds grouped by
          image or by an annotation field (--cv-group)
  knn     weighted kNN, k=20, T=0.07, cosine (InstDisc/DINO)
  svm     VOC07: one-vs-rest LinearSVC per class, cost from 1,10,100 by
          3-fold CV; reproduce ORL's VOC07 numbers with --pool spec

Writes metrics in percent (-o FILE and/or --json) and prints a table.
Features are cached as sslkit.features .h5 files in --cache-dir, keyed by
the weights' tensors, the data, the transform, --layers and --pool; a rerun
with the same key reuses them (the metrics record a cache hit).

Examples:

  sslkit linprobe r50.pth --train voc07/trainval.json --val voc07/test.json
      --task multilabel --protocol svm --pool spec -o voc07.json
  sslkit linprobe run/last.pth --train in1k/train --val in1k/val
  sslkit linprobe random --arch resnet50 --train coco/train.json
      --val coco/val.json --task objects --protocol knn
"""


class Task(str, enum.Enum):
    objects = "objects"
    multilabel = "multilabel"


class Protocol(str, enum.Enum):
    linear = "linear"
    knn = "knn"
    svm = "svm"


class Pool(str, enum.Enum):
    avg = "avg"
    spec = "spec"


class Solver(str, enum.Enum):
    sgd = "sgd"
    lbfgs = "lbfgs"


def _table(rec: dict) -> None:
    from rich.table import Table

    primary = rec["primary_metric"]
    w = rec["weights"]
    title = f"{rec['protocol']} probe · {rec['task']} · {w.get('arch')} ({w.get('method') or w.get('kind')})"
    stdout.print(f"[bold]{title}[/]", highlight=False)
    t = Table()
    t.add_column("layer")
    t.add_column("dim", justify="right")
    cols = ["mAP"] if primary == "mAP" else [c for c in ("top1", "top5") if any(c in r for r in rec["results"].values())]
    for c in cols:
        t.add_column(c, justify="right")
    searched = any("wd_search" in r for r in rec["results"].values())
    if rec["protocol"] == "linear":
        t.add_column(f"train {primary}", justify="right")
    if searched:
        t.add_column("wd (cross-validated)", justify="right")
    for layer, r in rec["results"].items():
        row = [layer + (" *" if layer == rec["best_layer"] and len(rec["results"]) > 1 else ""), str(r["dim"])]
        row += [f"{r[c]:.2f}" for c in cols]
        if rec["protocol"] == "linear":
            row.append(f"{r['train'][primary]:.2f}")
        if searched:
            row.append(f"{r['weight_decay']:g}")
        t.add_row(*row)
    stdout.print(t)
    tr, va = rec["train"], rec["val"]
    hit = {k: ("cached" if rec[k]["cache"]["hit"] else "extracted") for k in ("train", "val")}
    stdout.print(f"train {tr['num_samples_used']} samples ({hit['train']}), val {va['num_samples_used']} samples "
                 f"({hit['val']}), {rec['num_classes']} classes", highlight=False)
    if "chance" in rec:
        stdout.print(f"chance: top1 {rec['chance']['top1_uniform']:.2f} (uniform), "
                     f"{rec['chance']['top1_majority']:.2f} (majority class)", highlight=False)
    low = {layer: r["low_shot"] for layer, r in rec["results"].items() if "low_shot" in r}
    if low:
        shots = list(next(iter(low.values()))["shots"])
        lt = Table(title=f"low-shot SVM mAP (mean ± std over {next(iter(low.values()))['samples']} draws)",
                   title_justify="left")
        lt.add_column("layer")
        for k in shots:
            lt.add_column(f"k={k}", justify="right")
        for layer, ls in low.items():
            lt.add_row(layer, *[f"{ls['shots'][k]['mAP']:.1f} ± {ls['shots'][k]['std']:.1f}" for k in shots])
        stdout.print(lt)


def register(app: typer.Typer) -> None:
    @app.command("linprobe", help=HELP)
    def linprobe_cmd(
        weights: str = typer.Argument(..., help="Checkpoint, exported .pth / .pkl, or 'random' (with --arch)."),
        train: Path = typer.Option(None, "--train", help="Training split: class-folder tree or COCO json."),
        val: Path = typer.Option(None, "--val", help="Evaluation split, same kind as --train."),
        task: Task = typer.Option(None, "--task", help="For COCO json splits: objects (box crops) or multilabel (image presence)."),
        image_root: Path = typer.Option(None, "--image-root", help="Image folder of the COCO json(s) (default: found next to the json)."),
        val_image_root: Path = typer.Option(None, "--val-image-root", help="Image folder of the --val json (default: --image-root)."),
        protocol: Protocol | None = typer.Option(None, "--protocol", help="Classifier on the frozen features."),
        arch: str = typer.Option(None, "--arch", help="Architecture (required with 'random'; otherwise checked against the file)."),
        encoder: str = typer.Option(None, "--encoder", help="Encoder of a training checkpoint (default: its default_encoder)."),
        layers: str | None = typer.Option(None, "--layers", help="Stages to probe: comma list of conv1,res2,res3,res4,res5, or 'all'."),
        pool: Pool | None = typer.Option(None, "--pool", help="avg: global average pool; spec: Goyal et al./ORL fixed pools (~9k dims per stage)."),
        image_size: int | None = typer.Option(None, "--image-size", help="Network input side (image tasks: resize shorter side to size/0.875, centre crop)."),
        box_scale: float | None = typer.Option(None, "--box-scale", help="objects: scale each box about its centre before cropping (e.g. 1.2 for context)."),
        min_box: float | None = typer.Option(None, "--min-box", help="objects: ignore boxes smaller than this many pixels on a side."),
        batch_size: int | None = typer.Option(None, "--batch-size", help="Images per feature-extraction batch."),
        workers: int | None = typer.Option(None, "--workers", help="Image decoding processes (0: in the main process)."),
        device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N."),
        epochs: int | None = typer.Option(None, "--epochs", help="linear: epochs over the cached features (ORL ImageNet: 28)."),
        lr: float | None = typer.Option(None, "--lr", help="linear: base learning rate."),
        wd: str | None = typer.Option(None, "--wd", help="linear: weight decay; a comma list or 'auto' (1e-6 … 1 in half decades) chooses one by cross-validation on --train."),
        cv_group: str | None = typer.Option(None, "--cv-group", help="linear with several --wd: folds keep whole groups — 'image' (every crop of an image), or an annotation field of the COCO json (--task objects), e.g. one naming the photo an object came from."),
        linear_batch_size: int | None = typer.Option(None, "--linear-batch-size", help="linear: SGD batch size."),
        solver: Solver | None = typer.Option(None, "--solver", help="linear: sgd (the protocol) or lbfgs (full batch, small data)."),
        k: int | None = typer.Option(None, "--k", help="knn: neighbours."),
        temperature: float | None = typer.Option(None, "--temperature", help="knn: vote temperature."),
        costs: str | None = typer.Option(None, "--costs", help="svm: SVM costs to cross-validate."),
        folds: int | None = typer.Option(None, "--folds", help="svm, and linear with several --wd: cross-validation folds."),
        svm_jobs: int | None = typer.Option(None, "--svm-jobs", help="svm: classes fitted in parallel (processes)."),
        low_shot: str = typer.Option(None, "--low-shot", help="svm: also run the low-shot benchmark with these shots per class, e.g. 1,2,4,8,16,32,64,96 (ORL Table 2)."),
        low_shot_samples: int | None = typer.Option(None, "--low-shot-samples", help="svm: independent draws per shot count."),
        seed: int | None = typer.Option(None, "--seed", help="Seed of the classifier (and of 'random' weights)."),
        cache_dir: Path = typer.Option(None, "--cache-dir", help="Feature cache folder (default: $SSLKIT_CACHE_DIR or ~/.cache/sslkit/features)."),
        no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or keep cached features."),
        config: Path | None = typer.Option(None, "--config", "-c", help="YAML/TOML file of settings (keys of --print-config)."),
        set_: list[str] = typer.Option([], "--set", help="KEY=VALUE for any setting (repeatable)."),
        print_config: bool = typer.Option(False, "--print-config", help="Print the resolved settings and exit."),
        out: Path = typer.Option(None, "--out", "-o", help="Write the metrics JSON here."),
        as_json: bool = typer.Option(False, "--json", help="Print the metrics JSON to stdout (instead of the table)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or table."),
    ):
        from sslkit.config import absolute_paths, dump_yaml, load_config_file, parse_set, resolve
        from sslkit.eval.linprobe import run_linprobe
        from sslkit.eval.probe_settings import KEYS, LISTING, probe_settings
        from sslkit.io.images import write_json

        flags = dict(weights=weights, train=train, val=val, task=task, image_root=image_root,
                     val_image_root=val_image_root, protocol=protocol, arch=arch, encoder=encoder, layers=layers,
                     pool=pool, image_size=image_size, box_scale=box_scale, min_box=min_box, batch_size=batch_size,
                     workers=workers, device=device, epochs=epochs, lr=lr, wd=wd, cv_group=cv_group,
                     linear_batch_size=linear_batch_size, solver=solver, k=k, temperature=temperature, costs=costs,
                     folds=folds, svm_jobs=svm_jobs, low_shot=low_shot, low_shot_samples=low_shot_samples, seed=seed,
                     cache_dir=cache_dir, cache=False if no_cache else None)
        flags = {k: v.value if isinstance(v, enum.Enum) else str(v) if isinstance(v, Path) else v
                 for k, v in flags.items() if v is not None}
        layers_ = [(str(config), load_config_file(config) if config else {}), ("--set", parse_set(set_)),
                   ("command line", flags)]
        cfg = resolve(KEYS, layers_, owner="linprobe", listing=LISTING)
        if print_config:
            stdout.print(dump_yaml(cfg), markup=False, highlight=False, end="")
            return
        for key in ("train", "val"):
            if cfg[key] is None:
                raise UserError(f"--{key} is required")
        cfg = absolute_paths(cfg, KEYS)
        settings = probe_settings(cfg)
        from sslkit.io.atomic import check_writable

        check_writable(out)  # before any work: no hour lost to a typo
        rec = run_linprobe(cfg["weights"], cfg["train"], cfg["val"], task=cfg["task"], image_root=cfg["image_root"],
                           val_image_root=cfg["val_image_root"], arch=cfg["arch"], encoder=cfg["encoder"],
                           settings=settings, progress=lambda unit: progress(quiet or as_json, unit))
        if out is not None:
            write_json(out, rec)
        if as_json:
            print_json(rec)
            return
        if not quiet:
            for note in rec["notes"]:
                warn(note)
            _table(rec)
            if out is not None:
                console.print(f"metrics → {out}")
