"""UniVIP's views: candidate instances per image, and the online scene-pair / instance sampler
(univip.txt §3.2–3.3, §4 "Image augmentations"; spec univip.md §2.1–2.2).

Two parts:

* :func:`build_candidates` (``sslkit sample-views --method univip``) makes the per-image candidate
  instance set once per dataset: selective-search boxes through ORL's filter (min side 96, aspect
  ≤ 3, greedy IoU ≤ 0.5 in SS order, first 100 [ORL]) *without* ORL's ``boxes[0]`` fallback, so an
  image may have no candidate (spec §2.1 [I]); or COCO ground-truth boxes for the Table 8(b)
  ablation. Written as an ``sslkit.views`` artefact with ``views_kind = "univip-candidates"``.
* :class:`PairSampler` / :class:`UniVIPViews` run in the data loader for every image at every
  iteration (spec §2.2 [I]: no precomputed pairs): two scene crops whose overlap contains K
  candidates, K instance boxes (naive boxes when fewer candidates fit, §3.2 [P]), the scenes at
  224 px through BYOL's two pipelines and the instances, cropped from the original image at
  96 px [P], through the same pipelines without the crop.

Boxes are xyxy float32 in original-image pixels (docs/artefacts.md); crops are ``(x1, y1, x2, y2)``
with exclusive right/bottom edges. All random draws come from torch's global generator, which the
engine seeds per sample from ``(seed, epoch, index)``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sslkit.errors import UserError
from sslkit.io.images import ImageSource
from sslkit.proposals.algorithms import BoxFilter
from sslkit.proposals.filters import box_iou
from sslkit.views import check_box_source
from sslkit.views.dataset import ImageDataset

FORMAT = "sslkit.views"
VIEWS_KIND = "univip-candidates"

#: §3.2 [P]: "the naive strategy includes setting the minimum scale to 64 pixels, the range of aspect
#: ratio is between 1/3 and 3/1, and the maximum IoU threshold is 0.5"
NAIVE_MIN_SIZE = 64
NAIVE_MAX_RATIO = 3.0
NAIVE_MAX_IOU = 0.5
#: spec §2.2 [I]: scene-pair attempts per image, naive-box draws per box
OVERLAP_TRIES = 50
NAIVE_TRIES = 100
#: BYOL's RandomResizedCrop parameters (ORL configs; spec §2.2)
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


# ---------------------------------------------------------------------------------------- candidates


def _candidate_filter(min_size: float, max_ratio: float, max_iou: float, top_n: int) -> BoxFilter:
    if min_size < 0 or max_ratio < 0 or top_n < 0 or not 0 <= max_iou <= 1:
        raise UserError("candidate filter: need --min-size, --max-ratio, --top-n >= 0 and 0 <= --max-iou <= 1")
    return BoxFilter(min_size=float(min_size), max_ratio=float(max_ratio), max_iou=float(max_iou),
                     top_n=int(top_n), fallback=False)


def _stats(counts: list[int]) -> dict:
    c = np.asarray(counts, np.int64)
    if not len(c):
        return {"total": 0, "min": 0, "mean": 0.0, "median": 0.0, "max": 0}
    return {"total": int(c.sum()), "min": int(c.min()), "mean": round(float(c.mean()), 3),
            "median": float(np.median(c)), "max": int(c.max())}


def build_candidates(source: ImageSource, out: Path, *, proposals: Path | None, coco: Path | None,
                     source_kind: str, min_size: float, max_ratio: float, max_iou: float, top_n: int,
                     overwrite: bool, quiet: bool) -> dict:
    """Write UniVIP's per-image candidate instances for the images of ``source`` to ``out``.

    ``source_kind="proposals"``: the raw selective-search ``boxes`` of an ``sslkit.proposals`` artefact
    (joined by file name) through ORL's filter with the given thresholds, in SS order, with no
    fallback (spec §2.1). ``source_kind="gt"``: the non-crowd boxes of a COCO json (joined by file
    name), in annotation order, through the same filter (Table 8(b) "ground truth"; [I]: the same
    thresholds keep the ablation about the source of the boxes only; pass 0/0/1/0 to keep them all).
    ``min_size``/``max_ratio``/``top_n`` 0 and ``max_iou`` 1 switch that step off.

    Atomic (temporary file + rename). Returns a summary (counts, thresholds, time).
    """
    from sslkit.console import progress
    from sslkit.io.artefacts import Artefact, ArtefactWriter, Record, check_output
    from sslkit.proposals.driver import source_params

    t0 = time.perf_counter()
    source_kind = check_box_source(source_kind, proposals, coco)
    filt = _candidate_filter(min_size, max_ratio, max_iou, top_n)
    out = Path(out)
    check_output(out, FORMAT, overwrite)
    thresholds = {"min_size": filt.min_size, "max_ratio": filt.max_ratio, "max_iou": filt.max_iou,
                  "top_n": filt.top_n, "fallback": False}
    params = {"views_kind": VIEWS_KIND, "source_kind": source_kind, "filter": thresholds,
              "source": source_params(source), "box_format": "xyxy",
              "box_frame": "original image pixels (upright, EXIF applied)"}
    attrs = {"views_kind": VIEWS_KIND, "source_kind": source_kind, **{k: v for k, v in thresholds.items()
                                                                      if k != "fallback"}}
    counts: list[int] = []
    skipped: list[tuple[str, str]] = []
    wanted = {r.file_name: r for r in source}
    if len(wanted) != len(source):
        raise UserError("the image list names some files twice", source.coco_path or source.root)

    def write(writer, rec, height: int, width: int, boxes: np.ndarray) -> None:
        kept = boxes[filt.apply(boxes)]
        writer.add(Record(rec.image_id, rec.file_name, int(height), int(width), {"boxes": kept}))
        counts.append(len(kept))

    if source_kind == "proposals":
        with Artefact(proposals, "sslkit.proposals") as art:
            if "boxes" not in art.ragged_names:
                raise UserError("has no selective-search boxes (it holds label maps)", proposals,
                                "make boxes with: sslkit propose IMAGES -o props.h5")
            have = set(art.file_name)
            props_skipped = dict(art.skipped)
            missing = [n for n in wanted if n not in have and n not in props_skipped]
            if missing:
                raise UserError(f"has no proposals for {len(missing)} of the {len(source)} images "
                                f"(e.g. {missing[0]})", proposals,
                                "run sslkit propose on the same images (folder or COCO json)")
            params["proposals"] = {"path": str(Path(proposals).resolve()), "params": art.params}
            with ArtefactWriter(out, FORMAT, params=params, ragged={"boxes": ("float32", (4,))}, attrs=attrs) as writer, \
                    progress(quiet) as bar:
                task = bar.add_task("candidates", total=len(have & wanted.keys()))
                for i, raw in art.iter_ragged("boxes"):
                    rec = wanted.get(art.file_name[i])
                    if rec is None:
                        continue
                    write(writer, rec, art.height[i], art.width[i], raw)
                    bar.advance(task)
                for name in wanted:
                    if name in props_skipped and name not in have:
                        writer.add_skipped(name, props_skipped[name])
                        skipped.append((name, props_skipped[name]))
    else:
        from sslkit.io.coco import annotations_by_image, coco_boxes_xyxy, load_coco
        from sslkit.io.images import ImageDecodeError, read_image_size

        data = load_coco(coco)
        by_name = {im["file_name"]: im for im in data["images"]}
        anns = annotations_by_image(data)
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise UserError(f"has no entry for {len(missing)} of the {len(source)} images (e.g. {missing[0]})",
                            coco, "pass the COCO json of the same images")
        params["coco"] = str(Path(coco).resolve())
        with ArtefactWriter(out, FORMAT, params=params, ragged={"boxes": ("float32", (4,))}, attrs=attrs) as writer, \
                progress(quiet) as bar:
            task = bar.add_task("candidates", total=len(source))
            for rec in source:
                im = by_name[rec.file_name]
                h, w = int(im.get("height") or 0), int(im.get("width") or 0)
                if not (h and w):
                    try:
                        h, w = read_image_size(rec.path)
                    except ImageDecodeError as e:
                        writer.add_skipped(rec.file_name, e.reason)
                        skipped.append((rec.file_name, e.reason))
                        bar.advance(task)
                        continue
                write(writer, rec, h, w, coco_boxes_xyxy(anns.get(im["id"], [])))
                bar.advance(task)
    return {"output": str(out), "views_kind": VIEWS_KIND, "source_kind": source_kind, "num_images": len(counts),
            "boxes": _stats(counts), "images_without_candidates": int(sum(c == 0 for c in counts)),
            "thresholds": thresholds, "skipped": skipped, "seconds": round(time.perf_counter() - t0, 3)}


class CandidateStore:
    """Candidate boxes per image file name, from a univip-candidates views file or a proposals file.

    * ``sslkit.views`` (``views_kind = univip-candidates``): its ``boxes``, used as stored.
    * ``sslkit.proposals``: ``field`` ``boxes`` (raw selective search) goes through ``filt`` (ORL's
      filter, no fallback) on every lookup; any other box field (``boxes_filtered``) is used as stored.

    Boxes are clipped to the image and degenerate ones (a side < 1 px) dropped. The HDF5 file is
    opened lazily in each process (DataLoader workers fork or spawn), never pickled open.
    """

    def __init__(self, path: str | os.PathLike, field: str = "boxes", filt: BoxFilter | None = None):
        from sslkit.io.artefacts import Artefact

        self.path = str(path)
        with Artefact(path, (FORMAT, "sslkit.proposals")) as a:
            if a.format == FORMAT:
                kind = a.attrs.get("views_kind")
                if kind != VIEWS_KIND:
                    raise UserError(f"holds {kind} views, not UniVIP candidates", path,
                                    "make them with: sslkit sample-views IMAGES --method univip --proposals props.h5")
                if field != "boxes":
                    raise UserError(f"candidate_field={field!r}: a candidates file has only 'boxes'", path)
            elif not a.ragged_names:
                raise UserError("has no boxes (it holds label maps)", path,
                                "make boxes with: sslkit propose IMAGES -o props.h5")
            if field not in a.ragged_names:
                raise UserError(f"has no box field {field!r}", path, f"candidate_field one of: {', '.join(a.ragged_names)}")
            self.filter = filt if a.format == "sslkit.proposals" and field == "boxes" else None
            self.format = a.format
            self.row = {name: i for i, name in enumerate(a.file_name)}
            self.hw = np.stack([a.height, a.width], 1)
            self.skipped = {fn for fn, _ in a.skipped}
        self.field = field
        self._artefact = None
        self._pid = None

    def check_covers(self, source: ImageSource) -> None:
        missing = [r.file_name for r in source if r.file_name not in self.row and r.file_name not in self.skipped]
        if missing:
            raise UserError(f"has no boxes for {len(missing)} of the {len(source)} training images "
                            f"(e.g. {missing[0]})", self.path,
                            "make it from the same images (folder or COCO json) as pretrain")

    def _open(self):
        from sslkit.io.artefacts import Artefact

        if self._artefact is None or self._pid != os.getpid():
            self._artefact = Artefact(self.path, self.format)
            self._pid = os.getpid()
        return self._artefact

    def boxes(self, file_name: str, height: int, width: int) -> np.ndarray:
        """(n, 4) float32 xyxy candidates in the pixels of an image of ``height × width``.

        An image the artefact lists as skipped (unreadable when it was made) has none. If the
        image is now another size than the artefact recorded, boxes are scaled to it.
        """
        i = self.row.get(file_name)
        if i is None:
            return np.zeros((0, 4), np.float32)
        b = np.asarray(self._open().ragged(self.field, i), np.float32).reshape(-1, 4)
        if self.filter is not None:
            b = b[self.filter.apply(b)]
        h0, w0 = self.hw[i]
        if (h0, w0) != (height, width):
            b = b * np.array([width / w0, height / h0, width / w0, height / h0], np.float32)
        b = np.clip(b, 0, np.array([width, height, width, height], np.float32))
        return b[((b[:, 2] - b[:, 0]) >= 1) & ((b[:, 3] - b[:, 1]) >= 1)]

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_artefact"], d["_pid"] = None, None
        return d


# ---------------------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class ScenePair:
    """One draw of :class:`PairSampler`, in original-image pixels (xyxy, exclusive right/bottom).

    ``boxes[:from_candidates]`` are candidates, the rest naive boxes; ``forced`` of those naive boxes
    were accepted after ``NAIVE_TRIES`` draws without meeting the IoU bound; ``whole_image``: no
    attempt had an overlap of at least ``naive_min_size``², so both crops are the whole image.
    """

    crops: np.ndarray  # (2, 4) scene crops
    region: np.ndarray  # (4,) where the instances were drawn: the overlap (or the whole image)
    boxes: np.ndarray  # (K, 4) float32 instance boxes
    from_candidates: int
    forced: int
    whole_image: bool


def _rrc(height: int, width: int, scale, ratio) -> np.ndarray:
    """BYOL's RandomResizedCrop box, drawn by torchvision's own ``get_params`` (torch's global RNG)."""
    from torchvision.transforms import RandomResizedCrop

    top, left, h, w = RandomResizedCrop.get_params(torch.empty((0, height, width)), list(scale), list(ratio))
    return np.array([left, top, left + w, top + h], np.float64)


def _intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.concatenate([np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])])


def _inside(boxes: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Indices of the boxes fully contained in ``region`` (spec §6.4 [I]: full containment)."""
    return np.flatnonzero((boxes[:, 0] >= region[0]) & (boxes[:, 1] >= region[1]) &
                          (boxes[:, 2] <= region[2]) & (boxes[:, 3] <= region[3]))


def _randint(lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]`` (inclusive) from torch's global generator."""
    return lo + int(torch.randint(hi - lo + 1, (1,)).item())


@dataclass(frozen=True)
class PairSampler:
    """The scene-pair and instance-box rule of §3.2 with the concrete algorithm of spec §2.2.

    Up to ``tries`` times: draw two RandomResizedCrop boxes (scale (0.08, 1), ratio (3/4, 4/3));
    skip pairs whose overlap is smaller than ``naive_min_size`` on a side (room for a naive box);
    if at least ``k`` candidates lie fully inside the overlap, take a uniformly random ``k`` of them.
    Otherwise keep the attempt with the most candidates inside (ties: the larger overlap), take all
    of them and fill up to ``k`` with naive boxes inside the overlap. If no attempt had a large
    enough overlap (tiny image or bad luck), both scene crops are the whole image (they still differ
    by flip and colour) and the naive side shrinks to ``min(naive_min_size, W, H)``.

    ``overlap=False`` is Table 8(a)'s "no": two independent crops, instances anywhere in the image.
    ``naive_only=True`` is Table 8(b)'s "naive": candidates are ignored.
    """

    k: int = 4
    tries: int = OVERLAP_TRIES
    scale: tuple[float, float] = CROP_SCALE
    ratio: tuple[float, float] = CROP_RATIO
    naive_min_size: int = NAIVE_MIN_SIZE
    naive_max_ratio: float = NAIVE_MAX_RATIO
    naive_max_iou: float = NAIVE_MAX_IOU
    naive_tries: int = NAIVE_TRIES
    overlap: bool = True
    naive_only: bool = False

    def sample(self, height: int, width: int, candidates: np.ndarray) -> ScenePair:
        cands = np.zeros((0, 4), np.float32) if self.naive_only else np.asarray(candidates, np.float32).reshape(-1, 4)
        whole = np.array([0, 0, width, height], np.float64)
        m = self.naive_min_size
        best = None  # (n inside, overlap area, c1, c2, region, inside)
        if not self.overlap:
            c1, c2 = _rrc(height, width, self.scale, self.ratio), _rrc(height, width, self.scale, self.ratio)
            best = (0, 0.0, c1, c2, whole, np.arange(len(cands)))
        else:
            for _ in range(self.tries):
                c1, c2 = _rrc(height, width, self.scale, self.ratio), _rrc(height, width, self.scale, self.ratio)
                region = _intersect(c1, c2)
                if region[2] - region[0] < m or region[3] - region[1] < m:
                    continue
                inside = _inside(cands, region)
                if len(inside) >= self.k:
                    best = (len(inside), 0.0, c1, c2, region, inside)
                    break
                area = float((region[2] - region[0]) * (region[3] - region[1]))
                if best is None or (len(inside), area) > best[:2]:
                    best = (len(inside), area, c1, c2, region, inside)
        whole_image = best is None
        if whole_image:
            c1 = c2 = region = whole
            inside = _inside(cands, region)
        else:
            _, _, c1, c2, region, inside = best
        pick = inside[torch.randperm(len(inside))[: self.k].numpy()] if len(inside) else inside
        chosen = [cands[i].astype(np.float64) for i in pick]
        n_cand, forced = len(chosen), 0
        while len(chosen) < self.k:
            box, ok = self._naive(region, chosen)
            chosen.append(box)
            forced += not ok
        boxes = np.asarray(chosen, np.float32).reshape(-1, 4)
        return ScenePair(np.stack([c1, c2]), region, boxes, n_cand, forced, whole_image)

    def _naive(self, region: np.ndarray, chosen: list[np.ndarray]) -> tuple[np.ndarray, bool]:
        """A random integer box inside ``region`` (§3.2's naive strategy; sampling [I]): sides at least
        ``m = min(naive_min_size, region sides)``, aspect within [1/r, r], IoU <= ``naive_max_iou`` with
        ``chosen``; after ``naive_tries`` draws the last one is accepted anyway (returns ``False``)."""
        x0, y0 = int(math.ceil(region[0])), int(math.ceil(region[1]))
        rw, rh = int(math.floor(region[2])) - x0, int(math.floor(region[3])) - y0
        m, r = min(self.naive_min_size, rw, rh), self.naive_max_ratio
        for _ in range(self.naive_tries):
            # w <= r·rh keeps the h range non-empty: m <= ceil(w/r) or m, both <= min(rh, floor(r·w))
            w = _randint(m, min(rw, int(r * rh)))
            h = _randint(max(m, math.ceil(w / r)), min(rh, int(r * w)))
            x, y = _randint(x0, x0 + rw - w), _randint(y0, y0 + rh - h)
            box = np.array([x, y, x + w, y + h], np.float64)
            if not chosen or box_iou(box, np.stack(chosen)).max() <= self.naive_max_iou:
                return box, True
        return box, False


# ---------------------------------------------------------------------------------------- pixels


def photometric(aug):
    """BYOL's pipeline for one ViewAug without its RandomResizedCrop: flip, colour jitter,
    grayscale, blur, solarize, normalise (the crop is the sampled box, §4 "Image augmentations")."""
    from torchvision.transforms import v2

    from sslkit.transforms import build_view

    steps = build_view(aug).transforms
    if not isinstance(steps[0], v2.RandomResizedCrop):
        raise RuntimeError("build_view no longer starts with its RandomResizedCrop")
    return v2.Compose(steps[1:])


def crop_resize(image, box, size: int):
    """``box`` (float xyxy) of a PIL image resized to ``size × size``, bilinear (spec §6.20, ORL)."""
    from PIL import Image

    return image.resize((size, size), Image.Resampling.BILINEAR, box=tuple(float(v) for v in box))


class UniVIPViews:
    """(image HWC uint8, candidates (n, 4)) → ``(s1, s2, inst_a, inst_b, stats)``.

    ``s1``/``s2`` (3, S, S): the two scene crops through BYOL's pipelines 1 and 2 (blur 1.0 / 0.1,
    solarize 0 / 0.2). ``inst_a``/``inst_b`` (K, 3, s, s): each instance box cropped from the
    original image and resized to ``s``, then through pipeline 1 (for the online network) and,
    independently, pipeline 2 (for the target; spec §6.6 [I]). Without ``instances`` (no loss uses
    them) the instance tensors are empty but the scene pair still obeys the overlap rule.
    ``stats`` (4,) float: candidates used, naive boxes, forced naive boxes, whole-image fallback.
    """

    def __init__(self, sampler: PairSampler, scene_size: int = 224, instance_size: int = 96,
                 instances: bool = True, blur_reference: int | None = None, view_aug: str | None = None):
        from sslkit.transforms import byol_views, tune_views

        self.sampler = sampler
        self.scene_size = scene_size
        self.instance_size = instance_size
        self.instances = instances and sampler.k > 0
        self.scene = [photometric(v) for v in tune_views(byol_views(scene_size), blur_reference, view_aug)]
        self.instance = [photometric(v) for v in tune_views(byol_views(instance_size), blur_reference, view_aug)]

    def __call__(self, image: np.ndarray, candidates: np.ndarray):
        from PIL import Image

        h, w = image.shape[:2]
        pair = self.sampler.sample(h, w, candidates)
        pil = Image.fromarray(image)
        s1, s2 = (pipe(crop_resize(pil, c, self.scene_size)) for pipe, c in zip(self.scene, pair.crops, strict=True))
        n = len(pair.boxes) if self.instances else 0
        a = torch.empty((n, 3, self.instance_size, self.instance_size))
        b = torch.empty_like(a)
        for i in range(n):
            crop = crop_resize(pil, pair.boxes[i], self.instance_size)
            a[i], b[i] = self.instance[0](crop), self.instance[1](crop)
        stats = torch.tensor([pair.from_candidates, len(pair.boxes) - pair.from_candidates, pair.forced,
                              float(pair.whole_image)], dtype=torch.float32)
        return s1, s2, a, b, stats


class UniVIPDataset(ImageDataset):
    """Images of a source with their candidates (or none), as UniVIP samples; an
    :class:`~sslkit.views.dataset.ImageDataset` (``(epoch, index)`` keys, per-sample seeding)."""

    def __init__(self, source: ImageSource, store: CandidateStore | None, views: UniVIPViews, seed: int):
        if store is not None:
            store.check_covers(source)
        super().__init__(source, views, seed)
        self.store = store

    def make_sample(self, image: np.ndarray, record):
        h, w = image.shape[:2]
        cands = self.store.boxes(record.file_name, h, w) if self.store is not None else np.zeros((0, 4), np.float32)
        return self.transform(image, cands)


__all__ = ["CandidateStore", "NAIVE_MAX_IOU", "NAIVE_MAX_RATIO", "NAIVE_MIN_SIZE", "PairSampler",
           "ScenePair", "UniVIPDataset", "UniVIPViews", "build_candidates", "crop_resize", "photometric"]
