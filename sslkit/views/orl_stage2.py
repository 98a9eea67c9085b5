"""ORL stage 2, correspondence discovery (Xie et al., "Unsupervised Object-Level Representation
Learning from Scene Images", NeurIPS 2021, §3.1 "Stage 2"; spec ../shared/specs/orl.md §2.3,
docs/orl.md): ``sslkit sample-views -m orl``, the view stage :class:`OrlPairsStage`.

Provenance tags as in the spec: [P] paper, [C] authors' code, [I] an sslkit choice.

1. image embeddings of every image through the stage-1 network (:mod:`sslkit.views.orl_embed`);
2. kNN: top ``K = 10`` images by cosine [P], exact (:func:`sslkit.ops.knn.knn_search`);
3. proposals filtered with ORL's filter (min side 96, aspect ≤ 3, greedy IoU ≤ 0.5, first 100,
   ``boxes[0]`` fallback; spec §2.3 (iv)) — ``boxes_filtered`` of the proposals file when it was
   made with exactly these values, else refiltered from its raw ``boxes``
   (:class:`~sslkit.views.candidates.CandidateBoxes`);
4. RoI embeddings of every kept box (224 px crops, backbone GAP, L2) [C];
5. pairs: per (image, neighbour) the ``max(1, int(0.1 · B_q))`` most similar box pairs [C]
   (:func:`sslkit.views.orl_pairs.pairs_record`).

Resumable (chunks in ``OUTPUT.partial/``) and shardable (``--shard i/n``, ``--merge``).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from sslkit import __version__
from sslkit.config import Key, default_workers
from sslkit.console import info, progress, warn
from sslkit.errors import UserError
from sslkit.io.artefacts import Artefact, ArtefactWriter, Record, check_output
from sslkit.io.atomic import atomic_path
from sslkit.io.chunks import ChunkStage, chunk_ranges, partial_dir
from sslkit.io.images import ImageSource
from sslkit.io.shards import job_id, merge_shards, records_digest, shard_range
from sslkit.ops.knn import PAIR_RATIO, knn_search
from sslkit.proposals.filters import FILTER_KEYS, ORL_DEFAULTS, BoxFilter
from sslkit.transforms.preprocess import Preprocess
from sslkit.views import check_box_source
from sslkit.views.candidates import SEGMENT_KEYS, CandidateBoxes, SegmentRule
from sslkit.views.orl_embed import (
    DecodeImages,
    EmbedImages,
    embed_chunk,
    embed_rois,
    load_embedder,
    loader,
    resolve_device,
)
from sslkit.views.orl_pairs import FORMAT, VIEWS_KIND, pairs_attrs, pairs_record, ragged_fields
from sslkit.views.stage import StageInputs, StageResult, ViewStage

#: paper §3.2 "For correspondence generation…", spec §2.3, §3 "Stage 2"
KNN = 10  # K nearest images [P]
IMAGE_SIZE = 224  # centre crop of the image embedding, after resizing the short side to 256 [C]
ROI_SIZE = 224  # RoIs are "crop[ped] and resize[d] to 224×224" [P]
#: images per resumable chunk of the image-embedding phase
EMBED_CHUNK = 512


@dataclass(frozen=True)
class Stage2Params:
    """Everything that determines the content of an orl-pairs file (recorded in its ``params``)."""

    knn: int = KNN
    pair_ratio: float = PAIR_RATIO
    image_size: int = IMAGE_SIZE
    roi_size: int = ROI_SIZE
    image_feature: str = "auto"  # auto | projector | backbone
    roi_feature: str = "backbone"  # backbone | projector
    encoder: str | None = None  # the checkpoint's default encoder when None
    filter: dict = field(default_factory=lambda: {**ORL_DEFAULTS, "fallback": True})  # spec §2.3 (iv)

    def check(self) -> BoxFilter:
        if self.knn < 1:
            raise UserError(f"--knn must be at least 1 (got {self.knn})")
        if not 0 < self.pair_ratio <= 1:
            raise UserError(f"--pair-ratio must be in (0, 1] (got {self.pair_ratio})")
        for name in ("image_size", "roi_size"):
            if getattr(self, name) < 32:
                raise UserError(f"--{name.replace('_', '-')} must be at least 32 (got {getattr(self, name)})")
        if self.image_feature not in ("auto", "projector", "backbone"):
            raise UserError(f"--image-feature {self.image_feature!r} is not auto, projector or backbone")
        if self.roi_feature not in ("projector", "backbone"):
            raise UserError(f"--roi-feature {self.roi_feature!r} is not backbone or projector")
        return BoxFilter.from_settings(self.filter, self.filter["fallback"])


@dataclass(frozen=True)
class RunOptions:
    """How stage 2 runs. Not recorded as content; the device type, ``batch_size`` and ``chunk_size``
    fix the float arithmetic (last-bit differences), so they are part of the resume key."""

    device: str = "auto"
    batch_size: int = 256  # images (embedding phase) or RoI crops (RoI phase) per forward
    chunk_size: int = 32  # query images per resumable chunk of the RoI phase
    workers: int = 2  # decoding processes
    knn_block_mb: int = 256  # similarity block of the kNN search
    shard: tuple[int, int] | None = None
    overwrite: bool = False
    quiet: bool = False


def _result(output: Path, n: int, skipped: list, seconds: dict, stats: dict, resumed: dict) -> StageResult:
    line = (f"wrote {output}: {n} images, K = {stats['k']}, {stats['pairs']} RoI pairs; "
            f"{stats['images_without_boxes']} images without boxes, {stats['images_without_pairs']} without pairs, "
            f"{len(skipped)} skipped ({', '.join(f'{k} {v:.1f} s' for k, v in seconds.items())})")
    summary = {"output": str(output), "num_images": n, "skipped": [{"file_name": f, "reason": r} for f, r in skipped],
               "seconds": {k: round(v, 3) for k, v in seconds.items()}, **stats, "resumed": resumed}
    return StageResult(Path(output), line, summary, list(skipped))


def _candidates(source: ImageSource, proposals: Path | None, coco: Path | None, filt: BoxFilter,
                segments: SegmentRule | None = None):
    """The candidate boxes of every image, and what the output's params say about them."""
    if proposals is not None:
        props = CandidateBoxes.open(proposals, filt, reuse_filtered=True, segments=segments)
        if props.kind == "segments":
            note = f"segment boxes of {', '.join(props.maps)} (filtered)"
        else:
            note = props.field if props.field == "boxes_filtered" else "boxes (refiltered)"
        if props.filter is not None and props.params.get("max_boxes"):
            note += f"; the file kept only the first {props.params['max_boxes']} raw boxes"
        record = {"source": "proposals", "path": str(props.path.resolve()), "created": props.created, "field": note,
                  **{k: props.params.get(k) for k in ("algo", "mode", "max_side", "opencv_version")}}
        if props.kind == "segments":  # label maps as boxes: the conversion, explicit (docs/swap.md)
            record["regions"] = props.describe()
    else:
        props = CandidateBoxes.from_coco(coco, filt)
        record = {"source": "gt", "path": str(Path(coco).resolve()),
                  "sha256": hashlib.sha256(Path(coco).read_bytes()).hexdigest(),
                  "field": "COCO boxes (non-crowd, annotation order), filtered"}
    props.check_covers(source)
    return props, record


def sample_orl_views(source: ImageSource, proposals: Path | None, ckpt: Path, output: Path, p: Stage2Params,
                     run: RunOptions, coco: Path | None = None, segments: SegmentRule | None = None) -> StageResult:
    """Stage 2 of ORL over ``source`` into the orl-pairs artefact ``output``; resumable.

    The boxes come from ``proposals`` (an ``sslkit.proposals`` file: its boxes, or the boxes of the segments
    of its label maps by ``segments``) or, for the paper's Table 5(d), the ground truth of the COCO json
    ``coco``; either way through ORL's filter ``p.filter``.
    Progress is staged in ``OUTPUT.partial/``: ``embed/`` (chunks of image embeddings),
    ``knn.npz`` and ``pairs/`` (chunks of ``chunk_size`` query images: their boxes, neighbours
    and pairs). A rerun of the same command after any interruption continues from there and
    writes the same file as an uninterrupted run; the folder is removed at the end.
    """
    filt = p.check()
    for name in ("batch_size", "chunk_size", "knn_block_mb"):
        if getattr(run, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if run.workers < 0:
        raise UserError("--workers must be >= 0")
    output = Path(output)
    check_output(output, FORMAT, run.overwrite)
    device = resolve_device(run.device)
    if (proposals is None) == (coco is None):
        raise UserError("pass the boxes as either --proposals P.h5 or --source gt --coco FILE")
    props, record = _candidates(source, proposals, coco, filt, segments)
    candidates = props.load({r.file_name for r in source})
    net, ck_info = load_embedder(ckpt, p.encoder, p.image_feature, p.roi_feature)
    net.to(device)
    prep = Preprocess(p.image_size)

    content = {"method": "orl", "stage2": asdict(p), "source": source.location(), "proposals": record,
               "checkpoint": ck_info}
    # what the output depends on, paths left out (inputs may move between a kill and the rerun); the
    # device type and batch/chunk sizes fix the float arithmetic, so a resumed run equals an uninterrupted one
    job = {"stage2": content["stage2"], "images": records_digest(source.records),
           "proposals": {k: v for k, v in record.items() if k != "path"},
           "checkpoint": {k: v for k, v in ck_info.items() if k != "path"}, "device": device.type,
           "batch_size": run.batch_size, "chunk_size": run.chunk_size, "knn_block_mb": run.knn_block_mb,
           "embed_chunk": EMBED_CHUNK, "sslkit_version": __version__}
    job_key = job_id({"job": job}, source)
    stage_root = partial_dir(output)
    if run.overwrite and stage_root.exists():
        shutil.rmtree(stage_root)
    embed_stage = ChunkStage(stage_root / "embed", job, name="orl-embed")
    pair_stage = ChunkStage(stage_root / "pairs", {**job, "shard": list(run.shard) if run.shard else None},
                            name="orl-pairs")
    resumed = {"embed_chunks": len(embed_stage.done()), "pair_chunks": len(pair_stage.done())}
    if resumed["embed_chunks"] or resumed["pair_chunks"]:
        info(f"resuming from {stage_root}: {resumed['embed_chunks']} embedding and {resumed['pair_chunks']} "
             "pair chunks done", run.quiet)
    seconds: dict[str, float] = {}
    pin = device.type == "cuda"

    with progress(run.quiet) as bar:
        # -- 1. image embeddings -----------------------------------------------------------------
        t0 = time.perf_counter()
        recs = source.records
        chunks = chunk_ranges(0, len(recs), EMBED_CHUNK)
        todo = embed_stage.pending(len(chunks))
        task = bar.add_task("embed images", total=len(recs), completed=len(recs) - sum(len(chunks[c]) for c in todo))
        if todo:
            order = [i for c in todo for i in chunks[c]]
            it = iter(loader(EmbedImages([recs[i] for i in order], prep), run.workers, pin))
            with torch.inference_mode():
                for c in todo:
                    embed_stage.save(c, *embed_chunk(net, it, len(chunks[c]), recs, order, props, run.batch_size,
                                                     device, lambda: bar.advance(task)))
        rows: list[Record] = []
        skipped_all: list[tuple[str, str]] = []
        feats = []
        for c in range(len(chunks)):
            rs, sk = embed_stage.load(c)
            rows += rs
            skipped_all += sk
            feats += [r.ragged["feat"][0] for r in rs]
        seconds["embed"] = time.perf_counter() - t0
        n = len(rows)
        if n < 2:
            raise UserError(f"only {n} readable image(s); ORL's kNN needs at least 2", source.root)
        k = min(p.knn, n - 1)
        if k < p.knn:
            warn(f"only {n} images: using K = {k} neighbours instead of {p.knn}")

        # -- 2. kNN --------------------------------------------------------------------------------
        t0 = time.perf_counter()
        knn_path = stage_root / "knn.npz"
        ids = sims = None
        if knn_path.exists():
            with np.load(knn_path) as z:
                if str(z["job"]) == job_key:
                    ids, sims = z["ids"], z["sims"]
        if ids is None:
            task = bar.add_task("kNN search", total=n)
            bank = torch.from_numpy(np.stack(feats)).to(device)
            ids, sims = knn_search(bank, k, run.knn_block_mb << 20, progress=lambda m: bar.advance(task, m))
            del bank
            with atomic_path(knn_path) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, ids=ids, sims=sims, job=np.array(job_key))
        seconds["knn"] = time.perf_counter() - t0

        # -- 3. RoI embeddings and pairs -----------------------------------------------------------
        t0 = time.perf_counter()
        empty = np.zeros((0, 4), np.float32)
        boxes = [candidates.get(r.file_name, empty) for r in rows]
        lo, hi = shard_range(n, *run.shard) if run.shard else (0, n)
        qchunks = [list(r) for r in chunk_ranges(lo, hi, run.chunk_size)]
        todo = pair_stage.pending(len(qchunks))
        # each chunk embeds the RoIs of its queries and their neighbours once: sorted unique rows
        unions = {c: np.union1d(qchunks[c], ids[qchunks[c]].ravel()) for c in todo}
        task = bar.add_task("RoI pairs", total=hi - lo, completed=hi - lo - sum(len(qchunks[c]) for c in todo))
        tasks = np.concatenate([np.stack([np.full(len(unions[c]), c), unions[c]], 1) for c in todo]) \
            if todo else np.zeros((0, 2), np.int64)
        if len(tasks):
            paths = [str(source.by_name(r.file_name).path) for r in rows]
            it = iter(loader(DecodeImages(tasks, paths), run.workers, pin))
            with torch.inference_mode():
                for c in todo:
                    roi = embed_rois(net, it, c, unions[c], rows, boxes, p.roi_size, prep.mean, prep.std,
                                     run.batch_size, device)
                    out = []
                    for q in qchunks[c]:
                        out.append(pairs_record(q, rows, boxes[q], ids[q], sims[q], roi, p.pair_ratio))
                        bar.advance(task)
                    pair_stage.save(c, out, [])
        seconds["pairs"] = time.perf_counter() - t0

    # -- 4. assemble: rows in table order; another shard's rows get boxes and neighbours, no pairs --
    t0 = time.perf_counter()
    shard_info = None
    if run.shard:
        shard_info = {"index": run.shard[0], "count": run.shard[1], "start": lo, "stop": hi, "num_images": n,
                      "job": job_key}
    params = {**content, "knn": k, "pair_ratio": p.pair_ratio, "shard": shard_info}
    stats = {"pairs": 0, "images_without_boxes": sum(1 for b in boxes if len(b) == 0), "images_without_pairs": 0}

    def records():
        for j in range(lo):
            yield pairs_record(j, rows, boxes[j], ids[j], sims[j], None, p.pair_ratio)
        for c in range(len(qchunks)):
            yield from pair_stage.load(c)[0]
        for j in range(hi, n):
            yield pairs_record(j, rows, boxes[j], ids[j], sims[j], None, p.pair_ratio)

    attrs = pairs_attrs(k, p.pair_ratio, ck_info["image_feature"]["name"], ck_info["roi_feature"]["name"])
    with ArtefactWriter(output, FORMAT, params=params, ragged=ragged_fields(k), attrs=attrs) as w:
        for s in skipped_all:
            w.add_skipped(*s)
        for j, rec in enumerate(records()):
            npairs = len(rec.ragged["pairs"])
            stats["pairs"] += npairs
            stats["images_without_pairs"] += int(npairs == 0 and lo <= j < hi)
            w.add(rec)
        w.set_attrs(num_pairs=stats["pairs"], images_without_boxes=stats["images_without_boxes"],
                    images_without_pairs=stats["images_without_pairs"])
    if stage_root.exists():
        shutil.rmtree(stage_root)
    seconds["write"] = time.perf_counter() - t0
    return _result(output, n, skipped_all, seconds, {"k": k, **stats}, resumed)


def merge_orl_shards(inputs: list[Path], output: Path, *, overwrite: bool = False, quiet: bool = False) -> StageResult:
    """Join the ``--shard i/n`` files of one stage-2 job into the file a single run writes.

    Every shard file holds the whole image table with boxes and neighbours; each computed the
    pairs of its contiguous range of query rows, which are taken from it.
    """
    stats = {"pairs": 0, "images_without_boxes": 0, "images_without_pairs": 0}
    knn = {}

    def check(a: Artefact) -> None:
        if a.attrs.get("views_kind") != VIEWS_KIND:
            raise UserError(f"is a {a.attrs.get('views_kind')!r} views file, not an ORL shard", a.path)
        knn.setdefault("k", int(a.attrs["knn"]))

    def count(rec: Record) -> None:
        stats["pairs"] += len(rec.ragged["pairs"])
        stats["images_without_boxes"] += int(len(rec.ragged["boxes"]) == 0)
        stats["images_without_pairs"] += int(len(rec.ragged["pairs"]) == 0)

    m = merge_shards(inputs, output, FORMAT, command="sample-views", overwrite=overwrite, quiet=quiet,
                     whole_table=True, total_key="num_images", check=check, on_record=count,
                     final_attrs=lambda: {"num_pairs": stats["pairs"], **{k: v for k, v in stats.items() if k != "pairs"}})
    return _result(m.output, m.num_images, m.skipped, {"merge": m.seconds}, {"k": knn["k"], **stats}, {})


_PARAMS = {f.name for f in fields(Stage2Params)} - {"filter"}
_RUN = {"device", "batch_size", "chunk_size", "workers", "knn_block_mb"}


class OrlPairsStage(ViewStage):
    name = "orl"
    VIEWS_KIND = VIEWS_KIND
    SUMMARY = """ORL stage 2, correspondence discovery. Reads IMAGES, their
  selective-search boxes (--proposals, from sslkit propose) and an image-level
  model (--ckpt: any sslkit checkpoint, e.g. BYOL stage 1, or an export).
  1. embeds every image: projector output of Resize 256 / CenterCrop 224, or
     the GAP backbone feature if the model has no BYOL-style projector;
  2. finds each image's --knn nearest images (cosine, itself excluded);
  3. filters the boxes (min side 96, aspect <= 3, IoU <= 0.5, first 100);
  4. embeds every box crop (224 px, backbone GAP);
  5. keeps the max(1, int(--pair-ratio x B_q)) most similar box pairs per
     (image, neighbour).
  Writes boxes, knn_ids, knn_sims and pairs per image (views_kind orl-pairs).
  --source gt --coco FILE uses COCO's ground-truth boxes instead (Table 5(d)).
  --proposals may hold label maps (FH, grid, coco-gt): each segment's
  bounding box is a box (--set segment_fields=..., segment_order=size|id).
  An interrupted run resumes: rerun the same command (progress is kept in
  OUTPUT.partial/). --shard i/n computes a part, --merge joins the parts."""
    SETTINGS = {
        "ckpt": Key(None, str, "the image-level model (any sslkit checkpoint or export)", optional=True),
        "encoder": Key(None, str, "which encoder of the checkpoint (default: its default)", optional=True),
        "knn": Key(KNN, int, "nearest images per image, K"),
        "pair_ratio": Key(PAIR_RATIO, float, "pairs per neighbour = max(1, int(ratio x query boxes))"),
        "image_feature": Key("auto", str, "kNN feature: auto (projector if BYOL-style, else backbone), projector "
                             "or backbone"),
        "roi_feature": Key("backbone", str, "RoI feature: backbone or projector"),
        "image_size": Key(IMAGE_SIZE, int, "centre crop of the image embedding (after resizing to size/0.875)"),
        "roi_size": Key(ROI_SIZE, int, "RoI crops are resized to this square"),
        **FILTER_KEYS,
        **SEGMENT_KEYS,
        "device": Key("auto", str, "auto, cpu, cuda or cuda:N"),
        "batch_size": Key(RunOptions.batch_size, int, "images / RoI crops per forward pass"),
        "workers": Key(None, int, "image decoding processes (default: CPUs - 1, at most 8)", optional=True),
        "chunk_size": Key(RunOptions.chunk_size, int, "query images per resumable chunk; RoI features of "
                          "<= chunk x (1+K) images are held"),
        "knn_block_mb": Key(RunOptions.knn_block_mb, int, "memory of one block of the kNN similarity matrix"),
    }
    INPUTS = frozenset({"proposals", "coco"})
    SHARDABLE = True

    @classmethod
    def run(cls, source, output: Path, settings: dict, inputs: StageInputs, *, overwrite: bool,
            quiet: bool) -> StageResult:
        check_box_source(inputs.source_kind, inputs.proposals, inputs.coco)
        if settings["ckpt"] is None:
            raise UserError("--method orl needs --ckpt (the stage-1 model)", None,
                            "e.g. sslkit pretrain IMAGES --method byol --out stage1/ and --ckpt stage1/last.pth")
        p = Stage2Params(**{k: settings[k] for k in _PARAMS},
                         filter={**{k: settings[k] for k in FILTER_KEYS}, "fallback": True})
        run = RunOptions(**{k: settings[k] for k in _RUN - {"workers"}},
                         workers=default_workers(1) if settings["workers"] is None else settings["workers"],
                         shard=inputs.shard, overwrite=overwrite, quiet=quiet)
        return sample_orl_views(source, inputs.proposals, Path(settings["ckpt"]), output, p, run, coco=inputs.coco,
                                segments=SegmentRule.from_settings(settings))

    @classmethod
    def merge(cls, shards: list[Path], output: Path, *, overwrite: bool, quiet: bool) -> StageResult:
        return merge_orl_shards(shards, output, overwrite=overwrite, quiet=quiet)
