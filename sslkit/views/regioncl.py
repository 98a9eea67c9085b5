"""RegionCL's region swapping (Xu et al., ECCV 2022, regioncl.txt §3.1; spec regioncl.md §2.2) and
its offline view stage.

Once per step and per rank, one paste box is drawn for the whole (per-rank) query batch: side
lengths ``c·R`` with ``c ~ U{C_L..C_U}`` drawn independently for height and width (§3.1 [P]:
C_L = 3, C_U = 5 inclusive; the code's ``randint(3, 6)`` [C]) and R = 32, the ResNet's output
stride. Image ``i`` swaps that box with ``partner(i) = B − 1 − i`` (the reversed batch, an
involution [C]): composite ``i`` is query ``i`` outside the box (its *canvas*, source ``i``) and
query ``partner(i)`` inside (its *paste*, source ``partner(i)``). With an odd batch the middle image
pairs with itself; its region terms are masked out (:func:`region_valid`), never silently used.

Origin of the box:

* ``aligned`` (default, [I] the digest's recommendation and the paper's "match the network's
  downsampling ratio" [P]): the cell origin is uniform on the valid cells, pixel box = R × cell box;
* ``official``: the authors' pixel rule [C] ``min(round(U{0..W−1}/R)·R, W − 1 − r_w)``, which can
  leave the origin off the grid (e.g. 127 px at 224 with a 96-px box); their neck then floors it
  to cells, so the pixel box and the pooled cells disagree by up to R − 1 px. Kept for
  bit-for-bit comparisons with their release.

Every draw of step ``k`` on rank ``r`` comes from a generator seeded by ``(seed, r, k)``
(:func:`swap_generator`), so a resumed run draws the same boxes.

:class:`RegionCLSwapStage` (``sslkit sample-views -m regioncl``) freezes the swaps of the first
steps on a folder of images for looking at (``sslkit show``) and tests; training draws them online.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sslkit.config import Key
from sslkit.console import progress
from sslkit.errors import UserError
from sslkit.io.artefacts import ArtefactWriter, Record, check_output
from sslkit.io.images import ImageDecodeError, load_rgb
from sslkit.transforms import MultiView, mocov2_views, tune_views
from sslkit.views.dataset import sample_seed
from sslkit.views.stage import StageInputs, StageResult, ViewStage

#: R: the backbone's output stride (ResNet C5) [P] §3.1
STRIDE = 32
ORIGINS = ("aligned", "official")
VIEWS_KIND = "regioncl-swaps"
#: tags the swap draws' seed so they never coincide with another stream seeded from (seed, …)
_SWAP_STREAM = 0x5C1A55


@dataclass(frozen=True)
class SwapBox:
    """One step's paste box. Pixels of the query view: rows ``y0:y0+h``, columns ``x0:x0+w``. Cells of
    the stride-R feature map: rows ``cy:cy+ch``, columns ``cx:cx+cw`` (``floor(pixel origin / R)``)."""

    y0: int
    x0: int
    h: int
    w: int
    cy: int
    cx: int
    ch: int
    cw: int
    stride: int = STRIDE

    @property
    def aligned(self) -> bool:
        """Whether the pixel box is exactly R × the cell box."""
        r = self.stride
        return (self.y0, self.x0, self.h, self.w) == (self.cy * r, self.cx * r, self.ch * r, self.cw * r)

    def pixel_xyxy(self) -> tuple[int, int, int, int]:
        return self.x0, self.y0, self.x0 + self.w, self.y0 + self.h

    def cell_xyxy(self) -> tuple[int, int, int, int]:
        return self.cx, self.cy, self.cx + self.cw, self.cy + self.ch

    def cell_mask(self, grid_h: int, grid_w: int, device=None) -> torch.Tensor:
        """(grid_h, grid_w) bool, True on the paste cells."""
        m = torch.zeros(grid_h, grid_w, dtype=torch.bool, device=device)
        m[self.cy:self.cy + self.ch, self.cx:self.cx + self.cw] = True
        return m


def grid_side(size: int, stride: int = STRIDE) -> int:
    """Cells along a side of ``size`` px; ValueError unless ``size`` is a multiple of ``stride``."""
    if size % stride:
        raise ValueError(f"image size {size} is not a multiple of the backbone's output stride {stride}")
    return size // stride


def cells_problem(grid: int, cells_min: int, cells_max: int) -> str | None:
    """Why ``C_L..C_U`` cannot be drawn on a ``grid × grid`` feature map, or None. The box must leave a
    canvas on every draw, so ``1 ≤ C_L ≤ C_U ≤ grid − 1``."""
    if not 1 <= cells_min <= cells_max:
        return f"need 1 <= regioncl_cells_min <= regioncl_cells_max (got {cells_min}, {cells_max})"
    if cells_max > grid - 1:
        return (f"regioncl_cells_max {cells_max} does not fit the {grid}x{grid} feature grid "
                f"(the box must leave a canvas: at most {grid - 1} cells)")
    return None


def swap_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The CPU generator of step ``step``'s box on rank ``rank``: a function of ``(seed, rank, step)`` only."""
    return torch.Generator().manual_seed(sample_seed(seed, _SWAP_STREAM, rank, step))


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in ``[low, high)``."""
    return int(torch.randint(low, high, (1,), generator=gen))


def sample_box(gen: torch.Generator, height: int, width: int, cells_min: int, cells_max: int,
               origin: str = "aligned", stride: int = STRIDE) -> SwapBox:
    """Draw one paste box for ``height × width`` views (multiples of ``stride``)."""
    gh, gw = grid_side(height, stride), grid_side(width, stride)
    problem = cells_problem(min(gh, gw), cells_min, cells_max)
    if problem:
        raise ValueError(problem)
    ch, cw = _randint(gen, cells_min, cells_max + 1), _randint(gen, cells_min, cells_max + 1)
    h, w = ch * stride, cw * stride
    if origin == "aligned":
        cy, cx = _randint(gen, 0, gh - ch + 1), _randint(gen, 0, gw - cw + 1)
        return SwapBox(cy * stride, cx * stride, h, w, cy, cx, ch, cw, stride)
    if origin == "official":
        # RegionCLM.RegionSwapping [C]: uniform pixel, rounded (half to even) to the grid, clamped to size - 1 - side
        y0, x0 = (min(int(torch.round(torch.tensor(_randint(gen, 0, n) / stride))) * stride, n - 1 - s)
                  for n, s in ((height, h), (width, w)))
        return SwapBox(y0, x0, h, w, y0 // stride, x0 // stride, ch, cw, stride)
    raise ValueError(f"regioncl_origin must be one of {', '.join(ORIGINS)} (got {origin!r})")


def partner_index(batch: int, device=None) -> torch.Tensor:
    """``partner(i) = B − 1 − i`` [C]: the reversed batch, its own inverse."""
    return torch.arange(batch - 1, -1, -1, device=device)


def region_valid(batch: int, device=None) -> torch.Tensor:
    """(B,) bool: False for the image that pairs with itself (the middle one of an odd batch)."""
    return partner_index(batch, device) != torch.arange(batch, device=device)


def swap_regions(x: torch.Tensor, box: SwapBox, partner: torch.Tensor) -> torch.Tensor:
    """Composites of a (B, C, H, W) batch: ``x[i]`` outside the box, ``x[partner[i]]`` inside it."""
    ys, xs = slice(box.y0, box.y0 + box.h), slice(box.x0, box.x0 + box.w)
    out = x.clone()
    out[:, :, ys, xs] = x[:, :, ys, xs][partner]
    return out


# ------------------------------------------------------------------------------------ offline stage


def _denormalise(x: torch.Tensor, mean, std) -> np.ndarray:
    """(B, 3, H, W) normalised → (B, H, W, 3) uint8."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x * s + m).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


class RegionCLSwapStage(ViewStage):
    """``sslkit sample-views IMAGES -m regioncl``: the composites of the first ``steps`` steps.

    Images are taken in source order, ``batch_size`` per step (the last partial batch is dropped, as in
    training); image ``index``'s query view is the one ``pretrain`` makes for it at epoch 0 (MoCo v2's
    pipeline, seeded by ``(seed, 0, index)``) and step ``k``'s box is the one rank 0 draws at step ``k``.
    """

    name = "regioncl"
    VIEWS_KIND = VIEWS_KIND
    SUMMARY = ("RegionCL's region swaps of the first --set steps=N steps (batch_size images each): per image "
               "its query view, its composite, the paste box in pixels and cells and its partner.")
    SETTINGS = {
        "steps": Key(2, int, "training steps to freeze"),
        "batch_size": Key(8, int, "images per swap batch (pretrain's per-rank batch: batch_size / ranks)"),
        "image_size": Key(224, int, "side of the query views (a multiple of 32)"),
        "regioncl_cells_min": Key(3, int, "C_L: fewest feature cells per box side"),
        "regioncl_cells_max": Key(5, int, "C_U: most feature cells per box side (inclusive)"),
        "regioncl_origin": Key("aligned", str, "box origin: aligned (cell grid) or official (authors' pixel rule)",
                               choices=ORIGINS),
        "seed": Key(0, int, "pretrain's seed: views and boxes are the ones that run draws"),
        "blur_reference_size": Key(None, int, "as pretrain's blur_reference_size", optional=True),
        "view_aug": Key(None, str, "as pretrain's view_aug", optional=True),
    }

    @classmethod
    def run(cls, source, output: Path, settings: dict, inputs: StageInputs, *, overwrite: bool,
            quiet: bool) -> StageResult:

        t0 = time.perf_counter()
        s = {k: settings.get(k, key.default) for k, key in cls.SETTINGS.items()}
        size, b, steps = s["image_size"], s["batch_size"], s["steps"]
        if steps < 1 or b < 2:
            raise UserError(f"need steps >= 1 and batch_size >= 2 (got {steps}, {b})")
        try:
            grid = grid_side(size)
        except ValueError as e:
            raise UserError(str(e), None, f"use an image_size that is a multiple of {STRIDE}, e.g. 64 or 224") from None
        problem = cells_problem(grid, s["regioncl_cells_min"], s["regioncl_cells_max"])
        if problem:
            raise UserError(problem, None, f"at {size} px use --set regioncl_cells_min=1 "
                            f"--set regioncl_cells_max={max(1, grid - 1)} (or larger views)")
        output = Path(output)
        check_output(output, "sslkit.views", overwrite)
        views = tune_views(mocov2_views(size), s["blur_reference_size"], s["view_aug"])
        transform = MultiView(views)
        mean, std = views[0].mean, views[0].std

        params = {"views_kind": VIEWS_KIND, **s, "stride": STRIDE, "grid": grid, "partner": "B-1-i",
                  "query_view": "MoCo v2 view 1 (denormalised uint8)", "box_frame": "query-view pixels",
                  "source": source.location()}
        attrs = {"views_kind": VIEWS_KIND, "image_size": size, "stride": STRIDE, "grid": grid, "batch_size": b,
                 "regioncl_cells_min": s["regioncl_cells_min"], "regioncl_cells_max": s["regioncl_cells_max"],
                 "regioncl_origin": s["regioncl_origin"], "seed": s["seed"]}
        ragged = {"swap": ("int32", (4,)), "paste_box": ("int32", (4,)), "paste_cells": ("int32", (4,)),
                  "query": ("uint8", (size, 3)), "composite": ("uint8", (size, 3))}
        skipped: list[tuple[str, str]] = []
        pending: list[tuple] = []  # (record, (height, width), query view) of the step being filled
        done = 0
        with ArtefactWriter(output, "sslkit.views", params=params, ragged=ragged, attrs=attrs) as writer, \
                progress(quiet) as bar:
            task = bar.add_task("swaps", total=steps)
            for index in range(len(source)):
                if done == steps:
                    break
                rec = source[index]
                try:
                    image, _ = load_rgb(rec.path)
                except ImageDecodeError as e:
                    skipped.append((rec.file_name, e.reason))
                    writer.add_skipped(rec.file_name, e.reason)
                    continue
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(sample_seed(s["seed"], 0, index))
                    query = transform(image)[0]
                pending.append((rec, image.shape[:2], query))
                if len(pending) < b:
                    continue
                cls._write_step(writer, done, pending, s, mean, std)
                pending, done = [], done + 1
                bar.advance(task)
            if done == 0:  # raised inside: the writer discards its temporary file
                raise UserError(f"{len(source) - len(skipped)} readable images, fewer than one batch of {b}",
                                source.coco_path or source.root, "lower --set batch_size")
        line = (f"wrote {output}: {done} steps x {b} composites ({size} px, {grid}x{grid} cells, "
                f"boxes {s['regioncl_cells_min']}-{s['regioncl_cells_max']} cells, {s['regioncl_origin']} origin)")
        summary = {"output": str(output), "steps": done, "batch_size": b, "images": done * b,
                   "skipped": len(skipped), "seconds": round(time.perf_counter() - t0, 3)}
        return StageResult(output, line, summary, skipped)

    @staticmethod
    def _write_step(writer, step: int, pending, s: dict, mean, std) -> None:
        b = len(pending)
        x = torch.stack([q for _, _, q in pending])
        box = sample_box(swap_generator(s["seed"], 0, step), x.shape[2], x.shape[3], s["regioncl_cells_min"],
                         s["regioncl_cells_max"], s["regioncl_origin"])
        partner = partner_index(b)
        valid = region_valid(b)
        queries, composites = _denormalise(x, mean, std), _denormalise(swap_regions(x, box, partner), mean, std)
        for slot, (rec, (h, w), _) in enumerate(pending):
            writer.add(Record(rec.image_id, rec.file_name, int(h), int(w), {
                "swap": np.array([[step, slot, int(partner[slot]), int(valid[slot])]], np.int32),
                "paste_box": np.array([box.pixel_xyxy()], np.int32),
                "paste_cells": np.array([box.cell_xyxy()], np.int32),
                "query": queries[slot], "composite": composites[slot]}))
