"""Exact nearest neighbours and ORL's pair rule (Xie et al., NeurIPS 2021, §3.1 "Stage 2"; spec
orl.md §2.3): pure functions of feature and similarity tensors, unit-tested against brute force."""

from __future__ import annotations

import math

import numpy as np
import torch

PAIR_RATIO = 0.1  # N = 10% of the query's RoIs per (image, neighbour) [P] with the code's meaning [C]


def knn_search(feats: torch.Tensor, k: int, block_bytes: int = 256 << 20,
               progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` neighbours of every row of ``feats`` (L2-normalised) by dot product.

    The query's own row is excluded explicitly (an identical image elsewhere is a valid
    neighbour); results are sorted by decreasing similarity, ties (incl. at the k-th place)
    broken by the lower row. Queries run in blocks of ``block_bytes`` of similarities
    (``rows × N × 4`` bytes), so memory is ``N·d + block`` whatever N is. Returns
    ``(ids (N, k) int64, sims (N, k) float32)``; ``k`` must be ``< N``.
    """
    n = feats.shape[0]
    if not 0 < k < n:
        raise ValueError(f"k={k} needs 0 < k < N={n}")
    rows = int(max(1, min(n, block_bytes // (4 * n))))
    ids = np.empty((n, k), np.int64)
    sims = np.empty((n, k), np.float32)
    for s in range(0, n, rows):
        e = min(n, s + rows)
        sim = feats[s:e] @ feats.T
        sim[torch.arange(e - s), torch.arange(s, e)] = -math.inf
        v, i = sim.topk(k, dim=1)
        o = torch.argsort(i, dim=1)  # ties inside the top k: lower row first (stable sort by -sim next)
        i, v = i.gather(1, o), v.gather(1, o)
        o = torch.argsort(-v, dim=1, stable=True)
        i, v = i.gather(1, o), v.gather(1, o)
        # rows with more than k candidates tied at the k-th value: take the lowest rows among them
        crowded = torch.nonzero((sim >= v[:, -1:]).sum(1) > k).flatten().tolist()
        for r in crowded:
            cand = torch.nonzero(sim[r] >= v[r, -1]).flatten()
            cand = cand[torch.argsort(-sim[r, cand], stable=True)][:k]  # nonzero is ascending: stable keeps it
            i[r], v[r] = cand, sim[r, cand]
        ids[s:e] = i.cpu().numpy()
        sims[s:e] = v.float().cpu().numpy()
        if progress is not None:
            progress(e - s)
    return ids, sims


def pair_count(num_query_boxes: int, ratio: float = PAIR_RATIO) -> int:
    """RoI pairs kept per (image, neighbour): ``max(1, int(ratio · B_q))`` [C]; 0 without boxes."""
    return max(1, int(num_query_boxes * ratio)) if num_query_boxes > 0 else 0


def top_pairs(sim: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``n`` largest entries of a ``(B_q, B_k)`` similarity matrix, flattened row-major, in
    descending order (ties → lower flat index). Returns (query box idx, neighbour box idx, score)."""
    bk = sim.shape[1]
    flat = sim.reshape(-1)
    n = min(n, flat.numel())
    order = torch.sort(flat, descending=True, stable=True).indices[:n]
    return order // bk, order % bk, flat[order]


