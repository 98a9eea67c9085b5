"""The numerics policy of every loss: it computes in float32 with autocast switched off.

The engine runs the forward pass under ``torch.autocast`` (``precision`` bf16 or fp16). Autocast
re-casts the inputs of matmuls and einsums to half precision even when the caller wrote
``x.float()``, so a loss that only casts its inputs still computes its similarities in bf16 (DetCon's
einsums did: its loss moved by ~1e-4 and its gradients by up to 15% relative). :func:`fp32_loss`
wraps a loss function: autocast is disabled for the device of its tensors and every floating-point
tensor argument (also inside tuples and lists) is cast to float32, so the loss, its similarities and
its gradient up to the cast are exactly what they are without autocast. The gradient flows back
through the cast into the half-precision network. Sinkhorn (:func:`sslkit.methods.univip.sinkhorn_log`)
follows the same rule.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def _to_fp32(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, (tuple, list)):
        return type(x)(_to_fp32(v) for v in x)
    if isinstance(x, dict):
        return {k: _to_fp32(v) for k, v in x.items()}
    return x


def _device_type(values) -> str | None:
    for v in values:
        if isinstance(v, torch.Tensor):
            return v.device.type
        if isinstance(v, (tuple, list)):
            found = _device_type(v)
            if found is not None:
                return found
    return None


def fp32_loss(fn: _Fn) -> _Fn:
    """Run the loss ``fn`` in float32 with autocast off (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = _device_type((*args, *kwargs.values())) or "cpu"
        with torch.autocast(device, enabled=False):
            return fn(*_to_fp32(args), **{k: _to_fp32(v) for k, v in kwargs.items()})

    wrapper.computes_in_fp32 = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
