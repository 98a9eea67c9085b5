"""Where MCL's training step spends its time, beside BYOL's, on the same images and settings (issue 18).

Both methods' batches come from their own data pipelines (collated once, data loading excluded);
the whole step (`sslkit.engine.loop.train_step`: forward, backward, optimizer, EMA) is timed,
and forward hooks split the forward pass by network part: backbone (conv1 → layer4), FPN, box-head
convs, projector + predictors, online and target separately; "other" is the rest of the forward
(MCL: montage assembly, window cutting, the loss). Median over ``--repeats`` rounds of ``--steps``.

    python benchmarks/mcl_cost.py --images bench-data/train.json --arch resnet18 --image-size 224 \\
        --batch-size 32 --device cuda --precision bf16 --json mcl_cost.json

The paper's cost model: 172 montages per view per 128 images (1.34×) through backbone + FPN;
the FPN's 3×3 output convs (P2 alone: 56²·256²·9 MACs at 224 px, as much as a ResNet-18) come on
top. ``--mcl-set head_windows=all`` adds the authors' head on every window. ``--flops`` counts the
forward and backward FLOPs per network part instead (meta tensors: no images, no time, any arch):

    python benchmarks/mcl_cost.py --flops --arch resnet50 --image-size 224 --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_cost import build  # noqa: E402  (benchmarks/ is not a package)

PARTS = {"backbone": "backbone", "fpn": "FPN", "box_head": "box-head convs", "projector": "projector",
         "predictor": "predictor", "predictors": "predictor"}


class PartTimer:
    """Forward wall time per network part (synchronising the GPU at every boundary)."""

    def __init__(self, model, device: torch.device):
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)
        self.handles = []
        for attr, label in PARTS.items():
            for pre in ("", "target_"):
                mod = getattr(model, pre + attr, None)
                if mod is None:
                    continue
                name = f"{'target' if pre else 'online'} {label}"
                for m in (mod if isinstance(mod, torch.nn.ModuleList) else [mod]):  # MCL's per-level predictors
                    first, last = (m.conv1, m.layer4) if attr == "backbone" else (m, m)
                    self.handles.append(first.register_forward_pre_hook(self._start(name)))
                    self.handles.append(last.register_forward_hook(self._stop(name)))
        self._t: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _start(self, name):
        def hook(*_):
            self._sync()
            self._t[name] = time.perf_counter()
        return hook

    def _stop(self, name):
        def hook(*_):
            self._sync()
            self.totals[name] += time.perf_counter() - self._t.pop(name)
        return hook


def profile(method: str, model, opt, batch, amp, args, device) -> dict[str, float]:
    from sslkit.engine.loop import train_step

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    rounds = []
    for _ in range(args.repeats):
        for s in range(args.warmup):
            train_step(model, model, opt, amp, batch, 0.01, s, 100)
        timer = PartTimer(model, device)
        fwd = total = 0.0
        for s in range(args.steps):
            sync()
            t0 = time.perf_counter()
            with amp.autocast():
                out = model(batch)
            sync()
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            amp.scaler.scale(out["loss"]).backward()
            amp.scaler.step(opt)
            amp.scaler.update()
            model.on_after_step(s, 100)
            sync()
            fwd += t1 - t0
            total += time.perf_counter() - t0
        for h in timer.handles:
            h.remove()
        row = {k: v / args.steps for k, v in timer.totals.items()}
        row["other forward"] = fwd / args.steps - sum(row.values())
        row["backward + optimizer + EMA"] = (total - fwd) / args.steps
        row["step"] = total / args.steps
        rounds.append(row)
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def flops(args) -> None:
    """Forward FLOPs per top-level network part, and forward + backward totals, of one training step."""
    from torch.utils.flop_counter import FlopCounterMode

    from sslkit.config import parse_set
    from sslkit.engine import config as C
    from sslkit.methods import get_method

    table: dict[str, dict[str, float]] = {}
    totals = {}
    for method, extra in (("byol", {}), ("mcl", parse_set(args.mcl_set))):
        cls = get_method(method)
        cfg = C.resolve(cls, [("bench", {"arch": args.arch, "image_size": args.image_size,
                                         "batch_size": args.batch_size, **extra})])
        cfg["world_size"] = 1
        cls.validate(cfg)
        with torch.device("meta"):
            model = cls(cfg)
        b, size = args.batch_size, args.image_size
        batch = ((torch.empty(b, 3, size, size, device="meta"),) * 2 if method == "byol" else
                 (torch.empty(b, 2 * cfg["levels"], 3, size, size, device="meta"), 0))
        with FlopCounterMode(display=False) as fwd:
            out = model(batch)
        with FlopCounterMode(display=False) as bwd:
            out["loss"].backward()
        counts = {k: sum(v.values()) for k, v in fwd.get_flop_counts().items()}
        root = type(model).__name__
        for name in dict(model.named_children()):
            key = f"{root}.{name}"
            value = counts.get(key)
            if value is None:  # called through its children (the backbones: stage_features)
                value = sum(v for k, v in counts.items() if k.startswith(key + ".") and k.count(".") == 2)
            if value:
                part = ("target " if name.startswith("target_") else "online ") + PARTS.get(
                    name.removeprefix("target_"), name)
                table.setdefault(part, {})[method] = table.get(part, {}).get(method, 0.0) + value
        totals[method] = (counts.get("Global", 0), sum(sum(v.values()) for k, v in bwd.get_flop_counts().items()
                                                        if k == "Global"))
    print(f"| forward part (GFLOP per step) | BYOL | MCL |  ({args.arch} @ {args.image_size}px, batch {args.batch_size}, "
          f"MCL settings {args.mcl_set or 'default'})")
    print("|---|---|---|")
    for part in sorted(table, key=lambda k: (k.startswith("target"), k)):
        print(f"| {part} | " + " | ".join(f"{table[part].get(m, 0) / 1e9:.1f}" for m in ("byol", "mcl")) + " |")
    for i, what in enumerate(("forward", "backward")):
        print(f"| **{what} total** | " + " | ".join(f"{totals[m][i] / 1e9:.0f}" for m in ("byol", "mcl")) + " |")
    step = {m: sum(v) for m, v in totals.items()}
    print(f"\nMCL / BYOL FLOPs per step (forward + backward): {step['mcl'] / step['byol']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", help="image folder or COCO json")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--mcl-set", action="append", default=[], metavar="KEY=VALUE", help="an MCL setting (repeatable)")
    ap.add_argument("--json", help="also write the JSON record here")
    ap.add_argument("--flops", action="store_true", help="count FLOPs per part instead of timing (no --images needed)")
    args = ap.parse_args()
    if args.flops:
        flops(args)
        return
    if not args.images:
        ap.error("--images is required (except with --flops)")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.patch_size = 0

    from sslkit.config import parse_set
    from sslkit.engine.loop import Amp, to_device

    device = torch.device(args.device)
    amp = Amp(args.precision, args.device)
    rows = {}
    for method, extra in (("byol", {}), ("mcl", parse_set(args.mcl_set))):
        model, opt, batch = build(method, args, extra)
        rows[method] = profile(method, model, opt, to_device(batch, device, False), amp, args, device)
        del model, opt, batch
    parts = sorted({k for r in rows.values() for k in r} - {"step"}, key=lambda k: (k.startswith("target"), k))
    print(f"| part (ms per step) | BYOL | MCL |  ({args.arch} @ {args.image_size}px, batch {args.batch_size}, "
          f"{args.device}, {args.precision}; MCL settings {args.mcl_set or 'default'})")
    print("|---|---|---|")
    for k in [*parts, "step"]:
        cells = [f"{1000 * rows[m][k]:.1f}" if k in rows[m] else "–" for m in ("byol", "mcl")]
        print(f"| {'**step**' if k == 'step' else k} | " + " | ".join(cells) + " |")
    ratio = rows["mcl"]["step"] / rows["byol"]["step"]
    print(f"\nMCL / BYOL step time: {ratio:.2f}x")
    if args.json:
        record = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                  "args": vars(args), "ms": {m: {k: round(1000 * v, 3) for k, v in r.items()} for m, r in rows.items()},
                  "ratio_mcl_vs_byol": round(ratio, 3)}
        Path(args.json).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
