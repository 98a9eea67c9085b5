"""``sslkit linprobe``: frozen-feature classification (linear, kNN, SVM) of a backbone."""

from __future__ import annotations

import enum
import os
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


def default_cache_dir() -> Path:
    base = os.environ.get("SSLKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sslkit")
    return Path(base) / "features"


def _parse_costs(text: str) -> tuple[float, ...]:
    try:
        costs = tuple(float(c) for c in text.split(",") if c.strip())
    except ValueError:
        costs = ()
    if not costs or any(c <= 0 for c in costs):
        raise UserError(f"--costs {text!r} is not a comma-separated list of positive numbers", None, "e.g. --costs 1,10,100")
    return costs


def _parse_wd(text: str) -> tuple[float, tuple[float, ...]]:
    """``--wd``: one value (fixed), ``auto`` (the default grid) or a comma list → (fixed value, grid)."""
    from sslkit.eval.linear import WD_GRID

    if text.strip() == "auto":
        return WD_GRID[0], WD_GRID
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(v < 0 for v in values):
        raise UserError(f"--wd {text!r} is not a weight decay ≥ 0, a comma-separated list of them, or 'auto'",
                        None, "e.g. --wd 1e-4, --wd 1e-4,1e-3,1e-2 or --wd auto")
    grid = tuple(sorted(set(values)))
    return (grid[0], ()) if len(grid) == 1 else (grid[0], grid)


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
        train: Path = typer.Option(..., "--train", help="Training split: class-folder tree or COCO json."),
        val: Path = typer.Option(..., "--val", help="Evaluation split, same kind as --train."),
        task: Task = typer.Option(None, "--task", help="For COCO json splits: objects (box crops) or multilabel (image presence)."),
        image_root: Path = typer.Option(None, "--image-root", help="Image folder of the COCO json(s) (default: found next to the json)."),
        val_image_root: Path = typer.Option(None, "--val-image-root", help="Image folder of the --val json (default: --image-root)."),
        protocol: Protocol = typer.Option(Protocol.linear, "--protocol", help="Classifier on the frozen features."),
        arch: str = typer.Option(None, "--arch", help="Architecture (required with 'random'; otherwise checked against the file)."),
        encoder: str = typer.Option(None, "--encoder", help="Encoder of a training checkpoint (default: its default_encoder)."),
        layers: str = typer.Option("res5", "--layers", help="Stages to probe: comma list of conv1,res2,res3,res4,res5, or 'all'."),
        pool: Pool = typer.Option(Pool.avg, "--pool", help="avg: global average pool; spec: Goyal et al./ORL fixed pools (~9k dims per stage)."),
        image_size: int = typer.Option(224, "--image-size", help="Network input side (image tasks: resize shorter side to size/0.875, centre crop)."),
        box_scale: float = typer.Option(1.0, "--box-scale", help="objects: scale each box about its centre before cropping (e.g. 1.2 for context)."),
        min_box: float = typer.Option(8.0, "--min-box", help="objects: ignore boxes smaller than this many pixels on a side."),
        batch_size: int = typer.Option(64, "--batch-size", help="Images per feature-extraction batch."),
        workers: int = typer.Option(min(8, os.cpu_count() or 1), "--workers", help="Image decoding processes (0: in the main process)."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
        epochs: int = typer.Option(28, "--epochs", help="linear: epochs over the cached features (ORL ImageNet: 28)."),
        lr: float = typer.Option(0.01, "--lr", help="linear: base learning rate."),
        wd: str = typer.Option("1e-4", "--wd", help="linear: weight decay; a comma list or 'auto' (1e-6 … 1 in half decades) chooses one by cross-validation on --train."),
        cv_group: str = typer.Option("image", "--cv-group", help="linear with several --wd: folds keep whole groups — 'image' (every crop of an image), or an annotation field of the COCO json (--task objects), e.g. one naming the photo an object came from."),
        linear_batch_size: int = typer.Option(256, "--linear-batch-size", help="linear: SGD batch size."),
        solver: Solver = typer.Option(Solver.sgd, "--solver", help="linear: sgd (the protocol) or lbfgs (full batch, small data)."),
        k: int = typer.Option(20, "--k", help="knn: neighbours."),
        temperature: float = typer.Option(0.07, "--temperature", help="knn: vote temperature."),
        costs: str = typer.Option("1,10,100", "--costs", help="svm: SVM costs to cross-validate."),
        folds: int = typer.Option(3, "--folds", help="svm, and linear with several --wd: cross-validation folds."),
        svm_jobs: int = typer.Option(1, "--svm-jobs", help="svm: classes fitted in parallel (processes)."),
        low_shot: str = typer.Option(None, "--low-shot", help="svm: also run the low-shot benchmark with these shots per class, e.g. 1,2,4,8,16,32,64,96 (ORL Table 2)."),
        low_shot_samples: int = typer.Option(5, "--low-shot-samples", help="svm: independent draws per shot count."),
        seed: int = typer.Option(0, "--seed", help="Seed of the classifier (and of 'random' weights)."),
        cache_dir: Path = typer.Option(None, "--cache-dir", help="Feature cache folder (default: $SSLKIT_CACHE_DIR or ~/.cache/sslkit/features)."),
        no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or keep cached features."),
        out: Path = typer.Option(None, "--out", "-o", help="Write the metrics JSON here."),
        as_json: bool = typer.Option(False, "--json", help="Print the metrics JSON to stdout (instead of the table)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or table."),
    ):
        from sslkit.eval.features import parse_layers
        from sslkit.eval.linear import LinearConfig
        from sslkit.eval.linprobe import ProbeSettings, run_linprobe
        from sslkit.io.images import write_json

        for name, v in (("--image-size", image_size), ("--batch-size", batch_size), ("--epochs", epochs),
                        ("--linear-batch-size", linear_batch_size), ("--k", k), ("--svm-jobs", svm_jobs)):
            if v < 1:
                raise UserError(f"{name} must be ≥ 1 (got {v})")
        if folds < 2:
            raise UserError(f"--folds must be ≥ 2 (got {folds})")
        if workers < 0:
            raise UserError(f"--workers must be ≥ 0 (got {workers})")
        if box_scale <= 0 or temperature <= 0 or lr <= 0:
            raise UserError("--box-scale, --temperature and --lr must be > 0")
        wd_value, wd_grid = _parse_wd(wd)
        if wd_grid and protocol is not Protocol.linear:
            raise UserError(f"--wd {wd} (a cross-validated choice) is for --protocol linear", None,
                            "the svm protocol cross-validates --costs")
        if cv_group != "image" and not wd_grid:
            raise UserError("--cv-group only applies when --wd names several values or 'auto'")
        shots: tuple[int, ...] = ()
        if low_shot is not None:
            if protocol is not Protocol.svm:
                raise UserError("--low-shot is part of the SVM protocol", None, "add --protocol svm")
            try:
                shots = tuple(int(v) for v in low_shot.split(",") if v.strip())
            except ValueError:
                shots = ()
            if not shots or min(shots) < 1 or low_shot_samples < 1:
                raise UserError(f"--low-shot {low_shot!r} is not a list of positive integers", None,
                                "e.g. --low-shot 1,2,4,8,16,32,64,96")
        if out is not None and out.is_dir():
            raise UserError("is a folder, expected a metrics .json file name", out)
        settings = ProbeSettings(
            protocol=protocol.value, layers=parse_layers(layers), pool=pool.value, image_size=image_size,
            box_scale=box_scale, min_box=min_box, batch_size=batch_size, workers=workers, device=device,
            linear=LinearConfig(epochs=epochs, batch_size=linear_batch_size, lr=lr, weight_decay=wd_value,
                                solver=solver.value, seed=seed),
            wd_grid=wd_grid, cv_group=cv_group,
            k=k, temperature=temperature, costs=_parse_costs(costs), folds=folds, svm_jobs=svm_jobs,
            low_shot=shots, low_shot_samples=low_shot_samples,
            cache_dir=None if no_cache else (cache_dir or default_cache_dir()), seed=seed)
        rec = run_linprobe(weights, str(train), str(val), task=task.value if task else None,
                           image_root=image_root, val_image_root=val_image_root, arch=arch, encoder=encoder,
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
