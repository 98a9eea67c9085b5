"""Planned views: a method's views as per-sample rows of parameters, drawn in the loader worker from
the image's header, and pixels made either in the worker or on the training device.

A :class:`PlanDataset` is an :class:`~sslkit.views.dataset.ImageDataset` (items keyed by
``(epoch, index)``, torch seeded per sample, unreadable images replaced by the next readable one),
whose ``read`` only reads the file (:func:`sslkit.io.encoded.read_encoded`) and whose
``make_sample`` calls the method's :meth:`PlanDataset.plan`: the sample's sources (its image, and
for ORL a neighbour image), one row per view (:mod:`sslkit.transforms.params`: the reference
pipeline's exact draws) and the per-sample tensors that travel with the pixels (DetCon's owner
grids and mask ids, ORL's fallback flags, UniVIP's box statistics). ``slots`` is each row
position's :class:`~sslkit.transforms.ViewAug` (its size and static settings).

* ``mode="cpu"`` (``data_path: cpu``): the worker decodes each source once, at the largest libjpeg
  DCT reduction that keeps every view of it a downscale (:func:`sslkit.io.encoded.reduction_for`),
  renders the rows with OpenCV (:mod:`sslkit.transforms.render_cpu`) and ships uint8 views;
  :meth:`PlanDataset.finish` normalises them on the device and assembles the method's batch.
* ``mode="gpu"``: the worker ships the bytes and rows (:class:`PlanBatch`); decoding and rendering
  happen batched on the device (:mod:`sslkit.views.plan.device`).

:meth:`PlanDataset.assemble` turns the per-position views (B, 3, S, S) and the extras into exactly
the batch the method's ``forward_train`` takes on the reference path.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

from sslkit.io.encoded import EncodedImage, decode_bgr, read_encoded, reduction_for
from sslkit.transforms import ViewAug
from sslkit.transforms.params import ROW, ViewDrawer, aug_key
from sslkit.transforms.render_cpu import normalize, render_view
from sslkit.views.dataset import ImageDataset

MODES = ("cpu", "gpu")


def _one_cv2_thread() -> None:
    """Loader workers are one core each: OpenCV must not start its own thread pool in them."""
    import cv2

    if get_worker_info() is not None and cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


def render_sample_cpu(sources: list[EncodedImage], rows: np.ndarray, slots: Sequence[ViewAug]) -> tuple:
    """The sample's views as (3, S, S) uint8 tensors, in row order: each source decoded once, reduced
    where every view of it allows."""

    out: list[torch.Tensor | None] = [None] * len(rows)
    src = rows[:, ROW["src"]].astype(int)
    for s, image in enumerate(sources):
        mine = np.flatnonzero(src == s)
        if not len(mine):
            continue
        crops = [(rows[i, ROW["x2"]] - rows[i, ROW["x1"]], rows[i, ROW["y2"]] - rows[i, ROW["y1"]], slots[i].size)
                 for i in mine]
        d = reduction_for(crops) if image.is_jpeg else 1
        pixels = decode_bgr(image, d)
        for i in mine:
            out[i] = render_view(pixels, rows[i], slots[i], d)
    return tuple(out)


@dataclass
class PlanBatch:
    """A collated batch of the gpu path: every source's bytes (or pixels) in one uint8 tensor."""

    data: torch.Tensor  # uint8, the sources' bytes / RGB pixels back to back
    spans: np.ndarray  # (n_sources, 2) offset, length into data
    sizes: np.ndarray  # (n_sources, 3) height, width, EXIF orientation (upright height/width)
    is_jpeg: np.ndarray  # (n_sources,) bool
    names: list[str]
    paths: list[str]
    first: np.ndarray  # (B + 1,) sample b's sources are first[b]:first[b + 1]
    rows: np.ndarray  # (B, n_views, ROW_SIZE) float64
    extra: Any  # the extras, collated

    def pin_memory(self) -> PlanBatch:
        self.data = self.data.pin_memory()
        self.extra = _pin(self.extra)
        return self

    def __len__(self) -> int:
        return len(self.rows)


def _pin(x):
    if isinstance(x, torch.Tensor):
        return x.pin_memory()
    if isinstance(x, (list, tuple)):
        return type(x)(_pin(v) for v in x)
    return x


def collate_plans(samples: list[tuple]) -> PlanBatch:
    sources = [s for sample in samples for s in sample[0]]
    chunks = [np.ascontiguousarray(s.data).reshape(-1) for s in sources]
    lengths = np.array([len(c) for c in chunks], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    data = torch.from_numpy(np.concatenate(chunks)) if chunks else torch.zeros(0, dtype=torch.uint8)
    counts = [len(sample[0]) for sample in samples]
    return PlanBatch(data=data, spans=np.stack([offsets, lengths], 1),
                     sizes=np.array([[s.height, s.width, s.orientation] for s in sources], np.int64),
                     is_jpeg=np.array([s.is_jpeg for s in sources], bool),
                     names=[s.file_name for s in sources], paths=[s.path for s in sources],
                     first=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                     rows=np.stack([sample[1] for sample in samples]),
                     extra=default_collate([sample[2] for sample in samples]))


class PlanDataset(ImageDataset):
    """Base of the planned datasets (module docstring). Subclasses set ``slots`` (via ``__init__``)
    and implement :meth:`plan` and :meth:`assemble`."""

    def __init__(self, source, seed: int, slots: Sequence[ViewAug], mode: str):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        super().__init__(source, None, seed)
        self.slots = tuple(slots)
        self.mode = mode

    # -- loader worker -----------------------------------------------------------------------------
    def read(self, record) -> EncodedImage:
        _one_cv2_thread()
        return read_encoded(record.path, record.file_name)

    def make_sample(self, image: EncodedImage, record):
        sources, rows, extra = self.plan(image, record)
        if len(rows) != len(self.slots):
            raise RuntimeError(f"{type(self).__name__} planned {len(rows)} views for {len(self.slots)} slots")
        if self.mode == "gpu":
            return sources, rows, extra
        return render_sample_cpu(sources, rows, self.slots), extra

    @abc.abstractmethod
    def plan(self, image: EncodedImage, record) -> tuple[list[EncodedImage], np.ndarray, tuple]:
        """``(sources, rows (n_views, ROW_SIZE), extras)`` of one sample; torch is seeded per sample."""

    @abc.abstractmethod
    def assemble(self, views: list[torch.Tensor], extra):
        """The method's batch from the per-slot views (B, 3, S, S) and the collated extras (on the device)."""

    def collate(self, samples: list):
        return collate_plans(samples) if self.mode == "gpu" else default_collate(samples)

    # -- main process ------------------------------------------------------------------------------
    def groups(self) -> list[tuple[ViewAug, list[int]]]:
        """Slot positions that render as one batch: same size and static settings."""
        out: dict[tuple, tuple[ViewAug, list[int]]] = {}
        for i, aug in enumerate(self.slots):
            out.setdefault(aug_key(aug), (aug, []))[1].append(i)
        return list(out.values())

    def finish(self, batch, device: torch.device):
        """``data_path: cpu``: a collated ``(uint8 views, extras)`` batch → the method's batch on ``device``."""
        views, extra = batch
        views = [normalize(v.to(device, non_blocking=True), aug) for v, aug in zip(views, self.slots, strict=True)]
        return self.assemble(views, to_device(extra, device))


def to_device(x, device):
    """Tensors (in nested lists/tuples) moved to ``device``, anything else as it is."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    return x


class MultiViewPlan(PlanDataset):
    """Any method whose views are :class:`~sslkit.transforms.MultiView` pipelines (BYOL, MoCo v2,
    SimCLR, and every method built the same way): one row per ViewAug, the batch a tuple of views."""

    def __init__(self, source, views: Sequence[ViewAug], seed: int, mode: str):
        super().__init__(source, seed, views, mode)
        self.drawers = [ViewDrawer(v) for v in self.slots]

    def plan(self, image: EncodedImage, record):
        rows = np.stack([d.draw(image.height, image.width) for d in self.drawers])
        return [image], rows, ()

    def assemble(self, views, extra):
        return tuple(views)

