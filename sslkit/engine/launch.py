"""Starting the workers: in this process, or N per node with PyTorch's elastic launcher.

``sslkit pretrain --gpus N`` / ``--procs N`` calls :func:`launch`, which runs
``torch.distributed.launcher.api.elastic_launch`` (the engine behind ``torchrun``) with N local
workers; each joins the process group from the ``RANK``/``WORLD_SIZE``/``MASTER_*`` variables the
agent sets. Single node: a c10d rendezvous on a free local port (``torchrun --standalone``).
Several nodes: ``--nodes M --rdzv-endpoint HOST:PORT`` on every node, and either ``--node-rank R``
(static rendezvous, ``torchrun --node-rank``) or no rank (c10d rendezvous assigns them).
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record

from sslkit.errors import UserError

TRAIN_ENTRY = "sslkit.engine.pretrain:train"


@record
def _worker(cfg: dict, opts, entry: str = TRAIN_ENTRY) -> dict | None:
    """Entry point of a launched worker (module-level so that ``spawn`` can import it); ``record``
    writes its exception to the agent's error file so the launcher can report it."""
    import importlib

    module, func = entry.split(":")
    return getattr(importlib.import_module(module), func)(cfg, opts)


def launch(cfg: dict, opts, nproc_per_node: int, nodes: int = 1, node_rank: int | None = None,
           rdzv_endpoint: str | None = None, entry: str = TRAIN_ENTRY) -> dict | None:
    """Run ``entry`` (``"module:function"`` taking ``(cfg, opts)``; default
    :func:`sslkit.engine.pretrain.train`) on ``nodes × nproc_per_node`` ranks; rank 0's result."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nodes > 1 and not rdzv_endpoint:
        raise UserError("--nodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node)")
    if nodes == 1 and not rdzv_endpoint:
        backend, endpoint, run_id, rdzv_configs = "c10d", "localhost:0", str(uuid.uuid4()), {}
    else:
        endpoint = rdzv_endpoint
        # every node must agree on the run id: derive it from the run directory
        run_id = "sslkit-" + hashlib.sha1(str(Path(opts.run_dir).resolve()).encode()).hexdigest()[:12]
        if node_rank is not None:
            backend, rdzv_configs = "static", {"rank": node_rank}
        else:
            backend, rdzv_configs = "c10d", {}
    for name in ("torch.distributed.elastic", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if cfg["device"] == "cpu":
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc_per_node)))
    config = LaunchConfig(min_nodes=nodes, max_nodes=nodes, nproc_per_node=nproc_per_node, run_id=run_id,
                          rdzv_backend=backend, rdzv_endpoint=endpoint, rdzv_configs=rdzv_configs,
                          max_restarts=0, start_method="spawn", monitor_interval=0.5)
    try:
        results = elastic_launch(config, _worker)(cfg, opts, entry)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        msg = failure.message
        if isinstance(msg, dict):
            msg = msg.get("message", str(msg))
        line = str(msg).strip().splitlines()[0] if msg else "no message"
        for prefix in ("UserError: ", "FormatError: "):
            if line.startswith(prefix):
                raise UserError(f"rank {rank}: {line[len(prefix):]}") from None
        raise RuntimeError(f"rank {rank} failed: {line}") from None
    return results.get(0) if results else None


def device_layout(gpus: int | None, procs: int | None, nodes: int, ext) -> tuple[str, int, int]:
    """(device, ranks per node to start here (0: started by an external launcher), world size)."""
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if nodes < 1:
        raise UserError("--nodes must be at least 1")
    if gpus is not None and procs is not None:
        raise UserError("--gpus and --procs are exclusive", None,
                        "--gpus N: N CUDA workers; --procs N: N CPU workers (gloo)")
    if ext is not None:
        if (gpus or 0) > 1 or (procs or 0) > 1 or nodes > 1:
            raise UserError(f"started by {ext.launcher}, which already made {ext.world_size} processes", None,
                            "leave out --gpus/--procs/--nodes (or pass --gpus 0 for CPU)")
        device = "cpu" if gpus == 0 or procs is not None or n_cuda == 0 else "cuda"
        if gpus == 1 and n_cuda == 0:
            raise UserError("--gpus 1 but no CUDA device is visible")
        return device, 0, ext.world_size
    if procs is not None:
        if procs < 1:
            raise UserError("--procs must be at least 1")
        return "cpu", procs, procs * nodes
    if gpus is None:
        gpus = n_cuda
    if gpus < 0:
        raise UserError("--gpus must be >= 0")
    if gpus > n_cuda:
        raise UserError(f"--gpus {gpus} but {n_cuda} CUDA device(s) are visible")
    if gpus == 0:
        if nodes > 1:
            raise UserError("multi-node CPU training needs --procs N")
        return "cpu", 1, 1
    return "cuda", gpus, gpus * nodes
