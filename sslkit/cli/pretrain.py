"""``sslkit pretrain IMAGES --method M --out RUN_DIR``: self-supervised pretraining of a ResNet."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperCommand

from sslkit.cli.common import print_json, stdout

HELP = """Pretrain a ResNet with a self-supervised method on a folder of images or a COCO json.

Reads IMAGES (a folder, recursively, or a COCO json); writes RUN_DIR/config.yaml (the resolved
config), log.jsonl, tb/ (TensorBoard), last.pth and epoch_NNNN.pth checkpoints, and
skipped_images.tsv if some images cannot be decoded.

Settings: the method's defaults < --config FILE (YAML/TOML) < --set KEY=VALUE < flags.
Every setting of the chosen method is also a flag: --KEY VALUE (e.g. --masks fh.h5 for
DetCon, --views pairs.h5 for ORL/UniVIP, --temperature 0.2 --queue-size 4096 for MoCo v2);
DetCon's --masks and UniVIP's --views take any region file, boxes or label maps (docs/swap.md);
--print-config lists them. --batch-size is the GLOBAL batch; --lr is the base lr, scaled
×batch/256 (--lr-scaling). An existing RUN_DIR/last.pth is resumed automatically
(--no-resume starts over).

\b
Examples:
  sslkit pretrain coco/train2017 --method byol --out runs/byol
  sslkit pretrain imgs/ -m simclr -o runs/s --batch-size 512 --gpus 8 --precision bf16
  sslkit pretrain coco/train2017 -m byol -o runs/b --gpus 1 --data-path gpu --channels-last
  sslkit pretrain imgs/ -m mocov2 -o runs/m --procs 2 --arch resnet18 --image-size 96
  sslkit pretrain coco/train2017 -m mcl -o runs/mcl --gpus 8     # backbone + FPN + box head
  sslkit pretrain imagenet/train -m regioncl-m -o runs/rclm --gpus 8
  sslkit pretrain imgs/ -m regioncl-s -o runs/rcls --set regioncl_cells_max=4
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


class SettingsAsFlags(TyperCommand):
    """A command whose long options it does not declare are settings: ``--key VALUE`` / ``--key=VALUE``
    (``--flag`` alone: true, ``--no-flag``: false), collected in order into ``ctx.meta["settings"]`` before
    the declared options and arguments are parsed (so their values are never taken for arguments)."""

    def parse_args(self, ctx, args):
        known = {o for p in self.get_params(ctx) for o in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))}
        rest, settings, i = [], [], 0
        while i < len(args):
            a = args[i]
            name = a.split("=", 1)[0]
            if a == "--":
                rest += args[i:]
                break
            if a.startswith("--") and len(a) > 2 and name not in known:
                if "=" in a:
                    settings.append((name[2:], a.split("=", 1)[1]))
                elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                    settings.append((name[2:], args[i + 1]))
                    i += 1
                elif name.startswith("--no-"):
                    settings.append((name[5:], "false"))
                else:
                    settings.append((name[2:], "true"))
            else:
                rest.append(a)
            i += 1
        ctx.meta["settings"] = [(k.replace("-", "_"), v) for k, v in settings]
        return super().parse_args(ctx, rest)


def register(app: typer.Typer) -> None:
    @app.command("pretrain", help=HELP, cls=SettingsAsFlags)
    def pretrain_cmd(
        ctx: typer.Context,
        images: Path | None = typer.Argument(None, help="Image folder or COCO json (optional when resuming)."),
        out: Path | None = typer.Option(None, "--out", "-o", help="Run directory (checkpoints, logs, config)."),
        method: str | None = typer.Option(None, "--method", "-m",
                                             help="byol, mocov2, simclr, … (see --list-methods)."),
        config: Path | None = typer.Option(None, "--config", "-c", help="YAML/TOML file of settings."),
        set_: list[str] = typer.Option([], "--set", help="KEY=VALUE for any setting (repeatable)."),
        image_root: Path | None = typer.Option(None, help="Image folder of a COCO json."),
        arch: str | None = typer.Option(None, help="Backbone: resnet18/50/101/…, resnext*, wide_resnet*."),
        image_size: int | None = typer.Option(None, help="View size in px."),
        batch_size: int | None = typer.Option(None, help="GLOBAL batch size (split across ranks)."),
        epochs: int | None = typer.Option(None, help="Training epochs."),
        optimizer: str | None = typer.Option(None, help="sgd, lars or adamw."),
        lr: float | None = typer.Option(None, help="Base lr; peak lr = lr × batch/256 with linear scaling."),
        lr_scaling: str | None = typer.Option(None, help="linear (×B/256), sqrt (×√B) or none."),
        weight_decay: float | None = typer.Option(None, help="Weight decay."),
        warmup_epochs: float | None = typer.Option(None, help="Linear lr warm-up epochs."),
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
        values = dict(method=method, image_root=str(image_root) if image_root else None, arch=arch,
                      image_size=image_size, batch_size=batch_size, epochs=epochs, optimizer=optimizer, lr=lr,
                      lr_scaling=lr_scaling, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
                      ema_momentum=ema_momentum, seed=seed,
                      precision=precision, channels_last=channels_last, compile=compile_, data_path=data_path, workers=workers,
                      sync_bn=sync_bn, save_every=save_every, keep_last=keep_last, log_every=log_every,
                      max_steps=max_steps, tensorboard=tensorboard)
        from sslkit.config import load_config_file, parse_set
        from sslkit.engine import pretrain as P
        from sslkit.io.artefacts import command_line

        flags = {k: v for k, v in values.items() if v is not None}
        method_flags = dict(ctx.meta.get("settings", []))
        layers = [(str(config), load_config_file(config) if config else {}), ("--set", parse_set(set_)),
                  ("command line", {**method_flags, **flags})]
        summary = P.run(str(images) if images is not None else None, out, layers, gpus=gpus, procs=procs, nodes=nodes,
                        node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, resume=resume, print_config=print_config,
                        quiet=quiet, command=command_line())
        if summary is None:
            return
        if isinstance(summary, str):
            stdout.print(summary, markup=False, highlight=False, end="")
            return
        if as_json:
            print_json(summary)
        elif not quiet:
            state = "finished" if summary["finished"] else "stopped"
            loss = f", loss {summary['loss']:.4f}" if "loss" in summary else ""
            stdout.print(f"{state} at step {summary['step']}/{summary['total_steps']}{loss} → {summary['checkpoint']}")
