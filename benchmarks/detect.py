"""Detection transfer benchmark at CPU scale: Mask R-CNN R-FPN fine-tuned from random init and from
any number of weight files, all with the same schedule, on the offline demo/bench scenes.

What it runs, for each of ``random`` (``--arch``, default resnet18) and every ``--weights NAME=PATH``::

    sslkit detect WEIGHTS --train DATA/train.json --val DATA/val.json --out OUT/NAME \\
        --schedule 1x --min-size 256 --max-size 427 --batch-size 4 --json

i.e. the R50-FPN 1× protocol of docs/detect.md scaled down: a smaller backbone (resnet18 unless the
weight files hold another), images at short side ≤ 256 (test 256, train 205–256), batch 4 with
the lr scaled linearly, and 1× = the same 12.17 epochs as COCO 1× (≈ 584 iterations on the 192
training scenes of the bench preset).  Runs resume when repeated (``OUT/NAME/last.pth``).

Prints a markdown table (box and mask AP, AP50, AP75) and writes the JSON of every run
(``--json FILE``, default ``OUT/detect_benchmark.json``).

Examples::

    python benchmarks/detect.py --weights byol=runs/byol/last.pth --weights orl=runs/orl/last.pth
    python benchmarks/detect.py --data demo --n 12 --iters 2 --size 96 --out /tmp/bench  # smoke test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

METRIC_COLUMNS = (("bbox", "AP"), ("bbox", "AP50"), ("bbox", "AP75"), ("segm", "AP"), ("segm", "AP50"), ("segm", "AP75"))


def sslkit(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sslkit", *args]
    return subprocess.run(cmd, check=False, text=True, stdout=subprocess.PIPE if capture else None)


def parse_weights(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--weights {item!r}: expected NAME=PATH")
        if not Path(path).is_file():
            raise SystemExit(f"--weights {item!r}: no such file {path}")
        if name == "random" or name in {n for n, _ in out}:
            raise SystemExit(f"--weights {item!r}: the name {name!r} is taken")
        out.append((name, path))
    return out


def markdown(rows: list[dict], settings: str) -> str:
    head = "| weights | arch | AP^bb | AP^bb_50 | AP^bb_75 | AP^mk | AP^mk_50 | AP^mk_75 | iters | time (min) |"
    lines = [f"Mask R-CNN R-FPN, {settings}", "", head, "|" + "---|" * 10]
    for r in rows:
        m = r["metrics"]
        cells = []
        for iou, key in METRIC_COLUMNS:
            v = (m.get(iou) or {}).get(key)
            cells.append("–" if v is None else f"{v:.1f}")
        lines.append(f"| {r['name']} | {m['weights']['arch']} | " + " | ".join(cells)
                     + f" | {m['schedule']['iters']} | {r['minutes']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", action="append", default=[], metavar="NAME=PATH",
                    help="weight file to compare (checkpoint, export .pth or .pkl); repeatable")
    ap.add_argument("--data", type=Path, default=Path("bench"),
                    help="COCO scene folder (train.json, val.json); built with 'sslkit demo-data' if missing")
    ap.add_argument("--preset", default="bench", help="demo-data preset when building --data (bench: 240 scenes)")
    ap.add_argument("--n", type=int, default=None, help="demo-data scenes when building --data (default: the preset's)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_detect"), help="run folders go here")
    ap.add_argument("--arch", default="resnet18", help="backbone of the random-init baseline")
    ap.add_argument("--size", type=int, default=256, help="test short side (training: 0.8–1×); long side ×1333/800")
    ap.add_argument("--schedule", default="1x")
    ap.add_argument("--iters", type=int, default=None, help="override the schedule's length (smoke tests)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--fpn-channels", type=int, default=256)
    ap.add_argument("--precise-bn-iters", type=int, default=None, help="Precise-BN batches (default: sslkit detect's)")
    ap.add_argument("--val", type=Path, default=None, help="evaluation COCO json (default: DATA/val.json)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write all runs' metrics here (default: OUT/detect_benchmark.json)")
    args = ap.parse_args(argv)

    weights = parse_weights(args.weights)
    if not (args.data / "train.json").is_file():
        build = ["demo-data", str(args.data), "--preset", args.preset, "--quiet"]
        if args.n is not None:
            build += ["--n", str(args.n)]
        if sslkit(*build).returncode:
            return 1
    common = ["--train", str(args.data / "train.json"), "--val", str(args.val or args.data / "val.json"),
              "--schedule", args.schedule, "--min-size", str(args.size), "--max-size", str(round(args.size * 1333 / 800)),
              "--batch-size", str(args.batch_size), "--fpn-channels", str(args.fpn_channels), "--device", args.device,
              "--seed", str(args.seed), "--json", "--no-tensorboard"]
    if args.iters is not None:
        common += ["--iters", str(args.iters)]
    if args.precise_bn_iters is not None:
        common += ["--precise-bn-iters", str(args.precise_bn_iters)]
    if args.workers is not None:
        common += ["--workers", str(args.workers)]
    rows = []
    for name, w in [("random", "random"), *weights]:
        extra = ["--arch", args.arch] if w == "random" else []
        sys.stderr.write(f"== {name}: sslkit detect {w} ...\n")
        t0 = time.monotonic()
        res = sslkit("detect", w, "--out", str(args.out / name), *extra, *common, capture=True)
        if res.returncode:
            sys.stderr.write(f"== {name}: failed (exit {res.returncode})\n")
            return res.returncode
        rows.append({"name": name, "weights": w, "minutes": (time.monotonic() - t0) / 60, "metrics": json.loads(res.stdout)})
    length = f"--iters {args.iters}" if args.iters is not None else f"schedule {args.schedule}"
    settings = (f"{length} ({rows[0]['metrics']['schedule']['iters']} it × {args.batch_size} images, "
                f"{rows[0]['metrics']['schedule']['epochs']} epochs), short side {args.size}, "
                f"{rows[0]['metrics']['train']['num_images_used']} train / {rows[0]['metrics']['val']['num_images']} val "
                f"scenes ({args.data})")
    table = markdown(rows, settings)
    print(table)
    out_json = args.json or args.out / "detect_benchmark.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({"settings": vars(args) | {"data": str(args.data), "out": str(args.out),
                                                              "json": str(out_json)},
                                    "table": table, "runs": rows}, indent=2, default=str) + "\n")
    sys.stderr.write(f"== metrics of every run → {out_json}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
