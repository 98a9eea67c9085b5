"""``sslkit pretrain IMAGES --method M --out RUN_DIR``: self-supervised pretraining of a ResNet."""

from __future__ import annotations

from pathlib import Path

import typer

from sslkit.cli.common import print_json, stdout
from sslkit.errors import UserError

HELP = """Pretrain a ResNet with a self-supervised method on a folder of images or a COCO json.

Reads IMAGES (a folder, recursively, or a COCO json); writes RUN_DIR/config.yaml (the resolved
config), log.jsonl, tb/ (TensorBoard), last.pth and epoch_NNNN.pth checkpoints, and
skipped_images.tsv if some images cannot be decoded.

Settings: the method's defaults < --config FILE (YAML/TOML) < --set KEY=VALUE < flags.
--batch-size is the GLOBAL batch; --lr is the base lr, scaled ×batch/256 (--lr-scaling).
An existing RUN_DIR/last.pth is resumed automatically (--no-resume starts over).

\b
Examples:
  sslkit pretrain coco/train2017 --method byol --out runs/byol
  sslkit pretrain imgs/ -m simclr -o runs/s --batch-size 512 --gpus 8 --precision bf16
  sslkit pretrain coco/train2017 -m byol -o runs/b --gpus 1 --data-path gpu --channels-last
  sslkit pretrain imgs/ -m mocov2 -o runs/m --procs 2 --arch resnet18 --image-size 96
  torchrun --nproc-per-node 8 -m sslkit pretrain imgs/ -m byol -o runs/b
  sslkit pretrain --out runs/byol                 # continue an interrupted run
  sslkit pretrain --method byol --print-config    # show the defaults
"""

def _list_methods() -> None:
    from rich.table import Table

    from sslkit.engine.config import ENGINE_KEYS
    from sslkit.methods import METHODS

    t = Table(title="sslkit pretrain --method NAME --print-config shows every setting")
    for col in ("method", "optimizer", "base lr", "batch", "epochs", "wd", "warm-up", "own settings"):
        t.add_column(col)
    for name, cls in METHODS.items():
        d = cls.DEFAULTS
        own = ", ".join(f"{k}={v}" for k, v in d.items() if k not in ENGINE_KEYS)
        t.add_row(name, d["optimizer"], f"{d['lr']} ({d['lr_scaling']})", str(d["batch_size"]), str(d["epochs"]),
                  str(d["weight_decay"]), str(d["warmup_epochs"]), own)
    stdout.print(t)


def device_layout(gpus: int | None, procs: int | None, nodes: int, ext) -> tuple[str, int, int]:
    """(device, ranks per node to start here (0: started by an external launcher), world size)."""
    import torch

    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if nodes < 1:
        raise UserError("--nodes must be at least 1")
    if gpus is not None and procs is not None:
        raise UserError("--gpus and --procs are exclusive", None,
                        "--gpus N: N CUDA workers; --procs N: N CPU workers (gloo)")
    if ext is not None:
        if (gpus or 0) > 1 or (procs or 0) > 1 or nodes > 1:
            raise UserError(f"started by {ext.launcher}, which already made {ext.world_size} processes", None,
                            "leave out --gpus/--procs/--nodes (or pass --gpus 0 for CPU)")
        device = "cpu" if gpus == 0 or procs is not None or n_cuda == 0 else "cuda"
        if gpus == 1 and n_cuda == 0:
            raise UserError("--gpus 1 but no CUDA device is visible")
        return device, 0, ext.world_size
    if procs is not None:
        if procs < 1:
            raise UserError("--procs must be at least 1")
        return "cpu", procs, procs * nodes
    if gpus is None:
        gpus = n_cuda
    if gpus < 0:
        raise UserError("--gpus must be >= 0")
    if gpus > n_cuda:
        raise UserError(f"--gpus {gpus} but {n_cuda} CUDA device(s) are visible")
    if gpus == 0:
        if nodes > 1:
            raise UserError("multi-node CPU training needs --procs N")
        return "cpu", 1, 1
    return "cuda", gpus, gpus * nodes


def peek_config(path: Path) -> dict:
    """The config of a checkpoint, read lazily (mmap) without loading the tensors."""
    import torch

    from sslkit.io.checkpoint import CHECKPOINT_FORMAT

    try:
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same one-line error
        raise UserError(f"cannot read the checkpoint ({str(e).splitlines()[0][:120]})", path,
                        "pass --no-resume to start over") from e
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT or not isinstance(ck.get("config"), dict):
        raise UserError("not an sslkit training checkpoint", path, "pass --no-resume to start over")
    return dict(ck["config"])


def run_pretrain(images: Path | None, out: Path | None, flags: dict, config_file: Path | None, sets: list[str],
                 gpus: int | None, procs: int | None, nodes: int, node_rank: int | None, rdzv_endpoint: str | None,
                 resume: bool | None, print_config: bool, quiet: bool) -> dict | None:
    from sslkit.dist import detect_launcher
    from sslkit.engine import config as C
    from sslkit.engine.trainer import LAST, RunOptions
    from sslkit.io.artefacts import command_line
    from sslkit.methods import get_method

    file_layer = C.load_config_file(config_file) if config_file else {}
    set_layer = C.parse_set(sets)
    flag_layer = {k: v for k, v in flags.items() if v is not None}
    if images is not None:
        flag_layer["images"] = str(images)

    ck_cfg, resume_from, fresh = None, None, False
    if out is not None:
        last = out / LAST
        if resume is False:
            fresh = out.exists() and any((out / n).exists() for n in ("last.pth", "log.jsonl"))
        elif last.exists():
            ck_cfg, resume_from = peek_config(last), str(last)
            # per-invocation settings do not carry over: a stop point, and workers sized for that machine
            ck_cfg.update(max_steps=None, workers=None)
        elif resume:
            raise UserError("nothing to resume (no last.pth)", out, "leave out --resume to start a new run")
    elif not print_config:
        raise UserError("--out RUN_DIR is required")

    name = flag_layer.get("method") or set_layer.get("method") or file_layer.get("method") or \
        (ck_cfg or {}).get("method")
    if not name:
        raise UserError("which method? pass --method (see sslkit pretrain --list-methods)")
    method_cls = get_method(name)
    for layer in (file_layer, set_layer):  # the method is chosen; a lower layer's choice is overridden
        layer.pop("method", None)

    ext = detect_launcher()
    device, nproc, world = device_layout(gpus, procs, nodes, ext)
    layers = [(str(config_file), file_layer), ("--set", set_layer), ("command line", flag_layer)]
    cfg = C.resolve(method_cls, layers, base=ck_cfg)
    for key in ("images", "image_root", "masks", "views", "init_from"):  # absolute, before comparing
        if cfg.get(key):
            p = Path(cfg[key]).expanduser()
            if not p.exists():
                raise UserError("no such file or folder", p)
            cfg[key] = str(p.resolve())
    if ck_cfg is not None:
        changed = C.frozen_changes(method_cls, ck_cfg, cfg)
        if changed:
            diffs = ", ".join(f"{k}: {ck_cfg.get(k)!r} → {cfg.get(k)!r}" for k in changed)
            raise UserError(f"cannot change {diffs} when resuming", out / LAST,
                            "keep the original settings, or pass --no-resume / a new --out")
    cfg["device"], cfg["world_size"] = device, world
    if cfg["workers"] is None:
        cfg["workers"] = C.default_workers(ext.local_world_size if ext else nproc)
    if cfg["images"] is None and not print_config:
        raise UserError("no IMAGES given (a folder or a COCO json)")
    C.validate(cfg)
    method_cls.validate(cfg)
    if print_config:
        stdout.print(C.dump_yaml(cfg), markup=False, highlight=False, end="")
        return None

    if fresh and not quiet:
        from sslkit.cli.common import warn

        warn(f"--no-resume: removing the earlier run's checkpoints and logs in {out}")
    opts = RunOptions(run_dir=str(out), resume_from=resume_from, fresh=fresh, quiet=quiet, command=command_line())
    if ext is not None or nproc * nodes == 1:
        from sslkit.engine.trainer import train

        return train(cfg, opts)
    from sslkit.engine.launch import launch

    return launch(cfg, opts, nproc, nodes, node_rank, rdzv_endpoint)


def register(app: typer.Typer) -> None:
    @app.command("pretrain", help=HELP)
    def pretrain_cmd(
        images: Path | None = typer.Argument(None, help="Image folder or COCO json (optional when resuming)."),
        out: Path | None = typer.Option(None, "--out", "-o", help="Run directory (checkpoints, logs, config)."),
        method: str | None = typer.Option(None, "--method", "-m",
                                             help="byol, mocov2, simclr, … (see --list-methods)."),
        config: Path | None = typer.Option(None, "--config", "-c", help="YAML/TOML file of settings."),
        set_: list[str] = typer.Option([], "--set", help="KEY=VALUE for any setting (repeatable)."),
        image_root: Path | None = typer.Option(None, help="Image folder of a COCO json."),
        masks: Path | None = typer.Option(None, help="DetCon: label maps from `sslkit propose --algo "
                                          "felzenszwalb|grid|coco-gt`."),
        views: Path | None = typer.Option(None, help="ORL / UniVIP: the views artefact from `sslkit sample-views`."),
        arch: str | None = typer.Option(None, help="Backbone: resnet18/50/101/…, resnext*, wide_resnet*."),
        image_size: int | None = typer.Option(None, help="View size in px."),
        batch_size: int | None = typer.Option(None, help="GLOBAL batch size (split across ranks)."),
        epochs: int | None = typer.Option(None, help="Training epochs."),
        optimizer: str | None = typer.Option(None, help="sgd, lars or adamw."),
        lr: float | None = typer.Option(None, help="Base lr; peak lr = lr × batch/256 with linear scaling."),
        lr_scaling: str | None = typer.Option(None, help="linear (×B/256), sqrt (×√B) or none."),
        weight_decay: float | None = typer.Option(None, help="Weight decay."),
        warmup_epochs: float | None = typer.Option(None, help="Linear lr warm-up epochs."),
        temperature: float | None = typer.Option(None, help="Contrastive temperature (mocov2, simclr)."),
        queue_size: int | None = typer.Option(None, help="MoCo queue length K."),
        ema_momentum: float | None = typer.Option(None, help="EMA momentum: BYOL τ at step 0, MoCo m."),
        seed: int | None = typer.Option(None, help="Seed (init, data order, augmentations)."),
        gpus: int | None = typer.Option(None, help="CUDA workers on this node (default: all visible; 0: CPU)."),
        procs: int | None = typer.Option(None, help="CPU worker processes (gloo DDP)."),
        nodes: int = typer.Option(1, help="Number of nodes."),
        node_rank: int | None = typer.Option(None, help="This node's rank (static rendezvous)."),
        rdzv_endpoint: str | None = typer.Option(None, help="HOST:PORT of the rendezvous (multi-node)."),
        precision: str | None = typer.Option(None, help="auto, fp32, bf16 or fp16 (autocast; fp16 uses GradScaler)."),
        channels_last: bool | None = typer.Option(None, "--channels-last/--no-channels-last",
                                                     help="NHWC memory format."),
        compile_: bool | None = typer.Option(None, "--compile/--no-compile", help="torch.compile the backbones."),
        data_path: str | None = typer.Option(None, help="Where views are decoded and augmented: cpu (loader "
                                              "workers), gpu (batched on the training device; sslkit[gpu]) or pil."),
        sync_bn: bool | None = typer.Option(None, "--sync-bn/--no-sync-bn", help="SyncBatchNorm on multi-GPU."),
        workers: int | None = typer.Option(None, help="DataLoader workers per rank."),
        save_every: int | None = typer.Option(None, help="Write last.pth every N steps (0: epoch ends only)."),
        keep_last: int | None = typer.Option(None, help="Epoch checkpoints to keep (0: all)."),
        log_every: int | None = typer.Option(None, help="Log every N steps."),
        max_steps: int | None = typer.Option(None, help="Stop after N total steps (resumable; schedule unchanged)."),
        tensorboard: bool | None = typer.Option(None, "--tensorboard/--no-tensorboard", help="TensorBoard logs."),
        resume: bool | None = typer.Option(None, "--resume/--no-resume",
                                              help="Continue RUN_DIR/last.pth (default: if it exists) / start over."),
        print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config and exit."),
        list_methods: bool = typer.Option(False, "--list-methods", help="List the methods and their defaults."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
        as_json: bool = typer.Option(False, "--json", help="Print the final summary as JSON."),
    ):
        if list_methods:
            _list_methods()
            return
        values = dict(method=method, image_root=str(image_root) if image_root else None,
                      masks=str(masks) if masks else None, views=str(views) if views else None, arch=arch,
                      image_size=image_size, batch_size=batch_size, epochs=epochs, optimizer=optimizer, lr=lr,
                      lr_scaling=lr_scaling, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
                      temperature=temperature, queue_size=queue_size, ema_momentum=ema_momentum, seed=seed,
                      precision=precision, channels_last=channels_last, compile=compile_, data_path=data_path,
                      workers=workers, sync_bn=sync_bn, save_every=save_every, keep_last=keep_last,
                      log_every=log_every, max_steps=max_steps, tensorboard=tensorboard)
        summary = run_pretrain(images, out, values, config, set_, gpus, procs, nodes, node_rank, rdzv_endpoint,
                               resume, print_config, quiet)
        if summary is None:
            return
        if as_json:
            print_json(summary)
        elif not quiet:
            state = "finished" if summary["finished"] else "stopped"
            loss = f", loss {summary['loss']:.4f}" if "loss" in summary else ""
            stdout.print(f"{state} at step {summary['step']}/{summary['total_steps']}{loss} → {summary['checkpoint']}")
