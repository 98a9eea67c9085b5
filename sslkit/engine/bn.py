"""BatchNorm statistics after training: Precise BN and the cross-rank average.

Precise BN (detectron2's ``TEST.PRECISE_BN``, fvcore's ``update_bn_stats``): the running
statistics of every BatchNorm *in training mode* are replaced by the cumulative average of its
batch statistics over a number of training batches. ``torch.optim.swa_utils.update_bn`` does the
same averaging but resets every BatchNorm, also the frozen ones a detector keeps in eval mode
(``--freeze-at``), whose statistics it then never refills; hence this one shared helper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from sslkit import dist


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def precise_bn(model: nn.Module, batches: Iterable, forward: Callable[[object], object]) -> int:
    """Replace the running statistics of every BatchNorm in training mode by their average over
    ``forward(batch)`` for each of ``batches``; returns the number of batches used."""
    bns = [m for m in bn_layers(model) if m.training]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average of the batch statistics
    n = 0
    try:
        for batch in batches:
            forward(batch)
            n += 1
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
    return n


@torch.no_grad()
def average_bn_stats(model: nn.Module) -> None:
    """Make every rank's BatchNorm running statistics the mean over ranks (no-op in one process)."""
    if dist.world_size() == 1:
        return
    for m in bn_layers(model):
        if m.running_mean is not None:
            m.running_mean.copy_(dist.all_reduce_mean(m.running_mean))
            m.running_var.copy_(dist.all_reduce_mean(m.running_var))
