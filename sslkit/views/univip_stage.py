"""UniVIP's offline view stage: the candidate instances of every image, computed once per dataset
(univip.txt §3.2; spec univip.md §2.1): ``sslkit sample-views -m univip``.

Selective-search boxes through ORL's filter (min side 96, aspect ≤ 3, greedy IoU ≤ 0.5 in SS
order, first 100 [ORL]) *without* ORL's ``boxes[0]`` fallback, so an image may have no candidate
(spec §2.1 [I]); or COCO ground-truth boxes for the Table 8(b) ablation; or, from a file of label maps,
each segment's bounding box through the same filter (docs/swap.md). Written as an
``sslkit.views`` artefact with ``views_kind = "univip-candidates"``, which UniVIP training reads
with :class:`~sslkit.views.candidates.CandidateBoxes`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sslkit.console import progress
from sslkit.errors import UserError
from sslkit.io.artefacts import ArtefactWriter, Record, check_output
from sslkit.io.images import ImageDecodeError, ImageSource, read_image_size
from sslkit.proposals.filters import FILTER_KEYS, BoxFilter
from sslkit.views import check_box_source
from sslkit.views.candidates import CANDIDATES_KIND, SEGMENT_KEYS, CandidateBoxes, SegmentRule
from sslkit.views.stage import StageInputs, StageResult, ViewStage

FORMAT = "sslkit.views"
VIEWS_KIND = CANDIDATES_KIND


def _stats(counts: list[int]) -> dict:
    c = np.asarray(counts, np.int64)
    if not len(c):
        return {"total": 0, "min": 0, "mean": 0.0, "median": 0.0, "max": 0}
    return {"total": int(c.sum()), "min": int(c.min()), "mean": round(float(c.mean()), 3),
            "median": float(np.median(c)), "max": int(c.max())}


def build_candidates(source: ImageSource, out: Path, *, proposals: Path | None, coco: Path | None,
                     source_kind: str, min_size: float, max_ratio: float, max_iou: float, top_n: int,
                     overwrite: bool, quiet: bool, segments: SegmentRule | None = None) -> dict:
    """Write UniVIP's per-image candidate instances for the images of ``source`` to ``out``.

    ``source_kind="proposals"``: the raw selective-search ``boxes`` of an ``sslkit.proposals`` artefact
    (joined by file name) through ORL's filter with the given thresholds, in SS order, with no
    fallback (spec §2.1). ``source_kind="gt"``: the non-crowd boxes of a COCO json (joined by file
    name), in annotation order, through the same filter (Table 8(b) "ground truth"; [I]: the same
    thresholds keep the ablation about the source of the boxes only; pass 0/0/1/0 to keep them all).
    ``min_size``/``max_ratio``/``top_n`` 0 and ``max_iou`` 1 switch that step off. A ``proposals`` file of
    label maps gives the boxes of its segments (``segments``), recorded under ``params.proposals.regions``.

    Atomic (temporary file + rename). Returns a summary (counts, thresholds, time).
    """
    t0 = time.perf_counter()
    source_kind = check_box_source(source_kind, proposals, coco)
    filt = BoxFilter.from_settings({"min_size": float(min_size), "max_ratio": float(max_ratio),
                                    "max_iou": float(max_iou), "top_n": int(top_n)}, fallback=False)
    out = Path(out)
    check_output(out, FORMAT, overwrite)
    thresholds = {"min_size": filt.min_size, "max_ratio": filt.max_ratio, "max_iou": filt.max_iou,
                  "top_n": filt.top_n, "fallback": False}
    params = {"views_kind": VIEWS_KIND, "source_kind": source_kind, "filter": thresholds,
              "source": source.location(), "box_format": "xyxy",
              "box_frame": "original image pixels (upright, EXIF applied)"}
    attrs = {"views_kind": VIEWS_KIND, "source_kind": source_kind, **{k: v for k, v in thresholds.items()
                                                                      if k != "fallback"}}
    counts: list[int] = []
    skipped: list[tuple[str, str]] = []
    wanted = {r.file_name: r for r in source}
    if len(wanted) != len(source):
        raise UserError("the image list names some files twice", source.coco_path or source.root)
    cands = CandidateBoxes.open(proposals, filt, segments=segments) if source_kind == "proposals" else \
        CandidateBoxes.from_coco(coco, filt)
    cands.check_covers(source)
    if source_kind == "proposals":
        params["proposals"] = {"path": str(Path(proposals).resolve()), "params": cands.params}
        if cands.kind == "segments":
            params["proposals"]["regions"] = cands.describe()
    else:
        params["coco"] = str(Path(coco).resolve())

    with ArtefactWriter(out, FORMAT, params=params, ragged={"boxes": ("float32", (4,))}, attrs=attrs) as writer, \
            progress(quiet) as bar:

        def write(rec, height: int, width: int, boxes: np.ndarray) -> None:
            writer.add(Record(rec.image_id, rec.file_name, int(height), int(width), {"boxes": boxes}))
            counts.append(len(boxes))
            bar.advance(task)

        if source_kind == "proposals":  # rows in the proposals file's order, its image sizes
            task = bar.add_task("candidates", total=len(cands.rows.keys() & wanted.keys()))
            for i, name, boxes in cands.iter_rows():
                if name in wanted:
                    write(wanted[name], cands.hw[i][0], cands.hw[i][1], boxes)
            for name in wanted:
                if name in cands.skipped and name not in cands.rows:
                    writer.add_skipped(name, cands.skipped[name])
                    skipped.append((name, cands.skipped[name]))
        else:  # rows in the source's order; sizes from the json, else from the image
            task = bar.add_task("candidates", total=len(source))
            for rec in source:
                hw = cands.size(rec.file_name)
                if hw is None:
                    try:
                        hw = read_image_size(rec.path)
                    except ImageDecodeError as e:
                        writer.add_skipped(rec.file_name, e.reason)
                        skipped.append((rec.file_name, e.reason))
                        bar.advance(task)
                        continue
                write(rec, *hw, cands.get(rec.file_name))
    cands.close()
    return {"output": str(out), "views_kind": VIEWS_KIND, "source_kind": source_kind, "num_images": len(counts),
            "boxes": _stats(counts), "images_without_candidates": int(sum(c == 0 for c in counts)),
            "thresholds": thresholds, "skipped": skipped, "seconds": round(time.perf_counter() - t0, 3)}


class UniVIPCandidatesStage(ViewStage):
    name = "univip"
    VIEWS_KIND = VIEWS_KIND
    SUMMARY = """UniVIP's candidate boxes per image from --proposals
  (--source proposals) or COCO ground truth (--source gt --coco FILE),
  filtered with the same --min-size/--max-ratio/--max-iou/--top-n flags.
  --proposals may hold label maps: each segment's bounding box is a candidate
  (--set segment_fields=..., segment_order=size|id)."""
    SETTINGS = {**FILTER_KEYS, **SEGMENT_KEYS}  # univip.md §2.1: ORL's values; docs/swap.md
    INPUTS = frozenset({"proposals", "coco"})

    @classmethod
    def run(cls, source, output: Path, settings: dict, inputs: StageInputs, *, overwrite: bool,
            quiet: bool) -> StageResult:
        kind = check_box_source(inputs.source_kind, inputs.proposals, inputs.coco)
        result = build_candidates(source, output, proposals=inputs.proposals, coco=inputs.coco, source_kind=kind,
                                  **{k: settings[k] for k in FILTER_KEYS}, overwrite=overwrite, quiet=quiet,
                                  segments=SegmentRule.from_settings(settings))
        return StageResult(Path(output), f"wrote {output}", result, result["skipped"])
