"""``sslkit show``: draw what an artefact holds for one image, or a contact sheet of several."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = """Draw an artefact's content over its images and save a PNG, to look at what a stage made.

\b
sslkit.proposals files: boxes_filtered (default), the first --top raw boxes
(--field boxes), or a coloured label map (--field fh_s1000_c1000, grid_n5, ...).

\b
sslkit.views files: ORL pairs (an image and one neighbour), UniVIP candidates
(one sampled scene pair), RegionCL swaps (canvas source, paste source and the
composite of one image of a frozen step, box outlined).

\b
Detection results (sslkit detect --save-predictions, detectron2's
coco_instances_results.json): masks, boxes and scores >= 0.5 (--top K: the K
best), or the ground truth with --field gt; --images VAL.json names the images.

\b
MCL montages (sslkit sample-views -m mcl): one step's montages, 4 levels x 2
views, tiles outlined, the batch slot on each tile, --image's tiles in yellow.

\b
Any region file as a method reads it (docs/swap.md): --for detcon-s|detcon-b
draws the label maps DetCon pools over (a boxes file: painted into masks),
--for orl|univip the candidate boxes they start from (a label-map file: each
segment's bounding box), after their filter. --set KEY=VALUE changes the
conversion as for training (box_order, mask_fields, filter_*, segment_order,
segment_fields; for orl: min_size, max_ratio, max_iou, top_n). --views
detcon-b|detcon-s|univip samples the training views from any region file.

\b
Reads the artefact and its images (found through the source recorded in the
artefact; --images FOLDER|COCO.json if they moved). Writes -o PNG: one image at
its original size, or with --grid K a contact sheet of K images spread evenly
over the file.

\b
Examples:
  sslkit show props.h5 --image 139 -o p.png
  sslkit show props.h5 --image 000000000139.jpg --field boxes --top 30 -o raw.png
  sslkit show masks.h5 --grid 16 -o sheet.png
  sslkit show masks.h5 --image 139 --views detcon-b -o views.png
  sslkit show props.h5 --image 139 --for detcon-b -o painted.png
  sslkit show fh.h5 --grid 9 --for orl --set min_size=64 -o segment_boxes.png
  sslkit show fh.h5 --image 139 --views univip -o univip.png
  sslkit show swaps.h5 --image 0 -o swap.png
  sslkit show runs/det/predictions.json --image 139 -o det.png
  sslkit show montage.h5 --image 0 -o m.png
"""


#: views kinds that freeze training steps: their rows are the positions of a batch (an image may repeat)
STEP_KINDS = ("mcl-montages", "regioncl-swaps")


def find_row(art, key: str, root: Path) -> int:
    """Row of ``key``: an image id, a file name as stored, a path to the image file, or ``#N`` (the N-th
    row; for a file of frozen training steps a plain ``N`` that is no image id is the N-th row too)."""
    from sslkit.errors import UserError

    if key.startswith("#") and key[1:].isdigit():
        if int(key[1:]) < len(art.file_name):
            return int(key[1:])
        raise UserError(f"row {key} is past the last of the {len(art.file_name)} rows", art.path)
    try:
        return art.index_of(key)
    except UserError:
        pass
    if key.isdigit() and int(key) < len(art.file_name) and art.attrs.get("views_kind") in STEP_KINDS:
        return int(key)
    p = Path(key)
    if p.exists():
        try:
            return art.index_of(p.resolve().relative_to(root.resolve()).as_posix())
        except (ValueError, UserError):
            pass
    same = [i for i, n in enumerate(art.file_name) if Path(n).name == p.name]
    if len(same) > 1:
        raise UserError(f"{len(same)} images are named {p.name!r}", art.path, "pass the file name as stored or an image id")
    if not same:
        raise UserError(f"no image {key!r} in this artefact", art.path,
                        "pass an image id, a file name listed by 'sslkit info', or the image's path")
    return same[0]


def load_image(art, row: int, root: Path):
    from sslkit.errors import UserError
    from sslkit.io.images import ImageDecodeError, load_rgb

    path = root / art.file_name[row]
    if not path.exists():
        raise UserError("image not found", path, "pass --images FOLDER (or the COCO json) where the images are now")
    try:
        rgb, _ = load_rgb(path)
    except ImageDecodeError as e:
        raise UserError(f"cannot decode: {e.reason}", path) from e
    want = (int(art.height[row]), int(art.width[row]))
    if rgb.shape[:2] != want:
        raise UserError(f"image is {rgb.shape[0]}x{rgb.shape[1]} but the artefact was made on {want[0]}x{want[1]}",
                        path, "is --images pointing at other images?")
    return rgb


def register(app: typer.Typer) -> None:
    @app.command("show", help=HELP, no_args_is_help=True)
    def show_cmd(
        file: Path = typer.Argument(..., help="An sslkit .h5 artefact, or detection results (.json)."),
        output: Path = typer.Option(..., "-o", "--output", help="PNG to write."),
        image: str = typer.Option(None, "--image", help="Image id, stored file name, image path, or #N (the N-th row; for frozen MCL/RegionCL steps N alone). (default: first)"),
        grid: int = typer.Option(0, "--grid", help="Contact sheet of K images instead of one."),
        field: str = typer.Option(None, "--field", help="What to draw (a field of the file). (default: per kind)"),
        top: int = typer.Option(0, "--top", help="Draw at most this many boxes (0: all filtered / first 50 raw)."),
        alpha: float = typer.Option(0.5, "--alpha", help="Opacity of label-map colours."),
        tile: int = typer.Option(256, "--tile", help="Contact-sheet cell size (px)."),
        images: Path = typer.Option(None, "--images", help="Where the images are, if not where the artefact says."),
        image_root: Path = typer.Option(None, "--image-root", help="Image folder for a COCO json given to --images."),
        views: str = typer.Option(None, "--views",
                                  help="Draw a method's augmented training views instead (detcon-s, detcon-b, "
                                       "univip), from any region file."),
        regions_for: str = typer.Option(None, "--for",
                                        help="Draw the regions this method reads from the file, converted as it "
                                             "converts them (detcon-s, detcon-b, orl, univip)."),
        set_: list[str] = typer.Option([], "--set", help="KEY=VALUE: a conversion setting of --for / --views "
                                                         "(repeatable)."),
        size: int = typer.Option(0, "--size", help="View size for --views (px; default: the method's)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the views drawn with --views."),
        neighbor: int = typer.Option(None, "--neighbor", help="ORL pairs files: which neighbour to draw (0: nearest)."),
    ):
        import numpy as np

        from sslkit.cli.common import info
        from sslkit.errors import UserError
        from sslkit.viz import ShowOptions, open_artefact, renderer_for
        from sslkit.viz import image_root as find_root
        from sslkit.viz.draw import contact_sheet, save_png

        if grid < 0 or top < 0 or tile < 16 or not 0 <= alpha <= 1:
            raise UserError("need --grid >= 0, --top >= 0, --tile >= 16 and 0 <= --alpha <= 1")
        if grid and image is not None:
            raise UserError("pass either --image or --grid")
        if output.suffix.lower() != ".png":
            raise UserError("the output must be a .png file", output)
        if regions_for is not None and views is not None:
            raise UserError("pass either --for or --views")
        if set_ and regions_for is None and views is None:
            raise UserError("--set changes how --for or --views reads the regions; pass one of them")
        from sslkit.config import parse_set

        sets = parse_set(set_)
        with open_artefact(file, images, image_root) as art:
            render = renderer_for(art.format, file, views, regions_for)
            if len(art) == 0:
                raise UserError("has no images to show", file)
            root = find_root(art.params, images, image_root)
            opts = ShowOptions(field=field, top=top, alpha=alpha, views=views, size=size, seed=seed,
                               neighbor=neighbor, images=root, regions_for=regions_for, sets=sets)
            if grid:
                rows = np.unique(np.linspace(0, len(art) - 1, min(grid, len(art))).round().astype(int))
                shots = [render(art, int(r), load_image(art, int(r), root), opts) for r in rows]
                picture = contact_sheet([s.image for s in shots], [s.caption for s in shots], tile)
                what = f"{len(shots)} images"
            else:
                row = find_row(art, image, root) if image is not None else 0
                shot = render(art, row, load_image(art, row, root), opts)
                picture, what = shot.image, shot.caption
        save_png(output, picture)
        info(f"wrote {output} ({picture.shape[1]}x{picture.shape[0]}): {what}")
