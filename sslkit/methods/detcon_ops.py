"""DetCon's contrastive detection loss (Hénaff et al., ICCV 2021; ../shared/papers/detcon.txt §3.1).

A pure tensor function, separately testable; ``sslkit.methods.detcon`` assembles it with the mask
pooling of :mod:`sslkit.ops.masks` into DetCon-S (SimCLR architecture) and DetCon-B (BYOL architecture).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslkit.methods.numerics import fp32_loss
from sslkit.ops.masks import NUM_MASKS  # noqa: F401 (DetCon's constant, cited with its loss)

#: latents are rescaled to norm 1/sqrt(tau) (paper §3.1, tau = 0.1)
TEMPERATURE = 0.1


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
