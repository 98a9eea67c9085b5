"""``sslkit info FILE``: what an sslkit artefact, checkpoint or exported weights file holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from sslkit.cli.common import print_json, stdout
from sslkit.errors import UserError

HELP = """Summarise any sslkit file: an HDF5 artefact (proposals, views, features), a training
checkpoint (.pth), or exported weights (torchvision .pth, detectron2 .pkl).

Shows the kind, format version, image count, per-image statistics, parameters and
the command that made it.

Example:  sslkit info props.h5        sslkit info run/last.pth --json
"""


def _stats(counts: np.ndarray) -> dict:
    if counts.size == 0:
        return {"total": 0}
    return {"total": int(counts.sum()), "min": int(counts.min()), "mean": round(float(counts.mean()), 2),
            "median": float(np.median(counts)), "max": int(counts.max()), "images_with_none": int((counts == 0).sum())}


def describe_h5(path: Path) -> dict:
    from sslkit.io.artefacts import Artefact

    with Artefact(path) as a:
        attrs = a.attrs
        d = {
            "file": str(path), "kind": a.format, "format_version": a.format_version,
            "sslkit_version": attrs.get("sslkit_version"), "created": attrs.get("created"),
            "command": a.command, "num_images": len(a), "params": a.params,
            "skipped": [{"file_name": f, "reason": r} for f, r in a.skipped],
        }
        extra = a.kind_attrs
        if extra:
            d["attrs"] = extra
        if len(a):
            d["image_size"] = {"height": _stats(a.height), "width": _stats(a.width)}
        d["fields"] = {}
        for name in a.ragged_names:
            dt, trail = a.field_spec(name)
            d["fields"][name] = {"dtype": dt, "row_shape": list(trail), "per_image": _stats(a.counts(name))}
        for name in a.map_names:
            hw = a.map_sizes(name)
            d["fields"][name] = {"dtype": "uint16 label map",
                                 "stored_size": {"height": _stats(hw[:, 0]), "width": _stats(hw[:, 1])}}
    return d


def _export_summary(rec: dict) -> dict:
    """The headline fields of an ``sslkit export`` record (sidecar or the .pkl's ``sslkit`` entry)."""
    src = rec.get("origin") or rec.get("source") or {}
    d = {"exported_from": src.get("path"), "method": rec.get("method"), "encoder": rec.get("encoder")}
    if src.get("epoch") is not None:
        d["trained"] = f"epoch {src['epoch']}, step {src.get('step')}"
    d["backbone_sha256"] = rec.get("backbone_sha256")
    d["exported"] = rec.get("created")
    return d


def _arch_or_reason(sd) -> str:
    from sslkit.models.convert import KeyMapError, infer_arch

    try:
        return infer_arch(sd)
    except KeyMapError as e:
        return f"unknown ({e})"


def describe_weights(path: Path) -> dict:
    from sslkit.io.checkpoint import load_weights_file
    from sslkit.models import convert
    from sslkit.models import parts as P

    kind, obj = load_weights_file(path)
    if kind == "checkpoint":
        model = obj["model"]
        cfg = obj.get("config") or {}
        d = {
            "file": str(path), "kind": "sslkit.checkpoint", "format_version": obj.get("format_version"),
            "sslkit_version": obj.get("sslkit_version"), "method": obj.get("method"), "arch": cfg.get("arch"),
            "epoch": obj.get("epoch"), "step": obj.get("step"), "command": obj.get("command"),
            "encoders": obj.get("encoders"), "default_encoder": obj.get("default_encoder"),
            **({"parts": obj["parts"]} if obj.get("parts") else {}),
            "num_tensors": len(model), "num_parameters": int(sum(v.numel() for v in model.values() if v.is_floating_point())),
            "has": {k: obj.get(k) is not None for k in ("optimizer", "scaler", "scheduler", "ema", "rng")},
            "config": obj.get("config"),
        }
        if obj.get("metrics"):
            d["metrics"] = obj["metrics"]
        return d
    if kind == "state_dict":
        sd, parts = obj, {}
        if P.is_detection_layout(sd):
            try:
                sd, parts = P.split_detection_layout(sd)
            except P.PartError:
                pass
        d = {"file": str(path), "kind": "torchvision state_dict" + (" (detection layout)" if parts else ""),
             **({"parts": sorted(parts)} if parts else {}), "arch": _arch_or_reason(
                {k: v for k, v in sd.items() if not k.startswith("fc.")}),
             "num_tensors": len(sd), "num_parameters": int(sum(v.numel() for v in sd.values() if v.is_floating_point()))}
        side = convert.read_sidecar(path)
        if side is not None:
            d.update(_export_summary(side))
            d["export"] = side
        elif convert.sidecar_path(path).exists():
            d["sidecar"] = f"{convert.sidecar_path(path).name} does not describe this file (not an export record, or its sha256 differs); ignored"
        d["first_keys"] = list(obj)[:5]
        return d
    model = obj["model"]
    rest, parts = P.split_detectron2(model)
    try:
        arch = _arch_or_reason(convert.detectron2_to_torchvision(rest))
    except convert.KeyMapError as e:
        arch = f"not a bare detectron2 ResNet backbone ({e})"
    d = {"file": str(path), "kind": "detectron2 weights (.pkl)", "arch": arch, "num_arrays": len(model),
         "num_parameters": int(sum(np.asarray(v).size for v in model.values())),
         "matching_heuristics": obj.get("matching_heuristics"), "author": obj.get("__author__"),
         **({"parts": sorted(parts)} if parts else {})}
    for k in ("pixel_mean", "pixel_std", "input_format"):
        if k in obj:
            d[k] = obj[k]
    rec = obj.get("sslkit")
    if isinstance(rec, dict) and rec.get("format") == convert.EXPORT_FORMAT:
        d.update(_export_summary(rec))
        d["detectron2_config"] = rec.get("detectron2_config")
        d["export"] = rec
    d["first_keys"] = list(model)[:5]
    return d


def describe(path: Path) -> dict:
    if not path.exists():
        raise UserError("no such file", path)
    if path.is_dir():
        raise UserError("is a folder", path, "pass an .h5 artefact, a .pth or a .pkl")
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic == b"\x89HDF\r\n\x1a\n":
        return describe_h5(path)
    if path.suffix in (".pth", ".pt", ".pkl", ".ckpt") or magic[:2] == b"PK":
        return describe_weights(path)
    raise UserError("not an sslkit artefact (expected HDF5 .h5, .pth or .pkl)", path)


def _print(d: dict) -> None:
    from rich.table import Table

    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    for k, v in d.items():
        if k in ("params", "config", "fields", "skipped", "attrs", "export", "image_size", "has", "metrics",
                 "detectron2_config"):
            continue
        t.add_row(k, str(v))
    stdout.print(t)
    if d.get("image_size"):
        s = d["image_size"]
        stdout.print(f"[bold]image size[/]  h {s['height'].get('min')}–{s['height'].get('max')}, "
                     f"w {s['width'].get('min')}–{s['width'].get('max')}")
    for name, f in d.get("fields", {}).items():
        stdout.print(f"[bold]{name}[/]  {f}")
    for key in ("params", "config", "attrs", "has", "metrics"):
        if d.get(key):
            stdout.print(f"[bold]{key}[/]  {d[key]}")
    if d.get("detectron2_config"):
        stdout.print("[bold]detectron2 config[/]")
        stdout.print(d["detectron2_config"], markup=False, highlight=False)
    if d.get("export"):
        stdout.print("[dim]full export record: sslkit info --json[/]")
    if "skipped" in d:
        sk = d["skipped"]
        stdout.print(f"[bold]skipped[/]  {len(sk)} file(s)")
        for s in sk[:20]:
            stdout.print(f"  {s['file_name']}: {s['reason']}")
        if len(sk) > 20:
            stdout.print(f"  … {len(sk) - 20} more (see --json)")


def register(app: typer.Typer) -> None:
    @app.command("info", help=HELP)
    def info_cmd(
        file: Path = typer.Argument(..., help="An .h5 artefact, a .pth checkpoint/state_dict, or a detectron2 .pkl."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ):
        d = describe(file)
        if as_json:
            print_json(d)
        else:
            _print(d)
