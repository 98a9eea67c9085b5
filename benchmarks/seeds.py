"""Mean ± standard deviation over seeds of `benchmarks/quality.py` runs.

    python benchmarks/seeds.py bench-runs/qbig-s0 bench-runs/qbig-s1 bench-runs/qbig-s2 bench-runs/qbig-s3

Each argument is the --out folder of one quality.py run (same settings, another --seed), or one of
its summaries (e.g. ``bench-runs/qoc150-s1/quality-wdauto.json``, from ``--probe-wd auto``); rows are
matched by their method name. Prints a markdown table (mean ± sample sd, n seeds) and, for every
row but the first, the mean paired difference to the first row (random init) with its standard
error: the seeds pair the rows (the same seed draws the random init, the pretraining run and the
probes' classifiers). ``--base NAME`` takes the differences to that row instead (e.g. ``--base mocov2``
for RegionCL-M against its base, ``--base mcl`` for MCL's ablation variants).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def load(folder: Path) -> list[dict]:
    path = folder if folder.suffix == ".json" else folder / "quality.json"
    if not path.exists():
        raise SystemExit(f"{path}: missing (run benchmarks/quality.py --out {path.parent} first)")
    return json.loads(path.read_text())["rows"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="quality.py --out folders (or summary .json files), one per seed")
    ap.add_argument("--base", help="row the paired differences are taken to (default: the first, random init)")
    args = ap.parse_args()
    if len(args.runs) < 2:
        raise SystemExit("give at least two runs (one per seed)")
    tables = [{r["method"]: r for r in load(f)} for f in args.runs]
    names = [n for n in tables[0] if all(n in t for t in tables)]
    cols = [c for c in next(iter(tables[0].values())) if c not in ("method", "pretrain_s")]
    base = args.base or names[0]
    if base not in names:
        raise SystemExit(f"--base {base!r} is not a row of every run (rows: {', '.join(names)})")

    def values(name: str, col: str) -> list[float]:
        return [float(t[name][col]) for t in tables]

    print(f"{len(tables)} seeds; cells: mean ± sd; Δ: mean paired difference to {base!r} ± its standard error\n")
    print("| method | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name in names:
        cells = []
        for c in cols:
            v = values(name, c)
            cell = f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}"
            if name != base:
                d = [a - b for a, b in zip(v, values(base, c), strict=True)]
                cell += f" (Δ {statistics.mean(d):+.2f} ± {statistics.stdev(d) / len(d) ** 0.5:.2f})"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
