"""The training dataset every method's views build on: images of an
:class:`~sslkit.io.images.ImageSource`, decoded, with per-sample seeded augmentation.

Items are keyed by ``(epoch, index)``: every sample's augmentation draws come from torch's
generator seeded by ``(seed, epoch, index)`` inside :func:`torch.random.fork_rng`, so a view is a
function of (seed, epoch, index) only, not of the number of workers, of prefetching, or of where a
run was resumed (the engine's sampler, :mod:`sslkit.engine.data`, fixes which indices a step takes).

Unreadable images: the sample is replaced by the next readable image in source order, drawn with
the same seed (so batch sizes stay equal on every rank), and the file is reported back with the
sample; the trainer warns once per file and lists them in ``RUN_DIR/skipped_images.tsv``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from sslkit.io.images import ImageDecodeError, ImageRecord, ImageSource, load_rgb

#: give up when this many images in a row cannot be decoded (something is wrong with the source)
MAX_CONSECUTIVE_UNREADABLE = 64


def sample_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (numpy's SeedSequence hashing: well mixed, stable)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


class ImageDataset(Dataset):
    """Items are keyed by ``(epoch, index)``; an item is ``(transform(image), skipped)``.

    ``skipped`` lists ``(file_name, reason)`` of unreadable images replaced to produce this item.
    """

    def __init__(self, source: ImageSource, transform: Callable, seed: int):
        self.source = source
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        n = len(self.source)
        skipped: list[tuple[str, str]] = []
        for attempt in range(min(n, MAX_CONSECUTIVE_UNREADABLE)):
            record = self.source[(index + attempt) % n]
            try:
                image = self.read(record)
                with torch.random.fork_rng(devices=[]):
                    # the CPU generator only: torch.manual_seed would also (lazily) reseed every CUDA
                    # device, recording a stack trace per call (a few ms per sample)
                    torch.random.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
                    sample = self.make_sample(image, record)
                break
            except ImageDecodeError as e:
                skipped.append((record.file_name, e.reason))
        else:
            raise RuntimeError(f"{len(skipped)} images in a row could not be decoded (from "
                               f"{self.source[index].file_name}); check the image folder")
        return sample, skipped

    def read(self, record: ImageRecord):
        """The image of ``record`` as ``make_sample`` takes it (here: decoded RGB pixels); raises
        :class:`~sslkit.io.images.ImageDecodeError` for an unreadable file."""
        return load_rgb(record.path)[0]

    def make_sample(self, image: np.ndarray, record: ImageRecord):
        """One training sample from a decoded image (subclasses add per-image data, e.g. masks).
        Runs with torch's generator seeded by ``(seed, epoch, index)``; an ``ImageDecodeError`` it
        raises (a file found unreadable only now) replaces the image like an unreadable one."""
        return self.transform(image)
