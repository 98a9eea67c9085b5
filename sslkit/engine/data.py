"""Training batches: a resumable step sampler and the collate that carries skipped images.

Determinism: epoch ``e`` visits the images in ``randperm(N)`` drawn from a generator seeded by
``(seed, e)``; global step ``s`` of the epoch takes positions ``[s·B, (s+1)·B)`` of it (the last
partial batch is dropped) and rank ``r`` of ``W`` takes the ``r``-th slice of ``B/W``. With the
per-sample seeding of :class:`sslkit.views.dataset.ImageDataset`, the batch at any step, and every
view in it, is a function of (seed, step) only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Sampler, default_collate

from sslkit.views.dataset import sample_seed


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
