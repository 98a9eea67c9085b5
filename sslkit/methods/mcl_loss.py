"""MCL's multi-level contrastive loss (../shared/papers/mcl.txt §3.2–3.3, Eq. 2; spec mcl.md §2.4):
pure tensor functions, separately testable; :mod:`sslkit.methods.mcl` feeds them.

For one direction (online view q against the targets of view k; the loss is symmetric [P]):

    for every level s:
        u = normalize(predictor_s(online tiles of level s))          (n_s, D)
        for every target level t of s (mode a: t = 0):
            V = all_gather(normalize(target tiles of level t))         (m_t · world, D), no gradient
            loss_s,t = 2T · mean_i [ −Σ_j y_ij · log softmax_j(u_i · V_j / T) ]
        loss += w_s · mean_t loss_s,t

with ``y_i`` uniform over the target tiles of the same source image (one at level 0; two at level
3, where every image appears twice). Labels are global: a tile's source index plus ``rank · B``,
the offset of its rank's images in the gathered targets [C] (``aligned_gt_qs``).

Modes (paper Fig. 3 / Table 10b; the code implements (a); the others as the spec infers them):

* ``a`` (default [P][C]): every level targets the full-resolution (level-0) view;
* ``b`` counterpart: level s targets level s of the other view;
* ``c`` adjacent: level s targets level s−1 (level 0 targets level 0);
* ``d`` dense: every level targets every level, the per-target losses averaged.

T = 1 with the 2T factor [C] makes it twice the cross-entropy of raw cosine logits. Logged per
level (both directions averaged): the loss, the mean positive cosine and the mean negative cosine
(the code's ``pos_cos_dist``/``neg_cos_dist``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from sslkit.methods.numerics import fp32_loss

LOSS_MODES = ("a", "b", "c", "d")
#: T [C] (MCL.py ``head.T``; the paper gives no value)
TEMPERATURE = 1.0


def target_levels(mode: str, s: int, levels: int) -> list[int]:
    """The target levels online level ``s`` is contrasted with under ``mode``."""
    if mode == "a":
        return [0]
    if mode == "b":
        return [s]
    if mode == "c":
        return [max(s - 1, 0)]
    if mode == "d":
        return list(range(levels))
    raise ValueError(f"loss mode must be one of {', '.join(LOSS_MODES)} (got {mode!r})")


def needed_target_levels(mode: str, levels: int) -> list[int]:
    """Every target level some online level needs (mode a: only level 0)."""
    return sorted({t for s in range(levels) for t in target_levels(mode, s, levels)})


def contrast(u: torch.Tensor, v: torch.Tensor, u_labels: torch.Tensor, v_labels: torch.Tensor,
             tau: float = TEMPERATURE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """InfoNCE of online rows ``u`` (n, D) against L2-normalised targets ``v`` (m, D): positives are the
    targets with the row's label. Returns ``(2τ·mean CE, mean positive cosine, mean negative cosine)``.

    Rows are normalised here; a row with no positive among the targets (possible only with custom
    ``montage_fractions``) is left out of the mean.
    """
    cos = F.normalize(u.float(), dim=-1) @ v.float().t()
    pos = u_labels[:, None] == v_labels[None, :]
    npos = pos.sum(1)
    logp = F.log_softmax(cos / tau, dim=1)
    ce = -(logp * pos).sum(1) / npos.clamp_min(1)
    has = npos > 0
    loss = 2.0 * tau * (ce * has).sum() / has.sum().clamp_min(1)
    with torch.no_grad():  # no host sync (no boolean indexing): the step stays asynchronous on a GPU
        pf = pos.float()
        pos_cos = (cos * pf).sum() / pf.sum().clamp_min(1)
        neg_cos = (cos * (1 - pf)).sum() / (1 - pf).sum().clamp_min(1)
    return loss, pos_cos, neg_cos


@fp32_loss
def direction_loss(online: Sequence[torch.Tensor], online_labels: Sequence[torch.Tensor],
                   targets: dict[int, torch.Tensor], target_labels: dict[int, torch.Tensor], weights: Sequence[float],
                   tau: float, mode: str) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """One direction: online tiles of every level (``online[s]`` (n_s, D), global labels) against the
    gathered, normalised ``targets[t]`` with global ``target_labels[t]``. Returns the weighted sum and,
    per level, ``{"loss", "pos_cos", "neg_cos"}`` (the level's unweighted loss)."""
    levels = len(online)
    total = online[0].new_zeros((), dtype=torch.float32)
    stats = []
    for s in range(levels):
        parts = [contrast(online[s], targets[t], online_labels[s], target_labels[t], tau)
                 for t in target_levels(mode, s, levels)]
        loss_s = torch.stack([p[0] for p in parts]).mean()
        total = total + weights[s] * loss_s
        stats.append({"loss": loss_s.detach(), "pos_cos": torch.stack([p[1] for p in parts]).mean(),
                      "neg_cos": torch.stack([p[2] for p in parts]).mean()})
    return total, stats


@fp32_loss
def mcl_loss(q_online: Sequence[torch.Tensor], q_sources: Sequence[torch.Tensor],
             k_online: Sequence[torch.Tensor], k_sources: Sequence[torch.Tensor],
             q_targets: dict[int, torch.Tensor], q_target_sources: dict[int, torch.Tensor],
             k_targets: dict[int, torch.Tensor], k_target_sources: dict[int, torch.Tensor], *,
             weights: Sequence[float], tau: float = TEMPERATURE, mode: str = "a", batch: int, rank: int = 0,
             gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The symmetric MCL loss of one rank's batch.

    ``*_online[s]``: predictor outputs of the view's level-s tiles; ``*_sources[s]``: their source
    image (local index in ``0..batch−1``). ``*_targets[t]``: target-network projections of the view's
    level-t tiles (no gradient); ``*_target_sources[t]`` their sources. ``gather`` concatenates a
    tensor over ranks (``sslkit.dist.all_gather``; None: one process), ``rank`` is this rank.
    q's online tiles are contrasted with k's targets and vice versa. Returns the loss and the
    per-level diagnostics ``loss_l{s}``, ``pos_cos_l{s}``, ``neg_cos_l{s}`` (both directions averaged).
    """
    g = gather or (lambda x: x)
    offset = rank * batch

    def gathered(targets, sources):
        with torch.no_grad():
            return ({t: g(F.normalize(v.detach().float(), dim=-1)) for t, v in targets.items()},
                    {t: g(src + offset) for t, src in sources.items()})

    kt, kl = gathered(k_targets, k_target_sources)
    qt, ql = gathered(q_targets, q_target_sources)
    lq, sq = direction_loss(q_online, [x + offset for x in q_sources], kt, kl, weights, tau, mode)
    lk, sk = direction_loss(k_online, [x + offset for x in k_sources], qt, ql, weights, tau, mode)
    out = {}
    for s, (a, b) in enumerate(zip(sq, sk, strict=True)):
        for name in ("loss", "pos_cos", "neg_cos"):
            out[f"{name}_l{s}"] = (a[name] + b[name]) / 2
    return lq + lk, out
