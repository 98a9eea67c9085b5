"""UniVIP's training-step cost relative to BYOL at the same backbone, heads, batch and image size.

The paper (§4.2) says UniVIP "requires about 35% [more] computation than BYOL": each image adds K
instance crops of 96² px to the two 224² scene views, one online and one target pass each, i.e.
``(2·224² + K·96²) / (2·224²) = 1.37`` in backbone pixels for K = 4 (spec §2.3). This measures the
wall-clock ratio of one optimizer step — ``sslkit.engine.loop.train_step``, the code path
``sslkit pretrain`` runs: forward (scenes, instances, f_linear, Sinkhorn), backward, SGD, EMA —
on identical in-memory batches (no data loading: the views are random tensors of the right shapes,
which costs the network exactly what real views do). The two methods alternate over ``--repeats``
rounds; medians are reported. Target: ratio ≤ 1.5.

Prints a markdown table and a JSON record (also written with ``--json PATH``).

\b
CPU smoke test:  python benchmarks/univip.py --arch resnet_tiny --image-size 64 --instance-size 32 \\
                     --batch-size 8 --hidden 64 --steps 2 --warmup 1 --repeats 1
GPU (paper's R-50 setting, per-GPU batch 64 of ORL's 8×64):
                 python benchmarks/univip.py --device cuda --precision bf16 --batch-size 64 --channels-last
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def build(method: str, args):
    """(model, optimizer, amp) of ``method`` with the benchmark's shared settings."""
    from sslkit.engine.config import resolve
    from sslkit.engine.loop import Amp
    from sslkit.engine.optim import build_optimizer
    from sslkit.methods import get_method

    cls = get_method(method)
    layer = {"arch": args.arch, "image_size": args.image_size, "batch_size": args.batch_size,
             "proj_hidden_dim": args.hidden, "pred_hidden_dim": args.hidden, "precision": args.precision,
             "device": args.device}
    if method == "univip":
        layer.update(num_instances=args.num_instances, instance_size=args.instance_size)
    cfg = resolve(cls, [("benchmark", layer)])
    torch.manual_seed(0)
    model = cls(cfg).to(args.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, build_optimizer(model, "sgd", args.lr, 1e-4, 0.9), Amp(args.precision, args.device)


def batches(args) -> dict:
    """Identical in-memory inputs: the scene views both methods see, plus UniVIP's instances."""
    g = torch.Generator().manual_seed(0)
    b, k, s, i = args.batch_size, args.num_instances, args.image_size, args.instance_size
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format

    def rand(*shape):
        x = torch.randn(shape, generator=g).to(args.device)
        return x.contiguous(memory_format=fmt) if x.ndim == 4 else x

    v1, v2 = rand(b, 3, s, s), rand(b, 3, s, s)
    stats = torch.tensor([float(k), 0.0, 0.0, 0.0], device=args.device).repeat(b, 1)
    return {"byol": (v1, v2), "univip": (v1, v2, rand(b, k, 3, i, i), rand(b, k, 3, i, i), stats)}


def time_steps(method: str, batch, args) -> float:
    """Median seconds per training step over ``--steps`` steps after ``--warmup`` untimed ones."""
    from sslkit.engine.loop import train_step

    model, opt, amp = build(method, args)
    total = args.warmup + args.steps
    times = []
    for step in range(total):
        sync(args.device)
        t0 = time.perf_counter()
        train_step(model, model, opt, amp, batch, args.lr, step, total)
        sync(args.device)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    del model, opt
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return statistics.median(times)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--instance-size", type=int, default=96)
    p.add_argument("--num-instances", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32, help="per-process batch")
    p.add_argument("--hidden", type=int, default=4096, help="projector/predictor hidden width")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON record here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True

    inputs = batches(args)
    runs = {"byol": [], "univip": []}
    for r in range(args.repeats):
        for method in (("byol", "univip") if r % 2 == 0 else ("univip", "byol")):
            runs[method].append(time_steps(method, inputs[method], args))
    byol, univip = statistics.median(runs["byol"]), statistics.median(runs["univip"])
    pixels = 1 + args.num_instances * args.instance_size**2 / (2 * args.image_size**2)
    record = {
        "benchmark": "univip_vs_byol_step", "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "byol_s_per_step": byol, "univip_s_per_step": univip, "ratio": univip / byol,
        "pixel_ratio": pixels, "paper_ratio": 1.35, "target_ratio": 1.5,
        "runs": runs,
    }
    print(f"| method | s/step | img/s | vs BYOL |\n|---|---|---|---|\n"
          f"| BYOL | {byol:.4f} | {args.batch_size / byol:.1f} | 1.00 |\n"
          f"| UniVIP (K={args.num_instances}) | {univip:.4f} | {args.batch_size / univip:.1f} | {univip / byol:.2f} |\n"
          f"\nbackbone-pixel ratio {pixels:.3f}; paper ≈ 1.35; target ≤ 1.5")
    print(json.dumps(record))
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
