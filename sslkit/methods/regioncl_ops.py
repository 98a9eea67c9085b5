"""RegionCL's region features and losses, as pure functions on tensors (regioncl.txt §3.2 eq. 2;
spec regioncl.md §2.3–2.5). The swap itself is :mod:`sslkit.views.regioncl`.

Notation (one rank's batch of B images, ``partner(i) = B − 1 − i``): composite ``i`` holds the canvas
of source ``i`` and the paste of source ``partner(i)``. ``canvas[i]`` and ``paste_in[i]`` are the
projected, L2-normalised features of composite ``i``; ``paste_in[partner]`` re-indexes the pastes by
their *source* (row ``j`` = the paste of image ``j``, which sits in composite ``partner(j)``) [C].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslkit.methods.numerics import fp32_loss
from sslkit.methods.simsiam import negative_cosine
from sslkit.views.regioncl import SwapBox


def mask_pool_regions(fmap: torch.Tensor, box: SwapBox) -> tuple[torch.Tensor, torch.Tensor]:
    """(paste, canvas): the mean of the (B, D, h, w) feature map of the composites inside and outside the
    box cells, each (B, D) float32 (the authors' neck [C]: ``mean`` over the box, ``sum(x·mask)/sum(mask)``
    over the rest)."""
    f = fmap.float()
    inside = box.cell_mask(f.shape[-2], f.shape[-1], f.device).to(f.dtype)
    paste = (f * inside).sum((2, 3)) / inside.sum()
    canvas = (f * (1 - inside)).sum((2, 3)) / (1 - inside).sum()
    return paste, canvas


def _masked_ce(logits: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy (target 0) and top-1 accuracy over the ``valid`` rows."""
    ce = F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device),
                         reduction="none")
    w = valid.to(ce.dtype)
    n = w.sum().clamp_min(1.0)
    acc = ((logits.argmax(dim=1) == 0).to(ce.dtype) * w).sum() / n
    return (ce * w).sum() / n, acc


@fp32_loss
def region_info_nce(canvas: torch.Tensor, paste_in: torch.Tensor, k: torch.Tensor, queue: torch.Tensor,
                    partner: torch.Tensor, valid: torch.Tensor, temperature: float, *, use_canvas: bool = True,
                    use_paste: bool = True, intra_negative: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """RegionCL-M's L_reg (eq. 2), mean over the valid rows of both terms (½(L_canvas + L_paste) [P][C]).

    ``canvas``, ``paste_in``: (B, D) unit rows of each composite; ``k``: (B, D) keys of each source's other
    view; ``queue``: (K, D) negatives. Canvas ``i``: positive ``k_i``, negatives the queue and, with
    ``intra_negative``, ``sg(paste_in_i)`` (the other region of the same composite). Paste of source ``j``:
    positive ``k_j``, negatives the queue and ``sg(canvas[partner(j)])``. Logit order ``[pos, intra, queue]``
    [C]. ``use_canvas``/``use_paste`` switch a term off (Table 10). Returns (loss, top-1 accuracy).
    Float32, autocast off (the similarities too).
    """
    k, queue = k.detach(), queue.detach()
    terms = []
    if use_canvas:
        terms.append((canvas, paste_in, valid))
    if use_paste:
        terms.append((paste_in[partner], canvas[partner], valid[partner]))
    if not terms:
        raise ValueError("region_info_nce: both terms are off")
    logits, rows = [], []
    for z, other, ok in terms:
        cols = [(z * k).sum(1, keepdim=True)]
        if intra_negative:
            cols.append((z * other.detach()).sum(1, keepdim=True))
        cols.append(z @ queue.T)
        logits.append(torch.cat(cols, dim=1) / temperature)
        rows.append(ok)
    return _masked_ce(torch.cat(logits), torch.cat(rows))


@fp32_loss
def region_simsiam_loss(pred_canvas: torch.Tensor, pred_paste_in: torch.Tensor, z_other: torch.Tensor,
                   partner: torch.Tensor, valid: torch.Tensor, *, use_canvas: bool = True,
                   use_paste: bool = True) -> torch.Tensor:
    """RegionCL-S's region positives ([P] §3.2 "enrich the positive pairs"; form [I] spec §2.5): the mean
    over valid rows of ``D(pred(canvas_i), sg(z_i))`` and ``D(pred(paste_j), sg(z_j))``, ``z`` the
    projection of each source's other view; ½(D_canvas + D_paste) with both on. No negatives. Float32,
    autocast off."""
    terms = []
    if use_canvas:
        terms.append((negative_cosine(pred_canvas, z_other), valid))
    if use_paste:
        terms.append((negative_cosine(pred_paste_in[partner], z_other), valid[partner]))
    if not terms:
        raise ValueError("region_simsiam_loss: both terms are off")
    d = torch.cat([t for t, _ in terms])
    w = torch.cat([v for _, v in terms]).to(d.dtype)
    return (d * w).sum() / w.sum().clamp_min(1.0)
