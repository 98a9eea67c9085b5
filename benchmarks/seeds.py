"""Mean ± standard deviation over seeds of `benchmarks/quality.py` runs.

    python benchmarks/seeds.py bench-runs/qbig-s0 bench-runs/qbig-s1 bench-runs/qbig-s2 bench-runs/qbig-s3

Each argument is the --out folder of one quality.py run (same settings, another --seed), or one of
its summaries (e.g. ``bench-runs/qoc150-s1/quality-wdauto.json``, from ``--probe-wd auto``); rows are
matched by their method name. Prints a markdown table (mean ± sample sd, n seeds) and, for every
row but the first, the mean paired difference to the first row (random init; ``--base NAME``
picks another) with its standard error: the seeds pair the rows (the same seed draws the random
init, the pretraining run and the probes' classifiers); e.g. ``--base mocov2`` for RegionCL-M against
its base, ``--base mcl`` for MCL's ablation variants. ``paired_table`` is also used by
``benchmarks/mechanism.py --summary``.
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


def paired_table(tables: list[dict[str, dict]], cols: list[str], base: str | None = None) -> str:
    """Markdown: per row (those in every table) and column, mean ± sd over the tables (seeds) and,
    but for ``base`` (default: the first row), the mean paired difference to ``base`` ± its standard error."""
    names = [n for n in tables[0] if all(n in t for t in tables)]
    base = names[0] if base is None else base
    if base not in names:
        raise SystemExit(f"--base {base!r} is not a row of every run (rows: {', '.join(names)})")

    def values(name: str, col: str) -> list[float]:
        return [float(t[name][col]) for t in tables]

    lines = [f"{len(tables)} seeds; cells: mean ± sd; Δ: mean paired difference to {base!r} ± its standard error\n",
             "| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name in names:
        cells = []
        for c in cols:
            v = values(name, c)
            cell = f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}"
            if name != base:
                d = [a - b for a, b in zip(v, values(base, c), strict=True)]
                cell += f" (Δ {statistics.mean(d):+.2f} ± {statistics.stdev(d) / len(d) ** 0.5:.2f})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="quality.py --out folders (or summary .json files), one per seed")
    ap.add_argument("--base", default=None, help="the row the differences are taken to (default: the first row)")
    args = ap.parse_args()
    if len(args.runs) < 2:
        raise SystemExit("give at least two runs (one per seed)")
    tables = [{r["method"]: r for r in load(f)} for f in args.runs]
    cols = [c for c in next(iter(tables[0].values())) if c not in ("method", "pretrain_s")]
    print(paired_table(tables, cols, args.base))


if __name__ == "__main__":
    main()
