"""``sslkit sample-views``: a method's offline view stage (views computed once per dataset).

The stages come from the method registry: ``-m NAME`` is a stage's name or the name of a method
that declares it as ``view_stage`` (:class:`sslkit.views.stage.ViewStage`). Every flag below that
names a setting maps onto the chosen stage's setting of the same name; a flag the stage has no
setting, input or shards for is refused. Nothing here knows a particular method.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import typer
from typer.core import TyperCommand

HELP = """Compute the training views of an object-level method and write them to an
HDF5 artefact (format sslkit.views; see docs/orl.md, docs/univip.md and
docs/artefacts.md). -m picks the view stage of a method:

\b
{stages}

\b
Each stage's settings (defaults shown) are flags of the same name, e.g.
--pair-ratio for pair_ratio, or --set KEY=VALUE; --print-config prints them
resolved. A flag the chosen stage has no setting for is an error.

\b
Examples:
  sslkit sample-views coco/train2017 -m orl --proposals props.h5 \\
      --ckpt stage1/last.pth -o pairs.h5
  sslkit sample-views imgs/ -m orl --proposals p.h5 --ckpt detcon/last.pth \\
      -o pairs.h5 --device cuda:1
  CUDA_VISIBLE_DEVICES=$I sslkit sample-views ... -o p$I.h5 --shard $I/8
  sslkit sample-views -m orl --merge p*.h5 -o pairs.h5
  sslkit sample-views coco/train2017 -m univip --proposals props.h5 -o cand.h5
  sslkit sample-views -m orl --set knn=5 --print-config
  sslkit show pairs.h5 --image 139 --field neighbor=0 -o pair.png
"""


def view_stages() -> dict[str, type]:
    """``{name: stage}`` for every view stage of the method registry, under its own name and the
    name of each method that declares it (registry order)."""
    from sslkit.methods import METHODS

    out: dict[str, type] = {}
    for name, cls in METHODS.items():
        if cls.view_stage is not None:
            out.setdefault(cls.view_stage.name, cls.view_stage)
            out.setdefault(name, cls.view_stage)
    return out


def find_stage(name: str):
    from sslkit.errors import UserError

    stages = view_stages()
    if name not in stages:
        raise UserError(f"--method {name!r} is not one of {', '.join(stages)}", None,
                        "the methods with an offline view stage; see sslkit sample-views --help")
    return stages[name]


def _flag(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def _stages_help() -> str:
    stages = view_stages()
    unique = list(dict.fromkeys(stages.values()))
    width = max(len(s.name) for s in unique) + 1
    blocks = []
    for st in unique:
        aliases = [n for n, s in stages.items() if s is st and n != st.name]
        head = f"--method {st.name:<{width}} " + (f"(also {', '.join(aliases)}) " if aliases else "")
        summary = st.SUMMARY.strip()
        if "\n" not in summary:
            summary = textwrap.fill(head + summary, 78, subsequent_indent="  ")[len(head):]
        settings = ", ".join(k if key.default is None else f"{k}={key.default}" for k, key in st.SETTINGS.items())
        blocks.append(head + summary + ("\n" + textwrap.fill(f"settings: {settings}", 78, initial_indent="  ",
                                                             subsequent_indent="    ") if settings else ""))
    return "\n".join(blocks)


class _StageHelp(TyperCommand):
    """The command's help lists the registry's stages; built when shown (the registry imports torch)."""

    @property
    def help(self) -> str:
        return HELP.format(stages=_stages_help())

    @help.setter
    def help(self, value) -> None:  # click sets it in __init__; the property builds it
        pass


def run_sample_views(method: str, inputs: list[Path], output: Path | None, image_root: Path | None,
                     files: dict, source_kind: str | None, flags: dict, sets: list[str], shard: str | None,
                     merge: bool, print_config: bool, overwrite: bool, quiet: bool):
    """The chosen stage's result (a :class:`~sslkit.views.stage.StageResult`), or None for --print-config."""
    from sslkit.config import dump_yaml, parse_set, resolve
    from sslkit.errors import UserError
    from sslkit.io.lock import exclusive
    from sslkit.views.stage import StageInputs

    stage = find_stage(method)
    given = {k: str(v) if isinstance(v, Path) else v for k, v in flags.items() if v is not None}
    refused = [_flag(k) for k in given if k not in stage.SETTINGS] + \
        [_flag(k) for k, v in files.items() if v is not None and k not in stage.INPUTS] + \
        (["--source"] if source_kind is not None and not stage.INPUTS else []) + \
        ([f for f, v in (("--shard", shard), ("--merge", merge)) if v] if not stage.SHARDABLE else [])
    if refused:
        raise UserError(f"{refused[0]} does not apply to -m {method}", None, f"see sslkit sample-views -m {method} "
                        "--print-config for its settings")
    if output is None and not print_config:
        raise UserError("-o OUTPUT is required (the views artefact to write)")
    if merge:
        extra = [_flag(k) for k in given] + [_flag(k) for k, v in files.items() if v is not None] + \
            (["--image-root"] if image_root else []) + (["--source"] if source_kind else []) + \
            (["--set"] if sets else []) + (["--shard"] if shard else []) + (["--print-config"] if print_config else [])
        if extra:
            raise UserError(f"--merge takes only shard files and -o (got {', '.join(extra)})")
        if not inputs:
            raise UserError("--merge needs the shard files", None, f"e.g. sslkit sample-views -m {method} --merge "
                            "part*.h5 -o views.h5")
        with exclusive(output):
            return stage.merge(list(inputs), output, overwrite=overwrite, quiet=quiet)
    settings = resolve(stage.SETTINGS, [("--set", parse_set(sets)), ("command line", given)],
                       owner=f"sample-views -m {method}", listing=f"sslkit sample-views -m {method} --print-config")
    if print_config:
        from sslkit.console import stdout

        stdout.print(dump_yaml(settings), markup=False, highlight=False, end="")
        return None
    from sslkit.io.images import ImageSource
    from sslkit.io.shards import parse_shard

    if len(inputs) != 1:
        raise UserError(f"expected one IMAGES folder or json, got {len(inputs)} paths", None,
                        "to join shard files pass --merge" if stage.SHARDABLE else None)
    part = parse_shard(shard) if shard else None
    source = ImageSource.from_arg(inputs[0], image_root)
    with exclusive(output):  # one writer per output, for the whole job (its chunks and the final file)
        return stage.run(source, output, settings, StageInputs(files["proposals"], files["coco"], source_kind, part),
                         overwrite=overwrite, quiet=quiet)


def register(app: typer.Typer) -> None:
    @app.command("sample-views", cls=_StageHelp, no_args_is_help=True,
                 short_help="Compute the training views of an object-level method (its offline view stage).")
    def sample_views_cmd(
        inputs: list[Path] = typer.Argument(None, metavar="IMAGES", show_default=False,
                                            help="Folder of images or COCO json (with --merge: the shard files)."),
        method: str = typer.Option(..., "--method", "-m", help="The view stage: a method listed above."),
        output: Path = typer.Option(None, "-o", "--output", help="Views artefact to write (.h5)."),
        proposals: Path = typer.Option(None, "--proposals", help="Regions from `sslkit propose` (sslkit.proposals): "
                                                                 "boxes, or label maps (each segment's box; "
                                                                 "docs/swap.md)."),
        image_root: Path = typer.Option(None, "--image-root", help="Image folder of a COCO json."),
        ckpt: Path = typer.Option(None, "--ckpt", help="The image-level model (any sslkit checkpoint or export)."),
        encoder: str = typer.Option(None, "--encoder", help="Which encoder of the checkpoint (default: its default)."),
        knn: int = typer.Option(None, "--knn", help="Nearest images per image, K."),
        pair_ratio: float = typer.Option(None, "--pair-ratio",
                                         help="Pairs per neighbour = max(1, int(ratio x query boxes))."),
        image_feature: str = typer.Option(None, "--image-feature",
                                          help="kNN feature: auto (projector if BYOL-style, else backbone), "
                                               "projector or backbone."),
        roi_feature: str = typer.Option(None, "--roi-feature", help="RoI feature: backbone or projector."),
        image_size: int = typer.Option(None, "--image-size",
                                       help="Centre crop of the image embedding (after resizing to size/0.875)."),
        roi_size: int = typer.Option(None, "--roi-size", help="RoI crops are resized to this square."),
        min_size: float = typer.Option(None, "--min-size", help="Filter: drop boxes with a side < this (px)."),
        max_ratio: float = typer.Option(None, "--max-ratio", help="Filter: drop boxes with w/h or h/w > this."),
        max_iou: float = typer.Option(None, "--max-iou", help="Filter: drop boxes with IoU > this against a kept box."),
        top_n: int = typer.Option(None, "--top-n", help="Filter: keep the first N survivors (0 = all)."),
        source_kind: str = typer.Option(None, "--source", help="Boxes from --proposals, or gt: the ground-truth "
                                                               "boxes of --coco. (default: proposals)"),
        coco: Path = typer.Option(None, "--coco", help="--source gt: COCO instances json with the boxes."),
        device: str = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
        batch_size: int = typer.Option(None, "--batch-size", help="Images / RoI crops per forward pass."),
        workers: int = typer.Option(None, "--workers", "-j", help="Image decoding processes "
                                                                  "(default: CPUs - 1, at most 8)."),
        chunk_size: int = typer.Option(None, "--chunk-size", help="Query images per resumable chunk; RoI features "
                                                                   "of <= chunk x (1+K) images are held."),
        knn_block_mb: int = typer.Option(None, "--knn-block-mb",
                                         help="Memory of one block of the kNN similarity matrix."),
        shard: str = typer.Option(None, "--shard", help="Compute part i of n (0-based), e.g. 3/8."),
        merge: bool = typer.Option(False, "--merge", help="Join the shard files given as IMAGES into -o."),
        set_: list[str] = typer.Option([], "--set", help="KEY=VALUE for any setting of the stage (repeatable)."),
        print_config: bool = typer.Option(False, "--print-config", help="Print the resolved settings and exit."),
        overwrite: bool = typer.Option(False, "--overwrite",
                                       help="Replace -o even if it is another kind of file; discard a stale .partial/."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    ):
        from sslkit.cli.common import info, print_json, warn

        flags = dict(ckpt=ckpt, encoder=encoder, knn=knn, pair_ratio=pair_ratio, image_feature=image_feature,
                     roi_feature=roi_feature, image_size=image_size, roi_size=roi_size, min_size=min_size,
                     max_ratio=max_ratio, max_iou=max_iou, top_n=top_n, device=device, batch_size=batch_size,
                     workers=workers, chunk_size=chunk_size, knn_block_mb=knn_block_mb)
        result = run_sample_views(method, inputs or [], output, image_root, {"proposals": proposals, "coco": coco},
                                  source_kind, flags, set_, shard, merge, print_config, overwrite, quiet)
        if result is None:
            return
        for fn, why in result.skipped[:10]:
            warn(f"skipped {fn}: {why}")
        if len(result.skipped) > 10:
            warn(f"… {len(result.skipped) - 10} more skipped files are listed in {result.output} (sslkit info)")
        info(result.line, quiet)
        if as_json:
            print_json(result.summary)
