"""Transfer quality at CPU scale: pretrain each method for the same budget on the benchmark scenes,
then probe the frozen backbone (object-crop top-1 and scene multi-label mAP) against random init.

Everything runs through the real CLI (`sslkit ...` subprocesses), as a user would chain it:

    python benchmarks/quality.py --data bench-quality --out bench-runs/q30 --heldout 0.3 \\
        --methods byol,detcon-b,orl,univip --epochs 30 --arch resnet18 --image-size 64

Prints a markdown table and writes OUT/quality.json. Budget = same epochs, batch, image size and
arch for every method (ORL's stage 1 is the BYOL run of the same table, as in the paper).
Methods: byol, simclr, mocov2, simsiam, densecl, detcon-b, detcon-s (FH masks), orl, univip (selective
search), mcl (batch a multiple of 32), regioncl-m, regioncl-s, regioncl-d (boxes
scaled to the feature grid: C_U = min(5, grid − 1), C_L = min(3, C_U); 1 cell of a 2×2 grid at 64 px),
and the variants of VARIANTS (byol-blur224, byol-blur224-lr4x, orl-intra, orl-inter, univip-k0,
univip-k2, univip-no-ot, univip-no-si, mcl-l3, mcl-mode-b/c/d) and the rows of REGION_ROWS, which swap the
region file (detcon-b-grid, detcon-s-grid; across families, docs/swap.md: detcon-b-ss, detcon-s-ss on
selective-search boxes, orl-fh, univip-fh, orl-grid, univip-grid on label maps). ``--heldout F`` adds object probes on
cutouts the probe never trained on; ``--probes`` picks the probes (``background/...``: a diagnostic on demo-data
scenes, which background photo a scene was built on); ``--probe-wd auto`` cross-validates the
linear probes' weight decay (``sslkit linprobe --wd auto``); ``--probe-epochs`` also probes epoch
checkpoints of the image-level runs; ``--set KEY=VALUE`` passes a pretraining setting to every run
and ``--seed`` seeds the runs, the probes and the random init (``benchmarks/seeds.py`` summarises
runs over seeds). Proposals are made only for the methods that need them. Finished runs
(RUN/time.json) and probes are reused; an interrupted pretraining run is resumed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SSLKIT = [sys.executable, "-m", "sslkit"]

# Ablation variants: name -> (method, settings passed as --set). ORL Table 5(a); UniVIP Table 7 and 8(c)
# (K = 0 is UniVIP's scene-only row: BYOL on overlapping views); MCL Table 10(a) (3 montage levels, without
# the finest 1/8 level; weights 1/2, 1/4, 1/4) and 10(b) (loss modes b, c, d; a is the default).
VARIANTS = {
    "byol-blur224": ("byol", {"blur_reference_size": 224}),
    "byol-blur224-lr4x": ("byol", {"blur_reference_size": 224, "lr": 0.8}),
    "orl-intra": ("orl", {"inter_weight": 0}),
    "orl-inter": ("orl", {"intra_weight": 0}),
    "univip-k0": ("univip", {"num_instances": 0}),
    "univip-k2": ("univip", {"num_instances": 2}),
    "univip-no-ot": ("univip", {"instance_weight": 0}),
    "univip-no-si": ("univip", {"scene_instance_weight": 0}),
    "mcl-l3": ("mcl", {"levels": 3}),
    "mcl-mode-b": ("mcl", {"loss_mode": "b"}),
    "mcl-mode-c": ("mcl", {"loss_mode": "c"}),
    "mcl-mode-d": ("mcl", {"loss_mode": "d"}),
}

# The region file each object-level row reads: by default the paper's (DetCon: FH masks; ORL, UniVIP: selective
# search); the rows below swap it across families (docs/swap.md), everything else equal to the method's row.
DEFAULT_REGIONS = {"detcon-b": "felzenszwalb", "detcon-s": "felzenszwalb", "orl": "selective-search",
                   "univip": "selective-search"}
REGION_ROWS = {
    "detcon-b-grid": ("detcon-b", "grid"),
    "detcon-s-grid": ("detcon-s", "grid"),
    "detcon-b-ss": ("detcon-b", "selective-search"),  # is DetCon's gain the masks or the loss?
    "detcon-s-ss": ("detcon-s", "selective-search"),
    "orl-fh": ("orl", "felzenszwalb"),  # ORL with segments instead of selective search
    "univip-fh": ("univip", "felzenszwalb"),
    "orl-grid": ("orl", "grid"),
    "univip-grid": ("univip", "grid"),
}


def sh(*args, log=None) -> float:
    t = time.time()
    cmd = [*SSLKIT, *map(str, args)]
    print("+", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT if log else None)
    return time.time() - t


def coco_image_root(json_path: Path, data: dict | None = None) -> Path:
    """The folder sslkit finds a COCO json's images in (``data``: the json, if already loaded)."""
    from sslkit.io.images import resolve_image_root

    data = json.loads(json_path.read_text()) if data is None else data
    return resolve_image_root(json_path, [im["file_name"] for im in data["images"][:3]], None)


def heldout_split(train: Path, val: Path, fraction: float, out: Path) -> tuple[Path, Path]:
    """Object probes on cutouts never seen by the probe: per category, ``fraction`` of the source
    cutouts (annotation ``source``, a stable hash order) are held out; the probe trains on the
    train-scene objects of the other cutouts and is scored on the val-scene objects of the held-out
    ones. The plain object probe instead meets the same cutouts in train and val (instance
    matching); this one asks for category-level generalisation."""
    tr, va = json.loads(train.read_text()), json.loads(val.read_text())
    by_cat: dict[int, set[str]] = {}
    for a in tr["annotations"] + va["annotations"]:
        by_cat.setdefault(a["category_id"], set()).add(a["source"])
    held = set()
    for sources in by_cat.values():
        order = sorted(sources, key=lambda x: hashlib.sha1(x.encode()).hexdigest())
        held |= set(order[:max(1, round(len(order) * fraction))])
    paths = out / "probe_train_seen.json", out / "probe_val_unseen.json"
    for path, data, keep in ((paths[0], tr, False), (paths[1], va, True)):
        path.write_text(json.dumps(data | {"annotations": [a for a in data["annotations"] if (a["source"] in held) == keep]}))
    return paths


def background_split(train: Path, val: Path, out: Path) -> tuple[Path, Path]:
    """A diagnostic probe for demo scenes: which background photo a scene was composited on (the
    images' ``background`` field; 15 photos for the Debian sources), as class-folder trees of
    symlinks in OUT. Two views of a scene share its background, so this is what scene-level BYOL
    can learn from these scenes without learning objects."""
    trees = []
    for split, path in (("train", train), ("val", val)):
        root = out / "background" / split
        data = json.loads(path.read_text())
        image_root = coco_image_root(path, data)
        for im in data["images"]:
            if "background" not in im:
                raise SystemExit(f"{path}: images have no 'background' field (not sslkit demo-data scenes)")
            folder = root / im["background"].replace(":", "_").replace("/", "_").rsplit(".", 1)[0]
            folder.mkdir(parents=True, exist_ok=True)
            link = folder / Path(im["file_name"]).name
            if not link.exists():
                link.symlink_to((image_root / im["file_name"]).resolve())
        trees.append(root)
    return trees[0], trees[1]


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
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a pretraining setting for every run (repeatable), e.g. --set optimizer=lars")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of every pretraining run and probe (and of the random-init weights)")
    ap.add_argument("--probe-size", type=int, default=64, help="input side for the probes")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--probes", default="objects/linear,objects/knn,multilabel/linear",
                    help="probes to run: TASK/PROTOCOL, comma-separated; TASK: objects, multilabel, or "
                         "background (diagnostic: the scene's background photo, demo-data scenes only)")
    ap.add_argument("--probe-epochs", default="",
                    help="also probe these epoch checkpoints of each image-level run (comma-separated, e.g. 30,100; "
                         "mid-schedule weights, not shorter runs); keeps every epoch checkpoint")
    ap.add_argument("--heldout", type=float, default=0.0,
                    help="also probe object crops of held-out cutouts (this fraction per category; 0: off)")
    ap.add_argument("--probe-wd", default="1e-4",
                    help="--wd of the linear probes: a value, or 'auto' / a comma list to cross-validate it on the "
                         "probe's training split (folds grouped by image; for held-out cutouts by cutout photo, the "
                         "annotation field 'source'). Other than 1e-4, the linear probes' files and the summary "
                         "get the suffix -wdVALUE (OUT/quality-wdauto.json), so runs are probed again without "
                         "overwriting the default's")
    args = ap.parse_args()

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "commands.log", "a")
    data = args.data
    if not (data / "train.json").exists():
        sh("demo-data", data, "--preset", args.preset, "--quiet", log=log)
    train, val = data / "train.json", data / "val.json"
    probe_epochs = [int(e) for e in args.probe_epochs.split(",") if e.strip()]
    if any(not 0 < e < args.epochs for e in probe_epochs):
        raise SystemExit(f"--probe-epochs must lie between 1 and {args.epochs - 1} (the last epoch is the run itself)")
    common = ["--arch", args.arch, "--image-size", args.image_size, "--batch-size", args.batch_size,
              "--epochs", args.epochs, "--warmup-epochs", 1, "--workers", args.workers, "-q", "--no-tensorboard",
              "--seed", args.seed]
    if args.lr is not None:
        common += ["--lr", args.lr]
    common += [a for kv in args.set for a in ("--set", kv)]
    if probe_epochs:
        common += ["--keep-last", 0]
    small_heads = ["--set", "proj_hidden_dim=1024"]
    # ORL's patches and UniVIP's instances keep the papers' 96:224 ratio to the scene views (min 32 px)
    patch = max(32, round(args.image_size * 96 / 224))

    def proposals(algo: str) -> Path:
        """OUT/<file>.h5 of ``sslkit propose --algo ALGO`` on the training scenes, made when first needed."""
        path = out / {"selective-search": "props.h5", "felzenszwalb": "fh.h5", "grid": "grid.h5"}[algo]
        if not path.exists():
            sh("propose", train, "--algo", algo, "-o", path, "-q", log=log)
        return path

    def pretrain(name: str, method: str, *extra) -> tuple[Path, float]:
        run = out / name
        ck, done = run / "last.pth", run / "time.json"
        if done.exists():  # finished; an interrupted run (last.pth only) is resumed by `sslkit pretrain`
            return ck, json.loads(done.read_text())["seconds"]
        from sslkit.methods import get_method

        wide_predictor = get_method(method).DEFAULTS.get("pred_hidden_dim", 0) > 1024  # SimSiam's 512 stays
        heads = small_heads + (["--set", "pred_hidden_dim=1024"] if wide_predictor else [])
        secs = sh("pretrain", train, "-m", method, "-o", run, *common, *heads, *extra, log=log)
        done.write_text(json.dumps({"seconds": secs}))
        return ck, secs

    weights: dict[str, tuple[str, float]] = {"random": ("random", 0.0)}
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in wanted:
        name, sets = m, []
        if m in VARIANTS:
            m, kv = VARIANTS[m]
            sets = [a for k, v in kv.items() for a in ("--set", f"{k}={v}")]
        if m in REGION_ROWS:
            m, regions = REGION_ROWS[m]
        else:
            regions = DEFAULT_REGIONS.get(m)
        # files made from another region source than the paper's carry its name (the paper's keep theirs)
        rtag = "" if regions == DEFAULT_REGIONS.get(m) else "_" + {"selective-search": "ss", "felzenszwalb": "fh",
                                                                   "grid": "grid"}[regions]

        def run(method: str, *extra, name=name, sets=sets) -> tuple[Path, float]:
            """This table row's pretraining run (its own folder, its variant's --set switches)."""
            return pretrain(name, method, *extra, *sets)

        if m.startswith("regioncl-"):
            cmax = min(5, args.image_size // 32 - 1)
            weights[name] = tuple(map(str, run(m, "--set", f"regioncl_cells_min={min(3, cmax)}",
                                               "--set", f"regioncl_cells_max={cmax}")))
        elif m in ("byol", "simclr", "mocov2", "simsiam", "densecl"):
            ck, secs = run(m)
            for e in probe_epochs:  # mid-schedule checkpoints of the same run; their time is a share of the run's
                epoch_ck = ck.parent / f"epoch_{e:04d}.pth"
                if not epoch_ck.exists():
                    raise SystemExit(f"{epoch_ck}: missing (the run was made without --probe-epochs); delete "
                                     f"{ck.parent} to pretrain it again")
                weights[f"{name} @ epoch {e}"] = (str(epoch_ck), secs * e / args.epochs)
            weights[name] = (str(ck), secs)
        elif m == "mcl":  # the backbone is probed; MCL's FPN and head matter for detection (sslkit detect)
            weights[name] = tuple(map(str, run(m)))
        elif m in ("detcon-b", "detcon-s"):
            weights[name] = tuple(map(str, run(m, "--masks", proposals(regions))))
        elif m == "orl":
            stage1, t1 = weights.get("byol") or pretrain("byol", "byol")
            pairs = out / f"orl_pairs{rtag}.h5"
            t2 = 0.0
            if not pairs.exists():
                t2 = sh("sample-views", train, "-m", "orl", "--proposals", proposals(regions),
                        "--ckpt", stage1, "-o", pairs,
                        "--image-size", args.image_size, "--roi-size", args.image_size, "-q", log=log)
            ck, t3 = run("orl", "--views", pairs, "--set", f"patch_size={patch}")
            weights[name] = (str(ck), float(t1) + t2 + t3)
        elif m == "univip":
            cands = out / f"univip_cands{rtag}.h5"
            if not cands.exists():
                sh("sample-views", train, "-m", "univip", "--proposals", proposals(regions), "-o", cands,
                   "-q", log=log)
            weights[name] = tuple(map(str, run("univip", "--views", cands, "--set", f"instance_size={patch}")))
        else:
            raise SystemExit(f"unknown method {m}")

    metric_of = {"objects": "top1", "multilabel": "mAP", "background": "top1"}
    probes = tuple((t, p, metric_of[t]) for t, p in (x.strip().split("/") for x in args.probes.split(",") if x.strip()))
    splits = {"objects": (train, val), "multilabel": (train, val)}
    if any(t == "background" for t, _, _ in probes):
        splits["background"] = background_split(train, val, out)
    if args.heldout > 0:
        splits["objects-unseen"] = heldout_split(train, val, args.heldout, out)
        image_root, val_root = (coco_image_root(p) for p in (train, val))
        probes += (("objects-unseen", "linear", "top1"), ("objects-unseen", "knn", "top1"))
    tag = "" if args.probe_wd == "1e-4" else "-wd" + args.probe_wd.replace(",", "_")
    cross_validated = args.probe_wd == "auto" or "," in args.probe_wd
    rows = []
    for name, (w, secs) in weights.items():
        res = {"method": name, "pretrain_s": round(float(secs), 1)}
        for task, protocol, metric in probes:
            suffix = tag if protocol == "linear" else ""
            mfile = out / f"probe_{name.replace(' @ epoch ', '_e')}_{task}_{protocol}{suffix}.json"
            if not mfile.exists():
                extra = ["--arch", args.arch] if w == "random" else []
                if protocol == "linear":
                    extra += ["--solver", "lbfgs", "--wd", args.probe_wd]
                    if cross_validated and task == "objects-unseen":  # folds hold out cutouts, as the probe does
                        extra += ["--cv-group", "source"]
                ptrain, pval = splits[task]
                if task == "objects-unseen":  # the split files live in OUT, the images beside train.json
                    extra += ["--image-root", image_root, "--val-image-root", val_root]
                if task != "background":  # class-folder trees need no --task
                    extra += ["--task", task.split("-")[0]]
                sh("linprobe", w, *extra, "--train", ptrain, "--val", pval, "--protocol", protocol,
                   "--image-size", args.probe_size, "--seed", args.seed, "-o", mfile, "-q", log=log)
            res[f"{task}/{protocol} {metric}"] = round(json.loads(mfile.read_text())["best"][metric], 2)  # percent
        rows.append(res)
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    (out / f"quality{tag}.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                  "rows": rows}, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
