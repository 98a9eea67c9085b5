"""``sslkit propose``: unsupervised region proposals or masks for every image, once per dataset."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = """Compute unsupervised regions for every image of a folder or COCO json and write them
to an HDF5 artefact (format sslkit.proposals; see docs/proposals.md).

\b
--algo selective-search  boxes for ORL / UniVIP (OpenCV, fast or quality mode):
    boxes           raw boxes in selective-search order
    boxes_filtered  ORL's filter: min side 96, aspect <= 3, greedy IoU <= 0.5, first 100
  Boxes are xyxy float32 in ORIGINAL image pixels (upright), whatever --max-side is.
--algo felzenszwalb      DetCon's FH segments, one uint16 label map per scale (fh_s<S>_c<C>)
--algo grid              DetCon's n x n spatial grid (grid_n<N>)
--algo coco-gt           ground-truth instance masks of a COCO json as one label map
                         (gt_instances: 0 background, k = k-th annotation; DetCon §4.4)

\b
Reads IMAGES (a folder, or a COCO json with --image-root); writes -o FILE.
Interrupted runs resume: rerun the same command (finished chunks are kept in
FILE.partial/). --shard i/n computes one part for a job array; --merge joins them.

\b
Examples:
  sslkit propose coco/annotations/instances_train2017.json -o props.h5
  sslkit propose photos/ -o masks.h5 --algo felzenszwalb --scales 500,1000,1500 --min-sizes 500,1000,1500
  sslkit propose photos/ -o part$I.h5 --shard $I/8      then   sslkit propose --merge part*.h5 -o props.h5
"""

_SS_ONLY = ("mode", "max_boxes", "min_size", "max_ratio", "max_iou", "top_n", "fallback", "seed")
_FH_ONLY = ("scales", "min_sizes", "sigma")
_FLAG = {"max_boxes": "--max-boxes", "min_size": "--min-size", "max_ratio": "--max-ratio", "max_iou": "--max-iou",
         "top_n": "--top-n", "fallback": "--fallback/--no-fallback", "min_sizes": "--min-sizes",
         "grid_n": "--grid-n", "max_side": "--max-side"}


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    from sslkit.errors import UserError

    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise UserError(f"{flag} {text!r} is not a comma-separated list of integers", None,
                        f"e.g. {flag} 500,1000,1500") from None
    if not values or min(values) < 1:
        raise UserError(f"{flag} needs positive integers, got {text!r}")
    return values


def build_algo(algo: str, given: dict, coco_path: Path | None = None):
    """The algorithm config from the options the user set (None = not given).

    ``coco_path`` is the COCO json the images come from (``--algo coco-gt`` reads its masks).
    """
    from sslkit.errors import UserError
    from sslkit.proposals import algorithms as A
    from sslkit.proposals.filters import ORL_DEFAULTS

    def flag(k):
        return _FLAG.get(k, "--" + k.replace("_", "-"))

    allowed = {"selective-search": _SS_ONLY + ("max_side",), "felzenszwalb": _FH_ONLY + ("max_side",),
               "grid": ("grid_n",), "coco-gt": ()}[algo]
    for k, v in given.items():
        if v is not None and k not in allowed:
            raise UserError(f"{flag(k)} does not apply to --algo {algo}")
    g = {k: v for k, v in given.items() if v is not None}
    if "max_side" in g and g["max_side"] < 0:
        raise UserError("--max-side must be >= 0 (0 = full resolution)")
    if algo == "selective-search":
        f = A.BoxFilter.from_settings({**ORL_DEFAULTS, **g}, g.get("fallback", True))
        if g.get("max_boxes", 0) < 0:
            raise UserError("--max-boxes must be >= 0 (0 = all)")
        return A.SelectiveSearch(filter=f, **{k: g[k] for k in ("mode", "max_side", "max_boxes", "seed") if k in g})
    if algo == "felzenszwalb":
        scales = _int_list(g["scales"], "--scales") if "scales" in g else (A.FH_DEFAULT_SCALE,)
        min_sizes = _int_list(g["min_sizes"], "--min-sizes") if "min_sizes" in g else scales
        if len(min_sizes) != len(scales):
            raise UserError(f"--min-sizes has {len(min_sizes)} values for {len(scales)} --scales",
                            None, "give one min size per scale")
        if len(set(zip(scales, min_sizes, strict=True))) != len(scales):
            raise UserError("--scales/--min-sizes repeat a pair")
        if g.get("sigma", 0.8) <= 0:
            raise UserError("--sigma must be > 0")
        return A.Felzenszwalb(scales, min_sizes, **{k: g[k] for k in ("sigma", "max_side") if k in g})
    if algo == "coco-gt":
        if coco_path is None:
            raise UserError("--algo coco-gt reads the masks of a COCO json", None,
                            "pass a COCO instances json as IMAGES")
        return A.CocoGT(str(Path(coco_path).resolve()))
    n = g.get("grid_n", A.GRID_DEFAULT_N)
    if not 1 <= n <= 255:
        raise UserError(f"--grid-n must be 1..255, got {n}")
    return A.Grid(n)


def register(app: typer.Typer) -> None:
    @app.command("propose", help=HELP, no_args_is_help=True)
    def propose_cmd(
        inputs: list[Path] = typer.Argument(..., metavar="IMAGES",
                                            help="Folder of images or COCO json (with --merge: the shard files)."),
        output: Path = typer.Option(..., "-o", "--output", help="Artefact to write (.h5)."),
        image_root: Path = typer.Option(None, "--image-root", help="Image folder of a COCO json (default: guessed)."),
        algo: str = typer.Option("selective-search", "--algo",
                                 help="selective-search | felzenszwalb | grid | coco-gt."),
        mode: str = typer.Option(None, "--mode", help="Selective search: fast (ORL) | quality. (default: fast)"),
        max_side: int = typer.Option(
            None, "--max-side",
            help="Run at most this long side (px), results mapped back to original pixels; 0 = full resolution. "
                 "(default: 512 selective-search, 320 felzenszwalb; see docs/proposals.md)"),
        max_boxes: int = typer.Option(None, "--max-boxes",
                                      help="Keep only the first N raw boxes (filtered set still uses all). (default: 0 = all)"),
        min_size: float = typer.Option(None, "--min-size", help="Filter: drop boxes with a side < this (px). (default: 96)"),
        max_ratio: float = typer.Option(None, "--max-ratio", help="Filter: drop boxes with w/h or h/w > this. (default: 3)"),
        max_iou: float = typer.Option(None, "--max-iou",
                                      help="Filter: drop boxes with IoU > this against a kept box (1 = off). (default: 0.5)"),
        top_n: int = typer.Option(None, "--top-n", help="Filter: keep the first N survivors (0 = all). (default: 100)"),
        fallback: bool = typer.Option(None, "--fallback/--no-fallback",
                                      help="Filter: keep boxes[0] when nothing survives (ORL). (default: fallback)"),
        seed: int = typer.Option(None, "--seed", help="Seed of OpenCV's box ranking, reset per image. (default: 1)"),
        scales: str = typer.Option(None, "--scales",
                                   help="FH scales, comma-separated (DetCon COCO: 500,1000,1500). (default: 1000)"),
        min_sizes: str = typer.Option(None, "--min-sizes",
                                      help="FH min segment sizes in original pixels, one per scale. (default: = scales)"),
        sigma: float = typer.Option(None, "--sigma", help="FH Gaussian sigma. (default: 0.8)"),
        grid_n: int = typer.Option(None, "--grid-n", help="Grid: n x n cells (DetCon's best: 5). (default: 5)"),
        workers: int = typer.Option(None, "--workers", "-j", help="Worker processes. (default: all cores)"),
        chunk_size: int = typer.Option(32, "--chunk-size", help="Images per resumable chunk."),
        shard: str = typer.Option(None, "--shard", help="Compute only part i of n (0-based, contiguous), e.g. 3/8."),
        merge: bool = typer.Option(False, "--merge", help="Join the shard files given as IMAGES into -o."),
        overwrite: bool = typer.Option(False, "--overwrite",
                                       help="Replace -o even if it is another kind of file; discard a stale .partial/ stage."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    ):
        from sslkit.cli.common import info, print_json, warn
        from sslkit.errors import UserError
        from sslkit.io.lock import exclusive
        from sslkit.proposals import driver

        algo_opts = dict(mode=mode, max_side=max_side, max_boxes=max_boxes, min_size=min_size, max_ratio=max_ratio,
                         max_iou=max_iou, top_n=top_n, fallback=fallback, seed=seed, scales=scales,
                         min_sizes=min_sizes, sigma=sigma, grid_n=grid_n)
        if merge:
            given = [_FLAG.get(k, "--" + k.replace("_", "-")) for k, v in algo_opts.items() if v is not None]
            if shard or image_root or given:
                raise UserError(f"--merge takes only shard files and -o (got {', '.join(given or ['--shard/--image-root'])})")
            with exclusive(output):
                summary = driver.merge_propose_shards(inputs, output, overwrite=overwrite, quiet=quiet)
        else:
            from sslkit.io.images import ImageSource
            from sslkit.io.shards import parse_shard

            if len(inputs) != 1:
                raise UserError(f"expected one IMAGES folder or json, got {len(inputs)} paths",
                                None, "to join shard files pass --merge")
            from sslkit.proposals.algorithms import ALGOS

            if algo not in ALGOS:
                raise UserError(f"--algo {algo!r} is not one of {', '.join(ALGOS)}")
            if mode is not None and mode not in ("fast", "quality"):
                raise UserError(f"--mode {mode!r} is not fast or quality")
            if workers is not None and workers < 1:
                raise UserError("--workers must be at least 1")
            source = ImageSource.from_arg(inputs[0], image_root)
            a = build_algo(algo, algo_opts, source.coco_path)
            with exclusive(output):  # one writer per output, for the whole job (its chunks and the final file)
                summary = driver.run_propose(
                    source, a, output, shard=parse_shard(shard) if shard else None,
                    workers=workers or driver.default_workers(), chunk_size=chunk_size, overwrite=overwrite,
                    quiet=quiet)
        for fn, why in summary.skipped[:10]:
            warn(f"skipped {fn}: {why}")
        if len(summary.skipped) > 10:
            warn(f"… {len(summary.skipped) - 10} more skipped files are listed in {output} (sslkit info)")
        info(f"wrote {summary.output}: {summary.num_images} images, {len(summary.skipped)} skipped; "
             f"{summary.computed} computed in {summary.seconds:.1f} s ({summary.rate:.1f} img/s)", quiet)
        if as_json:
            print_json({"output": str(summary.output), "num_images": summary.num_images,
                        "skipped": [{"file_name": f, "reason": r} for f, r in summary.skipped],
                        "computed": summary.computed, "seconds": round(summary.seconds, 3),
                        "images_per_s": round(summary.rate, 3), "resumed_chunks": summary.resumed_chunks})
