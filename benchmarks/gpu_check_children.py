"""The measuring sections of benchmarks/gpu_check.py, each run in a child process:
``byol`` (step alone and end to end vs lightly), ``objects`` (each object-level method end to end)
and ``data_path`` (decode + views per CPU core, and the gpu path's device side)."""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path

OBJECT_METHODS = ("detcon-s", "detcon-b", "orl", "univip")


def _bench_args(cfg: dict, work: Path, **over) -> argparse.Namespace:
    return argparse.Namespace(device=cfg["device"], arch=cfg["arch"], image_size=cfg["image_size"],
                              batch_size=cfg["batch_size"], hidden=cfg["hidden"], precision=cfg["precision"],
                              channels_last=cfg["channels_last"], warmup=cfg["warmup"], steps=cfg["steps"],
                              repeats=1, lr=0.05, workers=cfg["workers"], images=None, data_paths="cpu",
                              **over)


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def _peak(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def _reset(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def child_byol(cfg: dict, work: Path, data: dict, deadline: float, extra: dict) -> dict:
    import pretrain_throughput as pt
    import torch

    if cfg["device"] == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    args = _bench_args(cfg, work)
    rows = []
    out = {"settings": {k: cfg[k] for k in ("arch", "image_size", "batch_size", "precision", "channels_last",
                                              "warmup", "steps", "workers", "gpu_workers")}, "rows": rows}
    if cfg["device"] == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
    g = torch.Generator().manual_seed(0)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    x0, x1 = (torch.randn(shape, generator=g).to(args.device) for _ in range(2))
    if args.channels_last:
        x0, x1 = (x.contiguous(memory_format=torch.channels_last) for x in (x0, x1))
    have_lightly = _has("lightly")
    for cls in (pt.SslkitBYOL, pt.LightlyBYOL):
        if cls is pt.LightlyBYOL and not have_lightly:
            rows.append({"mode": "step", "impl": "lightly", "skipped": "lightly is not installed"})
            continue
        _reset(cfg["device"])
        torch.manual_seed(0)
        impl = cls(args)
        ips = pt.time_steps(impl, x0, x1, args.warmup, args.steps, args.device)
        rows.append({"mode": "step", "impl": cls.name, "img_per_s": ips, "peak_gib": _peak(cfg["device"])})
        del impl
    del x0, x1
    bench = Path(data["bench"])
    for impl, path in (("sslkit", "gpu"), ("sslkit", "cpu"), ("lightly", None)):
        if time.time() > deadline - 15 or (impl == "lightly" and not have_lightly):
            rows.append({"mode": "e2e", "impl": f"{impl} {path or ''}".strip(),
                         "skipped": "no time left" if have_lightly else "lightly is not installed"})
            continue
        _reset(cfg["device"])
        if impl == "lightly":
            ips = pt.e2e_lightly(args, bench)
            peak = _peak(cfg["device"])
        else:
            args.workers = cfg["gpu_workers"] if path == "gpu" else cfg["workers"]
            ips = pt.e2e_sslkit(args, bench, work / "runs", path)
            peak = pt.LAST_PEAK_MEMORY_GB
            args.workers = cfg["workers"]
        rows.append({"mode": "e2e", "impl": f"{impl} {path} path" if path else impl, "img_per_s": ips,
                     "peak_gib": peak})
        out["partial"] = True
    for mode in ("step", "e2e"):
        base = next((r["img_per_s"] for r in rows if r["mode"] == mode and r["impl"] == "lightly"
                     and "img_per_s" in r), None)
        for r in rows:
            if r["mode"] == mode and base and "img_per_s" in r:
                r["vs_lightly"] = r["img_per_s"] / base
    out.pop("partial", None)
    return out


def child_objects(cfg: dict, work: Path, data: dict, deadline: float, extra: dict) -> dict:
    import pretrain_throughput as pt
    import torch

    if cfg["device"] == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    args = _bench_args(cfg, work)
    big = data["big"]
    per_method = {"detcon-s": {"masks": big["masks"]}, "detcon-b": {"masks": big["masks"]},
                  "orl": {"views": big["orl"], "patch_size": cfg["patch"]},
                  "univip": {"views": big["univip"], "instance_size": cfg["patch"],
                             "naive_min_size": min(64, cfg["patch"] // 2 + 4)}}
    byol = extra.get("byol_gpu_img_per_s")
    rows = []
    for path in ("gpu",) if cfg["device"] == "cpu" else ("gpu", "cpu"):  # smoke: the loop once
        for method in OBJECT_METHODS:
            if time.time() > deadline - 20:
                rows.append({"method": method, "data_path": path, "skipped": "no time left"})
                continue
            _reset(cfg["device"])
            args.workers = cfg["gpu_workers"] if path == "gpu" else cfg["workers"]
            try:
                ips = pt.e2e_sslkit(args, Path(data["bench"]), work / "runs", path, method, per_method[method])
                rows.append({"method": method, "data_path": path, "img_per_s": ips, "peak_gib": pt.LAST_PEAK_MEMORY_GB,
                             "vs_byol": ips / byol if byol else None})
            except Exception as e:  # noqa: BLE001 - one method's failure is a row, not the end of the section
                rows.append({"method": method, "data_path": path, "error": f"{type(e).__name__}: {e}"[:300]})
                traceback.print_exc()
    status = "ok" if not any("error" in r for r in rows) else "failed (see rows)"
    return {"rows": rows, "status": status}


def child_data_path(cfg: dict, work: Path, data: dict, deadline: float, extra: dict) -> dict:
    import data_throughput as dt

    folder = work / "per_core_images"
    if not folder.exists():
        dt.make_images(folder, cfg["per_core_images"])
    out = {"n": cfg["per_core_images"], "per_core": dt.per_core(folder, cfg["image_size"], cfg["repeats"])}
    if time.time() < deadline - 10:
        out["device_side"] = dt.device_side(folder, cfg["image_size"], cfg["device_batch"], cfg["device"], 3)
    return out


CHILDREN = {"byol": child_byol, "objects": child_objects, "data_path": child_data_path}
