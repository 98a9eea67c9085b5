"""The object-level claim at CPU scale: image-level SSL on multi-object scenes vs on single objects,
and whether each object-level method recovers the gap, on Fashion-MNIST scenes.

    sslkit demo-data bench-fmnist --preset fmnist-scenes
    for s in 0 1 2; do python benchmarks/mechanism.py --data bench-fmnist --out bench-runs/mech-s$s --seed $s; done
    python benchmarks/mechanism.py --summary bench-runs/mech-s0 bench-runs/mech-s1 bench-runs/mech-s2
    python benchmarks/mechanism.py --smoke --out /tmp/mech-smoke     # the whole pipeline at toy size (< 1 min)

Every row gets the same budget: arch, view size, global batch and number of optimizer steps
(``--epochs`` over the pretraining scenes; the single-item row runs the same number of steps over
its images), warm-up 5% of the steps, each method's own optimizer / lr / EMA defaults, projector
and predictor hidden width 1024. Rows: random init; BYOL on single items (the object-centric upper
bound); BYOL, SimCLR, MoCo v2 on scenes; DetCon-B / DetCon-S with ground-truth masks and with FH
masks; ORL (stage 1 = the BYOL-on-scenes row of the same seed); UniVIP; and SimSiam, DenseCL, MCL,
RegionCL-M/S/D, which print "not available in this sslkit (method not registered)" until they are.

Probes (the frozen res5 GAP feature, ``sslkit linprobe``) use only the 10,000 TEST items, which no
pretraining image contains: single-item crops (linear top-1, the weight decay cross-validated on
the probe's training half, and kNN top-1), item crops cut from the probe scenes (the same two), and
scene multi-label mAP. The constants scaled from the papers to these 64-96 px scenes are fixed
by a size ratio (:data:`COCO_TO_SCENE`), never chosen on the probes.

Everything runs through the real CLI, in this process (``sslkit.cli.main``: one torch import for
the whole table). Finished runs (RUN/time.json) and probes are reused; an interrupted pretraining
run is resumed. Writes OUT/mechanism.json and prints a markdown table; ``--summary`` prints mean ±
sd over seeds and the paired differences to BYOL on scenes, with the share of the items-vs-scenes
gap each row recovers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

#: COCO-sized images (about 640 x 480) to these scenes (64-96 px): the papers' pixel constants are
#: scaled by this ratio (ORL's and UniVIP's 96-px min proposal side -> 16, UniVIP's 64-px naive boxes
#: -> 11) and FH's by its square (DetCon's s = c = 1000 -> 28), as fixed rules, not tuned
COCO_TO_SCENE = 1 / 6

#: row -> (method, pretraining images, extra input); the order of the table
ROWS = {
    "random": (None, None, None),
    "byol-items": ("byol", "items", None),
    "byol": ("byol", "scenes", None),
    "simclr": ("simclr", "scenes", None),
    "mocov2": ("mocov2", "scenes", None),
    "simsiam": ("simsiam", "scenes", None),
    "densecl": ("densecl", "scenes", None),
    "detcon-b-gt": ("detcon-b", "scenes", "gt"),
    "detcon-s-gt": ("detcon-s", "scenes", "gt"),
    "detcon-b-fh": ("detcon-b", "scenes", "fh"),
    "detcon-s-fh": ("detcon-s", "scenes", "fh"),
    "orl": ("orl", "scenes", "orl"),
    "univip": ("univip", "scenes", "univip"),
    "mcl": ("mcl", "scenes", None),
    "regioncl-m": ("regioncl-m", "scenes", None),
    "regioncl-s": ("regioncl-s", "scenes", None),
    "regioncl-d": ("regioncl-d", "scenes", None),
}
#: probe -> (task, --train, --val, protocol, metric)
PROBES = {
    "items linear": ("objects", "probe_items_train", "probe_items_val", "linear", "top1"),
    "items kNN": ("objects", "probe_items_train", "probe_items_val", "knn", "top1"),
    "scene items linear": ("objects", "probe_scenes_train", "probe_scenes_val", "linear", "top1"),
    "scene items kNN": ("objects", "probe_scenes_train", "probe_scenes_val", "knn", "top1"),
    "scenes mAP": ("multilabel", "probe_scenes_train", "probe_scenes_val", "linear", "mAP"),
}
NOT_REGISTERED = "not available in this sslkit (method not registered)"
#: the linear probes' weight decay, cross-validated per weights (docs/linprobe.md): the decades that
#: `--wd auto` spans where features like these choose (docs/benchmarks.md, "a cross-validated probe
#: weight decay"); the half decades and 1e-6 cost L-BFGS most and change little
PROBE_WD = "1e-5,1e-4,1e-3,1e-2,1e-1"
SMOKE_DATA = ["--n", 64, "--items", 64, "--probe-items", 64, "--min-side", 64, "--max-side", 80]


def sslkit(*args) -> None:
    """``sslkit ARGS`` through the real entry point, in this process; a failure raises RuntimeError."""
    from sslkit.cli import main

    argv = [str(a) for a in args]
    print("+ sslkit", " ".join(argv), flush=True)
    try:
        main(argv)
    except SystemExit as e:
        if e.code not in (0, None):
            raise RuntimeError(f"sslkit {argv[0]} exited with status {e.code}") from None


def num_images(json_path: Path) -> int:
    return len(json.loads(json_path.read_text())["images"])


class Table:
    """One seed's table: the pretraining runs, their inputs and the probes, made when first needed."""

    def __init__(self, args):
        self.args, self.out, self.data = args, args.out, args.data
        self.shared = args.shared or self.data / "artefacts"
        self.shared.mkdir(parents=True, exist_ok=True)
        self.scenes = self.data / "scenes.json"
        self.steps = args.epochs * (num_images(self.scenes) // args.batch_size)
        if self.steps < 1:
            raise SystemExit(f"{self.scenes}: fewer scenes than one batch of {args.batch_size}")
        self.weights: dict[str, tuple[str, float, int]] = {}

    # ------------------------------------------------------------------ inputs of the object-level methods
    def masks(self, kind: str) -> Path:
        path = self.shared / f"{kind}.h5"
        if not path.exists():
            extra = ["--algo", "coco-gt"] if kind == "gt" else \
                ["--algo", "felzenszwalb", "--scales", FH, "--min-sizes", FH]
            sslkit("propose", self.scenes, *extra, "-o", path, "-q", "-j", self.args.workers + 1)
        return path

    def proposals(self) -> Path:
        path = self.shared / "props.h5"
        if not path.exists():
            sslkit("propose", self.scenes, "-o", path, "-q", "-j", self.args.workers + 1)
        return path

    def views(self, kind: str) -> Path:
        if kind == "univip":  # seed-independent: UniVIP's candidates are filtered proposals
            path = self.shared / "univip_cands.h5"
            if not path.exists():
                sslkit("sample-views", self.scenes, "-m", "univip", "--proposals", self.proposals(),
                       "--min-size", MIN_BOX, "-o", path, "-q")
            return path
        path = self.out / "orl_pairs.h5"  # ORL stage 2 depends on this seed's stage 1
        if not path.exists():
            stage1 = self.pretrain("byol")
            sslkit("sample-views", self.scenes, "-m", "orl", "--proposals", self.proposals(), "--ckpt", stage1[0],
                   "--min-size", MIN_BOX, "--image-size", self.args.image_size, "--roi-size", self.args.image_size,
                   "-j", self.args.workers, "-o", path, "-q")
        return path

    # ------------------------------------------------------------------ pretraining
    def pretrain(self, row: str) -> tuple[str, float, int]:
        """(checkpoint, seconds, steps) of a row, run when first needed (ORL: stage 1 + 2 + 3 seconds)."""
        if row in self.weights:
            return self.weights[row]
        method, images, extra = ROWS[row]
        run = self.out / row
        done = run / "time.json"
        if not done.exists():
            data = self.data / f"{images}.json"
            spe = num_images(data) // self.args.batch_size
            if spe < 1:
                raise SystemExit(f"{data}: fewer images than one batch of {self.args.batch_size}")
            from sslkit.methods import get_method

            defaults = get_method(method).DEFAULTS
            sets = [f"{k}=1024" for k in ("proj_hidden_dim", "pred_hidden_dim") if k in defaults]
            inputs, before = [], 0.0
            if extra in ("gt", "fh"):
                inputs = ["--masks", self.masks(extra)]
            elif extra == "orl":  # the row's time: stage 1 (the BYOL row) + stage 2 + stage 3
                before = self.pretrain("byol")[1]
                self.proposals()  # shared with UniVIP, like the masks: not counted
                t = time.time()
                inputs = ["--views", self.views("orl")]
                before += time.time() - t
                sets.append(f"patch_size={PATCH(self.args.image_size)}")
            elif method.startswith("regioncl"):
                lo, hi = REGION_CELLS(self.args.image_size)
                sets += [f"regioncl_cells_min={lo}", f"regioncl_cells_max={hi}"]
            elif extra == "univip":
                inputs = ["--views", self.views("univip")]
                sets += [f"instance_size={PATCH(self.args.image_size)}", f"naive_min_size={NAIVE}"]
            t = time.time()
            sslkit("pretrain", data, "-m", method, "-o", run, *inputs, "--arch", self.args.arch,
                   "--image-size", self.args.image_size, "--batch-size", self.args.batch_size,
                   "--epochs", math.ceil(self.steps / spe), "--max-steps", self.steps,
                   "--warmup-epochs", round(max(1, self.steps // 20) / spe, 6), "--workers", self.args.workers,
                   "--seed", self.args.seed, "-q", "--no-tensorboard", *[a for kv in sets for a in ("--set", kv)])
            lines = (run / "log.jsonl").read_text().splitlines()
            steps = json.loads(lines[-1])["step"] if lines else 0
            done.write_text(json.dumps({"seconds": before + time.time() - t, "steps": steps}))
        rec = json.loads(done.read_text())
        self.weights[row] = (str(run / "last.pth"), float(rec["seconds"]), int(rec["steps"]))
        return self.weights[row]

    # ------------------------------------------------------------------ probes
    def probe(self, row: str, weights: str, name: str) -> float:
        task, train, val, protocol, metric = PROBES[name]
        mfile = self.out / f"probe_{row}_{name.replace(' ', '-')}.json"
        if not mfile.exists():
            extra = ["--arch", self.args.arch] if weights == "random" else []
            if protocol == "linear":
                extra += ["--solver", "lbfgs", "--wd", self.args.probe_wd]
            sslkit("linprobe", weights, *extra, "--task", task, "--train", self.data / f"{train}.json",
                   "--val", self.data / f"{val}.json", "--protocol", protocol, "--image-size", self.args.probe_size,
                   "--seed", self.args.seed, "--cache-dir", self.shared / "features", "-o", mfile, "-q")
        return round(json.loads(mfile.read_text())["best"][metric], 2)  # percent

    def row(self, row: str) -> dict:
        method = ROWS[row][0]
        res: dict = {"method": row}
        if method is None:
            weights, secs, steps = "random", 0.0, 0
        else:
            from sslkit.methods import METHODS

            if method not in METHODS:
                return {**res, "status": NOT_REGISTERED}
            try:
                weights, secs, steps = self.pretrain(row)
            except (RuntimeError, SystemExit) as e:
                return {**res, "status": f"failed: {e} (see the output above)"}
        res |= {"pretrain_s": round(secs, 1), "steps": steps}
        for name in PROBES:
            res[name] = self.probe(row, weights, name)
        return res


FH = round(1000 * COCO_TO_SCENE ** 2)  # DetCon's FH s = c = 1000 (spec §2.1), scaled by area
MIN_BOX = round(96 * COCO_TO_SCENE)  # ORL's min proposal side 96 (ORL §3.2), UniVIP's candidate filter
NAIVE = round(64 * COCO_TO_SCENE)  # UniVIP's naive boxes: min side 64 (UniVIP §3.2)


def PATCH(image_size: int) -> int:  # noqa: N802 - a rule, named like the constants above
    """ORL's patches / UniVIP's instances: the papers' 96:224 ratio to the scene views, at least 32 px."""
    return max(32, round(image_size * 96 / 224))


def REGION_CELLS(image_size: int) -> tuple[int, int]:  # noqa: N802 - a rule, like PATCH
    """RegionCL's box side of 3-5 cells on the 7 x 7 grid of a 224-px view (RegionCL §3.1, Table 9), kept as the same
    fraction of the grid (image_size / 32 cells a side) and leaving a canvas: 1 cell on the 2 x 2 grid at 64 px."""
    grid = image_size // 32
    lo, hi = (min(grid - 1, max(1, round(c * grid / 7))) for c in (3, 5))
    return lo, hi


def print_table(rows: list[dict]) -> None:
    cols = ["pretrain_s", "steps", *PROBES]
    print("| row | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for r in rows:
        if "status" in r:
            print(f"| {r['method']} | {r['status']} |" + " |" * (len(cols) - 1))
        else:
            print(f"| {r['method']} | " + " | ".join(str(r[c]) for c in cols) + " |")


def summary(folders: list[Path], base: str = "byol", gap: str = "byol-items") -> None:
    """Mean ± sd over seeds, the paired difference to ``base`` ± its standard error, and for the
    item probes the share of the ``gap`` row's difference that each row recovers."""
    sys.path.insert(0, str(Path(__file__).parent))
    from seeds import paired_table

    tables = []
    for f in folders:
        path = f if f.suffix == ".json" else f / "mechanism.json"
        if not path.exists():
            raise SystemExit(f"{path}: missing (run benchmarks/mechanism.py --out {path.parent} first)")
        tables.append({r["method"]: r for r in json.loads(path.read_text())["rows"]})
    status = {n: r["status"] for n, r in tables[0].items() if "status" in r}
    cols = list(PROBES)
    print(paired_table([{n: r for n, r in t.items() if "status" not in r} for t in tables], cols, base))
    if all(gap in t and base in t for t in tables):
        print(f"\nShare of the gap ({gap} − {base}, mean over seeds) recovered: (row − {base}) / ({gap} − {base})\n")
        print("| row | " + " | ".join(cols) + " |")
        print("|---|" + "---|" * len(cols))
        g = {c: statistics.mean(float(t[gap][c]) - float(t[base][c]) for t in tables) for c in cols}
        for name in tables[0]:
            if name in status or name in (base, gap) or not all(name in t for t in tables):
                continue
            cells = []
            for c in cols:
                d = statistics.mean(float(t[name][c]) - float(t[base][c]) for t in tables)
                cells.append(f"{d / g[c]:+.2f}" if abs(g[c]) > 1e-9 else "—")
            print(f"| {name} | " + " | ".join(cells) + " |")
    for name, s in status.items():
        print(f"\n{name}: {s}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("bench-fmnist"),
                    help="an fmnist-scenes build (sslkit demo-data DIR --preset fmnist-scenes; built if missing)")
    ap.add_argument("--out", type=Path, default=Path("bench-runs/mech"))
    ap.add_argument("--shared", type=Path, default=None,
                    help="seed-independent artefacts (masks, proposals, UniVIP candidates, the probes' feature "
                         "cache); default DATA/artefacts")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows, of: {', '.join(ROWS)}")
    ap.add_argument("--arch", default="resnet_tiny")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3,
                    help="the budget: epochs over the pretraining scenes; every row runs that many steps")
    ap.add_argument("--seed", type=int, default=0, help="seed of every pretraining run, probe and the random init")
    ap.add_argument("--probe-size", type=int, default=64, help="input side of the probes")
    ap.add_argument("--probe-wd", default=PROBE_WD,
                    help="--wd of the linear probes: a comma list is cross-validated on the probe's training split "
                         "(folds grouped by image), never on its validation split")
    ap.add_argument("--workers", type=int, default=1, help="data-loading workers of each run")
    ap.add_argument("--smoke", action="store_true",
                    help="the whole pipeline at toy size (64 scenes, 2 steps of batch 32, 32-px probes) into OUT")
    ap.add_argument("--summary", nargs="+", type=Path, metavar="OUT",
                    help="summarise finished tables (one OUT per seed) instead of running one")
    args = ap.parse_args()
    if args.summary:
        if len(args.summary) < 2:
            raise SystemExit("--summary needs at least two tables (one per seed)")
        summary(args.summary)
        return
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    if args.smoke:
        args.data = args.out / "data"
        args.batch_size, args.epochs, args.probe_size, args.probe_wd, args.workers = 32, 1, 32, "1e-4", 0
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.data / "scenes.json").exists():
        sslkit("demo-data", args.data, "--preset", "fmnist-scenes", *(SMOKE_DATA if args.smoke else []), "-q")
    table = Table(args)
    print(f"budget: {args.arch}, {args.image_size}-px views, batch {args.batch_size}, {table.steps} steps "
          f"({args.epochs} epochs of {num_images(table.scenes)} scenes), seed {args.seed}", flush=True)
    results = [table.row(r) for r in rows]
    (args.out / "mechanism.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "steps": table.steps, "rows": results}, indent=2))
    print_table(results)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
