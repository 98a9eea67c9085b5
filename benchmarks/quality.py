"""Transfer quality at CPU scale: pretrain each method for the same budget on the benchmark scenes,
then probe the frozen backbone (object-crop top-1 and scene multi-label mAP) against random init.

Everything runs through the real CLI (`sslkit ...` subprocesses), as a user would chain it:

    python benchmarks/quality.py --data bench-data --out bench-runs/quality \\
        --methods byol,detcon-b,detcon-b-grid,orl,univip --epochs 30 --arch resnet18 --image-size 64

Prints a markdown table and writes OUT/quality.json. Budget = same epochs, batch, image size and
arch for every method (ORL's stage 1 is the BYOL run of the same table, as in the paper).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SSLKIT = [sys.executable, "-m", "sslkit"]


def sh(*args, log=None) -> float:
    t = time.time()
    cmd = [*SSLKIT, *map(str, args)]
    print("+", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT if log else None)
    return time.time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("bench-data"), help="demo-data folder (built if missing)")
    ap.add_argument("--preset", default="bench", help="demo-data preset when building --data")
    ap.add_argument("--out", type=Path, default=Path("bench-runs/quality"))
    ap.add_argument("--methods", default="byol,detcon-b,detcon-b-grid,orl,univip")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=None, help="base lr for every method (default: each method's)")
    ap.add_argument("--probe-size", type=int, default=64, help="input side for the probes")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "commands.log", "a")
    data = args.data
    if not (data / "train.json").exists():
        sh("demo-data", data, "--preset", args.preset, "--quiet", log=log)
    train, val = data / "train.json", data / "val.json"
    common = ["--arch", args.arch, "--image-size", args.image_size, "--batch-size", args.batch_size,
              "--epochs", args.epochs, "--warmup-epochs", 1, "--workers", args.workers, "-q", "--no-tensorboard"]
    if args.lr is not None:
        common += ["--lr", args.lr]
    small_heads = ["--set", "proj_hidden_dim=1024"]
    # ORL's patches and UniVIP's instances keep the papers' 96:224 ratio to the scene views (min 32 px)
    patch = max(32, round(args.image_size * 96 / 224))
    props, fh, grid = out / "props.h5", out / "fh.h5", out / "grid.h5"
    for path, algo in ((props, "selective-search"), (fh, "felzenszwalb"), (grid, "grid")):
        if not path.exists():
            sh("propose", train, "--algo", algo, "-o", path, "-q", log=log)

    def pretrain(name: str, method: str, *extra) -> tuple[Path, float]:
        run = out / name
        ck = run / "last.pth"
        if ck.exists():
            return ck, json.loads((run / "time.json").read_text())["seconds"]
        heads = small_heads + (["--set", "pred_hidden_dim=1024"] if method != "simclr" and method != "detcon-s" else [])
        secs = sh("pretrain", train, "-m", method, "-o", run, *common, *heads, *extra, log=log)
        (run / "time.json").write_text(json.dumps({"seconds": secs}))
        return ck, secs

    weights: dict[str, tuple[str, float]] = {"random": ("random", 0.0)}
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in wanted:
        if m in ("byol", "simclr", "mocov2"):
            weights[m] = tuple(map(str, pretrain(m, m)))
        elif m in ("detcon-b", "detcon-s"):
            weights[m] = tuple(map(str, pretrain(m, m, "--masks", fh)))
        elif m in ("detcon-b-grid", "detcon-s-grid"):
            weights[m] = tuple(map(str, pretrain(m, m[:-5], "--masks", grid)))
        elif m == "orl":
            stage1, t1 = weights.get("byol") or pretrain("byol", "byol")
            pairs = out / "orl_pairs.h5"
            t2 = 0.0
            if not pairs.exists():
                t2 = sh("sample-views", train, "-m", "orl", "--proposals", props, "--ckpt", stage1, "-o", pairs,
                        "--image-size", args.image_size, "--roi-size", args.image_size, "-q", log=log)
            ck, t3 = pretrain("orl", "orl", "--views", pairs, "--set", f"patch_size={patch}")
            weights[m] = (str(ck), float(t1) + t2 + t3)
        elif m == "univip":
            cands = out / "univip_cands.h5"
            if not cands.exists():
                sh("sample-views", train, "-m", "univip", "--proposals", props, "-o", cands, "-q", log=log)
            weights[m] = tuple(map(str, pretrain("univip", "univip", "--views", cands, "--set", f"instance_size={patch}")))
        else:
            raise SystemExit(f"unknown method {m}")

    probes = (("objects", "linear", "top1"), ("objects", "knn", "top1"), ("multilabel", "linear", "mAP"))
    rows = []
    for name, (w, secs) in weights.items():
        res = {"method": name, "pretrain_s": round(float(secs), 1)}
        for task, protocol, metric in probes:
            mfile = out / f"probe_{name}_{task}_{protocol}.json"
            if not mfile.exists():
                extra = ["--arch", args.arch] if w == "random" else []
                if protocol == "linear":
                    extra += ["--solver", "lbfgs"]
                sh("linprobe", w, *extra, "--train", train, "--val", val, "--task", task, "--protocol", protocol,
                   "--image-size", args.probe_size, "-o", mfile, "-q", log=log)
            res[f"{task}/{protocol} {metric}"] = round(json.loads(mfile.read_text())["best"][metric], 2)  # percent
        rows.append(res)
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    (out / "quality.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                  "rows": rows}, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
