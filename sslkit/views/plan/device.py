"""The ``data_path: gpu`` main-process side: a :class:`~sslkit.views.plan.dataset.PlanBatch` (file
bytes and view rows from the loader) → the method's batch on the training device.

Decoding: every JPEG of the batch in one ``torchvision.io.decode_jpeg(list, device=...)`` call
(nvJPEG on a GPU; libjpeg-turbo on CPU tensors), EXIF orientation applied on the device, sources the
worker already decoded (PNG, CMYK, truncated, …: :func:`sslkit.io.encoded.read_encoded`) uploaded
as pixels. If the batched call fails, images are decoded one by one; one that fails on the device
is decoded on the CPU by :func:`sslkit.io.images.load_rgb` (the CPU path's decoder), and if that
fails too, the file is unreadable after all: its sample takes a copy of another sample of the
batch (pixels, rows and extras, so boxes and masks stay with their pixels) and the file is
reported as skipped, the batch size unchanged. (The CPU path would have taken the next image of the
source instead; the worker only read the file's header and end marker, so such a file, readable
to its end but corrupt inside, is found only here.)

Rendering: the rows of each group of same-sized slots go through
:func:`sslkit.transforms.render_device.render_views` as one batch; the dataset's ``assemble`` makes
the method's batch.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from sslkit.io.images import ImageDecodeError, load_rgb
from sslkit.transforms.params import ROW
from sslkit.transforms.render_device import render_views
from sslkit.views.plan.dataset import PlanBatch, PlanDataset, to_device

# torchvision 0.29 warns at every decode call (TorchCodec supersedes it); once is enough to know
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


#: how the sources were decoded so far in this process: on the device, by the CPU fallback (a JPEG
#: nvJPEG refused), or already in the worker (not a plain JPEG) — for diagnostics and the GPU check
DECODE_COUNTS = {"device": 0, "cpu_fallback": 0, "worker": 0}


def _upload(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.to(device, non_blocking=True) if device.type == "cuda" else t


def _orient_chw(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """(3, H, W) as PIL's ``exif_transpose`` turns it (:func:`sslkit.io.encoded.orient`, channels first)."""
    if orientation in (5, 6, 7, 8):
        x = x.transpose(1, 2)
    if orientation in (2, 3, 6, 7):
        x = x.flip(2)
    if orientation in (3, 4, 7, 8):
        x = x.flip(1)
    return x


def _decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | Exception]:
    """torchvision's batched JPEG decoder (nvJPEG on CUDA; deprecated in torchvision 0.29 in favour
    of TorchCodec, still there); a failure of the batch call is retried image by image."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not datas:
        return []
    try:
        return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    out: list[torch.Tensor | Exception] = []
    for d in datas:
        try:
            out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
        except RuntimeError as e:
            out.append(e)
    return out


def decode_sources(batch: PlanBatch, device: torch.device) -> tuple[list[torch.Tensor | None], dict[int, str]]:
    """Every source of the batch as upright (3, H, W) uint8 on ``device``; ``None`` where unreadable,
    with the reason in the returned ``{source index: reason}``."""
    n = len(batch.names)
    images: list[torch.Tensor | None] = [None] * n
    failed: dict[int, str] = {}
    data = batch.data

    def span(i: int) -> torch.Tensor:
        off, length = (int(v) for v in batch.spans[i])
        return data[off:off + length]

    jpegs = [i for i in range(n) if batch.is_jpeg[i]]
    for i, out in zip(jpegs, _decode_jpegs([span(i) for i in jpegs], device), strict=True):
        h, w, o = (int(v) for v in batch.sizes[i])
        if isinstance(out, torch.Tensor):
            out = _orient_chw(out, o)
            if out.shape[-2:] == (h, w):
                images[i] = out
                DECODE_COUNTS["device"] += 1
                continue
        DECODE_COUNTS["cpu_fallback"] += 1
        try:  # nvJPEG could not (or decoded another size): the CPU path's decoder decides
            pixels, _ = load_rgb(batch.paths[i])
            if pixels.shape[:2] != (h, w):
                raise ImageDecodeError(batch.paths[i], "size differs from its header")
            images[i] = _upload(torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), device)
        except ImageDecodeError as e:
            failed[i] = e.reason
    for i in range(n):
        if not batch.is_jpeg[i]:
            h, w, _ = (int(v) for v in batch.sizes[i])
            images[i] = _upload(span(i).view(h, w, 3).permute(2, 0, 1), device)
            DECODE_COUNTS["worker"] += 1
    return images, failed


def _take(x, index: torch.Tensor):
    if isinstance(x, torch.Tensor):
        return x[index.to(x.device)]
    if isinstance(x, (list, tuple)):
        return type(x)(_take(v, index) for v in x)
    return x


class DeviceViews:
    """Callable: a ``PlanBatch`` → ``(the method's batch on device, skipped [(file, reason)])``."""

    def __init__(self, dataset: PlanDataset, device: torch.device):
        self.dataset = dataset
        self.device = torch.device(device)
        self.groups = dataset.groups()

    def __call__(self, batch: PlanBatch):
        images, failed = decode_sources(batch, self.device)
        rows, first, extra = batch.rows, batch.first, batch.extra
        skipped = [(batch.names[i], f"not decodable on {self.device.type}: {reason}") for i, reason in failed.items()]
        if failed:
            bad = {b for b in range(len(rows)) for i in range(first[b], first[b + 1]) if i in failed}
            good = [b for b in range(len(rows)) if b not in bad]
            if not good:
                raise RuntimeError(f"no image of a batch could be decoded (e.g. {batch.paths[next(iter(failed))]})")
            take = np.array([b if b in good else good[max(0, np.searchsorted(good, b) - 1)] for b in range(len(rows))])
            rows, extra = rows[take], _take(extra, torch.from_numpy(take))
            first = np.concatenate([[0], np.cumsum([first[b + 1] - first[b] for b in take])])
            images = [images[i] for b in take for i in range(batch.first[b], batch.first[b + 1])]
        views: list[torch.Tensor | None] = [None] * rows.shape[1]
        b_count = len(rows)
        for aug, positions in self.groups:
            sub = rows[:, positions].reshape(-1, rows.shape[-1])
            which = np.repeat(first[:-1], len(positions)) + sub[:, ROW["src"]].astype(np.int64)
            out = render_views(images, sub, which, aug).view(b_count, len(positions), 3, aug.size, aug.size)
            for j, p in enumerate(positions):
                views[p] = out[:, j].contiguous() if len(positions) > 1 else out[:, 0]
        return self.dataset.assemble(views, to_device(extra, self.device)), skipped
