"""``sslkit sample-views -m mcl``: freeze one training step's MCL montages in a views artefact, to look
at them (``sslkit show``) and to test against. Training itself assembles montages online, per step.

The step's batch is the first ``batch_size`` images of IMAGES in source order (cycling through them
when there are fewer; each slot draws its own augmentations), augmented, collated and tiled by exactly
the code training runs (:class:`sslkit.views.mcl.MCLViews`, :func:`sslkit.views.mcl.mcl_collate`,
:func:`sslkit.views.mcl.montage_views`),
with the per-sample seeds of epoch 0 of ``seed``.

The file (``sslkit.views``, ``views_kind = mcl-montages``; docs/artefacts.md) has one row per
batch slot:

* ``views`` (2L rows of S×S×3 uint8 per slot): the slot's augmented views, de-normalised to RGB —
  rows 0..L−1 are view q at levels 0..L−1, rows L..2L−1 view k. With the tile sources below they
  redraw the montages exactly (:func:`montages_from_file`; nearest downsampling selects pixels);
* ``tiles`` (int32 rows ``view, level, montage, row, col``): where the slot's image sits in the
  montages (level 0: montage = the slot itself);

and the attributes ``levels``, ``image_size``, ``batch_size``, ``downsample``, ``seed``,
``montage_fractions``, and per level ``s``: ``level{s}_grid`` (2^s), ``level{s}_montages`` (M_s),
``level{s}_sources_q`` / ``level{s}_sources_k`` (the tile → slot maps, the code's "gt labels").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from sslkit.config import Key
from sslkit.console import progress
from sslkit.errors import UserError
from sslkit.io.artefacts import ArtefactWriter, Record, check_output
from sslkit.transforms.pipelines import IMAGENET_MEAN, IMAGENET_STD
from sslkit.views.dataset import ImageDataset
from sslkit.views.mcl import (
    DOWNSAMPLE_MODES,
    MAX_LEVELS,
    MONTAGE_FRACTIONS,
    MCLViews,
    assemble,
    mcl_collate,
    mcl_view_augs,
    montage_counts,
    montage_views,
    parse_fractions,
)
from sslkit.views.stage import StageInputs, StageResult, ViewStage

FORMAT = "sslkit.views"
VIEWS_KIND = "mcl-montages"


class _SlotDataset(ImageDataset):
    def make_sample(self, image, record):
        return self.transform(image), (record, image.shape[0], image.shape[1])


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Normalised (…, 3, H, W) float views → (…, H, W, 3) uint8 RGB."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (x.float() * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)
    return rgb.movedim(-3, -1).numpy()


class MCLMontageStage(ViewStage):
    name = "mcl"
    VIEWS_KIND = VIEWS_KIND
    SUMMARY = ("MCL: one training step's montages (the first --set batch_size images, 4 levels x 2 views), frozen "
               "for `sslkit show` (tiles outlined, source slot on each tile).")
    SETTINGS: ClassVar[dict[str, Key]] = {
        "batch_size": Key(32, int, "images in the step (a multiple of 32 at 4 levels; IMAGES are cycled if fewer)"),
        "image_size": Key(224, int, "side of the views and montages (px, a multiple of 32)"),
        "levels": Key(MAX_LEVELS, int, "montage levels (1-4)"),
        "montage_fractions": Key(MONTAGE_FRACTIONS, str, "montages per level as fractions of the batch"),
        "downsample": Key("nearest", str, "tile downsampling", choices=DOWNSAMPLE_MODES),
        "seed": Key(0, int, "seed of the augmentations and tile permutations (as pretrain's --seed, epoch 0)"),
    }

    @classmethod
    def run(cls, source, output: Path, settings: dict, inputs: StageInputs, *, overwrite: bool,
            quiet: bool) -> StageResult:

        t0 = time.perf_counter()
        b, size, levels = settings["batch_size"], settings["image_size"], settings["levels"]
        if not 1 <= levels <= MAX_LEVELS:
            raise UserError(f"levels must be 1..{MAX_LEVELS} (got {levels})")
        if size < 32 or size % 32:
            raise UserError(f"image_size must be a multiple of 32 (got {size})")
        try:
            fractions = parse_fractions(settings["montage_fractions"], levels)
            counts = montage_counts(b, fractions)
        except ValueError as e:
            raise UserError(str(e), None, "set batch_size accordingly (--set batch_size=32)") from None
        if len(source) == 0:
            raise UserError("no images", source.coco_path or source.root)
        output = Path(output)
        check_output(output, FORMAT, overwrite)
        data = _SlotDataset(source, MCLViews(mcl_view_augs(size), levels), settings["seed"])
        views, seeds, slots, skipped = [], [], [], []
        with progress(quiet) as bar:
            task = bar.add_task("views", total=b)
            for i in range(b):
                ((v, seed), slot), bad = data[(0, i)]
                views.append(v)
                seeds.append(seed)
                slots.append(slot)
                skipped += [x for x in bad if x not in skipped]
                bar.advance(task)
        views_t, seed = mcl_collate(list(zip(views, seeds, strict=True)))
        (_, qsrc), (_, ksrc) = montage_views(views_t, seed, counts, settings["downsample"])
        attrs = {"views_kind": VIEWS_KIND, "levels": levels, "image_size": size, "batch_size": b,
                 "downsample": settings["downsample"], "seed": settings["seed"],
                 "montage_fractions": settings["montage_fractions"]}
        for s in range(levels):
            attrs.update({f"level{s}_grid": 2 ** s, f"level{s}_montages": counts[s],
                          f"level{s}_sources_q": qsrc[s].numpy().astype(np.int32),
                          f"level{s}_sources_k": ksrc[s].numpy().astype(np.int32)})
        tiles = _tile_rows([qsrc, ksrc], b)
        params = {**settings, "views_kind": VIEWS_KIND, "source": source.location(),
                  "views_layout": "rows 0..L-1: view q levels 0..L-1; rows L..2L-1: view k",
                  "tiles_layout": "view (0 q, 1 k), level, montage, row, col"}
        pixels = to_uint8(views_t)
        with ArtefactWriter(output, FORMAT, params=params, attrs=attrs,
                            ragged={"views": ("uint8", (size, size, 3)), "tiles": ("int32", (5,))}) as w:
            for i, (rec, h, wd) in enumerate(slots):
                w.add(Record(rec.image_id, rec.file_name, int(h), int(wd), {"views": pixels[i], "tiles": tiles[i]}))
            for name, why in skipped:
                w.add_skipped(name, why)
        summary = {"output": str(output), "views_kind": VIEWS_KIND, "batch_size": b, "levels": levels,
                   "montages_per_level": counts, "tiles_per_level": [len(x) for x in qsrc],
                   "distinct_images": len({r.file_name for r, _, _ in slots}), "skipped": skipped,
                   "seconds": round(time.perf_counter() - t0, 3)}
        line = (f"wrote {output}: {b} images, montages per level {counts} (x2 views), "
                f"{summary['distinct_images']} distinct images")
        return StageResult(output, line, summary, skipped)


def _tile_rows(sources_by_view: list[list[torch.Tensor]], batch: int) -> list[np.ndarray]:
    """Per slot, the rows ``(view, level, montage, row, col)`` of every tile showing it."""
    rows: list[list[tuple[int, ...]]] = [[] for _ in range(batch)]
    for v, per_level in enumerate(sources_by_view):
        for s, src in enumerate(per_level):
            r = 2 ** s
            for j, slot in enumerate(src.tolist()):
                m, cell = divmod(j, r * r)
                rows[slot].append((v, s, m, cell // r, cell % r))
    return [np.asarray(x, np.int32).reshape(-1, 5) for x in rows]


def montages_from_file(art) -> dict[tuple[int, int], np.ndarray]:
    """Redraw a frozen step's montages: ``{(view, level): (M_s, S, S, 3) uint8}`` from the stored views and
    tile sources, with :func:`sslkit.views.mcl.assemble` (the training code)."""
    a = art.attrs
    if a.get("views_kind") != VIEWS_KIND:
        raise UserError(f"is a views file of kind {a.get('views_kind')!r}, expected {VIEWS_KIND!r}", art.path)
    levels = int(a["levels"])
    views = np.stack([art.ragged("views", i) for i in range(len(art))])  # (B, 2L, S, S, 3)
    x = torch.from_numpy(views).permute(0, 1, 4, 2, 3).float()
    out = {}
    for v, tag in enumerate(("q", "k")):
        for s in range(levels):
            src = torch.as_tensor(np.asarray(a[f"level{s}_sources_{tag}"]), dtype=torch.long)
            m = assemble(x[:, v * levels + s], src, 2 ** s, str(a["downsample"]))
            out[(v, s)] = m.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out
