"""A run directory: whether a command resumes or starts over, what it writes, and checkpoint I/O.

Every training command (``pretrain``, ``detect``, ``semisup --run-dir``) keeps its state in a run
folder with ``last.pth``: rerunning the command resumes it, ``--no-resume`` clears what an earlier
run wrote (other files are left alone), ``--resume`` insists on a checkpoint. One decision
(:func:`plan`) and one restore (:func:`restore`) serve them all.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from sslkit import dist
from sslkit.console import warn
from sslkit.errors import UserError
from sslkit.io.atomic import atomic_path, describe_os_error
from sslkit.io.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, set_rng_state

LAST = "last.pth"
SKIPPED = "skipped_images.tsv"


@dataclass(frozen=True)
class RunPlan:
    """``config``: the checkpoint's settings when resuming (else None); ``resume_from``: its path;
    ``fresh``: an earlier run's outputs are to be cleared first."""

    config: dict | None = None
    resume_from: str | None = None
    fresh: bool = False


def _read_config(path: Path) -> dict | str:
    """A checkpoint's config (read lazily, mmap, without the tensors), or why it cannot be read."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same kind of answer
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return "truncated or damaged" if "zip archive" in first or "central directory" in first else first
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT or not isinstance(ck.get("config"), dict):
        return "not an sslkit training checkpoint"
    return dict(ck["config"])


def peek_config(path: Path) -> dict:
    """The config of ``path``; a damaged file is one line that names the newest readable epoch
    checkpoint beside it, if there is one, as the way to resume."""
    got = _read_config(path)
    if isinstance(got, dict):
        return got
    for epoch in sorted(path.parent.glob("epoch_*.pth"), reverse=True):
        if isinstance(_read_config(epoch), dict):
            raise UserError(f"cannot be resumed: {got}", path,
                            f"resume from the newest good epoch checkpoint with `cp {epoch} {path}` and rerun; "
                            "--no-resume starts over and removes the run's checkpoints")
    raise UserError(f"cannot be resumed: {got}", path,
                    "--no-resume starts over (it removes this run's checkpoints and logs)")


def make_run_dir(path: Path) -> None:
    """Create a run folder; an unwritable place is one line naming it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:
        raise UserError("is a file, expected a run folder", path, "choose another --out") from e
    except OSError as e:
        raise describe_os_error(e, path) from e


def plan(out: Path, resume: bool | None, outputs: tuple[str, ...], *, eval_only: bool = False) -> RunPlan:
    """Resume ``out/last.pth`` (``resume`` None or True), or start over (``resume`` False: the
    earlier run's ``outputs`` will be cleared). ``eval_only`` needs a checkpoint to evaluate."""
    if out.exists() and not out.is_dir():
        raise UserError("is a file, expected a run folder", out)
    last = out / LAST
    if resume is False:
        if eval_only:
            raise UserError("--eval-only evaluates RUN_DIR/last.pth; --no-resume would discard it")
        return RunPlan(fresh=out.exists() and any((out / n).exists() for n in outputs))
    if last.exists():
        return RunPlan(peek_config(last), str(last))
    if eval_only:
        raise UserError("nothing to evaluate (no last.pth)", out, "train first (leave out --eval-only)")
    if resume:
        raise UserError("nothing to resume (no last.pth)", out, "leave out --resume to start a new run")
    return RunPlan()


def clear_outputs(run_dir: Path, outputs: tuple[str, ...]) -> None:
    """Remove what an earlier run wrote (``outputs`` and epoch checkpoints); other files are left alone."""
    for name in outputs:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for p in run_dir.glob("epoch_*.pth"):
        p.unlink()


def epoch_checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pth"


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` atomically (a hard link where the filesystem allows)."""
    with atomic_path(dst) as tmp:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def prune_epochs(run_dir: Path, keep: int) -> None:
    if keep <= 0:
        return
    for p in sorted(run_dir.glob("epoch_*.pth"))[:-keep]:
        p.unlink()


def check_data(ck: dict, path: str, **now) -> None:
    """The checkpoint's ``data`` entries ``now`` names (e.g. ``num_images``, ``global_batch``) must be equal."""
    data = ck.get("data") or {}
    if any(data.get(k) != v for k, v in now.items()):
        was = ", ".join(f"{k.replace('_', ' ')} {data.get(k)}" for k in now)
        is_ = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in now.items())
        raise UserError(f"the checkpoint was made with {was}; now {is_}", path,
                        "resume with the same data and batch, or start a new --out")


def restore(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, amp, **data) -> dict:
    """Load ``path`` into ``model`` (and, unless ``optimizer`` is None, the optimizer, GradScaler and RNG
    states); ``data`` as in :func:`check_data`. Returns the checkpoint (tensors already loaded)."""
    ck = load_checkpoint(path)
    check_data(ck, path, **data)
    model.load_state_dict(ck["model"])
    if optimizer is not None:
        optimizer.load_state_dict(ck["optimizer"])
        if ck.get("scaler") and amp.scaler.is_enabled():
            amp.scaler.load_state_dict(ck["scaler"])
        set_rng_state(ck["rng"])
    return ck


def elapsed_of(ck: dict) -> float:
    return float((ck.get("metrics") or {}).get("elapsed_s", 0.0))


class SkippedImages:
    """Unreadable images: warn once per file on the rank that met it; rank 0 lists them all in ``path``."""

    def __init__(self, path: Path, main: bool):
        self.path = path
        self.main = main
        self.seen: set[str] = set()
        self.new: list[tuple[str, str]] = []
        if main and path.exists():
            self.seen = {line.split("\t", 1)[0] for line in path.read_text().splitlines()[1:] if line}

    def add(self, items: list[tuple[str, str]]) -> None:
        for name, reason in items:
            if name not in self.seen:
                self.seen.add(name)
                self.new.append((name, reason))
                warn(f"skipping unreadable image {name}: {reason}")

    def flush(self) -> None:
        """Collective: gather every rank's new entries; rank 0 appends them to the list."""
        gathered = dist.all_gather_objects(self.new)
        self.new = []
        if not self.main:
            return
        rows = {}
        for items in gathered:
            for name, reason in items:
                rows.setdefault(name, reason)
        if not rows:
            return
        old = self.path.read_text() if self.path.exists() else "file_name\treason\n"
        with atomic_path(self.path) as tmp:
            Path(tmp).write_text(old + "".join(f"{n}\t{r}\n" for n, r in rows.items()))
