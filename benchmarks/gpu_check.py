"""The one GPU check: every CUDA path of sslkit tested, and the throughput figures, in one go.

Run through ``bash benchmarks/gpu_check.sh`` (which installs the carried wheels first); under 8
minutes on one H100/H200. Writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` after every
section (a run cut short still leaves what it measured) and ``OUT/gpu_check_tests.xml`` (JUnit);
the shell wrapper adds ``OUT/gpu_check.log``. Heavy files (images, runs) go to ``--work``.

Sections, in order, each within what is left of ``--budget-s``:

1. ``env``: GPU, driver, torch / torchvision / kornia / lightly versions, CPU count.
2. ``data``: images written here from the photos bundled in scikit-image (nothing is downloaded):
   tiny demo scenes for the tests, COCO-sized ones (480–640 px) for the end-to-end rows, with grid
   masks (DetCon), ground-truth candidates (UniVIP) and stage-2 pairs (ORL).
3. ``byol``: BYOL R50 @ 224 bf16 channels_last: the step alone (sslkit vs lightly) and end to end
   from JPEG files with the cpu path, the gpu path and lightly, peak memory each.
4. ``tests``: ``pytest -m gpu tests/test_gpu.py`` (every method in bf16/fp16 on both data paths,
   channels_last, torch.compile, SyncBN, torchrun/NCCL save + resume, detect at R50-FPN, nvJPEG).
5. ``objects``: each object-level method end to end (gpu path, then cpu path while time lasts).
6. ``data_path``: decode + two views per CPU core (sslkit vs lightly) and the device side's img/s.

Each measuring section runs in a child process (a crash or an out-of-memory costs that section
only). ``--smoke`` runs everything on CPU at tiny sizes (CI runs it), so the script is known to work
before a GPU is at hand.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

def settings(smoke: bool) -> dict:
    if smoke:
        return dict(device="cpu", arch="resnet_tiny", image_size=32, batch_size=8, hidden=64, precision="bf16",
                    channels_last=False, warmup=1, steps=2, patch=32, scenes=16, min_side=96, max_side=160,
                    workers=0, gpu_workers=0, per_core_images=6, repeats=1, device_batch=8)
    cpus = os.cpu_count() or 8
    return dict(device="cuda", arch="resnet50", image_size=224, batch_size=256, hidden=4096, precision="bf16",
                channels_last=True, warmup=8, steps=16, patch=96, scenes=256, min_side=480, max_side=640,
                workers=max(1, min(cpus - 1, 15)), gpu_workers=max(1, min(cpus - 1, 8)), per_core_images=64,
                repeats=2, device_batch=256)


# ---------------------------------------------------------------------------------------- report


class Report:
    def __init__(self, out: Path, smoke: bool, budget: float):
        self.out = out
        self.t0 = time.monotonic()
        self.budget = budget
        self.data = {"check": "sslkit gpu_check", "smoke": smoke, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "budget_s": budget, "sections": {}}

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def section(self, name: str, **fields) -> None:
        self.data["sections"][name] = {**self.data["sections"].get(name, {}), **fields}
        self.data["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        self.save()

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        (self.out / "gpu_check.md").write_text(markdown(self.data) + "\n")


def _fmt(x, digits=1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def markdown(d: dict) -> str:
    s = d["sections"]
    env = s.get("env", {})
    lines = [f"# sslkit GPU check{' (smoke, CPU)' if d['smoke'] else ''}", "",
             f"{env.get('gpu') or 'no GPU'} · torch {env.get('torch', '?')} · torchvision {env.get('torchvision', '?')} · "
             f"kornia {env.get('kornia', '?')} · lightly {env.get('lightly', '?')} · {env.get('cpus', '?')} CPUs · "
             f"started {d['started']} · {d.get('elapsed_s', 0)} s of {d['budget_s']:.0f}", "",
             "| section | status | seconds |", "|---|---|---:|"]
    for name, sec in s.items():
        lines.append(f"| {name} | {sec.get('status', '?')} | {_fmt(sec.get('seconds'))} |")
    t = s.get("tests", {})
    if t.get("cases"):
        lines += ["", f"## tests: {t.get('passed', 0)} passed, {t.get('failed', 0)} failed, "
                      f"{t.get('skipped', 0)} skipped", "", "| test | outcome | s |", "|---|---|---:|"]
        lines += [f"| {c['name']} | {c['outcome']} | {c['seconds']:.1f} |" for c in t["cases"]]
        lines += [f"\n{c['name']}: {c['message']}" for c in t["cases"] if c["outcome"] == "failed"]
    b = s.get("byol", {})
    if b.get("rows"):
        cfg = b.get("settings", {})
        lines += ["", f"## BYOL {cfg.get('arch')} @ {cfg.get('image_size')} px, batch {cfg.get('batch_size')}, "
                      f"{cfg.get('precision')}{', channels_last' if cfg.get('channels_last') else ''}", "",
                  "| mode | implementation | img/s | × lightly | peak GiB |", "|---|---|---:|---:|---:|"]
        for r in b["rows"]:
            ips = _fmt(r.get("img_per_s")) if "skipped" not in r else f"skipped: {r['skipped']}"
            lines.append(f"| {r['mode']} | {r['impl']} | {ips} | {_fmt(r.get('vs_lightly'), 2)} "
                         f"| {_fmt(r.get('peak_gib'), 2)} |")
    o = s.get("objects", {})
    if o.get("rows"):
        lines += ["", "## object-level methods end to end (same settings)", "",
                  "| method | data path | img/s | × BYOL (gpu path) | peak GiB |", "|---|---|---:|---:|---:|"]
        for r in o["rows"]:
            ips = _fmt(r.get("img_per_s")) if "img_per_s" in r else r.get("skipped") or f"error: {r.get('error')}"
            lines.append(f"| {r['method']} | {r['data_path']} | {ips} | "
                         f"{_fmt(r.get('vs_byol'), 2)} | {_fmt(r.get('peak_gib'), 2)} |")
    p = s.get("data_path", {})
    if p.get("per_core"):
        lines += ["", f"## decode + two BYOL views per CPU core ({p.get('n')} JPEGs, 480–640 px)", "",
                  "| pipeline | img/s per core | × lightly |", "|---|---:|---:|"]
        for name, r in p["per_core"].items():
            lines.append(f"| {name} | {_fmt(r['img_per_s_per_core'])} | {_fmt(r['vs_lightly'], 2)} |")
        if p.get("device_side"):
            ds = p["device_side"]
            lines.append(f"\ngpu path, device side ({ds['device']}, batches of {ds['batch']}): "
                         f"{_fmt(ds['img_per_s'], 0)} img/s")
    errors = [(n, sec["error"]) for n, sec in s.items() if sec.get("error")]
    if errors:
        lines += ["", "## errors", ""] + [f"- {n}: {e}" for n, e in errors]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- sections


def section_env(report: Report, smoke: bool) -> None:
    import torch
    import torchvision

    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "cpus": os.cpu_count(), "cuda_available": torch.cuda.is_available(), "gpu": None}
    for name in ("kornia", "lightly", "cv2", "pycocotools"):
        try:
            mod = __import__(name)
            env[name] = getattr(mod, "__version__", "installed")
        except ImportError:
            env[name] = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        if q.returncode == 0 and q.stdout.strip():
            env["gpu"] = q.stdout.strip().splitlines()[0]
    import sslkit

    env["sslkit"] = f"{sslkit.__version__} from {Path(sslkit.__file__).parent}"
    missing = [n for n in ("kornia", "lightly", "pycocotools") if env[n] is None]
    # A smoke run checks that every section runs; a missing baseline (lightly) or extra is listed, not a failure.
    # A real GPU run without them lacks the comparisons it exists for, so it is "incomplete".
    status = "ok" if smoke or (not missing and env["cuda_available"]) else "incomplete"
    report.section("env", **env, status=status, missing=missing)


def section_data(report: Report, work: Path, cfg: dict) -> dict:
    import gpu_check_data as D

    t = time.monotonic()
    tiny = D.build(work / "tiny", device=cfg["device"])
    big = tiny if report.data["smoke"] else D.build(work / "big", n=cfg["scenes"], min_side=cfg["min_side"],
                                                      max_side=cfg["max_side"], device=cfg["device"])
    need = cfg["batch_size"] * (cfg["warmup"] + cfg["steps"] + 2)
    n_train = len(json.loads(Path(big["images"]).read_text())["images"])
    bench = D.repeat(big["images"], max(1, math.ceil(need / n_train)), Path(big["images"]).parent / "bench.json")
    paths = {"tiny": {k: str(v) for k, v in tiny.items()}, "big": {k: str(v) for k, v in big.items()},
             "bench": str(bench), "bench_images": len(json.loads(bench.read_text())["images"])}
    report.section("data", status="ok", seconds=round(time.monotonic() - t, 1), **paths)
    return paths


def run_child(report: Report, name: str, args: argparse.Namespace, data: dict, timeout: float, **extra) -> dict:
    """Run section ``name`` in a child process of this script; its JSON (or the error) goes into the report."""
    t = time.monotonic()
    if timeout < 20:
        report.section(name, status="skipped (no time left)")
        return {}
    out = Path(args.work) / f"{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", name, "--work", str(args.work), "--child-json", str(out),
           "--data-json", json.dumps(data), "--extra-json", json.dumps(extra), "--deadline", str(time.time() + timeout)]
    if args.smoke:
        cmd.append("--smoke")
    report.section(name, status="running")
    try:
        p = subprocess.run(cmd, timeout=timeout + 30, text=True, capture_output=True)
        sys.stdout.write(p.stdout[-4000:])
        sys.stderr.write(p.stderr[-8000:])
        code, tail = p.returncode, (p.stderr or p.stdout)[-1500:]
    except subprocess.TimeoutExpired as e:
        code, tail = "timeout", str(e.stderr or "")[-1500:]
    result = json.loads(out.read_text()) if out.exists() else {}
    status = result.pop("status", None) or ("ok" if code == 0 else f"failed ({code})")
    fields = {"status": status, "seconds": round(time.monotonic() - t, 1), **result}
    if code != 0 and "error" not in fields:
        fields["error"] = tail.strip().splitlines()[-1] if tail.strip() else f"exit {code}"
    report.section(name, **fields)
    return result


def section_tests(report: Report, args: argparse.Namespace, data: dict, timeout: float) -> None:
    import xml.etree.ElementTree as ET

    t = time.monotonic()
    if timeout < 30:
        report.section("tests", status="skipped (no time left)")
        return
    xml = args.out / "gpu_check_tests.xml"
    env = {**os.environ, "SSLKIT_GPU_DATA": str(Path(data["tiny"]["images"]).parent.parent),
           "SSLKIT_TEST_DEVICE": "cpu" if args.smoke else "cuda", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py", f"--junitxml={xml}", "-p",
           "no:cacheprovider", "-o", "addopts="]
    if args.tests_k:
        cmd += ["-k", args.tests_k]
    report.section("tests", status="running")
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout, text=True, capture_output=True)
        sys.stdout.write(p.stdout[-6000:])
        code = p.returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    cases = []
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    outcome = "skipped" if tag == "skipped" else "failed"
                    message = (el.get("message") or "").splitlines()[0][:300] if el.get("message") else ""
            cases.append({"name": case.get("name"), "outcome": outcome, "seconds": float(case.get("time") or 0),
                          "message": message})
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "skipped")}
    status = "ok" if code == 0 and cases and not counts["failed"] else f"failed ({code})"
    report.section("tests", status=status, seconds=round(time.monotonic() - t, 1), cases=cases, **counts)


def child_main(args) -> int:
    from gpu_check_children import CHILDREN

    cfg = settings(args.smoke)
    result: dict = {}
    try:
        result = CHILDREN[args.child](cfg, Path(args.work), json.loads(args.data_json), args.deadline,
                                      json.loads(args.extra_json))
        code = 0
    except Exception as e:  # noqa: BLE001 - reported in the JSON, the parent goes on
        traceback.print_exc()
        result = {**result, "error": f"{type(e).__name__}: {e}"[:500]}
        code = 1
    Path(args.child_json).write_text(json.dumps(result, indent=2, default=str))
    return code


# ---------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"))
    p.add_argument("--work", type=Path, help="images and runs (default: a folder under /tmp)")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: check that the script works")
    p.add_argument("--budget-s", type=float, default=None, help="seconds for everything (default 450; smoke 900)")
    p.add_argument("--sections", default="env,data,byol,tests,objects,data_path")
    p.add_argument("--tests-k", default="", help="pytest -k expression for the tests section")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-json", help=argparse.SUPPRESS)
    p.add_argument("--data-json", help=argparse.SUPPRESS)
    p.add_argument("--extra-json", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(args)
    args.work = args.work or Path("/tmp") / f"sslkit-gpu-check{'-smoke' if args.smoke else ''}"
    args.work.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s or (900.0 if args.smoke else 450.0)
    report = Report(args.out, args.smoke, budget)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    cfg = settings(args.smoke)
    report.save()
    if "env" in wanted:
        section_env(report, args.smoke)
    if not args.smoke and not report.data["sections"].get("env", {}).get("cuda_available", True):
        report.section("env", error="no CUDA device visible (use --smoke on CPU)")
        return 2
    data = None
    try:
        data = section_data(report, args.work, cfg)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        report.section("data", status="failed", error=f"{type(e).__name__}: {e}"[:500])
        return 1
    # the headline figures first, then the tests, then what time allows
    byol = {}
    if "byol" in wanted:
        byol = run_child(report, "byol", args, data, min(report.left() - 200, 170))
    if "tests" in wanted:
        section_tests(report, args, data, min(report.left() - 60, 240))
    if "objects" in wanted:
        gpu = next((r.get("img_per_s") for r in byol.get("rows", []) if r.get("impl") == "sslkit gpu path"), None)
        run_child(report, "objects", args, data, report.left() - 40, byol_gpu_img_per_s=gpu)
    if "data_path" in wanted:
        run_child(report, "data_path", args, data, report.left() - 2)
    statuses = [s.get("status", "") for s in report.data["sections"].values()]
    report.section("summary", status="ok" if all(st == "ok" for st in statuses) else "see sections",
                   seconds=round(time.monotonic() - report.t0, 1))
    print(markdown(report.data))
    return 0 if all(st == "ok" for st in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
