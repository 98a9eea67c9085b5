"""``sslkit export``: one encoder's backbone (and the detector parts its method pretrains) as torchvision
or detectron2 weights."""

from __future__ import annotations

import enum
from pathlib import Path

import typer

from sslkit.cli.common import print_json, stdout, warn
from sslkit.errors import UserError

HELP = """Export a backbone for downstream use, or convert exported weights.

Reads WEIGHTS: an sslkit training checkpoint (one encoder: its
default_encoder, or --encoder NAME), a torchvision ResNet state_dict (e.g.
an earlier export; fc.* is dropped) or a detectron2 ResNet .pkl.

Writes OUT in one of two formats (--format; default: detectron2 for a .pkl
OUT, torchvision otherwise):

  torchvision  a plain ResNet state_dict without fc, plus OUT.json (arch,
               method, encoder, source file + sha256, epoch/step, input
               normalisation: RGB, ImageNet mean/std). Load it with
                 m = torchvision.models.resnet50()
                 m.fc = torch.nn.Identity()
                 m.load_state_dict(torch.load(OUT), strict=True)
  detectron2   a .pkl with detectron2's ResNet names (stem.conv1.norm.*,
               res2.0.conv1.*, res2.0.shortcut.norm.*, ...),
               matching_heuristics=True, pixel_mean/std (0-255, RGB) and
               input_format RGB; prints the detectron2 config lines to use.

A tensor that does not map, or a missing one, is an error; only
num_batches_tracked is dropped (detectron2's FrozenBN has none).

Detector parts (MCL pretrains its FPN and the 4 box-head convs): --include
picks among backbone, fpn, head (default: the backbone and every part the
checkpoint has). detectron2 files then also hold fpn_lateral2..5,
fpn_output2..5 and box_head.conv1..4 (each with .norm); torchvision files
use the detection layout backbone.body.*, backbone.fpn.*,
roi_heads.box_head.0..3.* (strict=False into torchvision's
maskrcnn_resnet50_fpn_v2). sslkit detect loads whatever parts it finds.

Examples:

  sslkit export run/last.pth -o r50.pth
  sslkit export run/last.pth -o r50_target.pth --encoder target
  sslkit export r50.pth -o r50_d2.pkl
  sslkit export runs/mcl/last.pth -o mcl.pkl                     # backbone + FPN + box head
  sslkit export runs/mcl/last.pth -o mcl.pth --include backbone  # backbone only
  sslkit export runs/mcl/last.pth -o mcl_bf.pkl --include backbone,fpn
"""


class Fmt(str, enum.Enum):
    torchvision = "torchvision"
    detectron2 = "detectron2"


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def choose_parts(include: str | None, available: list[str], weights: Path) -> list[str]:
    """The detector parts ``--include`` asks for (default: all the file has); ``backbone`` is required."""
    if include is None:
        return list(available)
    asked = [x.strip() for x in include.split(",") if x.strip()]
    known = ("backbone", "fpn", "head")
    bad = [x for x in asked if x not in known]
    if bad:
        raise UserError(f"--include {bad[0]!r} is not one of {', '.join(known)}")
    if "backbone" not in asked:
        raise UserError("--include must contain backbone (the parts are exported beside it)")
    missing = [x for x in asked if x != "backbone" and x not in available]
    if missing:
        has = ", ".join(available) or "none"
        raise UserError(f"these weights have no {missing[0]} to export (detector parts here: {has})", weights)
    return [x for x in ("fpn", "head") if x in asked]


def export(weights: Path, out: Path, fmt: Fmt | None = None, encoder: str | None = None,
           overwrite: bool = False, include: str | None = None) -> dict:
    """Write ``out`` and return the export record (what the sidecar / the .pkl's ``sslkit`` entry hold)."""
    import torch

    from sslkit import __version__
    from sslkit.io.artefacts import command_line
    from sslkit.io.atomic import atomic_path, check_writable
    from sslkit.io.checkpoint import save_detectron2_pkl
    from sslkit.io.images import write_json
    from sslkit.models import convert as C

    is_pkl = out.suffix.lower() == ".pkl"
    fmt = fmt or (Fmt.detectron2 if is_pkl else Fmt.torchvision)
    if fmt is Fmt.detectron2 and not is_pkl:
        raise UserError("detectron2 weights must be a .pkl file (detectron2 reads .pkl as numpy weights)", out,
                        "name the output e.g. model_d2.pkl")
    if fmt is Fmt.torchvision and is_pkl:
        raise UserError("a .pkl name would be read as detectron2 weights", out, "name a torchvision export .pth")
    if out.is_dir():
        raise UserError("is a folder, expected an output file name", out)
    if out.exists() and weights.exists() and out.resolve() == weights.resolve():
        raise UserError("output would overwrite the input", out, "choose another -o")
    if out.exists() and not overwrite:
        raise UserError("already exists", out, "choose another -o or pass --overwrite")
    check_writable(out)

    sd, all_parts, meta = C.weights_state_dicts(weights, encoder=encoder)
    chosen = choose_parts(include, meta["parts"], weights)
    parts = {p: all_parts[p] for p in chosen}
    record = {
        "format": C.EXPORT_FORMAT, "format_version": C.EXPORT_VERSION, "sslkit_version": __version__,
        "created": _now(), "command": command_line(), "weights_format": fmt.value,
        "arch": meta["arch"], "method": meta.get("method"), "encoder": meta.get("encoder"),
        "source": {"path": str(weights.resolve()), "kind": meta["kind"], "sha256": meta["sha256"],
                   "epoch": meta.get("epoch"), "step": meta.get("step")},
        "backbone_sha256": meta["backbone_sha256"],
        "parts": chosen, **({"fpn_channels": meta["fpn_channels"]} if chosen else {}),
        "input": {"format": "RGB", "pixel_mean": list(C.PIXEL_MEAN), "pixel_std": list(C.PIXEL_STD),
                  "pixel_mean_255": list(C.PIXEL_MEAN_255), "pixel_std_255": list(C.PIXEL_STD_255),
                  "note": "RGB images scaled to [0, 1], then (x - pixel_mean) / pixel_std"},
        "notes": meta["notes"],
    }
    if "export" in meta:  # converting an earlier export: keep where the weights came from
        record["origin"] = meta["export"].get("origin") or meta["export"].get("source")

    if fmt is Fmt.torchvision:
        from sslkit.models.parts import to_detection_layout

        clean = {k: v.detach().cpu().clone().contiguous() for k, v in
                 (to_detection_layout(sd, parts) if parts else sd).items()}
        with atomic_path(out) as tmp:
            torch.save(clean, tmp)
        build = ("m = sslkit.models.backbones.build_backbone('resnet_tiny')" if meta["arch"] == "resnet_tiny"
                 else f"m = torchvision.models.{meta['arch']}(); m.fc = torch.nn.Identity()")
        load = f"{build}; m.load_state_dict(torch.load(path, weights_only=True), strict=True)"
        if parts:
            load = ("sd = torch.load(path, weights_only=True); keys backbone.body.* (the ResNet), backbone.fpn.*, "
                    "roi_heads.box_head.0-3.*: detector.load_state_dict(sd, strict=False) into a torchvision "
                    "Mask R-CNN with FPN and box-head BN (e.g. maskrcnn_resnet50_fpn_v2), or sslkit detect")
        record.update(num_tensors=len(clean), file_sha256=C.file_sha256(out), load=load)
        write_json(C.sidecar_path(out), record)
    else:
        from sslkit.models.parts import to_detectron2

        d2 = C.torchvision_to_detectron2(sd)
        for part, psd in parts.items():
            d2.update(to_detectron2(part, psd))
        record.update(num_tensors=len(d2),
                      dropped_num_batches_tracked=sum(k.endswith("num_batches_tracked") for k in sd),
                      detectron2_config=C.detectron2_config(meta["arch"], str(out.resolve()), tuple(chosen),
                                                            meta.get("fpn_channels", 256)))
        save_detectron2_pkl(out, d2, extra={
            # bare backbone names: detectron2 must match them as suffixes of backbone.bottom_up.* (FPN)
            # or backbone.* / roi_heads.res5.* (C4); __author__ is not "Caffe2", so no renaming happens
            "matching_heuristics": True,
            "pixel_mean": list(C.PIXEL_MEAN_255), "pixel_std": list(C.PIXEL_STD_255), "input_format": "RGB",
            "sslkit": record,
        })
    return record


def _print_summary(rec: dict, out: Path) -> None:
    src = rec.get("origin") or rec["source"]
    what = f"{rec['arch']}"
    if rec.get("method"):
        what += f" · {rec['method']}"
    if rec.get("encoder"):
        what += f" · encoder {rec['encoder']}"
    if src.get("epoch") is not None:
        what += f" · epoch {src['epoch']} step {src.get('step')}"
    what += " · backbone" + "".join(f" + {p}" for p in rec.get("parts", []))
    stdout.print(f"[bold]wrote[/] {out}  ({rec['weights_format']}, {rec['num_tensors']} tensors, {what})")
    if rec["weights_format"] == "torchvision":
        stdout.print(f"[bold]metadata[/] {out}.json")
        stdout.print(f"[bold]load[/] {rec['load'].replace('path', repr(str(out)))}")
    else:
        stdout.print("[bold]detectron2 config[/] (matching_heuristics=True; FrozenBN/SyncBN keys are the same):")
        stdout.print(rec["detectron2_config"], markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("export", help=HELP)
    def export_cmd(
        weights: Path = typer.Argument(..., help="Training checkpoint (.pth), torchvision state_dict, or detectron2 .pkl."),
        out: Path = typer.Option(..., "--out", "-o", help="Output file (.pth for torchvision, .pkl for detectron2)."),
        fmt: Fmt = typer.Option(None, "--format", "-f", help="Output format (default: from the suffix of -o)."),
        encoder: str = typer.Option(None, "--encoder", help="Which encoder of a checkpoint, e.g. online, target, query, key (default: its default_encoder)."),
        include: str = typer.Option(None, "--include", help="Comma list of backbone, fpn, head (default: the backbone and every detector part the weights hold)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
        as_json: bool = typer.Option(False, "--json", help="Print the export record as JSON."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors (and --json)."),
    ):
        rec = export(weights, out, fmt, encoder, overwrite, include)
        if not quiet:
            for note in rec["notes"]:
                warn(note)
        if as_json:
            print_json(rec)
        elif not quiet:
            _print_summary(rec, out)
