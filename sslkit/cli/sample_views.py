"""``sslkit sample-views``: the views an object-level method trains on, computed once per dataset."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = """Compute the training views of an object-level method and write them to an
HDF5 artefact (format sslkit.views; see docs/orl.md and docs/artefacts.md).

\b
--method orl     ORL stage 2, correspondence discovery. Reads IMAGES, their
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
  An interrupted run resumes: rerun the same command (progress is kept in
  OUTPUT.partial/). --shard i/n computes a part, --merge joins the parts.
--method univip  UniVIP's candidate boxes per image from --proposals
  (--source proposals) or COCO ground truth (--source gt --coco FILE),
  filtered with the same --min-size/--max-ratio/--max-iou/--top-n flags.

\b
Examples:
  sslkit sample-views coco/train2017 -m orl --proposals props.h5 \\
      --ckpt stage1/last.pth -o pairs.h5
  sslkit sample-views imgs/ -m orl --proposals p.h5 --ckpt detcon/last.pth \\
      -o pairs.h5 --device cuda:1
  CUDA_VISIBLE_DEVICES=$I sslkit sample-views ... -o p$I.h5 --shard $I/8
  sslkit sample-views -m orl --merge p*.h5 -o pairs.h5
  sslkit sample-views coco/train2017 -m univip --proposals props.h5 -o cand.h5
  sslkit show pairs.h5 --image 139 --field neighbor=0 -o pair.png
"""

_ORL_ONLY = {"ckpt": "--ckpt", "encoder": "--encoder", "knn": "--knn", "pair_ratio": "--pair-ratio",
             "image_feature": "--image-feature", "roi_feature": "--roi-feature", "image_size": "--image-size",
             "roi_size": "--roi-size", "device": "--device", "batch_size": "--batch-size", "workers": "--workers",
             "chunk_size": "--chunk-size", "knn_block_mb": "--knn-block-mb", "shard": "--shard"}


def _orl(inputs, output, proposals, image_root, flt, opts, source_kind, coco, merge, overwrite, quiet):
    from sslkit.errors import UserError
    from sslkit.views import check_box_source, orl

    if merge:
        given = [f for k, f in _ORL_ONLY.items() if opts.get(k) is not None] + \
            (["--proposals"] if proposals else []) + (["--image-root"] if image_root else []) + \
            (["--source"] if source_kind else []) + (["--coco"] if coco else []) + \
            [f"--{k.replace('_', '-')}" for k, v in flt.items() if v is not None]
        if given:
            raise UserError(f"--merge takes only shard files and -o (got {', '.join(given)})")
        return orl.merge_orl_shards(inputs, output, overwrite=overwrite, quiet=quiet)
    from sslkit.engine.config import default_workers
    from sslkit.io.images import ImageSource
    from sslkit.proposals.driver import parse_shard
    from sslkit.proposals.filters import ORL_DEFAULTS

    if len(inputs) != 1:
        raise UserError(f"expected one IMAGES folder or json, got {len(inputs)} paths", None,
                        "to join shard files pass --merge")
    check_box_source(source_kind, proposals, coco)
    if opts.get("ckpt") is None:
        raise UserError("--method orl needs --ckpt (the stage-1 model)", None,
                        "e.g. sslkit pretrain IMAGES --method byol --out stage1/ and --ckpt stage1/last.pth")
    filt = {k: (ORL_DEFAULTS[k] if v is None else v) for k, v in flt.items()}
    filt["top_n"] = int(filt["top_n"])
    params = orl.Stage2Params(**{k: opts[k] for k in ("knn", "pair_ratio", "image_size", "roi_size",
                                                       "image_feature", "roi_feature") if opts[k] is not None},
                              encoder=opts["encoder"], filter={**filt, "fallback": True})
    run = orl.RunOptions(**{k: opts[k] for k in ("device", "batch_size", "chunk_size", "knn_block_mb")
                            if opts[k] is not None},
                         workers=default_workers(1) if opts["workers"] is None else opts["workers"],
                         shard=parse_shard(opts["shard"]) if opts["shard"] else None,
                         overwrite=overwrite, quiet=quiet)
    source = ImageSource.from_arg(inputs[0], image_root)
    return orl.sample_orl_views(source, proposals, opts["ckpt"], output, params, run, coco=coco)


def _univip(inputs, output, proposals, image_root, flt, source_kind, coco, overwrite, quiet) -> dict:
    from sslkit.errors import UserError
    from sslkit.io.images import ImageSource
    from sslkit.proposals.filters import ORL_DEFAULTS
    from sslkit.views import check_box_source

    try:
        from sslkit.views.univip import build_candidates
    except ImportError as e:
        raise UserError(f"--method univip is not available in this sslkit build ({e})") from None
    if len(inputs) != 1:
        raise UserError(f"expected one IMAGES folder or json, got {len(inputs)} paths")
    kind = check_box_source(source_kind, proposals, coco)
    filt = {k: (ORL_DEFAULTS[k] if v is None else v) for k, v in flt.items()}  # univip.md §2.1: ORL's values
    source = ImageSource.from_arg(inputs[0], image_root)
    return build_candidates(source, output, proposals=proposals, coco=coco, source_kind=kind,
                            min_size=filt["min_size"], max_ratio=filt["max_ratio"], max_iou=filt["max_iou"],
                            top_n=int(filt["top_n"]), overwrite=overwrite, quiet=quiet)


def register(app: typer.Typer) -> None:
    @app.command("sample-views", help=HELP, no_args_is_help=True)
    def sample_views_cmd(
        inputs: list[Path] = typer.Argument(..., metavar="IMAGES",
                                            help="Folder of images or COCO json (with --merge: the shard files)."),
        method: str = typer.Option(..., "--method", "-m", help="orl or univip."),
        output: Path = typer.Option(..., "-o", "--output", help="Views artefact to write (.h5)."),
        proposals: Path = typer.Option(None, "--proposals", help="Boxes from `sslkit propose` (sslkit.proposals)."),
        image_root: Path = typer.Option(None, "--image-root", help="Image folder of a COCO json."),
        ckpt: Path = typer.Option(None, "--ckpt", help="ORL: the image-level model (any sslkit checkpoint or export)."),
        encoder: str = typer.Option(None, "--encoder", help="ORL: which encoder of the checkpoint. (default: its default)"),
        knn: int = typer.Option(None, "--knn", help="ORL: nearest images per image, K. (default: 10)"),
        pair_ratio: float = typer.Option(None, "--pair-ratio",
                                         help="ORL: pairs per neighbour = max(1, int(ratio x query boxes)). (default: 0.1)"),
        image_feature: str = typer.Option(None, "--image-feature",
                                          help="ORL: kNN feature: auto (projector if BYOL-style, else backbone), "
                                               "projector or backbone. (default: auto)"),
        roi_feature: str = typer.Option(None, "--roi-feature", help="ORL: RoI feature: backbone or projector. "
                                                                    "(default: backbone)"),
        image_size: int = typer.Option(None, "--image-size",
                                       help="ORL: centre crop of the image embedding (after resizing to size/0.875). "
                                            "(default: 224)"),
        roi_size: int = typer.Option(None, "--roi-size", help="ORL: RoI crops are resized to this square. (default: 224)"),
        min_size: float = typer.Option(None, "--min-size", help="Filter: drop boxes with a side < this (px). (default: 96)"),
        max_ratio: float = typer.Option(None, "--max-ratio", help="Filter: drop boxes with w/h or h/w > this. (default: 3)"),
        max_iou: float = typer.Option(None, "--max-iou",
                                      help="Filter: drop boxes with IoU > this against a kept box. (default: 0.5)"),
        top_n: int = typer.Option(None, "--top-n", help="Filter: keep the first N survivors (0 = all). (default: 100)"),
        source_kind: str = typer.Option(None, "--source", help="Boxes from --proposals, or gt: the ground-truth "
                                                               "boxes of --coco. (default: proposals)"),
        coco: Path = typer.Option(None, "--coco", help="--source gt: COCO instances json with the boxes."),
        device: str = typer.Option(None, "--device", help="ORL: auto, cpu, cuda or cuda:N. (default: auto)"),
        batch_size: int = typer.Option(None, "--batch-size",
                                       help="ORL: images / RoI crops per forward pass. (default: 256)"),
        workers: int = typer.Option(None, "--workers", "-j", help="ORL: image decoding processes. "
                                                                  "(default: CPUs - 1, at most 8)"),
        chunk_size: int = typer.Option(None, "--chunk-size", help="ORL: query images per resumable chunk; RoI "
                                                                   "features of <= chunk x (1+K) images are held. (default: 32)"),
        knn_block_mb: int = typer.Option(None, "--knn-block-mb",
                                         help="ORL: memory of one block of the kNN similarity matrix. (default: 256)"),
        shard: str = typer.Option(None, "--shard", help="ORL: compute the pairs of part i of n (0-based), e.g. 3/8."),
        merge: bool = typer.Option(False, "--merge", help="ORL: join the shard files given as IMAGES into -o."),
        overwrite: bool = typer.Option(False, "--overwrite",
                                       help="Replace -o even if it is another kind of file; discard a stale .partial/."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    ):
        from sslkit.cli.common import info, print_json, warn
        from sslkit.errors import UserError

        flt = dict(min_size=min_size, max_ratio=max_ratio, max_iou=max_iou, top_n=top_n)
        opts = dict(ckpt=ckpt, encoder=encoder, knn=knn, pair_ratio=pair_ratio, image_feature=image_feature,
                    roi_feature=roi_feature, image_size=image_size, roi_size=roi_size, device=device,
                    batch_size=batch_size, workers=workers, chunk_size=chunk_size, knn_block_mb=knn_block_mb,
                    shard=shard)
        if method == "orl":
            summary = _orl(inputs, output, proposals, image_root, flt, opts, source_kind, coco, merge, overwrite, quiet)
            for fn, why in summary.skipped[:10]:
                warn(f"skipped {fn}: {why}")
            if len(summary.skipped) > 10:
                warn(f"… {len(summary.skipped) - 10} more skipped files are listed in {output} (sslkit info)")
            st = summary.stats
            info(f"wrote {summary.output}: {summary.num_images} images, K = {st['k']}, {st['pairs']} RoI pairs; "
                 f"{st['images_without_boxes']} images without boxes, {st['images_without_pairs']} without pairs, "
                 f"{len(summary.skipped)} skipped ({', '.join(f'{k} {v:.1f} s' for k, v in summary.seconds.items())})",
                 quiet)
            if as_json:
                print_json(summary.as_dict())
        elif method == "univip":
            bad = [f for k, f in _ORL_ONLY.items() if opts[k] is not None] + (["--merge"] if merge else [])
            if bad:
                raise UserError(f"{bad[0]} does not apply to --method univip")
            result = _univip(inputs, output, proposals, image_root, flt, source_kind, coco, overwrite, quiet)
            info(f"wrote {output}", quiet)
            if as_json:
                print_json(result)
        else:
            raise UserError(f"--method {method!r} is not one of orl, univip")
