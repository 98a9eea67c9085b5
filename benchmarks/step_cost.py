"""Training-step cost of every method relative to BYOL, on identical settings and real batches.

Each method's batch is made by its own data pipeline (`Method.make_dataset`: DetCon's
mask-tracked views, ORL's RoI pairs, UniVIP's scene pairs and instances) from the same images,
collated once, and then the training step (`sslkit.engine.loop.train_step`: forward, backward,
optimizer step, EMA update) is timed on that fixed batch, so data loading is excluded. Methods are
interleaved over `--repeats` rounds and the median step time is reported.

    python benchmarks/step_cost.py --images bench-data/train.json --masks fh.h5 --orl-views pairs.h5 \\
        --univip-views cands.h5 --arch resnet18 --image-size 96 --batch-size 32

Targets from the issues: DetCon-B ≤ 1.3× BYOL; UniVIP ≤ 1.5× BYOL (the paper reports about +35%).

``--regioncl`` adds RegionCL's three variants and their bases (MoCo v2, SimSiam, DenseCL) with each
variant's ratio to its base (the paper: about +50% for RegionCL-M, §5). At 224 px the boxes are the
paper's 3–5 cells; on smaller grids C_U = min(5, grid − 1), C_L = min(3, C_U):

    python benchmarks/step_cost.py --images bench-data/train.json --regioncl --arch resnet50 \
        --image-size 224 --batch-size 32

``--mcl`` adds MCL (issue 18: 172 montages per view per 128 images, expected about 1.3–1.5× BYOL;
its batch must be a multiple of 32), ``--mcl-set KEY=VALUE`` an MCL setting (e.g. head_windows=all
for the authors' head-on-every-window); ``benchmarks/mcl_cost.py`` says where MCL's time goes.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch


def build(method: str, args, extra: dict):
    from sslkit.engine import config as C
    from sslkit.engine.data import SkipAwareCollate
    from sslkit.engine.optim import build_optimizer
    from sslkit.io.images import ImageSource
    from sslkit.methods import get_method

    cls = get_method(method)
    keys = C.method_keys(cls)
    layer = {"arch": args.arch, "image_size": args.image_size, "batch_size": args.batch_size, **extra}
    layer = {k: v for k, v in layer.items() if k in keys}
    cfg = C.resolve(cls, [("bench", layer)])
    torch.manual_seed(0)
    model = cls(cfg).to(args.device)
    ds = cls.make_dataset(cfg, ImageSource.from_arg(args.images))
    items = [ds[(0, i % len(ds))] for i in range(args.batch_size)]
    batch, _ = SkipAwareCollate(cls.collate)(items)
    opt = build_optimizer(model, "sgd", 0.01, 1e-4)
    return model, opt, batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", required=True, help="image folder or COCO json")
    ap.add_argument("--masks", help="label maps for DetCon (sslkit propose --algo felzenszwalb)")
    ap.add_argument("--orl-views", help="ORL pairs (sslkit sample-views -m orl)")
    ap.add_argument("--univip-views", help="UniVIP candidates (sslkit sample-views -m univip)")
    ap.add_argument("--mcl", action="store_true", help="add MCL (needs a batch that is a multiple of 32)")
    ap.add_argument("--mcl-set", action="append", default=[], metavar="KEY=VALUE", help="an MCL setting (repeatable)")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--patch-size", type=int, default=0,
                    help="ORL patches / UniVIP instances (default: the papers' 96:224 ratio to --image-size, ≥ 32)")
    ap.add_argument("--regioncl", action="store_true",
                    help="add mocov2/regioncl-m, simsiam/regioncl-s, densecl/regioncl-d (ratio to the base)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", help="also write the JSON record here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from sslkit.engine.loop import Amp, to_device, train_step

    patch = args.patch_size or max(32, round(args.image_size * 96 / 224))
    methods = {"byol": {}}
    if args.masks:
        methods["detcon-b"] = {"masks": args.masks}
        methods["detcon-s"] = {"masks": args.masks}
    if args.orl_views:
        methods["orl"] = {"views": args.orl_views, "patch_size": patch}
    if args.univip_views:
        methods["univip"] = {"views": args.univip_views, "instance_size": patch}
    base_of = {}
    if args.regioncl:
        grid = args.image_size // 32
        cmax = min(5, grid - 1)
        cells = {"regioncl_cells_min": min(3, cmax), "regioncl_cells_max": cmax}
        for base, variant in (("mocov2", "regioncl-m"), ("simsiam", "regioncl-s"), ("densecl", "regioncl-d")):
            methods[base] = {}
            methods[variant] = cells
            base_of[variant] = base
    if args.mcl:
        from sslkit.config import parse_set

        methods["mcl"] = parse_set(args.mcl_set)
    dev = torch.device(args.device)
    amp = Amp(args.precision, args.device)
    built = {}
    for m, extra in methods.items():
        model, opt, batch = build(m, args, extra)
        built[m] = (model, opt, to_device(batch, dev, False))
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.repeats):
        for m, (model, opt, batch) in built.items():
            for s in range(args.warmup + args.steps):
                if s == args.warmup:
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    t = time.perf_counter()
                train_step(model, model, opt, amp, batch, 0.01, s, 100)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[m].append((time.perf_counter() - t) / args.steps)
    base = statistics.median(times["byol"])
    rows = [{"method": m, "step_s": round(statistics.median(t), 4), "ratio_vs_byol": round(statistics.median(t) / base, 3),
             "img_per_s": round(args.batch_size / statistics.median(t), 1)} for m, t in times.items()]
    for r in rows:
        if r["method"] in base_of:
            r["base"] = base_of[r["method"]]
            r["ratio_vs_base"] = round(statistics.median(times[r["method"]]) / statistics.median(times[r["base"]]), 3)
    record = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "args": vars(args), "rows": rows}
    print(f"| method | step (s) | × BYOL | img/s | × base |  ({args.arch} @ {args.image_size}px, patches/instances "
          f"{patch}px, batch {args.batch_size}, {args.device}, {args.precision})")
    print("|---|---|---|---|---|")
    for r in rows:
        vs = f"{r['ratio_vs_base']} ({r['base']})" if "base" in r else ""
        print(f"| {r['method']} | {r['step_s']} | {r['ratio_vs_byol']} | {r['img_per_s']} | {vs} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
