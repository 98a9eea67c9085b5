"""Distributed context: who launched us (sslkit's elastic launcher, torchrun, SLURM), process-group
setup, and the collectives methods need (gather with and without gradient, MoCo's shuffle-BN).

Every helper works unchanged in a single process (no process group): gathers return their input
and barriers return at once, so method code never branches on the world size.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sslkit.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    launcher: str = "none"  # none | torchrun (any torch elastic agent, sslkit's --gpus/--procs included) | slurm

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _slurm_master_addr() -> str:
    nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST") or ""
    if not nodelist:
        raise UserError("SLURM job without a node list; cannot find the master node",
                        None, "export MASTER_ADDR=<first node> before srun")
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError) as e:
        raise UserError(f"cannot expand the SLURM node list {nodelist!r} ({e})", None,
                        "export MASTER_ADDR=<first node> before srun") from e
    if not out:
        raise UserError(f"empty SLURM node list {nodelist!r}", None, "export MASTER_ADDR=<first node>")
    return out[0]


def detect_launcher() -> DistInfo | None:
    """The job layout set by an external launcher, or None when this process was started alone.

    * torchrun / torch.distributed.run / sslkit's own (elastic) launcher: ``RANK``, ``WORLD_SIZE``,
      ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``.
    * SLURM ``srun`` with more than one task: ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``,
      ``SLURM_NTASKS_PER_NODE``/``SLURM_STEP_TASKS_PER_NODE``; ``MASTER_ADDR`` defaults to the first
      node of the step and ``MASTER_PORT`` to ``15000 + SLURM_JOB_ID % 20000``. These are exported
      so ``init_process_group("env://")`` finds them.
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        return DistInfo(int(env["RANK"]), world, int(env.get("LOCAL_RANK", 0)),
                        int(env.get("LOCAL_WORLD_SIZE", world)), "torchrun")
    ntasks = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")) or 1)
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env and ntasks > 1:
        tasks_per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_NTASKS_PER_NODE") or str(ntasks)
        local_world = int(tasks_per_node.split("(")[0].split(",")[0])
        if "MASTER_ADDR" not in env:
            env["MASTER_ADDR"] = _slurm_master_addr()
        env.setdefault("MASTER_PORT", str(15000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        info = DistInfo(int(env["SLURM_PROCID"]), ntasks, int(env.get("SLURM_LOCALID", 0)), local_world, "slurm")
        env["RANK"], env["WORLD_SIZE"] = str(info.rank), str(info.world_size)
        env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"] = str(info.local_rank), str(info.local_world_size)
        return info
    return None


_INFO = DistInfo()


def info() -> DistInfo:
    return _INFO


def init(device: str) -> DistInfo:
    """Join the process group the launcher set up (``env://``); a no-op for a single process.

    NCCL on CUDA (each rank on ``cuda:LOCAL_RANK``), gloo on CPU.
    """
    global _INFO
    found = detect_launcher()
    if found is None or found.world_size == 1:
        _INFO = DistInfo(launcher=found.launcher if found else "none")
        if device == "cuda":
            torch.cuda.set_device(0)
        return _INFO
    index = 0
    if device == "cuda":
        visible = torch.cuda.device_count()
        if visible == 1:  # the scheduler bound one GPU to this process (e.g. srun --gpus-per-task 1)
            index = 0
        elif found.local_rank < visible:
            index = found.local_rank
        else:
            raise UserError(f"local rank {found.local_rank} has no GPU ({visible} visible)", None,
                            "start one process per GPU")
        torch.cuda.set_device(index)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method="env://",
                                rank=found.rank, world_size=found.world_size,
                                device_id=torch.device("cuda", index) if device == "cuda" else None)
    _INFO = found
    return _INFO


@contextlib.contextmanager
def running(device: str):
    """``init`` the process group for this rank, yield its :class:`DistInfo`, always ``shutdown``."""
    info = init(device)
    try:
        yield info
    finally:
        shutdown()


def shutdown() -> None:
    global _INFO
    if dist.is_initialized():
        dist.destroy_process_group()
    _INFO = DistInfo()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@torch.no_grad()
def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0 (rank order); no gradient flows back."""
    if world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice (SimCLR's GatherLayer).

    With DDP averaging parameter gradients over ranks, this gives the gradient of the mean of the
    per-rank losses, i.e. of one loss computed over the global batch.
    """

    @staticmethod
    def forward(ctx, x):
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        r = dist.get_rank()
        return grad[r * n:(r + 1) * n]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, differentiably (gradients reach every rank's ``x``)."""
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world_size()


def all_gather_objects(obj) -> list:
    """Every rank's picklable ``obj`` (a small list or dict), in rank order."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def batch_shuffle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo's shuffle-BN, step 1: give this rank a random slice of the global batch.

    Returns ``(x_shuffled_local, unshuffle_index)``; the permutation is drawn on rank 0 and broadcast.
    With one process it is the identity (BN statistics then come from the local key batch).
    """
    if world_size() == 1:
        return x, torch.arange(x.shape[0], device=x.device)
    x_all = all_gather(x)
    perm = torch.randperm(x_all.shape[0], device=x.device)
    dist.broadcast(perm, src=0)
    return x_all[perm.view(world_size(), -1)[rank()]], torch.argsort(perm)


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, unshuffle: torch.Tensor) -> torch.Tensor:
    """MoCo's shuffle-BN, step 2: put the features computed on the shuffled slice back in order."""
    if world_size() == 1:
        return x
    x_all = all_gather(x)
    return x_all[unshuffle.view(world_size(), -1)[rank()]]


def resolve_device(text: str) -> torch.device:
    """``auto`` (CUDA when visible, else CPU), ``cpu``, ``cuda`` or ``cuda:N``, checked."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except RuntimeError as e:
        raise UserError(f"unknown --device {text!r}", None, "use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {text}: CUDA is not available here", None, "use --device cpu")
    return dev
