"""Training data: images from an :class:`~sslkit.io.images.ImageSource`, a resumable sampler, and
per-sample seeded augmentation.

Determinism: epoch ``e`` visits the images in ``randperm(N)`` drawn from a generator seeded by
``(seed, e)``; global step ``s`` of the epoch takes positions ``[s·B, (s+1)·B)`` of it (the last
partial batch is dropped) and rank ``r`` of ``W`` takes the ``r``-th slice of ``B/W``. Every
sample's augmentation draws come from torch's generator seeded by ``(seed, e, index)`` inside
:func:`torch.random.fork_rng`. So the batch at any step, and every view in it, is a function of
(seed, step) only: not of the number of workers, of prefetching, or of where a run was resumed.

Unreadable images: the sample is replaced by the next readable image in source order (so batch
sizes stay equal on every rank) and the file is reported back with the batch; the trainer warns
once per file and lists them in ``RUN_DIR/skipped_images.tsv``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate

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
                image, _ = load_rgb(record.path)
                break
            except ImageDecodeError as e:
                skipped.append((record.file_name, e.reason))
        else:
            raise RuntimeError(f"{len(skipped)} images in a row could not be decoded (from "
                               f"{self.source[index].file_name}); check the image folder")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            sample = self.make_sample(image, record)
        return sample, skipped

    def make_sample(self, image: np.ndarray, record: ImageRecord):
        """One training sample from a decoded image (subclasses add per-image data, e.g. masks)."""
        return self.transform(image)


class StepBatchSampler(Sampler):
    """This rank's share of each global batch of one epoch, from a given step on (resume)."""

    def __init__(self, num_images: int, global_batch: int, rank: int, world_size: int, seed: int):
        if global_batch % world_size:
            raise ValueError("global batch must split evenly across ranks")
        self.num_images = num_images
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.seed = seed
        self.steps_per_epoch = num_images // global_batch
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch = epoch
        self.start_step = start_step

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(sample_seed(self.seed, epoch))
        return torch.randperm(self.num_images, generator=g)

    def global_indices(self, epoch: int, step: int) -> list[int]:
        """All ranks' images of ``step`` (within ``epoch``), in rank order."""
        perm = self.permutation(epoch)
        return perm[step * self.global_batch:(step + 1) * self.global_batch].tolist()

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm = self.permutation(self.epoch)
        lo = self.rank * self.local_batch
        for step in range(self.start_step, self.steps_per_epoch):
            batch = perm[step * self.global_batch:(step + 1) * self.global_batch][lo:lo + self.local_batch]
            yield [(self.epoch, i) for i in batch.tolist()]


class SkipAwareCollate:
    """Collate ``(sample, skipped)`` items into ``(batch, skipped)`` with the method's collate for samples."""

    def __init__(self, collate: Callable = default_collate):
        self.collate = collate

    def __call__(self, items):
        samples = [s for s, _ in items]
        skipped = [x for _, sk in items for x in sk]
        return self.collate(samples), skipped
