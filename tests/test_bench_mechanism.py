"""benchmarks/mechanism.py: the object-level claim on Fashion-MNIST scenes (docs/benchmarks.md).

The smoke run builds a toy fmnist-scenes set (needs the Debian package dataset-fashion-mnist, as
tests/test_fmnist_scenes.py) and runs the whole chain on it: demo-data, propose, pretrain, probes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mechanism.py"
COLS = ("items linear", "items kNN", "scene items linear", "scene items kNN", "scenes mAP")


def _run(*args, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _needs_fashion_mnist():
    from sslkit.datasets import fmnist, sources

    try:
        sources.fetch_debian(sources.default_cache(), lambda msg: None, packages=(fmnist.PACKAGE,),
                             folder="fashion-mnist")
        sources.fetch_debian(sources.default_cache(), lambda msg: None)
    except sources.SourceUnavailable as e:
        pytest.skip(f"Debian sources unavailable: {e}")


def _check(out: Path, rows: list[str]) -> dict:
    from sslkit.methods import METHODS

    res = json.loads((out / "mechanism.json").read_text())
    assert [r["method"] for r in res["rows"]] == rows and res["steps"] == 2
    for r in res["rows"]:
        method = SCRIPT_ROWS()[r["method"]][0]
        if method is not None and method not in METHODS:
            assert r["status"] == "not available in this sslkit (method not registered)"
            continue
        assert "status" not in r, r
        assert r["steps"] == (0 if method is None else 2)
        assert all(0.0 <= r[c] <= 100.0 for c in COLS), r
    return res


def SCRIPT_ROWS() -> dict:  # noqa: N802 - the script's ROWS table
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import mechanism
    finally:
        sys.path.pop(0)
    return mechanism.ROWS


def test_smoke_rows(tmp_path):
    """A few rows at toy size: items vs scenes, DetCon on ground-truth masks, RegionCL-D with its box scaled to
    the 2 x 2 grid of a 64-px view (the paper's 3-5 cells need 192 px: without the rule the row fails)."""
    _needs_fashion_mnist()
    rows = ["random", "byol-items", "byol", "detcon-b-gt", "regioncl-d"]
    p = _run("--smoke", "--out", tmp_path / "s0", "--rows", ",".join(rows))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    _check(tmp_path / "s0", rows)
    assert (tmp_path / "s0" / "data" / "artefacts" / "gt.h5").is_file()
    assert "| row | pretrain_s | steps | items linear |" in p.stdout


def test_regioncl_box_rule_keeps_the_papers_fraction_of_the_grid():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import mechanism
    finally:
        sys.path.pop(0)
    assert mechanism.REGION_CELLS(224) == (3, 5)  # the paper's C_L, C_U on the 7 x 7 grid
    assert mechanism.REGION_CELLS(64) == (1, 1)  # 2 x 2 grid: one cell, a canvas left
    assert mechanism.REGION_CELLS(128) == (2, 3)


@pytest.mark.slow
def test_smoke_every_row(tmp_path):
    _needs_fashion_mnist()
    p = _run("--smoke", "--out", tmp_path / "all")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    _check(tmp_path / "all", list(SCRIPT_ROWS()))


def _table(folder: Path, values: dict[str, float], extra: list[dict] = ()) -> Path:
    folder.mkdir()
    rows = [{"method": m, "pretrain_s": 1.0, "steps": 2, **{c: v for c in COLS}} for m, v in values.items()]
    (folder / "mechanism.json").write_text(json.dumps({"rows": rows + list(extra)}))
    return folder


def test_summary_pairs_seeds_and_measures_the_gap(tmp_path):
    na = {"method": "mcl", "status": "not available in this sslkit (method not registered)"}
    runs = [_table(tmp_path / f"s{i}", {"random": 10 + i, "byol-items": 20 + 2 * i, "byol": 12 + i, "orl": 16 + i},
                   [na]) for i in range(3)]
    p = _run("--summary", *runs)
    assert p.returncode == 0, p.stderr
    # differences to BYOL on scenes: items +8, +9, +10 → +9 ± 1/√3; orl +4 every seed
    assert "| byol-items | 22.00 ± 2.00 (Δ +9.00 ± 0.58) | 22.00" in p.stdout
    assert "| orl | 17.00 ± 1.00 (Δ +4.00 ± 0.00) | 17.00" in p.stdout
    # share of the gap: orl 4/9, random (10+i) − (12+i) = −2 → −2/9
    assert "| orl | +0.44 | +0.44 |" in p.stdout and "| random | -0.22 |" in p.stdout
    assert "mcl: not available in this sslkit (method not registered)" in p.stdout
    p = _run("--summary", runs[0])
    assert p.returncode != 0 and "at least two tables" in p.stderr
