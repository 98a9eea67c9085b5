"""Entropic optimal transport: the log-domain Sinkhorn–Knopp plan (Cuturi 2013), as UniVIP's instance
term uses it (following OTA). A pure tensor function; ``tests/test_references.py`` checks it against POT.
"""

from __future__ import annotations

import torch

#: spec univip.md §2.4 / §6.10 [OTA, I]: entropic regulariser and iterations
OT_EPS = 0.1
OT_ITERS = 50
#: spec univip.md §6.9 [I]: added to the ReLU'd marginals before normalising, so all-zero marginals become uniform
MARGINAL_FLOOR = 1e-8


def normalize_marginal(w: torch.Tensor, floor: float = MARGINAL_FLOOR) -> torch.Tensor:
    """``(relu(w) + floor) / Σ``: non-negative weights summing to 1 along the last dim (all-zero → uniform)."""
    w = w.float().clamp_min(0) + floor
    return w / w.sum(-1, keepdim=True)


@torch.no_grad()
def sinkhorn_log(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float = OT_EPS,
                 iters: int = OT_ITERS) -> torch.Tensor:
    """Entropic optimal-transport plan by Sinkhorn–Knopp in the log domain (Cuturi 2013; as in OTA).

    ``cost`` (..., M, N); ``a`` (..., M) row (supplier) and ``b`` (..., N) column (demander) marginals,
    any non-negative weights: each is normalised to sum 1 by :func:`normalize_marginal`, so the
    equal-mass condition of Eq. 7 holds. Returns the plan (..., M, N), float32, without gradient:
    ``Y = exp(f_m − C_mn/ε + g_n)`` after ``iters`` rounds of
    ``f = log a − LSE_n(−C/ε + g)``, ``g = log b − LSE_m(−C/ε + f)``: columns sum exactly to ``b``,
    rows to ``a`` up to convergence, and ``ΣY = 1``. Computed in float32 with autocast off, and only
    with finite log-sum-exps (every marginal entry ≥ the floor), so it is finite for any finite cost,
    any ε > 0 and half-precision inputs.
    """
    if eps <= 0 or iters < 1:
        raise ValueError(f"Sinkhorn needs eps > 0 and iters >= 1 (got {eps}, {iters})")
    with torch.autocast(cost.device.type, enabled=False):
        log_k = -cost.detach().float() / eps
        log_a = normalize_marginal(a.detach()).log()
        log_b = normalize_marginal(b.detach()).log()
        g = torch.zeros_like(log_b)
        for _ in range(iters):
            f = log_a - torch.logsumexp(log_k + g.unsqueeze(-2), dim=-1)
            g = log_b - torch.logsumexp(log_k + f.unsqueeze(-1), dim=-2)
        return torch.exp(f.unsqueeze(-1) + log_k + g.unsqueeze(-2))
