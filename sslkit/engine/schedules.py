"""Learning-rate and EMA-momentum schedules: pure functions of the optimizer step.

Being functions of the step (not stateful objects) makes resume exact: a resumed run recomputes
the same value for step ``k`` that the uninterrupted run used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


def scaled_lr(base_lr: float, batch_size: int, scaling: str) -> float:
    """The peak learning rate for a global batch: ``linear`` → base·B/256 (Goyal et al. 2017),
    ``sqrt`` → base·√B (SimCLR appendix B.1, for small batches with LARS), ``none`` → base."""
    if scaling == "linear":
        return base_lr * batch_size / 256.0
    if scaling == "sqrt":
        return base_lr * math.sqrt(batch_size)
    if scaling == "none":
        return base_lr
    raise ValueError(f"unknown lr scaling {scaling!r}")


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warm-up from ``start_factor·peak`` to ``peak`` over ``warmup_steps``, then cosine decay to
    ``min_lr`` at ``total_steps``, updated every iteration (as in ORL's config: warmup ratio 1e-4,
    cosine to 0)."""

    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    start_factor: float = 1e-4
    min_lr: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak_lr * (self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps)
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))

    def state_dict(self) -> dict:
        return {"name": "warmup_cosine", **asdict(self)}
