"""Independent references for sslkit's losses: plain transcriptions of the authors' published
losses, written from their code's facts (not sslkit's code), in float64 where they take plain tensors
(in the model's float32 where they run its modules: DenseCL, RegionCL-M's step).

Each function names the file it follows and keeps that code's structure (its masks, concatenation
order and reductions), so a test comparing it with sslkit can fail on any convention: which rows
count, how the two directions combine, which logits are masked, where the queue writes. RegionCL's
authors release only -M, and its model file does not run as released (``self.head2`` is never
defined), so RegionCL-M follows the digest's §2.4 pseudo-code (../shared/specs/regioncl.md), written
from their code.
"""

from __future__ import annotations

import math

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


# ----------------------------------------------------------------------------- SimSiam


def simsiam_algorithm1(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """SimSiam (CVPR 2021) Algorithm 1: ``D(p, z) = −(normalize(p, dim=1) · normalize(z.detach(), dim=1)).sum(dim=1).mean()``,
    ``L = D(p1, z2)/2 + D(p2, z1)/2``."""

    def D(p, z):  # noqa: N802 - the paper's name
        z = z.detach()
        p = F.normalize(p, dim=1)
        z = F.normalize(z, dim=1)
        return -(p * z).sum(dim=1).mean()

    return D(p1, z2) / 2 + D(p2, z1) / 2


# ----------------------------------------------------------------------------- DenseCL


def densecl_losses(q, k, q_grid, k_grid, q_b, k_b, queue, queue2, temperature: float, loss_lambda: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """WXinlong/DenseCL ``openselfsup/models/densecl.py::DenseCL.forward_train``, from the logits on, with its
    ``ContrastiveHead`` (cross-entropy of ``cat[pos, neg] / T``, label 0, mean).

    ``q``, ``k`` (N, C) and the grids ``q_grid``, ``k_grid`` (N, C, S²) of the neck, ``q_b``, ``k_b`` (N, C', S²) the
    backbone's C5 cells, all L2-normalised along channels; ``queue``, ``queue2`` stored (C, K) as the code does.
    ``backbone_sim_matrix = q_bᵀ k_b``; ``densecl_sim_ind`` its argmax over key cells; ``indexed_k_grid`` the key
    grid gathered there; ``l_pos_dense = Σ_c q_grid · indexed_k_grid`` (NS², 1), ``l_neg_dense = q_grid (NS², C) @
    queue2``. Returns the two weighted terms ``((1 − λ)·loss_single, λ·loss_dense)``.
    """
    def head(pos, neg):
        logits = torch.cat((pos, neg), dim=1) / temperature
        return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long))

    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", q, queue.clone().detach())
    backbone_sim_matrix = torch.matmul(q_b.permute(0, 2, 1), k_b)
    densecl_sim_ind = backbone_sim_matrix.max(dim=2)[1]
    indexed_k_grid = torch.gather(k_grid, 2, densecl_sim_ind.unsqueeze(1).expand(-1, k_grid.size(1), -1))
    densecl_sim_q = (q_grid * indexed_k_grid).sum(1)
    l_pos_dense = densecl_sim_q.view(-1).unsqueeze(-1)
    q_grid = q_grid.permute(0, 2, 1)
    q_grid = q_grid.reshape(-1, q_grid.size(2))
    l_neg_dense = torch.einsum("nc,ck->nk", q_grid, queue2.clone().detach())
    return head(l_pos, l_neg) * (1 - loss_lambda), head(l_pos_dense, l_neg_dense) * loss_lambda


class DenseCLReference:
    """``DenseCL.forward_train`` (one process) with ``necks.py::DenseCLNeck``: the key encoder's momentum update at
    the start of each forward over all encoder parameters; the neck's three outputs ``[mlp(avgpool(x)), mlp2(x)
    (N, C, S²), avgpool(mlp2(x))]``; queries and keys L2-normalised along channels (the backbone cells too); the
    losses of :func:`densecl_losses`; then ``k`` written into ``queue`` and ``k2`` into ``queue2`` at their pointers.

    ``encoder_q``/``encoder_k``: ``(c5, mlp, mlp2)`` callables; ``params_q``/``params_k``: their parameters in
    matching order; queues given (K, C) and stored (C, K).
    """

    def __init__(self, encoder_q, encoder_k, params_q, params_k, queue_kc, queue2_kc, m: float, temperature: float,
                 loss_lambda: float):
        self.encoder_q, self.encoder_k, self.params_q, self.params_k = encoder_q, encoder_k, params_q, params_k
        self.m, self.T, self.loss_lambda = m, temperature, loss_lambda
        self.queue, self.queue2 = queue_kc.detach().T.clone(), queue2_kc.detach().T.clone()
        self.ptr = self.ptr2 = 0

    @staticmethod
    def _encode(encoder, x):
        c5, mlp, mlp2 = encoder
        x_b = c5(x)
        g = mlp(F.adaptive_avg_pool2d(x_b, 1).flatten(1))
        grid = mlp2(x_b)
        pooled = F.adaptive_avg_pool2d(grid, 1).flatten(1)
        grid = grid.view(grid.size(0), grid.size(1), -1)
        x_b = x_b.view(x_b.size(0), x_b.size(1), -1)
        return tuple(F.normalize(t, dim=1) for t in (g, grid, pooled, x_b))

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, q_grid, _, q_b = self._encode(self.encoder_q, im_q)
        with torch.no_grad():
            for pq, pk in zip(self.params_q, self.params_k, strict=True):
                pk.data = pk.data * self.m + pq.data * (1.0 - self.m)
            k, k_grid, k2, k_b = self._encode(self.encoder_k, im_k)
        single, dense = densecl_losses(q, k, q_grid, k_grid, q_b, k_b, self.queue, self.queue2, self.T,
                                       self.loss_lambda)
        for queue, keys, attr in ((self.queue, k, "ptr"), (self.queue2, k2, "ptr2")):
            ptr, n = getattr(self, attr), keys.shape[0]
            assert queue.shape[1] % n == 0
            queue[:, ptr:ptr + n] = keys.transpose(0, 1)
            setattr(self, attr, (ptr + n) % queue.shape[1])
        return single, dense


# ----------------------------------------------------------------------------- RegionCL


def _ce0(logits: list[float]) -> float:
    m = max(logits)
    return -(logits[0] - m - math.log(sum(math.exp(v - m) for v in logits)))


def regioncl_m_per_sample(q, k, queue, pin, cv, tau: float) -> tuple[float, float]:
    """The RegionCL digest's §2.4 pseudo-code (regioncl.txt eq. 1–2), one sample at a time in float64:
    ``(L_ins, ½(L_can + L_pas))``. ``pin``/``cv``: the paste and canvas of each *composite*; ``partner(i) = B−1−i``;
    canvas i: positive ``k_i``, hard negative ``sg(pin_i)``; the paste of source j sits in composite ``partner(j)``:
    positive ``k_j``, hard negative the canvas of that composite. The middle image of an odd batch (its own
    partner) has no region terms."""
    q, k, queue, pin, cv = (t.double() for t in (q, k, queue, pin, cv))
    b = q.shape[0]
    partner = [b - 1 - i for i in range(b)]

    def ce(z, pos, intra=None):
        logits = [float(z @ pos)] + ([float(z @ intra)] if intra is not None else []) + (queue @ z).tolist()
        return _ce0([v / tau for v in logits])

    ins = [ce(q[i], k[i]) for i in range(b)]
    rows = [i for i in range(b) if partner[i] != i]
    can = [ce(cv[i], k[i], pin[i]) for i in rows]
    pas = [ce(pin[partner[j]], k[j], cv[partner[j]]) for j in rows]
    return float(np.mean(ins)), 0.5 * (float(np.mean(can)) + float(np.mean(pas)))


def regioncl_m_pseudo_code(f, proj, f_k, proj_k, xq: torch.Tensor, xk: torch.Tensor, queue: torch.Tensor,
                           box_px: tuple[int, int, int, int], box_cells: tuple[int, int, int, int], tau: float
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digest's §2.4 pseudo-code, line by line (one GPU): ``f``/``f_k`` give the C5 map, ``proj``/``proj_k`` the
    projector; ``box_px = (y0, x0, h, w)`` pixels, ``box_cells = (cy, cx, ch, cw)`` cells; ``queue`` (K, D).
    Returns ``(L_ins, L_reg, k)``; the caller enqueues ``k``."""
    b = xq.shape[0]
    partner = torch.arange(b).flip(0)
    y0, x0, h, w = box_px
    xpc = xq.clone()
    xpc[..., y0:y0 + h, x0:x0 + w] = xq[partner][..., y0:y0 + h, x0:x0 + w]

    def l2n(t):
        return F.normalize(t, dim=1)

    def gap(t):
        return t.mean(dim=(2, 3))

    def masked_mean(t, mask):
        return (t * mask).sum(dim=(2, 3)) / mask.sum()

    def ce(logits):
        return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long))

    q = l2n(proj(gap(f(xq))))
    fmap = f(xpc)
    cy, cx, ch, cw = box_cells
    mask = torch.zeros(fmap.shape[2:])
    mask[cy:cy + ch, cx:cx + cw] = 1
    pin = l2n(proj(masked_mean(fmap, mask)))
    cv = l2n(proj(masked_mean(fmap, 1 - mask)))
    p = pin[partner]
    with torch.no_grad():
        k = l2n(proj_k(gap(f_k(xk))))

    def dot(a, c):
        return (a * c).sum(1, keepdim=True)

    l_ins = ce(torch.cat([dot(q, k), q @ queue.T], 1) / tau)
    l_can = ce(torch.cat([dot(cv, k), dot(cv, pin.detach()), cv @ queue.T], 1) / tau)
    l_pas = ce(torch.cat([dot(p, k), dot(p, cv[partner].detach()), p @ queue.T], 1) / tau)
    return l_ins, 0.5 * (l_can + l_pas), k
