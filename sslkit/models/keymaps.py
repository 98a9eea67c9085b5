"""ResNet backbone key maps: torchvision ⇄ detectron2 names.

Formats (both describe the same tensors):

* **torchvision** — the ``state_dict`` of ``torchvision.models.resnet*`` without ``fc.*``:
  ``conv1.weight``, ``bn1.*``, ``layer{1..4}.{i}.conv{1,2,3}.weight``, ``layer{1..4}.{i}.bn{1,2,3}.*``,
  ``layer{1..4}.0.downsample.{0,1}.*``.  BatchNorm entries are ``weight, bias, running_mean,
  running_var, num_batches_tracked``.
* **detectron2** — the names of ``detectron2.modeling.backbone.resnet.ResNet`` (``BasicStem``,
  stages ``res2..res5`` of ``BottleneckBlock`` for R50/101/152 or ``BasicBlock`` for R18/34,
  each conv a ``Conv2d`` with a ``.norm`` child): ``stem.conv1.weight``, ``stem.conv1.norm.*``,
  ``res{2..5}.{i}.conv{1,2,3}.weight``, ``res{2..5}.{i}.conv{k}.norm.*``,
  ``res{2..5}.0.shortcut.weight``, ``res{2..5}.0.shortcut.norm.*``.  detectron2's default
  ``FrozenBatchNorm2d`` has no ``num_batches_tracked``, so it is dropped on the way there and
  recreated (as 0) on the way back.

The map is exact and total: every key of a torchvision ResNet backbone has one detectron2
name and back, and any key outside the map is an error, never a silently skipped tensor.
Detector parts (FPN, box head) have their own maps in :mod:`sslkit.models.parts`.
"""

from __future__ import annotations

import re

import numpy as np
import torch

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_TV_STEM = {re.compile(r"conv1\.weight"): "stem.conv1.weight",
            re.compile(rf"bn1\.{_BN}"): r"stem.conv1.norm.\1"}
_TV_BLOCK = re.compile(r"layer([1-4])\.(\d+)\.(.+)")
_TV_IN_BLOCK = {re.compile(r"conv([1-3])\.weight"): r"conv\1.weight",
                re.compile(rf"bn([1-3])\.{_BN}"): r"conv\1.norm.\2",
                re.compile(r"downsample\.0\.weight"): "shortcut.weight",
                re.compile(rf"downsample\.1\.{_BN}"): r"shortcut.norm.\1"}
_D2_STEM = {re.compile(r"stem\.conv1\.weight"): "conv1.weight",
            re.compile(rf"stem\.conv1\.norm\.{_BN}"): r"bn1.\1"}
_D2_BLOCK = re.compile(r"res([2-5])\.(\d+)\.(.+)")
_D2_IN_BLOCK = {re.compile(r"conv([1-3])\.weight"): r"conv\1.weight",
                re.compile(rf"conv([1-3])\.norm\.{_BN}"): r"bn\1.\2",
                re.compile(r"shortcut\.weight"): "downsample.0.weight",
                re.compile(rf"shortcut\.norm\.{_BN}"): r"downsample.1.\1"}


class KeyMapError(ValueError):
    """Keys that are not part of a ResNet backbone in the expected naming."""

    def __init__(self, what: str, keys: list[str]):
        self.keys = keys
        shown = ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
        super().__init__(f"{what}: {shown}" if keys else what)


def _sub(rules: dict, s: str) -> str | None:
    for pat, repl in rules.items():
        if pat.fullmatch(s):
            return pat.sub(repl, s)
    return None


def tv_key_to_d2(key: str) -> str | None:
    """detectron2 name of one torchvision backbone key (``None`` if it is not one)."""
    if (out := _sub(_TV_STEM, key)) is not None:
        return out
    m = _TV_BLOCK.fullmatch(key)
    if m and (rest := _sub(_TV_IN_BLOCK, m.group(3))) is not None:
        return f"res{int(m.group(1)) + 1}.{m.group(2)}.{rest}"
    return None


def d2_key_to_tv(key: str) -> str | None:
    """torchvision name of one detectron2 ResNet key (``None`` if it is not one)."""
    if (out := _sub(_D2_STEM, key)) is not None:
        return out
    m = _D2_BLOCK.fullmatch(key)
    if m and (rest := _sub(_D2_IN_BLOCK, m.group(3))) is not None:
        return f"layer{int(m.group(1)) - 1}.{m.group(2)}.{rest}"
    return None


def torchvision_to_detectron2(sd: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Rename a torchvision-format backbone state_dict to detectron2's ResNet names (numpy float32).

    ``num_batches_tracked`` is dropped (detectron2's FrozenBN has none); any other key that
    is not a backbone key (``fc.*``, a projector, a prefixed name) raises :class:`KeyMapError`.
    """
    out: dict[str, np.ndarray] = {}
    bad = []
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        new = tv_key_to_d2(k)
        if new is None:
            bad.append(k)
            continue
        a = v.detach().cpu()
        out[new] = (a.float() if a.is_floating_point() else a).numpy().copy()
    if bad:
        raise KeyMapError("not torchvision ResNet backbone keys", bad)
    return out


def detectron2_to_torchvision(model: dict) -> dict[str, torch.Tensor]:
    """Inverse of :func:`torchvision_to_detectron2`: detectron2 ResNet names → torchvision.

    Every BatchNorm gets a ``num_batches_tracked`` of 0 when the file has none, so the result
    loads with ``strict=True`` (the counter has no effect on eval or on training with a momentum).
    """
    if not isinstance(model, dict):
        raise KeyMapError(f"its 'model' entry is a {type(model).__name__}, not a dict of arrays", [])
    out: dict[str, torch.Tensor] = {}
    bad, not_numeric = [], []
    for k, v in model.items():
        new = d2_key_to_tv(k) if isinstance(k, str) else None
        if new is None:
            bad.append(str(k))
            continue
        arr = np.asarray(v) if isinstance(v, (np.ndarray, int, float, np.number)) else None
        if arr is None or arr.dtype.kind not in "biuf":
            not_numeric.append(k)
            continue
        out[new] = torch.from_numpy(np.array(arr))
    if not_numeric:
        raise KeyMapError("entries that are not numeric arrays", not_numeric)
    if bad:
        raise KeyMapError("not detectron2 ResNet backbone keys", bad)
    for k in [k for k in out if k.endswith(".running_mean")]:
        out.setdefault(k[: -len("running_mean")] + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    return out
