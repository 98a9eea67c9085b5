"""Checkpoints (``.pth``) and exported weights: atomic save, safe load.

A training checkpoint is a plain dict saved with ``torch.save``::
    format="sslkit.checkpoint", format_version, sslkit_version, command,
    method, config (resolved, JSON-compatible), epoch, step,
    model (state_dict), optimizer, scaler, scheduler, ema (or None),
    rng {torch, cuda, numpy, python}, data (sampler position), metrics

Everything in it is tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(weights_only=True)``: no pickled code runs on load.

Exported weights are either a plain torchvision ``state_dict`` (it loads into
``torchvision.models.resnet*`` with ``strict=True``; its metadata lives in a
``.json`` sidecar) or a detectron2 ``.pkl`` (a pickled dict of numpy arrays,
read back here with an unpickler that admits numpy arrays only).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from sslkit import __version__
from sslkit.errors import FormatError, UserError
from sslkit.io.artefacts import command_line
from sslkit.io.atomic import atomic_path

CHECKPOINT_FORMAT = "sslkit.checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Write a training checkpoint atomically (temporary file + rename)."""

    body = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "sslkit_version": __version__,
        "command": payload.get("command", command_line()),
    }
    body.update(payload)
    path = Path(path)
    with atomic_path(path, needed=tensor_bytes(body)) as tmp:
        torch.save(body, tmp)
    return path


def tensor_bytes(obj) -> int:
    """Bytes of the tensors in a nested dict/list (what a ``torch.save`` of it needs, give or take)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _torch_load(path: Path, map_location="cpu"):
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"PK" and magic[:1] != b"\x80":  # torch.save's zip format, or a legacy pickle
        raise FormatError("not a readable PyTorch file (neither a torch zip archive nor a pickle)", path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise FormatError("refused to load: it contains pickled objects other than weights",
                          path, "only sslkit checkpoints and plain state_dicts are accepted") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise FormatError(f"not a readable PyTorch file ({msg})", path) from e


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load and validate an sslkit training checkpoint (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError("no such file", path)
    ck = _torch_load(path, map_location)
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise FormatError("not an sslkit checkpoint", path, "pass a .pth written by 'sslkit pretrain'")
    ver = int(ck.get("format_version", 0))
    if ver > CHECKPOINT_VERSION:
        raise FormatError(f"checkpoint format_version {ver} is newer than this sslkit reads ({CHECKPOINT_VERSION})",
                          path, f"upgrade sslkit (this is {__version__})")
    for key in ("method", "model", "config"):
        if key not in ck:
            raise FormatError(f"damaged checkpoint (no {key!r})", path)
    return ck


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for detectron2 weight files: numpy arrays and builtins only, nothing executable."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def load_detectron2_pkl(path: str | os.PathLike) -> dict:
    """Read a detectron2 weight ``.pkl`` (``{"model": {name: ndarray}, ...}``) without running code."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = _NumpyOnlyUnpickler(io.BufferedReader(f)).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as e:
        raise FormatError(f"not a detectron2 weight file ({e})", path) from e
    if not isinstance(data, dict) or "model" not in data:
        raise FormatError("not a detectron2 weight file (no 'model' dict)", path)
    model = data["model"]
    if not isinstance(model, dict):
        raise FormatError(f"not a detectron2 weight file (its 'model' entry is a {type(model).__name__}, not a "
                          "dict of arrays)", path)
    bad = [str(k) for k, v in model.items() if not isinstance(k, str) or not (
        isinstance(v, (np.ndarray, np.number, int, float)) and np.asarray(v).dtype.kind in "biuf")]
    if bad:
        shown = ", ".join(bad[:4]) + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else "")
        raise FormatError(f"not a detectron2 weight file (entries that are not numeric arrays: {shown})", path)
    return data


def save_detectron2_pkl(path: str | os.PathLike, model: dict[str, np.ndarray], extra: dict | None = None) -> Path:
    body = {"model": {k: np.ascontiguousarray(v) for k, v in model.items()}, "__author__": "sslkit"}
    body.update(extra or {})
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(body, f, protocol=4)
    return path


def load_weights_file(path: str | os.PathLike) -> tuple[str, dict]:
    """Identify and load any weights file sslkit understands.

    Returns ``(kind, obj)`` with kind ``"checkpoint"`` (an sslkit training
    checkpoint), ``"state_dict"`` (a plain tensor dict, e.g. from ``export``)
    or ``"detectron2"`` (a detectron2 ``.pkl``).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("no such file", path)
    if path.suffix == ".pkl":
        return "detectron2", load_detectron2_pkl(path)
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return "checkpoint", load_checkpoint(path)
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "state_dict", obj
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        sd = obj["state_dict"]
        if all(isinstance(v, torch.Tensor) for v in sd.values()):
            return "state_dict", sd
    raise FormatError("not a checkpoint or a state_dict of tensors", path)


def rng_state() -> dict:
    """RNG states of torch, CUDA, numpy and Python's random, in weights_only-loadable types."""
    import random

    np_state = np.random.get_state()
    st = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": list(random.getstate()[1]) + [random.getstate()[0]],
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    import random

    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = st["python"]
    random.setstate((py[-1], tuple(py[:-1]), None))
    if "cuda" in st and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(st["cuda"])
