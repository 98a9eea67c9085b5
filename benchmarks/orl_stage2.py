"""ORL stage 2 (``sslkit sample-views --method orl``): throughput and peak memory as N grows,
extrapolated to COCO train2017 (118,287 images).

Cost model (one image-level network, d = image feature width, D = RoI feature width, K
neighbours, B̄ boxes per image after ORL's filter, ≤ 100):

* image embedding: N forward passes at 224 px — O(N);
* kNN: N² · d multiply-adds in query blocks — O(N²·d) time; memory N·d·4 B (the bank) + the
  block (``--knn-block-mb``), independent of N otherwise;
* RoI embedding: every query chunk embeds the crops of its queries and of their neighbours,
  at most N·(1+K)·B̄ crops at 224 px (the unique images of a chunk are embedded once, so fewer
  when neighbourhoods overlap) — O(N·(1+K)·B̄), the dominant term; memory chunk·(1+K)·B̄·D·4 B;
* pairs: N·K similarity matrices of B̄×B̄·D — negligible next to the crops.

Measurements, each in a child process so that its peak RSS (``wait4``) is its own:

* ``knn``: :func:`sslkit.ops.knn.knn_search` on N random L2-normalised d-dim features (no
  images needed) for each ``--knn-sizes`` N; seconds and peak memory (RSS; on CUDA also
  ``max_memory_allocated``); the N² fit extrapolates to 118k;
* ``e2e``: the real command on the first ``--roi-images`` images of IMAGES (a COCO json or
  folder) with their proposals and a stage-1 checkpoint: per-phase seconds from its ``--json``
  summary, images/s of the embedding and RoI phases, crops/s, peak RSS.

Prints a markdown table and writes JSON (``--out``). Run the full setting on a quiet machine:

    python benchmarks/orl_stage2.py coco/annotations/instances_train2017.json --proposals props.h5 \\
        --ckpt stage1/last.pth --device cuda --knn-sizes 1000,5000,20000,118287 --roi-images 1000 --out orl2.json

Smoke run (tiny backbone, demo scenes):

    python benchmarks/orl_stage2.py demo/train.json --proposals props.h5 --ckpt s1/last.pth --device cpu \\
        --knn-sizes 200,400 --roi-images 8 --image-size 64 --roi-size 64 --min-size 16 --knn 3
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

COCO_TRAIN2017 = 118_287


def _wait_peak(cmd: list[str], env: dict | None = None) -> tuple[int, str, str, float, float]:
    """Run ``cmd``; (returncode, stdout, stderr, wall seconds, peak RSS in MiB of that child)."""
    t = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        return p.returncode, out.read().decode(), err.read().decode(), wall, usage.ru_maxrss / 1024


def knn_child(n: int, dim: int, k: int, device: str, block_mb: int) -> None:
    """(child) time knn_search on random features; print JSON."""
    import torch
    import torch.nn.functional as F

    from sslkit.ops.knn import knn_search

    dev = torch.device(device)
    feats = F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(0)), dim=1).to(dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    knn_search(feats, k, block_mb << 20)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    rec = {"n": n, "seconds": time.perf_counter() - t}
    if dev.type == "cuda":
        rec["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(rec))


def subset_json(images: Path, limit: int, tmp: Path) -> tuple[Path, Path]:
    """A COCO json of the first ``limit`` images of IMAGES (json or folder), and its image root."""
    from sslkit.io.images import ImageSource

    src = ImageSource.from_arg(images)
    recs = src.records[:limit]
    data = {"images": [{"id": r.image_id, "file_name": r.file_name, "height": r.height, "width": r.width}
                       for r in recs], "annotations": [], "categories": []}
    out = tmp / "subset.json"
    out.write_text(json.dumps(data))
    return out, Path(src.root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="?", type=Path, help="COCO json or folder (for the e2e part)")
    ap.add_argument("--proposals", type=Path)
    ap.add_argument("--ckpt", type=Path)
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--knn-sizes", default="1000,5000,20000")
    ap.add_argument("--dim", type=int, default=256, help="image feature width (BYOL projector: 256)")
    ap.add_argument("--knn", type=int, default=10)
    ap.add_argument("--knn-block-mb", type=int, default=256)
    ap.add_argument("--roi-images", type=int, default=256, help="images of the e2e run (0: skip it)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--roi-size", type=int, default=224)
    ap.add_argument("--min-size", type=float, default=96)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--chunk-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--knn-child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.knn_child is not None:
        knn_child(a.knn_child, a.dim, a.knn, a.device, a.knn_block_mb)
        return

    env = {**os.environ}
    result: dict = {"device": a.device, "dim": a.dim, "k": a.knn, "knn": [], "e2e": None}
    for n in (int(x) for x in a.knn_sizes.split(",") if x):
        rc, out, err, wall, rss = _wait_peak([sys.executable, __file__, "--knn-child", str(n), "--dim", str(a.dim),
                                              "--knn", str(a.knn), "--device", a.device,
                                              "--knn-block-mb", str(a.knn_block_mb)], env)
        if rc != 0:
            sys.exit(f"kNN child failed for N={n}: {err.strip().splitlines()[-1] if err.strip() else rc}")
        rec = json.loads(out.strip().splitlines()[-1])
        rec.update(peak_rss_mib=round(rss, 1), queries_per_s=round(n / rec["seconds"], 1))
        result["knn"].append(rec)
    if result["knn"]:
        big = max(result["knn"], key=lambda r: r["n"])
        result["knn_extrapolated_s"] = big["seconds"] * (COCO_TRAIN2017 / big["n"]) ** 2
        result["knn_bank_mib_coco"] = COCO_TRAIN2017 * a.dim * 4 / 2**20

    if a.roi_images and a.images:
        if not (a.proposals and a.ckpt):
            sys.exit("the e2e part needs --proposals and --ckpt (or pass --roi-images 0)")
        with tempfile.TemporaryDirectory() as tmp:
            js, root = subset_json(a.images, a.roi_images, Path(tmp))
            exe = Path(sys.executable).with_name("sslkit")
            cmd = ([str(exe)] if exe.exists() else [sys.executable, "-m", "sslkit"]) + [
                "sample-views", str(js), "--image-root", str(root), "-m", "orl", "--proposals", str(a.proposals),
                "--ckpt", str(a.ckpt), "-o", str(Path(tmp) / "pairs.h5"), "--device", a.device,
                "--knn", str(a.knn), "--image-size", str(a.image_size), "--roi-size", str(a.roi_size),
                "--min-size", str(a.min_size), "--batch-size", str(a.batch_size), "--chunk-size", str(a.chunk_size),
                "--json", "-q"] + (["--workers", str(a.workers)] if a.workers is not None else [])
            rc, out, err, wall, rss = _wait_peak(cmd, env)
            if rc != 0:
                sys.exit(f"sample-views failed ({rc}): {err.strip()}")
            s = json.loads(out)
            crops = _crops(Path(tmp) / "pairs.h5", a.chunk_size)
        n = s["num_images"]
        sec = s["seconds"]
        e2e = {"images": n, "wall_s": round(wall, 2), "peak_rss_mib": round(rss, 1), "seconds": sec,
               "embed_img_per_s": n / max(sec["embed"], 1e-9), "roi_img_per_s": n / max(sec["pairs"], 1e-9),
               "crops": crops, "crops_per_s": crops["embedded"] / max(sec["pairs"], 1e-9), "pairs": s["pairs"]}
        # extrapolation: linear phases at the measured rates; kNN from the fit above
        e2e["coco_extrapolated_s"] = {
            "embed": COCO_TRAIN2017 / e2e["embed_img_per_s"],
            "knn": result.get("knn_extrapolated_s"),
            "pairs": COCO_TRAIN2017 * crops["per_image_upper_bound"] / e2e["crops_per_s"],
        }
        result["e2e"] = e2e
    print(_table(result))
    if a.out:
        a.out.write_text(json.dumps(result, indent=2))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _crops(path: Path, chunk: int) -> dict:
    """Crops the RoI phase embedded (unique images per chunk) and the N·(1+K)·B̄ bound of the cost model."""
    import numpy as np

    from sslkit.views.orl_pairs import OrlPairs

    p = OrlPairs(path)
    nb = np.diff(p.box_offsets)
    embedded = 0
    for s in range(0, len(p), chunk):
        q = list(range(s, min(len(p), s + chunk)))
        embedded += int(nb[sorted(set(q) | set(p.knn_ids[q].ravel().tolist()))].sum())
    bound = len(p) * (1 + p.k) * float(nb.mean())
    return {"embedded": embedded, "upper_bound": round(bound), "mean_boxes": round(float(nb.mean()), 2),
            "per_image_upper_bound": (1 + p.k) * float(nb.mean())}


def _table(r: dict) -> str:
    lines = [f"ORL stage 2 on {r['device']} (d = {r['dim']}, K = {r['k']})", "",
             "| kNN N | seconds | queries/s | peak RSS MiB | CUDA peak MiB |", "|---|---|---|---|---|"]
    for k in r["knn"]:
        lines.append(f"| {k['n']} | {k['seconds']:.3f} | {k['queries_per_s']:.0f} | {k['peak_rss_mib']:.0f} | "
                     f"{k.get('cuda_peak_mib', float('nan')):.0f} |")
    if "knn_extrapolated_s" in r:
        lines.append(f"\nkNN extrapolated to COCO ({COCO_TRAIN2017} images, ∝ N²): {r['knn_extrapolated_s']:.1f} s; "
                     f"bank {r['knn_bank_mib_coco']:.0f} MiB")
    e = r.get("e2e")
    if e:
        c = e["coco_extrapolated_s"]
        lines += ["", "| e2e images | embed img/s | RoI img/s | crops/s | crops (bound) | peak RSS MiB |",
                  "|---|---|---|---|---|---|",
                  f"| {e['images']} | {e['embed_img_per_s']:.1f} | {e['roi_img_per_s']:.2f} | {e['crops_per_s']:.0f} | "
                  f"{e['crops']['embedded']} ({e['crops']['upper_bound']}) | {e['peak_rss_mib']:.0f} |",
                  "", f"COCO extrapolation (s): embed {c['embed']:.0f}, kNN {c['knn'] or float('nan'):.0f}, "
                      f"RoI pairs ≤ {c['pairs']:.0f} (N·(1+K)·B̄ crops at the measured crops/s)"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
