"""Backbone weights: architecture inference, digests, export sidecars, and loading any weights file
sslkit understands (training checkpoints, torchvision/detectron2 exports) into a backbone and its
detector parts. The name maps between torchvision and detectron2 live in :mod:`sslkit.models.keymaps`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import torch

from sslkit.errors import FormatError, UserError
from sslkit.io.checkpoint import load_weights_file
from sslkit.io.images import IMAGENET_MEAN, IMAGENET_STD
from sslkit.models import parts as P
from sslkit.models.backbones import available_archs, build_backbone
from sslkit.models.keymaps import (  # noqa: F401 (the key maps are part of this module's API)
    KeyMapError,
    d2_key_to_tv,
    detectron2_to_torchvision,
    torchvision_to_detectron2,
    tv_key_to_d2,
)

#: ImageNet statistics every sslkit pipeline normalises with (RGB, pixel values in [0, 1])
PIXEL_MEAN, PIXEL_STD = IMAGENET_MEAN, IMAGENET_STD
#: the same in 0–255 units, as detectron2's MODEL.PIXEL_MEAN / PIXEL_STD want them
PIXEL_MEAN_255 = (123.675, 116.28, 103.53)
PIXEL_STD_255 = (58.395, 57.12, 57.375)

EXPORT_FORMAT = "sslkit.export"
EXPORT_VERSION = 1

# -- architectures ---------------------------------------------------------------------------

@functools.cache
def arch_signature(arch: str) -> dict[str, tuple[int, ...]]:
    """Key → shape of the backbone ``arch`` (built on the meta device: no memory, no init cost)."""

    with torch.device("meta"):
        net = build_backbone(arch)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _archs_likely_first() -> list[str]:
    first = ["resnet50", "resnet18", "resnet_tiny", "resnet34", "resnet101"]
    return first + [a for a in available_archs() if a not in first]


def compare_to_arch(sd: dict[str, torch.Tensor], arch: str) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong-shape) keys of ``sd`` against the backbone ``arch``."""
    sig = arch_signature(arch)
    missing = [k for k in sig if k not in sd]
    unexpected = [k for k in sd if k not in sig]
    shape = [f"{k} {tuple(sd[k].shape)}≠{sig[k]}" for k in sig if k in sd and tuple(sd[k].shape) != sig[k]]
    return missing, unexpected, shape


def infer_arch(sd: dict[str, torch.Tensor]) -> str:
    """The architecture whose backbone has exactly these keys and shapes.

    Raises :class:`KeyMapError` naming the closest architecture and what differs.
    """
    best = None
    for arch in _archs_likely_first():
        missing, unexpected, shape = compare_to_arch(sd, arch)
        if not (missing or unexpected or shape):
            return arch
        score = len(missing) + len(unexpected) + len(shape)
        if best is None or score < best[0]:
            best = (score, arch, missing, unexpected, shape)
    _, arch, missing, unexpected, shape = best
    raise KeyMapError(f"matches no known ResNet backbone; closest is {arch}, which differs in",
                      [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected] + shape)


def check_against_arch(sd: dict[str, torch.Tensor], arch: str) -> None:
    """Raise :class:`KeyMapError` unless ``sd`` is exactly the backbone of ``arch``."""
    missing, unexpected, shape = compare_to_arch(sd, arch)
    if missing or unexpected or shape:
        raise KeyMapError(f"is not a {arch} backbone; it differs in",
                          [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected] + shape)


def backbone_digest(sd: dict[str, torch.Tensor]) -> str:
    """sha256 of the backbone's tensors (names, dtypes, shapes, values; ``num_batches_tracked``
    ignored): the same weights give the same digest in a checkpoint, an export or a .pkl."""
    h = hashlib.sha256()
    for k in sorted(sd):
        if k.endswith("num_batches_tracked"):
            continue
        a = sd[k].detach().cpu().contiguous()
        if a.is_floating_point():
            a = a.float()
        h.update(f"{k}|{a.dtype}|{tuple(a.shape)}|".encode())
        h.update(a.numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the metadata of an exported torchvision file lives: ``<file>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def detectron2_config(arch: str, weights: str | None = None, parts: tuple[str, ...] = (), width: int = 256) -> str:
    """The detectron2 config lines (YAML) that use an exported ``arch`` backbone correctly (and, with
    ``parts``, its FPN / 4-conv box head of ``width`` channels, both with BN)."""
    depth = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152,
             "resnext50_32x4d": 50, "resnext101_32x8d": 101, "resnext101_64x4d": 101,
             "wide_resnet50_2": 50, "wide_resnet101_2": 101}.get(arch)
    if depth is None:
        return f"# {arch} has no detectron2 ResNet config (detectron2 builds R18/34/50/101/152 and ResNeXt/wide variants)"
    groups, width = {"resnext50_32x4d": (32, 4), "resnext101_32x8d": (32, 8), "resnext101_64x4d": (64, 4),
                     "wide_resnet50_2": (1, 128), "wide_resnet101_2": (1, 128)}.get(arch, (1, 64))
    lines = ["MODEL:"]
    if weights:
        lines.append(f'  WEIGHTS: "{weights}"')
    lines += [f"  PIXEL_MEAN: [{', '.join(str(v) for v in PIXEL_MEAN_255)}]",
              f"  PIXEL_STD: [{', '.join(str(v) for v in PIXEL_STD_255)}]",
              "  RESNETS:", f"    DEPTH: {depth}", "    STRIDE_IN_1X1: False  # torchvision puts the stride in the 3x3 conv"]
    if depth in (18, 34):
        lines.append("    RES2_OUT_CHANNELS: 64")
    if (groups, width) != (1, 64):
        lines += [f"    NUM_GROUPS: {groups}", f"    WIDTH_PER_GROUP: {width}"]
    if "fpn" in parts:
        lines += ["  FPN:", f"    OUT_CHANNELS: {width}", '    NORM: "SyncBN"  # the exported FPN has BN in every conv']
    if "head" in parts:
        lines += ["  ROI_BOX_HEAD:", '    NAME: "FastRCNNConvFCHead"', "    NUM_CONV: 4", "    NUM_FC: 1",
                  f"    CONV_DIM: {width}", '    NORM: "SyncBN"']
    lines += ["INPUT:", '  FORMAT: "RGB"']
    return "\n".join(lines)


# -- any weights → backbone ------------------------------------------------------------------

def _strip_module_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith("module.") for k in sd):  # saved from a DistributedDataParallel wrapper
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def read_sidecar(path: Path, sha256: str | None = None) -> dict | None:
    """The export sidecar of ``path`` if it exists and describes this very file (its sha256,
    computed unless given), else ``None``."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        return None
    if meta.get("file_sha256") != (sha256 or file_sha256(path)):
        return None
    return meta


def backbone_state_dict(weights: str | os.PathLike, encoder: str | None = None,
                        arch: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The torchvision-format backbone state_dict held by any weights file, plus what is known of it.

    ``weights`` is an sslkit training checkpoint (``encoder`` picks one of its ``encoders``,
    default ``default_encoder``), a torchvision state_dict (``fc.*`` dropped; a ``module.``
    prefix stripped; metadata from its ``.json`` sidecar when it matches) or a detectron2
    ``.pkl``.  The result is checked key by key and shape by shape against the architecture
    (from the checkpoint's config, the sidecar, ``arch``, or inferred from the shapes).
    Detector parts beside the backbone (:mod:`sslkit.models.parts`) are named in ``meta["parts"]``;
    :func:`weights_state_dicts` returns their tensors too.
    """
    sd, _, meta = weights_state_dicts(weights, encoder, arch)
    return sd, meta


def weights_state_dicts(weights: str | os.PathLike, encoder: str | None = None,
                        arch: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, dict], dict]:
    """:func:`backbone_state_dict` plus the detector parts the file holds for that encoder:
    ``(backbone, {part: part state_dict}, meta)``, each part checked against the detector's layout
    (``meta["parts"]``: their names; ``meta["fpn_channels"]``: their width)."""

    path = Path(weights)
    kind, obj = load_weights_file(path)
    meta: dict = {"source": str(path), "kind": kind, "sha256": file_sha256(path), "notes": []}
    declared = None
    parts: dict[str, dict] = {}
    if kind == "checkpoint":
        encoders = obj.get("encoders")
        if not isinstance(encoders, dict) or not encoders:
            raise FormatError("checkpoint has no 'encoders' table (encoder name → key prefix)", path,
                              "it was not written by 'sslkit pretrain'; export its backbone state_dict instead")
        name = encoder or obj.get("default_encoder") or next(iter(encoders))
        if name not in encoders:
            raise UserError(f"no encoder {name!r} in this checkpoint", path,
                            f"choose --encoder from: {', '.join(encoders)}")
        prefix = encoders[name]
        model = obj["model"]
        sd = {k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)}
        if not sd:
            raise FormatError(f"encoder {name!r} (prefix {prefix!r}) has no tensors in 'model'", path)
        for part, pre in ((obj.get("parts") or {}).get(name) or {}).items():
            parts[part] = {k[len(pre):]: v for k, v in model.items() if k.startswith(pre)}
        cfg = obj.get("config") or {}
        declared = cfg.get("arch")
        meta.update(method=obj.get("method"), encoder=name, encoders=list(encoders), epoch=obj.get("epoch"),
                    step=obj.get("step"))
    elif kind == "state_dict":
        if encoder is not None:
            raise UserError("--encoder only applies to a training checkpoint; this file holds one backbone", path)
        sd = _strip_module_prefix(obj)
        if P.is_detection_layout(sd):  # an export with detector parts (backbone.body., backbone.fpn., …)
            try:
                sd, parts = P.split_detection_layout(sd)
            except P.PartError as e:
                raise FormatError(str(e), path) from e
        if "conv1.weight" not in sd:
            prefixes = sorted(k[: -len("layer1.0.conv1.weight")] for k in sd if k.endswith(".layer1.0.conv1.weight"))
            if prefixes:
                raise FormatError(f"its backbone keys carry the prefix {prefixes[0]!r} (it holds more than a backbone)",
                                  path, "pass the sslkit checkpoint it came from, or save the backbone's tensors "
                                        "with torchvision names (prefix stripped)")
        fc = sorted(k for k in sd if k.startswith("fc."))
        if fc:
            sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
            meta["notes"].append(f"dropped the classifier ({', '.join(fc)})")
        side = read_sidecar(path, meta["sha256"])
        if side is not None:
            declared = side.get("arch")
            meta.update(method=side.get("method"), encoder=side.get("encoder"), export=side)
        elif sidecar_path(path).exists():
            meta["notes"].append(f"ignored {sidecar_path(path).name}: it does not describe this file (not an export record, or its sha256 differs)")
    else:
        if encoder is not None:
            raise UserError("--encoder only applies to a training checkpoint; this file holds one backbone", path)
        try:
            rest, parts = P.split_detectron2(obj["model"])
            sd = detectron2_to_torchvision(rest)
        except KeyMapError as e:
            raise FormatError(str(e), path, "only a bare ResNet backbone .pkl (e.g. from 'sslkit export') can be read") from e
        if obj.get("input_format", "RGB") != "RGB":
            raise FormatError(f"these weights expect {obj['input_format']} input; sslkit feeds RGB", path)
        sslmeta = obj.get("sslkit") if isinstance(obj.get("sslkit"), dict) else {}
        if sslmeta.get("format") == EXPORT_FORMAT:  # written by 'sslkit export'
            declared = sslmeta.get("arch")
            meta.update(method=sslmeta.get("method"), encoder=sslmeta.get("encoder"), export=sslmeta)
    if arch is not None and declared is not None and arch != declared:
        raise UserError(f"--arch {arch} contradicts the file, which holds a {declared}", path,
                        "drop --arch or pass the matching one")
    arch = arch or declared
    try:
        if arch is None:
            arch = infer_arch(sd)
        else:
            check_against_arch(sd, arch)
    except KeyMapError as e:
        raise FormatError(str(e), path, "every backbone tensor must be present and named as in torchvision") from e
    widths = {}
    for part, psd in parts.items():
        try:
            widths[part] = P.check_part(part, psd)
        except P.PartError as e:
            raise FormatError(str(e), path) from e
    if len(set(widths.values())) > 1:
        raise FormatError(f"its FPN and box head differ in width ({widths})", path)
    meta.update(arch=arch, backbone_sha256=backbone_digest(sd), pixel_mean=list(PIXEL_MEAN),
                pixel_std=list(PIXEL_STD), input_format="RGB", parts=sorted(parts))
    if widths:
        meta["fpn_channels"] = next(iter(widths.values()))
    return sd, parts, meta


def load_backbone(weights: str | os.PathLike, arch: str | None = None, encoder: str | None = None,
                  seed: int = 0):
    """A backbone (``fc = Identity``, eval mode) with ``weights`` loaded, and its metadata.

    ``weights`` is ``"random"`` (then ``arch`` is required; the initialisation is seeded) or
    any file :func:`backbone_state_dict` reads.  ``meta["backbone_sha256"]`` identifies the
    weights whatever container they came in.
    """

    if str(weights) == "random":
        if arch is None:
            raise UserError("random weights need an architecture", None, "pass --arch, e.g. --arch resnet50")
        if encoder is not None:
            raise UserError("--encoder only applies to a training checkpoint", None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_backbone(arch)
        meta = {"source": "random", "kind": "random", "arch": arch, "seed": seed, "notes": [],
                "backbone_sha256": backbone_digest(net.state_dict()), "pixel_mean": list(PIXEL_MEAN),
                "pixel_std": list(PIXEL_STD), "input_format": "RGB"}
        return net.eval(), meta
    sd, meta = backbone_state_dict(weights, encoder=encoder, arch=arch)
    net = build_backbone(meta["arch"])
    net.load_state_dict(sd, strict=True)
    return net.eval(), meta
