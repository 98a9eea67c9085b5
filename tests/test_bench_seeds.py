"""benchmarks/seeds.py: the mean ± sd and paired differences reported in docs/benchmarks.md."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "seeds.py"


def write_run(folder: Path, random: float, byol: float) -> Path:
    folder.mkdir()
    rows = [{"method": "random", "pretrain_s": 0.0, "objects/knn top1": random},
            {"method": "byol", "pretrain_s": 9.0, "objects/knn top1": byol}]
    (folder / "quality.json").write_text(json.dumps({"args": {}, "rows": rows}))
    return folder


def test_seeds_table_means_sds_and_paired_differences(tmp_path):
    runs = [write_run(tmp_path / f"s{i}", r, b) for i, (r, b) in enumerate([(10, 13), (12, 14), (14, 18)])]
    out = subprocess.run([sys.executable, str(SCRIPT), *map(str, runs)], capture_output=True, text=True, check=True).stdout
    assert "| random | 12.00 ± 2.00 |" in out
    # byol 13, 14, 18 → mean 15, sd √7; differences 3, 2, 4 → mean 3, sd 1, se 1/√3
    assert "| byol | 15.00 ± 2.65 (Δ +3.00 ± 0.58) |" in out


def test_seeds_needs_finished_runs(tmp_path):
    run = write_run(tmp_path / "s0", 1, 2)
    r = subprocess.run([sys.executable, str(SCRIPT), str(run), str(tmp_path / "missing")], capture_output=True, text=True)
    assert r.returncode != 0 and "missing/quality.json: missing" in r.stderr


def test_seeds_reads_named_summaries(tmp_path):
    """quality.py --probe-wd auto writes OUT/quality-wdauto.json beside quality.json; seeds.py takes such files."""
    runs = [write_run(tmp_path / f"s{i}", r, b) for i, (r, b) in enumerate([(10, 13), (12, 14)])]
    files = []
    for i, run in enumerate(runs):
        (run / "quality-wdauto.json").write_text(json.dumps({"args": {}, "rows": [
            {"method": "random", "pretrain_s": 0.0, "objects/knn top1": 20 + i},
            {"method": "byol", "pretrain_s": 9.0, "objects/knn top1": 30 + i}]}))
        files.append(run / "quality-wdauto.json")
    out = subprocess.run([sys.executable, str(SCRIPT), *map(str, files)], capture_output=True, text=True, check=True).stdout
    assert "| random | 20.50 ± 0.71 |" in out and "(Δ +10.00 ± 0.00)" in out


def test_seeds_paired_differences_to_a_chosen_base(tmp_path):
    runs = [write_run(tmp_path / f"s{i}", r, b) for i, (r, b) in enumerate([(10, 13), (12, 14), (14, 18)])]
    out = subprocess.run([sys.executable, str(SCRIPT), *map(str, runs), "--base", "byol"], capture_output=True,
                         text=True, check=True).stdout
    assert "paired difference to 'byol'" in out and "| random | 12.00 ± 2.00 (Δ -3.00 ± 0.58) |" in out
    r = subprocess.run([sys.executable, str(SCRIPT), *map(str, runs), "--base", "mocov2"], capture_output=True, text=True)
    assert r.returncode != 0 and "--base 'mocov2' is not a row" in r.stderr
