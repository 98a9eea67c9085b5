"""Independent references for sslkit's losses: plain transcriptions of the authors' published
losses, written from their code's facts (not sslkit's code), in float64.

Each function names the file it follows and keeps that code's structure (its masks, concatenation
order and reductions), so a test comparing it with sslkit can fail on any convention: which rows
count, how the two directions combine, which logits are masked, where the queue writes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return x / np.sqrt(np.maximum((x * x).sum(-1, keepdims=True), eps))


# ----------------------------------------------------------------------------- SimCLR


def simclr_tf_loss(h1: np.ndarray, h2: np.ndarray, h1_large: np.ndarray, h2_large: np.ndarray, replica_id: int,
                   temperature: float) -> float:
    """google-research/simclr ``objective.py::add_contrastive_loss`` (hidden_norm=True).

    This replica's rows ``h1``, ``h2`` (n, D) against every replica's ``h1_large``, ``h2_large`` (N, D).
    Labels one-hot at ``arange(n) + replica_id·n`` over the 2N columns ``[ab, aa]``; the own column of
    ``aa``/``bb`` gets −LARGE_NUM (1e9); ``loss_a`` = softmax cross-entropy of ``[logits_ab, logits_aa]``,
    ``loss_b`` of ``[logits_ba, logits_bb]``, each a mean over the n rows (tf.losses default
    reduction); the loss is ``loss_a + loss_b``.
    """
    h1, h2, h1_large, h2_large = (_l2_normalize(np.asarray(x, np.float64)) for x in (h1, h2, h1_large, h2_large))
    n, big_n = h1.shape[0], h1_large.shape[0]
    idx = np.arange(n) + replica_id * n
    labels = np.eye(2 * big_n)[idx]
    masks = np.eye(big_n)[idx]
    logits_aa = h1 @ h1_large.T / temperature - masks * 1e9
    logits_bb = h2 @ h2_large.T / temperature - masks * 1e9
    logits_ab = h1 @ h2_large.T / temperature
    logits_ba = h2 @ h1_large.T / temperature
    loss_a = -(labels * _log_softmax(np.concatenate([logits_ab, logits_aa], 1))).sum(1).mean()
    loss_b = -(labels * _log_softmax(np.concatenate([logits_ba, logits_bb], 1))).sum(1).mean()
    return float(loss_a + loss_b)


# ----------------------------------------------------------------------------- DetCon


def byol_nce_detcon(pred1: torch.Tensor, pred2: torch.Tensor, target1_large: torch.Tensor,
                    target2_large: torch.Tensor, pind1: torch.Tensor, pind2: torch.Tensor, tind1: torch.Tensor,
                    tind2: torch.Tensor, replica_id: int = 0, temperature: float = 0.1,
                    local_negatives: bool = True) -> torch.Tensor:
    """DeepMind's DetCon ``utils/losses.py::byol_nce_detcon`` (JAX), in torch so autograd gives gradients.

    ``pred*`` (B, R, D) this replica's predictions; ``target*_large`` (B·replicas, R, D) the gathered
    targets (the plain targets with one replica); ``*ind*`` (B, R) mask ids. Same-object indicators
    ``[B, R, 1, R]``; one-hot labels over the (gathered) batch at ``arange(B) + replica·B``; logits
    ``aa, bb, ab, ba`` = einsum ``abk,uvk->abuv`` / τ; same-view same-object logits of the own image get
    −1e9 (and with ``local_negatives=False`` every other own-image logit too); labels
    ``[ab, aa·0]`` normalised by the positive count; weights = (count > 1e-3) / object area; mean of the
    weighted cross-entropies, ``loss_a + loss_b``.
    """
    b, r = pred1.shape[:2]
    inf = 1e9

    def same_obj(i0, i1):
        return (i0.reshape(b, r, 1) == i1.reshape(b, 1, r)).to(pred1.dtype)[:, :, None, :]

    same_aa, same_ab = same_obj(pind1, tind1), same_obj(pind1, tind2)
    same_ba, same_bb = same_obj(pind2, tind1), same_obj(pind2, tind2)
    pred1, pred2 = F.normalize(pred1, dim=-1), F.normalize(pred2, dim=-1)
    target1_large, target2_large = F.normalize(target1_large, dim=-1), F.normalize(target2_large, dim=-1)
    big_b = target1_large.shape[0]
    labels_local = F.one_hot(torch.arange(b) + replica_id * b, big_b).to(pred1.dtype)[:, None, :, None]

    logits_aa = torch.einsum("abk,uvk->abuv", pred1, target1_large) / temperature
    logits_bb = torch.einsum("abk,uvk->abuv", pred2, target2_large) / temperature
    logits_ab = torch.einsum("abk,uvk->abuv", pred1, target2_large) / temperature
    logits_ba = torch.einsum("abk,uvk->abuv", pred2, target1_large) / temperature
    labels_ab, labels_ba = labels_local * same_ab, labels_local * same_ba
    labels_aa, labels_bb = 0.0 * labels_local * same_aa, 0.0 * labels_local * same_bb
    logits_aa = logits_aa - inf * labels_local * same_aa
    logits_bb = logits_bb - inf * labels_local * same_bb
    if not local_negatives:
        logits_aa = logits_aa - inf * labels_local * (1 - same_aa)
        logits_ab = logits_ab - inf * labels_local * (1 - same_ab)
        logits_ba = logits_ba - inf * labels_local * (1 - same_ba)
        logits_bb = logits_bb - inf * labels_local * (1 - same_bb)

    labels_0 = torch.cat([labels_ab, labels_aa], 2).reshape(b, r, -1)
    labels_1 = torch.cat([labels_ba, labels_bb], 2).reshape(b, r, -1)
    npos_0, npos_1 = labels_0.sum(-1, keepdim=True), labels_1.sum(-1, keepdim=True)
    labels_0, labels_1 = labels_0 / npos_0.clamp_min(1), labels_1 / npos_1.clamp_min(1)
    area_0 = same_obj(pind1, pind1).sum((2, 3))
    area_1 = same_obj(pind2, pind2).sum((2, 3))
    weights_0 = (npos_0[..., 0] > 1e-3).to(pred1.dtype) / area_0
    weights_1 = (npos_1[..., 0] > 1e-3).to(pred1.dtype) / area_1
    logits_0 = torch.cat([logits_ab, logits_aa], 2).reshape(b, r, -1)
    logits_1 = torch.cat([logits_ba, logits_bb], 2).reshape(b, r, -1)

    def manual_cross_entropy(labels, logits, weight):
        return (-weight * (labels * torch.log_softmax(logits, -1)).sum(-1)).mean()

    return manual_cross_entropy(labels_0, logits_0, weights_0) + manual_cross_entropy(labels_1, logits_1, weights_1)


# ----------------------------------------------------------------------------- BYOL / ORL


def byol_regression_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """BYOL's ``helpers.regression_loss`` (JAX): ``2 − 2·Σ x̄·ȳ`` per row (the experiment takes the mean)."""
    return (2 - 2 * (F.normalize(x, dim=-1) * F.normalize(y, dim=-1)).sum(-1)).mean()


def latent_predict_head(predictor, online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ORL's OpenSelfSup ``heads/latent_pred_head.py::LatentPredictHead.forward``:
    ``2·(1 − mean_rows Σ normalize(pred)·normalize(target))`` with ``pred = predictor(online)``."""
    pred = predictor(online)
    return 2.0 * (1.0 - (F.normalize(pred, dim=1) * F.normalize(target, dim=1)).sum(dim=1).mean())


def orl_forward_train(online_net, target_net, heads: dict, batch: dict, weights: dict) -> dict[str, torch.Tensor]:
    """ORL's ``openselfsup/models/orl.py::ORL.forward_train``: six online and six target forwards, one per
    view (own BN statistics), each branch's head applied both ways (``head(online_v1, target_v2) +
    head(online_v2, target_v1)``), every loss times its weight. Returns ``{"global", "intra", "inter"}``."""
    losses = {}
    for branch in ("global", "intra", "inter"):
        v1, v2 = batch[branch]
        o1, o2 = online_net(v1), online_net(v2)
        with torch.no_grad():
            t1, t2 = target_net(v1).clone().detach(), target_net(v2).clone().detach()
        head = heads[branch]
        losses[branch] = weights[branch] * (latent_predict_head(head, o1, t2) + latent_predict_head(head, o2, t1))
    return losses


# ----------------------------------------------------------------------------- MoCo


class MoCoReference:
    """facebookresearch/moco ``moco/builder.py::MoCo`` (one process): the key encoder's momentum update at
    the start of each forward, keys under ``no_grad``, ``l_pos = einsum('nc,nc->n')``, ``l_neg =
    einsum('nc,ck->nk', q, queue)`` with the queue stored (dim, K), logits / T, labels 0, then the keys
    written at ``queue[:, ptr:ptr+N] = keys.T`` and ``ptr = (ptr + N) % K``."""

    def __init__(self, encoder_q, encoder_k, queue_kd: torch.Tensor, m: float, temperature: float):
        self.encoder_q, self.encoder_k, self.m, self.T = encoder_q, encoder_k, m, temperature
        self.queue = queue_kd.detach().T.clone()  # (dim, K)
        self.ptr = 0

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> torch.Tensor:
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            for pq, pk in zip(self.encoder_q.parameters(), self.encoder_k.parameters(), strict=True):
                pk.mul_(self.m).add_(pq.detach().mul(1.0 - self.m))
            k = F.normalize(self.encoder_k(im_k), dim=1)
        l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", q, self.queue.clone().detach())
        logits = torch.cat([l_pos, l_neg], dim=1) / self.T
        labels = torch.zeros(logits.shape[0], dtype=torch.long)
        n = k.shape[0]
        assert self.queue.shape[1] % n == 0
        self.queue[:, self.ptr:self.ptr + n] = k.T
        self.ptr = (self.ptr + n) % self.queue.shape[1]
        return F.cross_entropy(logits, labels)


# ----------------------------------------------------------------------------- UniVIP


def univip_marginals(o: np.ndarray, t: np.ndarray, f_o: tuple, f_t: tuple) -> tuple[np.ndarray, np.ndarray]:
    """UniVIP (CVPR 2022) Eq. 9–10 as printed: ``b_m = max(o_mᵀ·(f_t1 + f_t2)/2, 0)``,
    ``a_n = max(t_nᵀ·(f_o1 + f_o2)/2, 0)``; ``o``, ``t`` (B, K, D), scene vectors (B, D)."""
    scene_t = (np.asarray(f_t[0], np.float64) + np.asarray(f_t[1], np.float64)) / 2
    scene_o = (np.asarray(f_o[0], np.float64) + np.asarray(f_o[1], np.float64)) / 2
    b = np.maximum(np.einsum("bkd,bd->bk", np.asarray(o, np.float64), scene_t), 0)
    a = np.maximum(np.einsum("bkd,bd->bk", np.asarray(t, np.float64), scene_o), 0)
    return b, a
