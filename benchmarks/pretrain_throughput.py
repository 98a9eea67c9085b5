"""BYOL training throughput: sslkit's engine vs a BYOL assembled from the `lightly` package.

Two measurements, both implementations in the same process and run, same backbone, heads
(d → 4096 → 256, predictor 256 → 4096 → 256), batch, image size, precision and optimizer
(SGD, momentum 0.9, weight decay 1e-4):

* ``step``: the training step alone on identical pre-made tensors (no data loading).
  sslkit: ``sslkit.engine.loop.train_step`` on ``sslkit.methods.BYOL`` (the code path
  ``sslkit pretrain`` runs). lightly: the BYOL of lightly's docs/examples
  (``BYOLProjectionHead``, ``BYOLPredictionHead``, ``NegativeCosineSimilarity``,
  ``update_momentum``, ``deactivate_requires_grad``, backbone = ResNet children[:-1]).
  The two alternate over ``--repeats`` rounds; the median is reported.
* ``e2e``: with data loading from JPEG files. sslkit: ``sslkit.engine.pretrain.train`` (the whole
  ``sslkit pretrain`` loop: dataset, views on each ``--data-paths`` path, sampler, logging, no
  checkpoints inside the timed window) with throughput from its log; lightly: ``LightlyDataset`` + ``BYOLTransform``
  (its BYOL view pipelines) + ``DataLoader`` + the loop above. Without ``--images`` a folder of
  640×480 JPEGs is generated from skimage's bundled photos.

Prints a markdown table and a JSON record (also written with ``--json PATH``).

\b
CPU (default):  python benchmarks/pretrain_throughput.py
GPU:            python benchmarks/pretrain_throughput.py --device cuda --arch resnet50 --image-size 224 \\
                    --precision bf16 --batch-size 128 --channels-last
Smoke test:     python benchmarks/pretrain_throughput.py --arch resnet_tiny --image-size 32 --batch-size 8 \\
                    --steps 2 --warmup 1 --repeats 1 --workers 0
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(device: str, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device, dtype=dtype) if dtype else contextlib.nullcontext()


# ------------------------------------------------------------------ the two implementations


class SslkitBYOL:
    """sslkit's BYOL driven by the engine's own step function."""

    name = "sslkit"

    def __init__(self, args):
        from sslkit.engine.config import resolve
        from sslkit.engine.loop import Amp
        from sslkit.engine.optim import build_optimizer
        from sslkit.methods import BYOL

        self.cfg = resolve(BYOL, [("benchmark", {
            "arch": args.arch, "image_size": args.image_size, "batch_size": args.batch_size,
            "proj_hidden_dim": args.hidden, "pred_hidden_dim": args.hidden, "precision": args.precision,
            "device": args.device})])
        self.model = BYOL(self.cfg).to(args.device)
        if args.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.opt = build_optimizer(self.model, "sgd", args.lr, 1e-4, 0.9)
        self.amp = Amp(args.precision, args.device)
        self.step_i = 0

    def step(self, x0, x1, total: int) -> None:
        from sslkit.engine.loop import train_step

        train_step(self.model, self.model, self.opt, self.amp, (x0, x1), self.opt.param_groups[0]["lr"],
                   self.step_i, total)
        self.step_i += 1


class LightlyBYOL(nn.Module):
    """The BYOL of lightly's documentation (examples/pytorch/byol.py), with the same optimizer as sslkit."""

    name = "lightly"

    def __init__(self, args):
        super().__init__()
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        from sslkit.models.backbones import build_backbone

        resnet = build_backbone(args.arch)  # the same torchvision ResNet as sslkit's
        feat = resnet.feat_dim
        self.backbone = nn.Sequential(*list(resnet.children())[:-1])
        self.projection_head = BYOLProjectionHead(feat, args.hidden, 256)
        self.prediction_head = BYOLPredictionHead(256, args.hidden, 256)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()
        self.to(args.device)
        if args.channels_last:
            self.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
        self.device, self.precision = args.device, args.precision
        self.scaler = torch.amp.GradScaler(args.device, enabled=args.precision == "fp16")
        self.step_i = 0

    def forward(self, x):
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    def forward_momentum(self, x):
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()

    def step(self, x0, x1, total: int) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(self.step_i, total, 0.99, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m=m)
        update_momentum(self.projection_head, self.projection_head_momentum, m=m)
        with autocast(self.device, self.precision):
            p0, z0 = self(x0), self.forward_momentum(x0)
            p1, z1 = self(x1), self.forward_momentum(x1)
            loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad()
        self.step_i += 1


# ------------------------------------------------------------------ step benchmark


def time_steps(impl, x0, x1, warmup: int, steps: int, device: str) -> float:
    """img/s (2 views per image) over ``steps`` steps after ``warmup`` untimed ones."""
    total = warmup + steps
    for _ in range(warmup):
        impl.step(x0, x1, total)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        impl.step(x0, x1, total)
    sync(device)
    return steps * x0.shape[0] / (time.perf_counter() - t0)


def bench_step(args) -> dict:
    g = torch.Generator().manual_seed(0)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    x0, x1 = (torch.randn(shape, generator=g).to(args.device) for _ in range(2))
    if args.channels_last:
        x0, x1 = (x.contiguous(memory_format=torch.channels_last) for x in (x0, x1))
    results = {"sslkit": [], "lightly": []}
    for r in range(args.repeats):
        order = (SslkitBYOL, LightlyBYOL) if r % 2 == 0 else (LightlyBYOL, SslkitBYOL)
        for cls in order:
            torch.manual_seed(0)
            impl = cls(args)
            results[cls.name].append(time_steps(impl, x0, x1, args.warmup, args.steps, args.device))
            del impl
            if args.device == "cuda":
                torch.cuda.empty_cache()
    return {k: {"img_per_s": statistics.median(v), "runs": v} for k, v in results.items()}


# ------------------------------------------------------------------ end-to-end benchmark


def make_images(folder: Path, n: int) -> Path:
    """``n`` 640×480 JPEGs cut from skimage's bundled photos (random crops, flips, rescales)."""
    import numpy as np
    from PIL import Image
    from skimage import data

    photos = [Image.fromarray(getattr(data, k)()).convert("RGB") for k in ("astronaut", "coffee", "chelsea")]
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = photos[i % 3]
        s = rng.uniform(1.3, 2.2)
        im = im.resize((int(im.width * s), int(im.height * s)))
        x, y = rng.integers(0, max(1, im.width - 640)), rng.integers(0, max(1, im.height - 480))
        im = im.crop((x, y, x + 640, y + 480))
        if i % 2:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        im.save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def e2e_sslkit(args, images: Path, work: Path, data_path: str = "cpu", method: str = "byol",
               extra: dict | None = None) -> float:
    """img/s of ``sslkit pretrain``'s loop (``train``) between the log of step ``warmup`` and the last
    step; with ``--images`` a COCO json, method settings (masks, views) come in ``extra``. The run's
    peak device memory is in ``LAST_PEAK_MEMORY_GB`` afterwards (CUDA)."""
    from sslkit.engine import config as C
    from sslkit.engine.pretrain import RunOptions, train
    from sslkit.methods import get_method

    cls = get_method(method)
    total = args.warmup + args.steps
    layer = {"images": str(images), "arch": args.arch, "image_size": args.image_size, "batch_size": args.batch_size,
             "proj_hidden_dim": args.hidden, "pred_hidden_dim": args.hidden, "precision": args.precision,
             "device": args.device, "channels_last": args.channels_last, "workers": args.workers,
             "data_path": data_path, "epochs": 1000, "warmup_epochs": 0.0, "max_steps": total, "log_every": 1,
             "save_every": 0, "tensorboard": False, "lr": args.lr * 256 / args.batch_size, "sync_bn": False,
             **(extra or {})}
    keys = C.method_keys(cls)
    cfg = C.resolve(cls, [("benchmark", {k: v for k, v in layer.items() if k in keys})])
    run_dir = work / f"sslkit_run_{method}_{data_path}"
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train(cfg, RunOptions(run_dir=str(run_dir), quiet=True, fresh=True, command="benchmark"))
    global LAST_PEAK_MEMORY_GB
    LAST_PEAK_MEMORY_GB = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
    logs = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    t0 = next(r["elapsed_s"] for r in logs if r["step"] == args.warmup)
    return args.steps * args.batch_size / (logs[-1]["elapsed_s"] - t0)


LAST_PEAK_MEMORY_GB: float | None = None


def image_folder(images: Path, work: Path) -> Path:
    """``images`` itself, or for a COCO json a folder of links to the files it lists (in its order)."""
    if images.is_dir():
        return images
    from sslkit.io.images import ImageSource

    folder = work / "lightly_images"
    if not folder.exists():
        folder.mkdir(parents=True)
        for i, rec in enumerate(ImageSource.from_arg(images)):
            (folder / f"{i:06d}{Path(rec.file_name).suffix}").symlink_to(Path(rec.path).resolve())
    return folder


def e2e_lightly(args, images: Path) -> float:
    from lightly.data import LightlyDataset
    from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform

    transform = BYOLTransform(view_1_transform=BYOLView1Transform(input_size=args.image_size),
                              view_2_transform=BYOLView2Transform(input_size=args.image_size))
    dataset = LightlyDataset(input_dir=str(image_folder(Path(images), Path(images).parent)), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=args.device == "cuda",
                                         persistent_workers=args.workers > 0)
    torch.manual_seed(0)
    impl = LightlyBYOL(args)
    total = args.warmup + args.steps
    done, t0 = 0, None
    while done < total:
        for (x0, x1), _, _ in loader:
            x0 = x0.to(args.device, non_blocking=True)
            x1 = x1.to(args.device, non_blocking=True)
            if args.channels_last:
                x0, x1 = (x.contiguous(memory_format=torch.channels_last) for x in (x0, x1))
            impl.step(x0, x1, total)
            done += 1
            if done == args.warmup:
                sync(args.device)
                t0 = time.perf_counter()
            if done == total:
                break
    sync(args.device)
    return args.steps * args.batch_size / (time.perf_counter() - t0)


def bench_e2e(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="sslkit-bench-") as tmp:
        work = Path(tmp)
        images = Path(args.images) if args.images else make_images(
            work / "images", min(1024, args.batch_size * (args.warmup + args.steps)))
        names = [f"sslkit {p}" for p in args.data_paths.split(",")] + ["lightly"]
        results: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.repeats):
            for name in (names if r % 2 == 0 else names[::-1]):
                results[name].append(e2e_lightly(args, images) if name == "lightly" else
                                     e2e_sslkit(args, images, work, name.split()[1]))
    return {k: {"img_per_s": statistics.median(v), "runs": v} for k, v in results.items()}


# ------------------------------------------------------------------ report


def environment(args) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine()}
    with contextlib.suppress(ImportError):
        import lightly

        env["lightly"] = lightly.__version__
    if args.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"BYOL throughput: {s['arch']} @ {s['image_size']} px, batch {s['batch_size']}, {s['device']}, "
             f"{s['precision']}{', channels_last' if s['channels_last'] else ''} (median of {s['repeats']})", "",
             "| mode | implementation | img/s | ms/step | sslkit / lightly |", "|---|---|---:|---:|---:|"]
    for mode, res in report["results"].items():
        base = res["lightly"]["img_per_s"]
        for impl in res:
            ips = res[impl]["img_per_s"]
            lines.append(f"| {mode} | {impl} | {ips:.1f} | {1000 * s['batch_size'] / ips:.1f} | {ips / base:.2f}× |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--hidden", type=int, default=4096, help="projector/predictor hidden width")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per run")
    p.add_argument("--repeats", type=int, default=3, help="runs per implementation (alternating)")
    p.add_argument("--modes", default="step,e2e", help="comma list of step, e2e")
    p.add_argument("--images", help="image folder for e2e (default: generated 640×480 JPEGs)")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers for e2e")
    p.add_argument("--data-paths", default="cpu", help="e2e: comma list of sslkit data paths (cpu, gpu, pil)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--json", dest="json_path", help="also write the JSON record here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            p.error("--device cuda but no CUDA device is visible")
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    try:
        import lightly  # noqa: F401
    except ImportError:
        p.error("needs the lightly package: pip install lightly")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = set(modes) - {"step", "e2e"}
    if bad:
        p.error(f"unknown mode(s) {sorted(bad)}")
    report = {"benchmark": "pretrain_throughput", "settings": {k: v for k, v in vars(args).items() if k != "json_path"},
              "environment": environment(args), "results": {}}
    if "step" in modes:
        report["results"]["step"] = bench_step(args)
    if "e2e" in modes:
        report["results"]["e2e"] = bench_e2e(args)
    print(markdown(report))
    print()
    print(json.dumps(report, indent=2))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
