"""benchmarks/gpu_check.sh --smoke: the whole GPU check runs on CPU at tiny sizes (so the script is
known to work before a GPU is at hand). The torchrun test is left out here for time; the full smoke
run is ``bash benchmarks/gpu_check.sh --smoke``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def test_gpu_check_smoke_runs_every_section_and_writes_its_report(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PY": sys.executable}
    env.pop("OUT", None)
    p = subprocess.run(["bash", str(SCRIPT), "--smoke", "--out", str(out), "--work", str(tmp_path / "work"),
                        "--tests-k", "not torchrun"], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    files = sorted(f.name for f in out.iterdir())
    assert files == ["gpu_check.json", "gpu_check.log", "gpu_check.md", "gpu_check_tests.xml"]
    report = json.loads((out / "gpu_check.json").read_text())
    sections = report["sections"]
    assert report["smoke"] and set(sections) == {"env", "data", "byol", "tests", "objects", "data_path", "summary"}
    assert all(s["status"] == "ok" for name, s in sections.items() if name != "env"), sections
    assert sections["tests"]["failed"] == 0 and sections["tests"]["passed"] >= 10
    byol = {(r["mode"], r["impl"]): r for r in sections["byol"]["rows"]}
    for key in (("step", "sslkit"), ("e2e", "sslkit gpu path"), ("e2e", "sslkit cpu path")):
        assert byol[key]["img_per_s"] > 0
    assert [r["method"] for r in sections["objects"]["rows"]] == ["detcon-s", "detcon-b", "orl", "univip"]
    assert all(r["img_per_s"] > 0 for r in sections["objects"]["rows"])
    assert sections["data_path"]["per_core"]["sslkit cpu"]["img_per_s_per_core"] > 0
    md = (out / "gpu_check.md").read_text()
    assert "| e2e | sslkit gpu path |" in md and "| orl | gpu |" in md and "gpu_check exit 0" in \
        (out / "gpu_check.log").read_text()
