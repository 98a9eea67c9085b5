"""Mask pooling on a feature grid (DetCon, Hénaff et al., ICCV 2021, §3.1; spec detcon.md §2.3):
which segment owns each feature cell, which segments a view samples, and the pooled features.

Pure tensor functions: the views (:mod:`sslkit.views.detcon`) compute the owners, the methods pool.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: masks sampled per view and image (paper §3.1, "a set of 16 (possibly redundant) masks")
NUM_MASKS = 16


def cell_owners(labels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The majority segment id of each feature-grid cell ("hard" pooling of the official code).

    ``labels`` is (B, H, W) integer label maps aligned with the input view; ``grid`` is the
    backbone's final feature size (h, w). Returns (B, h, w) int64. Ties go to the smallest id,
    as the code's argmax over one-hot averages does. When H, W are not multiples of h, w the
    label map is first resized (nearest) to the next multiple.
    """
    b, H, W = labels.shape
    h, w = grid
    ph, pw = -(-H // h), -(-W // w)
    lab = labels.long()
    if (H, W) != (h * ph, w * pw):
        lab = F.interpolate(lab[:, None].float(), size=(h * ph, w * pw), mode="nearest")[:, 0].long()
    # cell index of every pixel; count (cell, label) pairs with one sort (memory O(pixels))
    cell = (torch.arange(h, device=lab.device).repeat_interleave(ph)[:, None] * w
            + torch.arange(w, device=lab.device).repeat_interleave(pw)[None, :])  # (h*ph, w*pw)
    cell = (cell[None] + torch.arange(b, device=lab.device)[:, None, None] * (h * w)).reshape(-1)
    span = int(lab.max().item()) + 1 if lab.numel() else 1
    keys, counts = torch.unique(cell * span + lab.reshape(-1), return_counts=True)
    kcell, klab = keys // span, keys % span
    best = torch.zeros(b * h * w, dtype=counts.dtype, device=lab.device).scatter_reduce(
        0, kcell, counts, reduce="amax", include_self=False)
    big = torch.full((b * h * w,), span, dtype=torch.int64, device=lab.device)
    winners = torch.where(counts == best[kcell], klab, torch.full_like(klab, span))
    owners = big.scatter_reduce(0, kcell, winners, reduce="amin", include_self=True)
    return owners.reshape(b, h, w)


def sample_mask_ids(owners: torch.Tensor, k: int = NUM_MASKS, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``k`` segment ids per image with replacement, uniformly over the segments that own
    at least one cell of this view's grid (spec detcon.md §2.3.3, official code). (B, k) int64."""
    b = owners.shape[0]
    flat = owners.reshape(b, -1)
    out = torch.empty(b, k, dtype=torch.int64, device=owners.device)
    for i in range(b):
        present = torch.unique(flat[i])
        idx = torch.randint(len(present), (k,), generator=generator, device="cpu").to(owners.device)
        out[i] = present[idx]
    return out


def mask_weights(ids: torch.Tensor, owners: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                 grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Pooling weights (B, K, h, w) for the sampled ``ids``.

    Hard (default, official code): weight 1 on the cells a segment owns (``owners``).
    Soft (paper's text): the binary mask average-pooled to the grid (``labels`` + ``grid``).
    """
    if owners is not None:
        return (owners[:, None] == ids[:, :, None, None]).float()
    assert labels is not None and grid is not None
    binary = (labels[:, None].long() == ids[:, :, None, None]).float()
    return F.adaptive_avg_pool2d(binary, grid)


def mask_pool(features: torch.Tensor, weights: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """h_m = Σ_ij m_ij h[i,j] / Σ_ij m_ij (paper §3.1). features (B, D, h, w), weights (B, K, h, w) → (B, K, D)."""
    w = weights.to(features.dtype)
    num = torch.einsum("bkhw,bdhw->bkd", w, features)
    return num / w.sum((2, 3)).clamp_min(eps)[..., None]
