"""Every registered method at toy size: a tiny config and a tiny batch, for tests that must cover
ALL methods in ``sslkit.methods.METHODS`` (today's and every one added later).

A method joins by registering its batch builder here::

    @tiny_batch("mymethod", some_key=small_value)      # config overrides on top of TINY_COMMON
    def _mymethod(cfg: dict, n: int, g: torch.Generator):
        return ...                                      # what the method's forward_train takes

The builder makes the batch directly from tensors (the method's ``forward_train`` contract), so no
artefact (masks, pairs, candidates) is needed. :func:`tiny_method` fails — it does not skip — for a
registered method without a builder, so a new method cannot silently escape these tests.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslkit.engine import config as C
from sslkit.methods import METHODS
from sslkit.transforms import IMAGENET_MEAN, IMAGENET_STD
from tests.conftest import REAL_PHOTOS, real_photo

#: applied to every method that has the key
TINY_COMMON = {"arch": "resnet_tiny", "image_size": 64, "batch_size": 4, "proj_hidden_dim": 64, "proj_dim": 32,
               "pred_hidden_dim": 64, "warmup_epochs": 0.0}

#: method name → (builder(cfg, n, generator) → batch, config overrides)
TINY_BATCHES: dict[str, tuple[Callable, dict]] = {}


def tiny_batch(*names: str, **overrides):
    """Register the decorated ``builder(cfg, n, generator)`` as the tiny batch of ``names``."""
    def register(fn):
        for name in names:
            TINY_BATCHES[name] = (fn, overrides)
        return fn
    return register


def _entry(name: str) -> tuple[Callable, dict]:
    if name not in TINY_BATCHES:
        pytest.fail(f"method {name!r} has no tiny batch: register one with @tiny_batch({name!r}) in "
                    "tests/tiny_methods.py (build the batch its forward_train takes from tensors)")
    return TINY_BATCHES[name]


def tiny_cfg(name: str, **over) -> dict:
    """The method's resolved config at toy size (``over`` wins)."""
    cls = METHODS[name]
    keys = C.method_keys(cls)
    layer = {k: v for k, v in TINY_COMMON.items() if k in keys}
    layer.update(_entry(name)[1])
    layer.update(over)
    return C.resolve(cls, [("tiny", layer)])


def tiny_method(name: str, n: int = 4, seed: int = 0, **over):
    """``(model, batch, cfg)``: the method at toy size (weights seeded by ``seed``) and its tiny batch of ``n`` images."""
    cfg = tiny_cfg(name, **over)
    torch.manual_seed(seed)
    model = METHODS[name](cfg)
    batch = _entry(name)[0](cfg, n, torch.Generator().manual_seed(seed))
    return model, batch, cfg


# ----------------------------------------------------------------------------- pixels


@functools.cache
def _photo(i: int) -> torch.Tensor:
    """Real photo ``i`` as a normalised (3, 96, 96) float tensor."""
    img = real_photo(REAL_PHOTOS[i % len(REAL_PHOTOS)], 128)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(x, size=(96, 96), mode="bilinear", align_corners=False)[0]
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std


def views(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """(n, 3, size, size): a random crop (half to all of the side) of each of ``n`` real photos, resized, maybe flipped."""
    out = []
    for i in range(n):
        x = _photo(i)
        side = int(torch.randint(48, 97, (1,), generator=g))
        y0, x0 = (int(torch.randint(0, 97 - side, (1,), generator=g)) for _ in range(2))
        crop = x[:, y0:y0 + side, x0:x0 + side][None]
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]
        out.append(crop.flip(-1) if torch.rand((), generator=g) < 0.5 else crop)
    return torch.stack(out)


# ----------------------------------------------------------------------------- the methods


#: RegionCL's box cells must fit the feature grid: 64 px → 2×2 cells, so one-cell boxes (docs/regioncl.md
#: "Small images"); the box of each step comes from the method's own (seed, rank, step) generator
_REGIONCL_CELLS = {"regioncl_cells_min": 1, "regioncl_cells_max": 1}


@tiny_batch("byol", "simclr", "simsiam")
@tiny_batch("mocov2", "densecl", queue_size=64)
@tiny_batch("regioncl-s", **_REGIONCL_CELLS)
@tiny_batch("regioncl-m", "regioncl-d", queue_size=64, **_REGIONCL_CELLS)
def _two_views(cfg: dict, n: int, g: torch.Generator):
    """(query/view 1, key/view 2). RegionCL swaps regions of the first inside forward_train."""
    return views(n, cfg["image_size"], g), views(n, cfg["image_size"], g)


@tiny_batch("detcon-s", "detcon-b", masks="unused.h5", num_masks=8)
def _detcon(cfg: dict, n: int, g: torch.Generator):
    """(v1, v2, owners1, owners2, ids1, ids2): owners (n, 1, h, w) segment ids on the feature grid, ids
    (n, K) drawn among each view's present segments (what DetConViews makes)."""
    from sslkit.views.detcon import feature_grid

    s, k = cfg["image_size"], cfg["num_masks"]
    h = feature_grid(s)
    out = [views(n, s, g), views(n, s, g)]
    for _ in range(2):
        owners = torch.randint(0, 5, (n, 1, h, h), generator=g)
        ids = torch.stack([o.unique()[torch.randint(len(o.unique()), (k,), generator=g)] for o in owners])
        out += [owners, ids]
    v1, v2, o1, i1, o2, i2 = out
    return v1, v2, o1, o2, i1, i2


@tiny_batch("orl", views="unused.h5", patch_size=32)
def _orl(cfg: dict, n: int, g: torch.Generator):
    s, p = cfg["image_size"], cfg["patch_size"]
    return {"global": (views(n, s, g), views(n, s, g)), "intra": (views(n, p, g), views(n, p, g)),
            "inter": (views(n, p, g), views(n, p, g)), "fallback": torch.zeros(n, 3)}


@tiny_batch("univip", views="unused.h5", instance_size=32, num_instances=3)
def _univip(cfg: dict, n: int, g: torch.Generator):
    """(s1, s2, inst_a, inst_b, stats): K instances per image (n, K, 3, I, I) from real photos."""
    s, k, i = cfg["image_size"], cfg["num_instances"], cfg["instance_size"]
    inst = [torch.stack([views(n, i, g) for _ in range(k)], 1) for _ in range(2)]
    stats = torch.tensor([[float(k), 0.0, 0.0, 0.0]]).repeat(n, 1)
    return views(n, s, g), views(n, s, g), inst[0], inst[1], stats


@tiny_batch("mcl", batch_size=4, montage_fractions="1,1/4,1/4,1/4", fpn_dim=16)
def _mcl(cfg: dict, n: int, g: torch.Generator):
    """(views (n, 2L, 3, S, S), batch seed): 4 levels × 2 views per image (what MCLViews + mcl_collate make);
    one montage per coarser level, so 4 images fill every level."""
    levels = cfg["levels"]
    return torch.stack([views(n, cfg["image_size"], g) for _ in range(2 * levels)], 1), int(
        torch.randint(2**31, (1,), generator=g))

