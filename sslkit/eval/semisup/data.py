"""The images of a semi-supervised run: seeded training crops, centre-cropped evaluation, epoch batches."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from sslkit.eval.semisup.settings import SemisupConfig
from sslkit.eval.subsets import Sample
from sslkit.io.images import ImageDecodeError, load_rgb
from sslkit.views.dataset import sample_seed


class Images(Dataset):
    """``key`` → ``(index, tensor or None, label, error or None)``; training keys are ``(epoch, index)``."""

    def __init__(self, samples: list[Sample], cfg: SemisupConfig, train: bool, mean, std):
        self.samples = samples
        self.cfg = cfg
        self.train = train
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def _pixels(self, s: Sample) -> torch.Tensor:
        arr, _ = load_rgb(s.path)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy()).permute(2, 0, 1)
        if s.box is not None:
            h, w = arr.shape[:2]
            x0, y0, x1, y1 = s.box
            cx, cy, bw, bh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * self.cfg.box_scale, (y1 - y0) * self.cfg.box_scale
            a = int(np.clip(np.floor(cx - bw / 2), 0, w - 1))
            b = int(np.clip(np.floor(cy - bh / 2), 0, h - 1))
            c = int(np.clip(np.ceil(cx + bw / 2), a + 1, w))
            d = int(np.clip(np.ceil(cy + bh / 2), b + 1, h))
            t = t[:, b:d, a:c]
        return t

    def __getitem__(self, key):
        epoch, i = key if self.train else (0, key)
        s = self.samples[i]
        try:
            t = self._pixels(s)
        except ImageDecodeError as e:
            return i, None, s.label, e.reason
        size = self.cfg.image_size
        if self.train:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.cfg.seed, epoch, i))
                t = T.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True)(t)
                t = T.RandomHorizontalFlip()(t)
        elif s.box is not None:
            t = TF.resize(t, [size, size], antialias=True)
        else:
            t = TF.center_crop(TF.resize(t, [self.cfg.resize], antialias=True), [size, size])
        return i, (t.float() / 255.0 - self.mean) / self.std, s.label, None


def collate(items):
    good = [(i, x, y) for i, x, y, err in items if x is not None]
    bad = [(i, err) for i, x, y, err in items if x is None]
    if not good:
        return None, None, None, bad
    return (torch.tensor([g[0] for g in good]), torch.stack([g[1] for g in good]),
            torch.tensor([g[2] for g in good]), bad)


def epoch_batches(n: int, batch: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """The batches of one epoch: a seeded permutation cut into ``batch``-sized pieces (a last piece of
    one sample joins the one before, since BatchNorm needs two)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(sample_seed(seed, 1, epoch))).tolist()
    out = [perm[k:k + batch] for k in range(0, n, batch)]
    if len(out) > 1 and len(out[-1]) == 1:
        last = out.pop()
        out[-1] = out[-1] + last
    return [[(epoch, i) for i in b] for b in out]
