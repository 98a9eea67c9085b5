"""Benchmark of `sslkit propose` against the naive selective-search loop of the reference code.

Measures, in one run on a COCO-format scene set with GT boxes
(``sslkit demo-data bench --preset bench`` makes one):

* (a) naive: one process, ``cv2.imread`` + OpenCV selective search (fast) at full resolution per
  image, as ORL's ``selective_search.py`` does (OpenCV's default threading);
* (b) ``sslkit propose`` with ``--workers`` (default 2) and its default settings, as a subprocess,
  wall clock including start-up and writing the file;
* recall of the GT boxes at IoU >= 0.5 for both, raw boxes and ORL-filtered boxes;
* FH and grid images/s on one core (``--workers 1``) on the images rescaled to 640 px;
* optionally (``--sweep``) ``sslkit propose`` at other ``--max-side`` values, to re-check the default.

Prints a markdown table with the targets and writes everything as JSON (``--out``).

    python benchmarks/propose.py bench/annotations.json --out propose_bench.json
    python benchmarks/propose.py bench/annotations.json --limit 10      # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sslkit.io.artefacts import Artefact
from sslkit.io.coco import annotations_by_image, coco_boxes_xyxy, load_coco
from sslkit.io.images import ImageSource
from sslkit.ops.boxes import box_iou, xywh_to_xyxy
from sslkit.proposals.filters import orl_filter

TARGET_SPEEDUP = 1.8  # (b) images/s over (a)'s
TARGET_RECALL_DROP = 0.02  # (b) recall@0.5 at most 2 points below (a)'s
TARGET_MASK_RATE = 20.0  # FH and grid images/s per core at 640 px


def sslkit_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("sslkit")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "sslkit"]


def run_propose(args: list[str]) -> tuple[float, dict]:
    """Run ``sslkit propose ARGS --json -q``: (wall seconds, its JSON summary)."""
    t = time.perf_counter()
    p = subprocess.run(sslkit_cmd() + ["propose", *args, "--json", "-q", "--overwrite"], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"sslkit propose failed ({p.returncode}): {p.stderr.strip()}")
    return wall, json.loads(p.stdout)


def recall(gt: dict[str, np.ndarray], boxes: dict[str, np.ndarray], thr: float = 0.5) -> float:
    """Fraction of all GT boxes covered by some box with IoU >= thr."""
    hit = total = 0
    for name, g in gt.items():
        total += len(g)
        b = boxes.get(name)
        if len(g) and b is not None and len(b):
            hit += int((box_iou(g, b).max(1) >= thr).sum())
    return hit / total if total else float("nan")


def naive_loop(records) -> tuple[float, dict, dict]:
    """(a): the reference loop; returns (images/s, raw boxes, filtered boxes) by file name."""
    import cv2

    raw, filt = {}, {}
    t = time.perf_counter()
    for r in records:
        img = cv2.imread(str(r.path))
        ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        ss.setBaseImage(img)
        ss.switchToSelectiveSearchFast()
        b = xywh_to_xyxy(ss.process())
        raw[r.file_name] = b
        filt[r.file_name] = b[orl_filter(b)]
    return len(records) / (time.perf_counter() - t), raw, filt


def read_boxes(path: Path) -> tuple[dict, dict]:
    with Artefact(path, "sslkit.proposals") as a:
        return ({n: a.ragged("boxes", i) for i, n in enumerate(a.file_name)},
                {n: a.ragged("boxes_filtered", i) for i, n in enumerate(a.file_name)})


def box_stats(boxes: dict) -> float:
    return float(np.mean([len(b) for b in boxes.values()])) if boxes else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="COCO json with GT boxes (e.g. bench/annotations.json)")
    ap.add_argument("--image-root", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images (smoke runs)")
    ap.add_argument("--workers", type=int, default=2, help="workers of run (b) [2]")
    ap.add_argument("--sweep", default="", help="extra --max-side values for (b), e.g. 0,512,384")
    ap.add_argument("--skip-naive", action="store_true", help="skip (a) (e.g. while sweeping)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args()

    import cv2
    from PIL import Image

    from sslkit.proposals.algorithms import SS_DEFAULT_MAX_SIDE

    source = ImageSource.from_arg(args.data, args.image_root)
    coco = load_coco(args.data)
    images = coco["images"][: args.limit] if args.limit else coco["images"]
    records = [source.by_id(int(im["id"])) for im in images]
    by_image = annotations_by_image(coco)
    gt = {r.file_name: coco_boxes_xyxy(by_image.get(r.image_id, [])) for r in records}
    result: dict = {"data": str(args.data), "num_images": len(records), "num_gt_boxes": int(sum(map(len, gt.values()))),
                    "cpu_count": os.cpu_count(), "opencv": cv2.__version__, "workers": args.workers, "runs": {}}

    with tempfile.TemporaryDirectory(prefix="sslkit_bench_") as tmp:
        tmp = Path(tmp)
        subset = tmp / "subset.json"
        ids = {im["id"] for im in images}
        subset.write_text(json.dumps({**coco, "images": images,
                                      "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}))
        common = [str(subset), "--image-root", str(source.root)]

        if not args.skip_naive:
            print(f"(a) naive loop over {len(records)} images …", file=sys.stderr, flush=True)
            rate, raw, filt = naive_loop(records)
            result["runs"]["naive"] = {"images_per_s": rate, "recall_raw": recall(gt, raw),
                                       "recall_filtered": recall(gt, filt), "boxes_per_image": box_stats(raw),
                                       "filtered_per_image": box_stats(filt)}

        sides = [None] + [int(s) for s in args.sweep.split(",") if s.strip()]
        for side in sides:
            key = "sslkit" if side is None else f"sslkit_max_side_{side}"
            print(f"(b) {key} with {args.workers} workers …", file=sys.stderr, flush=True)
            out = tmp / f"{key}.h5"
            extra = [] if side is None else ["--max-side", str(side)]
            wall, summary = run_propose([*common, "-o", str(out), "--workers", str(args.workers), *extra])
            raw, filt = read_boxes(out)
            result["runs"][key] = {"max_side": SS_DEFAULT_MAX_SIDE if side is None else side,
                                   "images_per_s": len(records) / wall, "images_per_s_loop": summary["images_per_s"],
                                   "wall_s": wall, "recall_raw": recall(gt, raw), "recall_filtered": recall(gt, filt),
                                   "boxes_per_image": box_stats(raw), "filtered_per_image": box_stats(filt)}

        print("FH / grid on 1 core at 640 px …", file=sys.stderr, flush=True)
        at640 = tmp / "at640"
        at640.mkdir()
        for r in records:
            im = Image.open(r.path).convert("RGB")
            s = 640 / max(im.size)
            im.resize((round(im.size[0] * s), round(im.size[1] * s)), Image.Resampling.LANCZOS).save(
                at640 / Path(r.file_name).with_suffix(".jpg").name, quality=92)
        for algo in ("felzenszwalb", "grid"):
            wall, summary = run_propose([str(at640), "-o", str(tmp / f"{algo}.h5"), "--algo", algo, "--workers", "1"])
            result["runs"][algo] = {"images_per_s_per_core": summary["images_per_s"], "wall_s": wall,
                                    "images_per_s_wall": len(records) / wall}
        from skimage.segmentation import felzenszwalb as sk_fh

        sample = sorted(at640.iterdir())[:10]
        arrs = [np.asarray(Image.open(p).convert("RGB")) for p in sample]
        t = time.perf_counter()
        for a in arrs:
            sk_fh(a, scale=1000, sigma=0.8, min_size=1000)
        result["runs"]["skimage_fh_reference"] = {"images_per_s_per_core": len(arrs) / (time.perf_counter() - t)}

    report(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)


def report(res: dict) -> None:
    runs = res["runs"]
    naive = runs.get("naive")
    print(f"\n{res['num_images']} images, {res['num_gt_boxes']} GT boxes, {res['cpu_count']} CPUs, OpenCV {res['opencv']}\n")
    print("| run | images/s | vs naive | recall@0.5 raw | recall@0.5 filtered | boxes/img | filtered/img |")
    print("|---|---|---|---|---|---|---|")
    for key, r in runs.items():
        if "recall_raw" not in r:
            continue
        name = {"naive": "naive loop, full res, 1 process"}.get(
            key, f"sslkit propose, {res['workers']} workers, --max-side {r.get('max_side')}")
        speed = f"{r['images_per_s'] / naive['images_per_s']:.2f}x" if naive else "-"
        print(f"| {name} | {r['images_per_s']:.2f} | {speed} | {100 * r['recall_raw']:.1f} | "
              f"{100 * r['recall_filtered']:.1f} | {r['boxes_per_image']:.0f} | {r['filtered_per_image']:.1f} |")
    print("\n| masks at 640 px | images/s per core |\n|---|---|")
    print(f"| felzenszwalb (sslkit default) | {runs['felzenszwalb']['images_per_s_per_core']:.1f} |")
    print(f"| grid | {runs['grid']['images_per_s_per_core']:.1f} |")
    print(f"| skimage felzenszwalb, full res (DetCon's code) | {runs['skimage_fh_reference']['images_per_s_per_core']:.1f} |")
    print("\ntargets:")
    if naive:
        b = runs["sslkit"]
        sp = b["images_per_s"] / naive["images_per_s"]
        drop = max(naive["recall_raw"] - b["recall_raw"], naive["recall_filtered"] - b["recall_filtered"])
        print(f"  speed-up >= {TARGET_SPEEDUP}x: {sp:.2f}x {'PASS' if sp >= TARGET_SPEEDUP else 'FAIL'}")
        print(f"  recall drop <= {100 * TARGET_RECALL_DROP:.0f} points: {100 * drop:.1f} "
              f"{'PASS' if drop <= TARGET_RECALL_DROP else 'FAIL'}")
    for algo in ("felzenszwalb", "grid"):
        r = runs[algo]["images_per_s_per_core"]
        print(f"  {algo} >= {TARGET_MASK_RATE:.0f} img/s/core: {r:.1f} {'PASS' if r >= TARGET_MASK_RATE else 'FAIL'}")


if __name__ == "__main__":
    main()
