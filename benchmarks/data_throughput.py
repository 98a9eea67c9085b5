"""Data-path throughput per CPU core: decode + BYOL's two views of COCO-sized JPEGs, in one process.

Rows (all in the same run, interleaved over ``--repeats`` rounds, median reported; torch and OpenCV
on one thread, so img/s is per core, what one DataLoader worker delivers):

* ``lightly``: ``PIL.Image.open(...).convert("RGB")`` + lightly's ``BYOLTransform`` (its BYOL view
  pipelines, torchvision + PIL), what a ``LightlyDataset`` item costs;
* ``sslkit pil``: ``data_path: pil``, the reference torchvision-v2 / PIL pipelines (``ImageDataset``);
* ``sslkit cpu``: ``data_path: cpu`` (the default): header → draws → one reduced-size decode →
  OpenCV views; the normalisation, done on the training device in training, is included here;
* ``sslkit gpu (worker)``: what a ``data_path: gpu`` worker does per image (read bytes and header, draw).

With ``--device cuda`` (or cpu) it also times the gpu path's device side: batches of
``--batch-size`` decoded (nvJPEG) and augmented by ``DeviceViews``, in img/s.

Images: ``--images FOLDER``, else ``--n`` JPEGs of 480–640 px (COCO's sizes) cut from the photos
bundled in scikit-image (quality 90). Prints a markdown table and a JSON record (``--json PATH``).

    python benchmarks/data_throughput.py                          # CPU rows
    python benchmarks/data_throughput.py --device cuda --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def make_images(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` JPEGs with sides in 480–640 (landscape and portrait), random crops of skimage's photos."""
    import numpy as np
    from PIL import Image
    from skimage import data

    photos = [Image.fromarray(getattr(data, k)()).convert("RGB") for k in ("astronaut", "coffee", "chelsea", "rocket")]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = photos[i % len(photos)]
        w, h = int(rng.integers(480, 641)), int(rng.integers(480, 641))
        s = max(w / im.width, h / im.height) * rng.uniform(1.0, 1.6)
        im = im.resize((int(im.width * s) + 1, int(im.height * s) + 1), Image.Resampling.BILINEAR)
        x, y = int(rng.integers(0, im.width - w + 1)), int(rng.integers(0, im.height - h + 1))
        im.crop((x, y, x + w, y + h)).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def _byol_cfg(images: Path, size: int, path: str) -> dict:
    from sslkit.engine.config import resolve
    from sslkit.methods import BYOL

    return resolve(BYOL, [("benchmark", {"images": str(images), "image_size": size, "data_path": path})])


def per_core(images: Path, size: int, repeats: int) -> dict:
    import cv2
    from PIL import Image

    from sslkit.engine.feed import make_feed
    from sslkit.io.images import ImageSource
    from sslkit.methods import BYOL
    from sslkit.transforms.render_cpu import normalize

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    src = ImageSource.from_folder(images)
    files = [r.path for r in src]
    try:
        from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform

        lightly = BYOLTransform(view_1_transform=BYOLView1Transform(input_size=size),
                                view_2_transform=BYOLView2Transform(input_size=size))
    except ImportError:
        lightly = None
    feeds = {p: make_feed(BYOL, _byol_cfg(images, size, p), src, torch.device("cpu")) for p in ("pil", "cpu", "gpu")}
    slots = feeds["cpu"].dataset.slots

    def run_lightly():
        for f in files:
            with Image.open(f) as im:
                lightly(im.convert("RGB"))

    def run(path):
        ds = feeds[path].dataset

        def go():
            for i in range(len(ds)):
                sample, _ = ds[(0, i)]
                if path == "cpu":
                    for v, aug in zip(sample[0], slots, strict=True):
                        normalize(v, aug)
        return go

    rows = {"lightly": run_lightly, "sslkit pil": run("pil"), "sslkit cpu": run("cpu"), "sslkit gpu (worker)": run("gpu")}
    if lightly is None:  # reported without the comparison
        del rows["lightly"]
    times: dict[str, list[float]] = {k: [] for k in rows}
    for fn in rows.values():  # warm caches (page cache, lazy imports)
        fn()
    for r in range(repeats):
        for name in (list(rows) if r % 2 == 0 else list(rows)[::-1]):
            t = time.perf_counter()
            rows[name]()
            times[name].append(len(files) / (time.perf_counter() - t))
    base = statistics.median(times["lightly"]) if "lightly" in times else None
    return {k: {"img_per_s_per_core": statistics.median(v), "vs_lightly": statistics.median(v) / base if base else None,
                "runs": v} for k, v in times.items()}


def device_side(images: Path, size: int, batch: int, device: str, repeats: int) -> dict:
    """img/s of the gpu path's main-process side (decode + views of ready loader batches)."""
    from sslkit.engine.feed import make_feed
    from sslkit.io.images import ImageSource
    from sslkit.methods import BYOL

    src = ImageSource.from_folder(images)
    dev = torch.device(device)
    feed = make_feed(BYOL, _byol_cfg(images, size, "gpu"), src, dev)
    n = min(batch, len(src))
    raw = feed.collate([feed.dataset[(0, i % len(src))] for i in range(n)])
    if dev.type == "cuda":
        raw = (raw[0].pin_memory(), raw[1])
    feed.finish(raw[0])  # warm-up (nvJPEG handles, cudnn, kernels)
    runs = []
    for _ in range(max(1, repeats)):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out, _ = feed.finish(raw[0])
        if dev.type == "cuda":
            torch.cuda.synchronize()
        runs.append(n / (time.perf_counter() - t))
    return {"device": device, "batch": n, "img_per_s": statistics.median(runs), "runs": runs,
            "views": [list(v.shape) for v in out]}


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"Decode + two BYOL views of {s['n']} JPEGs (480–640 px) at {s['image_size']} px, one core "
             f"(median of {s['repeats']})", "", "| pipeline | img/s per core | × lightly |", "|---|---:|---:|"]
    for name, r in report["per_core"].items():
        vs = f"{r['vs_lightly']:.2f}×" if r["vs_lightly"] else "–"
        lines.append(f"| {name} | {r['img_per_s_per_core']:.1f} | {vs} |")
    if report.get("device_side"):
        d = report["device_side"]
        lines += ["", f"gpu path, device side ({d['device']}, batches of {d['batch']}): {d['img_per_s']:.0f} img/s"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", help="folder of JPEGs (default: generated, 480-640 px)")
    p.add_argument("--n", type=int, default=64, help="generated images")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", help="also time the gpu path's device side on this device (cuda or cpu)")
    p.add_argument("--batch-size", type=int, default=256, help="device-side batch")
    p.add_argument("--json", dest="json_path")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sslkit-data-bench-") as tmp:
        images = Path(args.images) if args.images else make_images(Path(tmp) / "images", args.n)
        n = len(list(images.glob("*.jpg")))
        report = {"benchmark": "data_throughput",
                  "settings": {"n": n, "image_size": args.image_size, "repeats": args.repeats},
                  "environment": {"python": platform.python_version(), "torch": torch.__version__,
                                  "cpu": platform.processor() or platform.machine()},
                  "per_core": per_core(images, args.image_size, args.repeats)}
        if args.device:
            report["device_side"] = device_side(images, args.image_size, args.batch_size, args.device, args.repeats)
    print(markdown(report))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
