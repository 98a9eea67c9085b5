"""Mixed precision: every registered method trains under bf16 autocast, and every loss computes in
float32 with autocast off (sslkit.methods.numerics).

The method tests are parametrised over ``sslkit.methods.METHODS``, so a method added later is covered
as soon as it is registered; it must register a tiny batch in tests/tiny_methods.py or fail here.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
import pkgutil

import pytest
import torch
import torch.nn.functional as F

import sslkit.methods
from sslkit.engine.optim import build_optimizer
from sslkit.methods import METHODS
from sslkit.methods.byol import byol_loss
from sslkit.methods.densecl import dense_correspondence, dense_info_nce
from sslkit.methods.detcon_ops import detcon_loss
from sslkit.methods.mocov2 import info_nce
from sslkit.methods.regioncl_ops import region_info_nce, region_simsiam_loss
from sslkit.methods.simclr import nt_xent
from sslkit.methods.simsiam import negative_cosine, simsiam_loss
from sslkit.methods.univip import instance_loss, ot_marginals, sinkhorn_log
from tests.tiny_methods import tiny_method

#: |loss(bf16 autocast) − loss(fp32)| ≤ BF16_REL_TOL · (loss(fp32) − floor), on the same weights and state
BF16_REL_TOL = 0.10

#: the infimum of a loss that can be negative, from the method's config (every other loss is ≥ 0: floor 0).
#: SimSiam's D = −cos is −1 at the optimum (§3, Algorithm 1); RegionCL-S adds ``reg_weight`` × a mean of D.
LOSS_FLOOR = {"simsiam": lambda cfg: -1.0, "regioncl-s": lambda cfg: -1.0 - cfg["reg_weight"]}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_two_steps_under_bf16_autocast(name):
    """Two SGD steps under CPU bf16 autocast (backward, optimizer step and after-step hook included).
    At each step the loss is finite, float32, and within 10% of the fp32 loss of the same weights and
    state (computed on a copy, so its side effects — MoCo's enqueue, BN statistics — are discarded).

    The tolerance: bf16 keeps 8 significant bits, so every conv/matmul input is rounded by up to 2^-9
    (0.2%); through the toy ResNet and heads this moves the embeddings' cosines by about 1e-2, and the
    contrastive losses divide cosines by τ = 0.1, so their logits move by ~0.1. Measured worst case over
    6 seeds at these settings: 5.0% for SimCLR (τ 0.1, batch 4, both directions), ≤ 1% for every other
    method; 10% keeps a 2× margin.

    The error is relative to the loss's distance from its infimum (``LOSS_FLOOR``; 0 for the losses that
    are ≥ 0, so for them it is the plain relative error): SimSiam's −cos of near-random embeddings is
    ≈ 0 ± 0.1 at init, so its plain relative error is meaningless (41× at one step, for an absolute error
    of 0.009, half BYOL's 0.018 on its 2 − 2·cos). From the floor, SimSiam's 0.009 is 0.9% and
    RegionCL-S's 0.9% (measured as above), BYOL's tolerance in cosine units. A crash (SimCLR's bf16 logits once refused a float32 −inf), a NaN or a
    loss returned in half precision fails here; bf16 *inside* a loss is caught exactly by
    test_losses_compute_in_fp32_under_autocast below.
    """
    model, batch, cfg = tiny_method(name, n=4, seed=0)
    floor = LOSS_FLOOR[name](cfg) if name in LOSS_FLOOR else 0.0
    opt = build_optimizer(model, "sgd", 0.05, 0.0)
    for step in range(2):
        with torch.no_grad():
            want = copy.deepcopy(model)(batch)["loss"].item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(batch)
        loss = out["loss"]
        assert loss.dtype == torch.float32, f"{name} returns its loss as {loss.dtype} under autocast"
        assert math.isfinite(loss.item()) and math.isfinite(want)
        assert want >= floor, f"{name}: loss {want} below its floor {floor}: give its infimum in LOSS_FLOOR"
        assert abs(loss.item() - want) <= BF16_REL_TOL * (want - floor), (name, step, loss.item(), want)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.on_after_step(step, 2)
        assert all(torch.isfinite(p).all() for p in model.parameters())


# ----------------------------------------------------------------------------- the losses themselves


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _byol():
    g = _g(0)
    return (torch.randn(6, 32, generator=g), torch.randn(6, 32, generator=g)), {}


def _info_nce():
    g = _g(1)
    q, k = (F.normalize(torch.randn(6, 32, generator=g), dim=1) for _ in range(2))
    return (q, k, F.normalize(torch.randn(64, 32, generator=g), dim=1), 0.2), {}


def _nt_xent():
    g = _g(2)
    return (torch.randn(6, 32, generator=g), torch.randn(6, 32, generator=g), 0.1), {}


def _detcon():
    g = _g(3)
    q1, q2, t1, t2 = (torch.randn(3, 8, 32, generator=g) for _ in range(4))
    ids = [torch.randint(0, 4, (3, 8), generator=g) for _ in range(2)]
    return (q1, q2, t1, t2, *ids), {}


def _univip():
    g = _g(4)
    o, t = torch.randn(3, 4, 32, generator=g), torch.randn(3, 4, 32, generator=g)
    f_o = (torch.randn(3, 32, generator=g), torch.randn(3, 32, generator=g))
    f_t = (torch.randn(3, 32, generator=g), torch.randn(3, 32, generator=g))
    return (o, t, f_o, f_t), {}


def _sinkhorn():
    g = _g(5)
    return (torch.rand(3, 4, 5, generator=g) * 2, torch.rand(3, 4, generator=g), torch.rand(3, 5, generator=g)), {}


def _simsiam():
    g = _g(6)
    return tuple(torch.randn(6, 32, generator=g) for _ in range(4)), {}


def _dense():
    g = _g(7)
    q, k = (F.normalize(torch.randn(3, 32, 9, generator=g), dim=1) for _ in range(2))
    match = torch.randint(0, 9, (3, 9), generator=g)
    return (q, k, match, F.normalize(torch.randn(64, 32, generator=g), dim=1), 0.2), {}


def _correspondence():
    g = _g(8)
    return tuple(F.normalize(torch.randn(3, 32, 9, generator=g), dim=1) for _ in range(2)), {}


def _region(odd=True):
    g = _g(9)
    b = 5 if odd else 6  # odd: the middle image's rows are masked out
    canvas, paste, k = (F.normalize(torch.randn(b, 32, generator=g), dim=1) for _ in range(3))
    partner = torch.arange(b - 1, -1, -1)
    valid = partner != torch.arange(b)
    return (canvas, paste, k, F.normalize(torch.randn(64, 32, generator=g), dim=1), partner, valid, 0.2), {}


def _region_simsiam():
    g = _g(10)
    b = 5
    partner = torch.arange(b - 1, -1, -1)
    return (*(torch.randn(b, 32, generator=g) for _ in range(3)), partner, partner != torch.arange(b)), {}


LOSSES = {
    "byol_loss": (byol_loss, _byol),
    "info_nce": (info_nce, _info_nce),
    "nt_xent": (nt_xent, _nt_xent),
    "detcon_loss": (detcon_loss, _detcon),
    "ot_marginals": (ot_marginals, _univip),
    "instance_loss": (instance_loss, _univip),
    "sinkhorn_log": (sinkhorn_log, _sinkhorn),
    "negative_cosine": (negative_cosine, lambda: (_simsiam()[0][:2], {})),
    "simsiam_loss": (simsiam_loss, _simsiam),
    "dense_correspondence": (dense_correspondence, _correspondence),
    "dense_info_nce": (dense_info_nce, _dense),
    "region_info_nce": (region_info_nce, _region),
    "region_simsiam_loss": (region_simsiam_loss, _region_simsiam),
}


def _tensors(out):
    return [x for x in (out if isinstance(out, tuple) else (out,)) if isinstance(x, torch.Tensor)]


def _cast(x, dtype):
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.to(dtype)
    if isinstance(x, tuple):
        return tuple(_cast(v, dtype) for v in x)
    return x


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_compute_in_fp32_under_autocast(name):
    """Under bf16 autocast a loss gives bit-for-bit its fp32 result (so nothing inside it ran in bf16),
    and from bf16 inputs exactly its fp32 result on those rounded inputs, as float32."""
    fn, make = LOSSES[name]
    args, kwargs = make()
    plain = _tensors(fn(*args, **kwargs))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = _tensors(fn(*args, **kwargs))
        from_bf16 = _tensors(fn(*_cast(args, torch.bfloat16), **kwargs))
    rounded = _tensors(fn(*_cast(_cast(args, torch.bfloat16), torch.float32), **kwargs))
    for a, b, c, d in zip(plain, under, from_bf16, rounded, strict=True):
        assert b.dtype == c.dtype == a.dtype
        assert torch.equal(a, b), f"{name} differs under autocast"
        assert torch.equal(c, d), f"{name} on bf16 inputs differs from fp32 on the rounded inputs"


def test_every_loss_function_in_the_methods_follows_the_fp32_policy():
    """Every module-level function in sslkit.methods whose name contains 'loss' or ends in 'nt_xent' or
    'info_nce' is wrapped by ``fp32_loss`` — so a new method's loss cannot forget it."""
    missing, seen = [], []
    for mod_info in pkgutil.iter_modules(sslkit.methods.__path__):
        if mod_info.name == "numerics":  # the policy itself
            continue
        mod = importlib.import_module(f"sslkit.methods.{mod_info.name}")
        for fname, obj in inspect.getmembers(mod, inspect.isfunction):
            if obj.__module__ != mod.__name__ or not ("loss" in fname or fname.endswith(("nt_xent", "info_nce"))):
                continue
            seen.append(fname)
            if not getattr(obj, "computes_in_fp32", False):
                missing.append(f"{mod.__name__}.{fname}")
    assert {"byol_loss", "detcon_loss", "instance_loss", "nt_xent", "info_nce", "simsiam_loss", "dense_info_nce",
            "region_info_nce", "region_simsiam_loss"} <= set(seen)
    assert not missing, f"wrap these with sslkit.methods.numerics.fp32_loss: {missing}"
