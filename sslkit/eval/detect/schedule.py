"""Detection schedules: detectron2's "1×" recipe and its multiples, scaled to any dataset and batch.

The reference is the COCO R50-FPN 1× schedule (detectron2 ``Base-RCNN-FPN.yaml``; PyContrast /
InfoMin ``R_50_FPN_1x``): 90k iterations of 16 images, base lr 0.02, linear warm-up over 1000
iterations from 0.001·lr, lr ×0.1 at 60k and 80k.

Scaling rules (docs/detect.md):

* **Length.** 1× is 90,000 × 16 = 1.44 M training images, i.e. 1.44 M / 118,287 ≈ 12.17 epochs of
  COCO train2017.  On a dataset of ``N`` training images with a global batch ``B``, 1× is the same
  number of *epochs*: ``round(90000 · 16/B · N/118287)`` iterations (exactly 90k on COCO at 16).
  ``Nx`` multiplies that; ``--iters`` replaces it.
* **Learning rate.** Linear scaling: ``lr · B/16``.
* **Warm-up.** 1000 iterations of a 90k 1× run, scaled with the dataset's 1× length (so the
  warm-up covers the same number of images) and never longer than the same fraction of the
  run itself; detectron2 keeps it at 1000 for its 2× and 3× schedules, and so does this rule.
* **Steps.** The two ×0.1 decays come ``min(N, 2) × (30k, 10k)`` (scaled) iterations before the
  end: 60k/80k for 1×, 120k/160k for 2× (both at 2/3 and 8/9 of the run), 210k/250k for 3× and
  480k/520k for 6× (detectron2's 3× and PyContrast's 6× configs: the last 60k and 20k).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import asdict, dataclass

from sslkit.errors import UserError

COCO_TRAIN2017_IMAGES = 118_287
REF_ITERS = 90_000
REF_BATCH = 16
REF_LR = 0.02
REF_WARMUP_ITERS = 1000
WARMUP_FACTOR = 0.001
GAMMA = 0.1
#: iterations before the end of a 1× run at which the lr decays (60k and 80k of 90k)
REF_STEPS_BEFORE_END = (30_000, 10_000)


def parse_schedule(text: str) -> float:
    """``"1x"`` → 1.0, ``"2x"`` → 2.0, ``"0.5x"`` → 0.5 (a trailing ``×`` works too)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*[x×]\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"--schedule {text!r} is not a multiple of 1x", None, "e.g. --schedule 1x, 2x, 0.5x or 6x")
    return float(m.group(1))


def iters_1x(num_images: int, batch_size: int) -> int:
    """Iterations of a 1× schedule on ``num_images`` training images at global batch ``batch_size``."""
    return max(1, round(REF_ITERS * REF_BATCH / batch_size * num_images / COCO_TRAIN2017_IMAGES))


@dataclass(frozen=True)
class DetectionSchedule:
    """Warm-up then step decay, as detectron2's ``WarmupMultiStepLR`` (``WARMUP_METHOD: linear``)."""

    iters: int
    base_lr: float  # peak lr for this batch (already scaled)
    warmup_iters: int
    steps: tuple[int, ...]
    warmup_factor: float = WARMUP_FACTOR
    gamma: float = GAMMA
    # how it was derived (recorded, not used by __call__)
    name: str = "1x"
    multiplier: float = 1.0
    batch_size: int = REF_BATCH
    num_images: int = COCO_TRAIN2017_IMAGES
    iters_1x: int = REF_ITERS

    def __call__(self, it: int) -> float:
        """lr of iteration ``it`` (0-based), detectron2's value: the decay applies from iteration ``step`` on."""
        factor = self.gamma ** bisect.bisect_right(self.steps, it)
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            factor *= self.warmup_factor * (1.0 - alpha) + alpha
        return self.base_lr * factor

    @property
    def epochs(self) -> float:
        return self.iters * self.batch_size / max(1, self.num_images)

    def describe(self) -> dict:
        d = asdict(self)
        d["steps"] = list(self.steps)
        d["epochs"] = round(self.epochs, 3)
        return d


def make_schedule(schedule: str, num_images: int, batch_size: int, *, lr: float = REF_LR, iters: int | None = None,
                  warmup_iters: int | None = None, steps: list[int] | None = None) -> DetectionSchedule:
    """The schedule ``schedule`` (``"1x"``, ``"2x"``, …) for ``num_images`` images at global batch ``batch_size``.

    ``lr`` is the base lr for a batch of 16 (scaled linearly); ``iters``, ``warmup_iters`` and
    ``steps`` (absolute iterations) replace the derived values.
    """
    mult = parse_schedule(schedule)
    if batch_size < 1:
        raise UserError(f"--batch-size must be ≥ 1 (got {batch_size})")
    one = iters_1x(num_images, batch_size)
    total = iters if iters is not None else max(1, round(mult * one))
    if total < 1:
        raise UserError(f"--iters must be ≥ 1 (got {total})")
    scale = one / REF_ITERS
    if steps is None:
        # the end-relative decay points of detectron2's 1x/2x/3x and PyContrast's 6x, scaled
        span = min(mult if iters is None else total / one, 2.0)
        steps = [max(0, round(total - d * span * scale)) for d in REF_STEPS_BEFORE_END]
    steps = sorted(int(s) for s in steps)
    if any(s < 0 or s > total for s in steps):
        raise UserError(f"--steps {steps} must lie within the {total} iterations")
    if warmup_iters is None:
        warmup_iters = round(REF_WARMUP_ITERS / REF_ITERS * min(one, total))
    if warmup_iters < 0:
        raise UserError(f"--warmup-iters must be ≥ 0 (got {warmup_iters})")
    return DetectionSchedule(iters=total, base_lr=lr * batch_size / REF_BATCH, warmup_iters=int(warmup_iters),
                             steps=tuple(steps), name=schedule.strip(), multiplier=mult, batch_size=batch_size,
                             num_images=num_images, iters_1x=one)
