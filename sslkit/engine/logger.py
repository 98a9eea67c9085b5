"""Training logs, written by rank 0 only: ``RUN_DIR/log.jsonl``, TensorBoard events in ``RUN_DIR/tb``,
and a rich progress bar (loss, lr, img/s, ETA) or, when stderr is not a terminal (batch jobs),
one plain line per logged step.

A ``log.jsonl`` line: ``{"step", "epoch", "loss", <other loss terms / metrics>, "lr", "momentum"
(EMA methods), "img_per_s", "elapsed_s", "time"}``; ``step`` counts optimizer steps done,
``epoch`` is fractional (step / steps_per_epoch), ``time`` is a Unix timestamp and ``elapsed_s``
the training time summed over resumes. On resume, lines after the checkpoint's step are dropped
(they are about to be recomputed) and TensorBoard purges them likewise.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

from sslkit.console import console, progress, warn


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the lines of ``path`` with ``step <= last_step``, except records written only because a run
    stopped there (``"stopped": true``), and drop a torn last line."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("step", 0) <= last_step and not rec.get("stopped"):
            keep.append(line)
    path.write_text("".join(k + "\n" for k in keep))


class RunLogger:
    def __init__(self, run_dir: Path, enabled: bool, quiet: bool, tensorboard: bool, total_steps: int,
                 start_step: int, global_batch: int, steps_per_epoch: int, resumed: bool,
                 name: str = "pretrain", unit: str = "img"):
        """``name`` labels the progress bar; ``unit`` is what it counts: ``img`` or ``it`` (steps)."""
        self.enabled = enabled
        self.unit = unit
        self._per_step = global_batch if unit == "img" else 1
        self.quiet = quiet
        self.total_steps = total_steps
        self.global_batch = global_batch
        self.steps_per_epoch = steps_per_epoch
        self.start_step = start_step
        self._stack = contextlib.ExitStack()
        self._jsonl = None
        self._tb = None
        self._bar = None
        self._task = None
        self._tty = sys.stderr.isatty()
        self._t0 = time.monotonic()
        if not enabled:
            return
        path = run_dir / "log.jsonl"
        if resumed:
            truncate_jsonl(path, start_step)
        elif path.exists():
            path.unlink()
        self._jsonl = open(path, "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warn("tensorboard is not installed; skipping TensorBoard logs (pip install tensorboard)")
            else:
                self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if resumed else None)
        if not quiet and self._tty:
            self._bar = self._stack.enter_context(progress(quiet=False, unit=unit))
            self._task = self._bar.add_task(name, total=total_steps * self._per_step,
                                            completed=start_step * self._per_step)

    def advance(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step * self._per_step)

    def log(self, record: dict) -> None:
        """Write one logged step (``record`` has ``step`` and JSON-compatible scalars)."""
        if not self.enabled:
            return
        self._jsonl.write(json.dumps(record) + "\n")
        step = record["step"]
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"train/{k}", v, step)
        if self.quiet:
            return
        desc = f"ep {record['epoch']:.2f} loss {record['loss']:.4f} lr {record['lr']:.3g}"
        if self._bar is not None:
            self._bar.update(self._task, description=desc)
        else:
            done = step - self.start_step
            eta = (self.total_steps - step) * (time.monotonic() - self._t0) / max(1, done)
            rate = record["img_per_s"] * self._per_step / self.global_batch
            console.print(f"step {step}/{self.total_steps} {desc} {rate:.1f} {self.unit}/s "
                          f"eta {time.strftime('%H:%M:%S', time.gmtime(eta))}", highlight=False)

    def message(self, text: str) -> None:
        if self.enabled and not self.quiet:
            console.print(text)

    def close(self) -> None:
        self._stack.close()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
