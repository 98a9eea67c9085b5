"""DetCon's building blocks (Hénaff et al., ICCV 2021; ../shared/papers/detcon.txt §3.1):
mask pooling on the feature grid, per-view mask sampling, and the contrastive detection loss.

Pure tensor functions, separately testable; ``sslkit.methods.detcon`` assembles them into
DetCon-S (SimCLR architecture) and DetCon-B (BYOL architecture).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslkit.methods.numerics import fp32_loss

#: masks sampled per view and image (paper §3.1, "a set of 16 (possibly redundant) masks")
NUM_MASKS = 16
#: latents are rescaled to norm 1/sqrt(tau) (paper §3.1, tau = 0.1)
TEMPERATURE = 0.1


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


@fp32_loss
def detcon_loss(
    q1: torch.Tensor, q2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor,
    id1: torch.Tensor, id2: torch.Tensor, *, tau: float = TEMPERATURE, rank: int = 0,
    gather=None, local_negatives: bool = True,
) -> torch.Tensor:
    """The contrastive detection loss, batched as in the official ``byol_nce_detcon``.

    q1, q2: online latents of view 1/2 (B, K, D) (DetCon-B: predictor outputs; DetCon-S: projector outputs).
    t1, t2: target latents (DetCon-B: EMA projector outputs, no gradient; DetCon-S: the same tensors as q).
    id1, id2: sampled segment ids (B, K).
    ``gather`` (optional) concatenates a tensor over DDP ranks along dim 0 (global negatives); ``rank``
    locates this rank's images in the gathered batch.

    For each row (b, k) the positives are the other view's samples of the same segment of the same image;
    the negatives are every other latent of both views of every image, except same-segment duplicates in
    the same view. Rows whose segment is absent from the other view carry weight 0; each distinct segment
    counts once (weight 1/duplicates). Mean over the B·K rows, summed over the two directions (spec §2.5).
    Float32 with autocast off (:func:`~sslkit.methods.numerics.fp32_loss`): the similarity einsums too.
    """
    q1, q2 = F.normalize(q1, dim=-1), F.normalize(q2, dim=-1)
    t1, t2 = F.normalize(t1, dim=-1), F.normalize(t2, dim=-1)
    g = gather if gather is not None else (lambda x: x)
    T1, T2 = g(t1), g(t2)
    B, K, _ = q1.shape
    Bg = T1.shape[0]
    own = torch.zeros(B, Bg, dtype=torch.bool, device=q1.device)
    own[torch.arange(B), rank * B + torch.arange(B)] = True
    total = q1.new_zeros(())
    for q, ida, Tx, idx, Ts in ((q1, id1, T2, id2, T1), (q2, id2, T1, id1, T2)):
        cross = torch.einsum("bkd,ujd->bkuj", q, Tx) / tau
        same = torch.einsum("bkd,ujd->bkuj", q, Ts) / tau
        pos_own = ida[:, :, None] == idx[:, None, :]  # (B,K,K) same segment across views
        dup_own = ida[:, :, None] == ida[:, None, :]  # (B,K,K) same segment, same view (incl. self)
        own4 = own[:, None, :, None]  # (B,1,Bg,1)
        pos = own4 & pos_own[:, :, None, :]
        dup = own4 & dup_own[:, :, None, :]
        same = same.masked_fill(dup, -1e9)
        if not local_negatives:  # ablation: no negatives from the same image (except positives)
            cross = cross.masked_fill(own4 & ~pos, -1e9)
            same = same.masked_fill(own4.expand_as(same), -1e9)
        logits = torch.cat([cross.reshape(B, K, -1), same.reshape(B, K, -1)], dim=-1)
        npos = pos.reshape(B, K, -1).sum(-1)
        labels = torch.cat([pos.reshape(B, K, -1).float(), torch.zeros_like(same).reshape(B, K, -1)], dim=-1)
        labels = labels / npos.clamp_min(1)[..., None].float()
        weight = (npos > 0).float() / dup_own.sum(-1).float()
        ce = -(labels * F.log_softmax(logits, dim=-1)).sum(-1)
        total = total + (weight * ce).mean()
    return total
