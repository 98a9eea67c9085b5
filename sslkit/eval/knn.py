"""Weighted k-nearest-neighbour classification on frozen features.

The protocol of Wu et al. 2018 (InstDisc) as DINO's ``eval_knn.py`` implements it: features
are L2-normalised, similarity is cosine, each of the ``k`` (20) nearest training samples votes
for its label with weight ``exp(sim / T)`` (T = 0.07), and the scores are the summed votes.
Here they are also divided by the sum of the weights (argmax unchanged), which makes them
per-class probabilities; for multi-label data each neighbour votes for all its labels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int, k: int = 20,
               temperature: float = 0.07, device: torch.device | str = "cpu", chunk: int = 1024,
               progress=None, desc: str = "knn") -> np.ndarray:
    """(N_test, C) vote scores; ``train_y`` is (N,) class indices or (N, C) rows of 1/0/-1."""
    device = torch.device(device)
    bank = F.normalize(torch.from_numpy(np.ascontiguousarray(train_x, np.float32)).to(device), dim=1)
    y = torch.from_numpy(np.ascontiguousarray(train_y)).to(device)
    y = (y > 0).float() if y.ndim == 2 else y.long()  # multi-label: ignored (-1) entries vote as absent
    k = min(k, len(bank))
    out = []
    task = progress.add_task(desc, total=len(test_x)) if progress else None
    for s in range(0, len(test_x), chunk):
        q = F.normalize(torch.from_numpy(np.ascontiguousarray(test_x[s:s + chunk], np.float32)).to(device), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        w = (sim / temperature).exp()
        if y.ndim == 2:
            votes = (w[:, :, None] * y[idx]).sum(1)
        else:
            votes = torch.zeros(len(q), num_classes, device=device).scatter_add_(1, y[idx], w)
        out.append((votes / w.sum(1, keepdim=True)).cpu())
        if progress:
            progress.advance(task, len(q))
    return torch.cat(out).numpy() if out else np.zeros((0, num_classes), np.float32)
