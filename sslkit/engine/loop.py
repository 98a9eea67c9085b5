"""THE training loop, shared by pretraining, detection fine-tuning and semi-supervised fine-tuning.

Each of those is an *adapter* that defines a model, a data source (an iterable of
``(batch, skipped images)`` from the loop's current step on), a ``forward(batch) → {"loss": …}``
and its schedules; the loop runs, for each step ``k`` (0-based, counting optimizer steps):

1. ``lr ← lr_at(k)`` on every parameter group (one value for all groups, or one per group; a
   method's ``fixed_lr`` group keeps that lr, e.g. SimSiam's predictor);
2. ``forward(batch)`` under autocast → backward (GradScaler with fp16) → optional clipping of the
   global gradient norm → optimizer step (``forward`` returning None skips the step: nothing to learn
   from, e.g. every image of the batch was unreadable);
3. ``after_step(k, total)`` (EMA / momentum encoders), whose values are logged with the step;
4. every hook's ``after_step`` (logging, checkpoints, …) with the step's outputs.

Hooks (detectron2's ``TrainerBase`` + hooks): :class:`LogHook` (rank-averaged scalars to
``log.jsonl``/TensorBoard/progress, non-finite losses stop the run), :class:`CheckpointHook`
(periodic ``last.pth``, epoch checkpoints, a checkpoint where the run stops); adapters add their own
(an epoch summary, Precise BN, evaluation) through the same three calls.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from sslkit import dist


class Amp:
    """Autocast at ``precision`` (fp32: none) and the GradScaler fp16 needs (disabled otherwise)."""

    def __init__(self, precision: str, device: str):
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.device = device
        self.scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=self.dtype)


def to_device(x, device: torch.device, channels_last: bool = False):
    """Tensors of a (nested) batch on ``device``; 4-D ones in NHWC when ``channels_last``."""
    if isinstance(x, torch.Tensor):
        x = x.to(device, non_blocking=True)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device, channels_last) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device, channels_last) for k, v in x.items()}
    return x


def set_lr(optimizer: torch.optim.Optimizer, lr: float | Sequence[float]) -> None:
    """One lr for every group, or one per group; a group with a ``fixed_lr`` value (a method's own
    group, :meth:`~sslkit.methods.base.Method.param_groups`) takes that value instead."""
    lrs = [lr] * len(optimizer.param_groups) if isinstance(lr, (int, float)) else list(lr)
    for group, value in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = value if group.get("fixed_lr") is None else group["fixed_lr"]


def optimizer_step(optimizer: torch.optim.Optimizer, amp: Amp, loss: torch.Tensor,
                   grad_clip: float | None = None) -> torch.Tensor | None:
    """zero_grad → backward (scaled for fp16) → clip the global L2 norm of the gradients to
    ``grad_clip`` (after unscaling) → step. Returns the norm before clipping when clipping, except with
    fp16, whose skipped overflow steps have an infinite norm (it would stop the run as non-finite)."""
    optimizer.zero_grad(set_to_none=True)
    amp.scaler.scale(loss).backward()
    norm = None
    if grad_clip:
        amp.scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = nn.utils.clip_grad_norm_(params, grad_clip)
    amp.scaler.step(optimizer)
    amp.scaler.update()
    return None if amp.scaler.is_enabled() else norm


def train_step(module: nn.Module, model, optimizer: torch.optim.Optimizer, amp: Amp, batch, lr: float,
               step: int, total_steps: int, grad_clip: float | None = None) -> tuple[dict, dict]:
    """One pretraining step as the loop runs it: set lr, forward (through DDP when ``module`` is the
    DDP wrapper of ``model``), backward, step, then the method's after-step hook.
    Returns (the method's outputs, the hook's values)."""
    set_lr(optimizer, lr)
    with amp.autocast():
        out = module(batch)
    norm = optimizer_step(optimizer, amp, out["loss"], grad_clip)
    if norm is not None:
        out = {**out, "grad_norm": norm}
    return out, model.on_after_step(step, total_steps)


class Hook:
    """Called by :meth:`Loop.run`: before the first step, after every step, after the last (also on error)."""

    def before_train(self, loop: Loop) -> None:
        pass

    def after_step(self, loop: Loop, out: dict | None) -> None:
        pass

    def after_train(self, loop: Loop) -> None:
        pass


@dataclass
class Loop:
    """The state of a run between steps: the step counter, the last values logged, the time trained."""

    optimizer: torch.optim.Optimizer
    amp: Amp
    forward: Callable[[object], dict | None]  # batch → {"loss": …, other scalars}; runs under autocast
    lr_at: Callable[[int], float | Sequence[float]]
    total: int  # steps of the whole schedule
    start: int = 0  # first step to run (resume)
    stop: int | None = None  # stop after this step count (≤ total); None: total
    after_step: Callable[[int, int], dict] | None = None  # (step, total) → values to log (EMA momentum)
    grad_clip: float | None = None
    elapsed_before: float = 0.0  # training seconds of the runs this one resumes
    step: int = field(init=False)
    lr: float | Sequence[float] = field(init=False, default=0.0)
    extra: dict = field(init=False, default_factory=dict)  # after_step's values of the last step
    metrics: dict = field(init=False, default_factory=dict)  # the last logged record (checkpoints carry it)

    def __post_init__(self):
        self.step = self.start
        self.stop = self.total if self.stop is None else min(self.total, self.stop)
        self._t0 = time.monotonic()

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self._t0

    @property
    def done(self) -> bool:
        return self.step >= self.stop

    def run_step(self, batch) -> dict | None:
        self.lr = self.lr_at(self.step)
        set_lr(self.optimizer, self.lr)
        with self.amp.autocast():
            out = self.forward(batch)
        if out is not None:
            norm = optimizer_step(self.optimizer, self.amp, out["loss"], self.grad_clip)
            if norm is not None:
                out = {**out, "grad_norm": norm}
        self.extra = self.after_step(self.step, self.total) if self.after_step is not None else {}
        return out

    def run(self, batches: Iterable, hooks: Sequence[Hook] = ()) -> int:
        """Run steps from ``self.step`` until ``stop`` or the batches end; returns the step reached."""
        for h in hooks:
            h.before_train(self)
        try:
            if not self.done:
                for batch in batches:
                    out = self.run_step(batch)
                    self.step += 1
                    for h in hooks:
                        h.after_step(self, out)
                    if self.done:
                        break
        finally:
            for h in hooks:
                h.after_train(self)
        return self.step


def finite(x: float) -> bool:
    return math.isfinite(x)


class LogHook(Hook):
    """Sums the step outputs; every ``every`` steps, at the end of the schedule and where the run stops,
    rank-averages them, stops the run on a non-finite value, and writes one record through ``logger`` (a
    :class:`~sslkit.engine.logger.RunLogger`): ``{"step", "epoch", <outputs>, "lr", <after-step values>,
    "img_per_s", "elapsed_s", "time"}`` (``"stopped": true`` for a record written only because the run
    stopped there; a resume removes it)."""

    def __init__(self, logger, every: int, images_per_step: int, epoch_of: Callable[[int], float],
                 lr_value: Callable[[object], float] = lambda lr: lr, what: str = "step",
                 hint: str = "lower --lr, or use --precision fp32", resume: dict | None = None):
        """``resume``: the :meth:`state` a checkpoint saved, so that the first record after a resume averages
        the same steps, and logs the same values, as an uninterrupted run's."""
        self.logger = logger
        self.resume = resume
        self.every = every
        self.images_per_step = images_per_step
        self.epoch_of = epoch_of
        self.lr_value = lr_value
        self.what = what
        self.hint = hint

    def before_train(self, loop: Loop) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0
        if self.resume:
            self.sums = {k: v.clone() for k, v in self.resume["sums"].items()}
            self.n = int(self.resume["n"])
        self.t_log, self.step_log = time.monotonic(), loop.step

    def state(self) -> dict:
        """The sums of the steps since the last record (a checkpoint carries them)."""
        return {"sums": {k: v.detach().cpu().clone() for k, v in self.sums.items()}, "n": self.n}

    def after_step(self, loop: Loop, out: dict | None) -> None:
        if out is not None:
            for k, v in out.items():
                v = v.detach().float()
                self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.n += 1
        self.logger.advance(loop.step)
        on_grid = loop.step % self.every == 0 or loop.step == loop.total
        if not (on_grid or loop.step == loop.stop) or not self.sums:
            return
        means = dist.all_reduce_mean(torch.stack(list(self.sums.values())) / self.n).tolist()
        rec = dict(zip(self.sums, means, strict=True))
        if not all(map(finite, rec.values())):
            raise FloatingPointError(f"loss is not finite at {self.what} {loop.step} ({rec}); {self.hint}")
        now = time.monotonic()
        rec = {"step": loop.step, "epoch": round(self.epoch_of(loop.step), 4), **rec, "lr": self.lr_value(loop.lr),
               **loop.extra,
               "img_per_s": (loop.step - self.step_log) * self.images_per_step / max(now - self.t_log, 1e-9),
               "elapsed_s": round(loop.elapsed(), 3), "time": round(time.time(), 3)}
        loop.metrics = {k: v for k, v in rec.items() if k != "time"}
        if not on_grid:
            # a run stopped between records (--max-steps) says where it is, but keeps its sums: the
            # checkpoint carries them, a resume drops this record, and the log equals an uninterrupted one
            self.logger.log({**rec, "stopped": True})
            return
        self.logger.log(rec)
        self.sums, self.n, self.t_log, self.step_log = {}, 0, now, loop.step

    def after_train(self, loop: Loop) -> None:
        self.logger.close()


class CheckpointHook(Hook):
    """Checkpoints through ``save(epoch_end: bool)``: at every multiple of ``epoch_every`` (an epoch
    checkpoint), every ``save_every`` steps, and at the step the run stops before the end of its
    schedule (``at_stop``: also when it reaches the end)."""

    def __init__(self, save: Callable[[bool], None], save_every: int | None, epoch_every: int | None = None,
                 at_stop: bool = True):
        self.save = save
        self.save_every = save_every
        self.epoch_every = epoch_every
        self.at_stop = at_stop

    def after_step(self, loop: Loop, out: dict | None) -> None:
        s = loop.step
        if self.epoch_every and s % self.epoch_every == 0:
            self.save(True)
        elif loop.done and (self.at_stop or loop.stop < loop.total):
            self.save(False)
        elif self.save_every and s % self.save_every == 0 and not loop.done:
            self.save(False)
