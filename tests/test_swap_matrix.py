"""The swap matrix of docs/swap.md, run: every region source × every object-level method, each cell's
commands as the page prints them, through the CLI on demo scenes made from real photos (tiny runs).

The page is the test's input: its table is parsed at collection time, the region files are made by
its commands (and by its Python snippet, for "your own" files), and each cell gets only small-scale
flags appended (tiny backbone, 64 px, one step, 16 px minimum box side for 96–128 px images).
"""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli as sslkit

DOC = Path(__file__).resolve().parents[1] / "docs" / "swap.md"
METHODS = ("detcon-s", "detcon-b", "orl", "univip")
TINY = ["--arch", "resnet_tiny", "--image-size", 64, "--batch-size", 4, "--epochs", 1, "--max-steps", 1,
        "--warmup-epochs", 0, "--workers", 0, "-q", "--no-tensorboard", "--set", "proj_hidden_dim=32",
        "--set", "proj_dim=16"]
METHOD_FLAGS = {
    "byol": ["--set", "pred_hidden_dim=32"],
    "detcon-s": ["--set", "filter_min_size=16"],
    "detcon-b": ["--set", "filter_min_size=16", "--set", "pred_hidden_dim=32"],
    "orl": ["--set", "pred_hidden_dim=32", "--set", "patch_size=32"],
    "univip": ["--set", "pred_hidden_dim=32", "--set", "filter_min_size=16", "--set", "instance_size=32",
               "--set", "naive_min_size=12"],
}
STAGE_FLAGS = {
    "orl": ["--knn", 3, "--image-size", 64, "--roi-size", 64, "--min-size", 16, "--workers", 0, "--batch-size", 16,
            "-q"],
    "univip": ["--min-size", 16, "-q"],
}


def _page() -> str:
    return DOC.read_text()


def matrix() -> list[tuple[str, list[list[str]]]]:
    """``[(row label, [commands of each method column])]`` from the page's table."""
    text = _page()
    start = text.index("<!-- swap-matrix")
    lines = [ln for ln in text[start:].splitlines()[1:] if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["regions", "DetCon-S", "DetCon-B", "ORL", "UniVIP"], header
    rows = []
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows.append((cells[0], [re.findall(r"`([^`]+)`", c) for c in cells[1:]]))
    return rows


def prep_commands() -> list[str]:
    """The ``sslkit`` commands of the code block above the table (the region files, ORL's stage 1)."""
    text = _page()
    block = text[text.index("## The matrix"):text.index("<!-- swap-matrix")]
    code = block.split("```")[1]
    return [ln.split("#")[0].strip() for ln in code.splitlines() if ln.strip().startswith("sslkit ")]


def snippet() -> str:
    text = _page()
    block = text[text.index("<!-- swap-snippet"):]
    return block.split("```python", 1)[1].split("```", 1)[0]


def _args(command: str) -> list:
    """A page command as CLI arguments, with the tiny-run flags of its kind."""
    args = shlex.split(command.replace("IMAGES.json", "train.json").replace("IMAGES", "train.json"))
    assert args[0] == "sslkit", command
    args = args[1:]
    method = args[args.index("-m") + 1] if "-m" in args else None
    if args[0] == "pretrain":
        return [*args, *TINY, *METHOD_FLAGS[method]]
    if args[0] == "sample-views":
        return [*args, *STAGE_FLAGS[method]]
    if args[0] == "propose":
        return [*args, "-q", "--workers", 1]
    raise AssertionError(f"unexpected command {command}")


def my_boxes(path) -> np.ndarray:
    """A stand-in detector: the image's centre and its four quadrants, centre first."""
    from sslkit.io.images import read_image_size

    h, w = read_image_size(path)
    return np.array([[w / 4, h / 4, 3 * w / 4, 3 * h / 4], [0, 0, w / 2, h / 2], [w / 2, 0, w, h / 2],
                     [0, h / 2, w / 2, h], [w / 2, h / 2, w, h]], np.float32)


def my_labels(path) -> np.ndarray:
    """A stand-in segmenter: brightness in three bands at half resolution (0: the darkest, background)."""
    from sslkit.io.images import load_rgb

    rgb, _ = load_rgb(path)
    grey = rgb[::2, ::2].mean(-1)
    return np.digitize(grey, np.quantile(grey, [1 / 3, 2 / 3])).astype(np.uint16)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Demo scenes from real photos; the page's region files and stage 1; the snippet's own files."""
    d = tmp_path_factory.mktemp("swap")
    assert sslkit("demo-data", d / "demo", "--n", 10, "--min-side", 96, "--max-side", 128, "--quiet",
                  "--sources", "pip") == 0
    demo = d / "demo"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(demo)
        for command in prep_commands():
            assert sslkit(*_args(command)) == 0, command
        exec(compile(snippet(), str(DOC), "exec"), {"IMAGES": "train.json", "my_boxes": my_boxes,
                                                    "my_labels": my_labels})
    return demo


def test_the_page_lists_every_source_and_method():
    rows = matrix()
    labels = [r[0] for r in rows]
    assert labels == ["selective search, fast", "selective search, quality", "FH s = 500", "FH s = 1000",
                      "FH s = 1500", "FH, all three scales", "grid 5 × 5", "COCO ground truth", "your boxes",
                      "your masks"]
    for label, cells in rows:
        assert len(cells) == len(METHODS) and all(cells), label
        for method, commands in zip(METHODS, cells, strict=True):
            assert f"-m {method}" in commands[-1] and commands[-1].startswith("sslkit pretrain"), (label, method)
    outputs = [c.split(" -o ")[1].split()[0] for _, cells in rows for cmds in cells for c in cmds]
    assert len(outputs) == len(set(outputs))  # every cell writes its own files
    assert "my_boxes.h5" in snippet() and "my_masks.h5" in snippet()


def _cells():
    return [pytest.param(label, method, commands, id=f"{method}-{label}")
            for label, cells in matrix() for method, commands in zip(METHODS, cells, strict=True)]


@pytest.mark.parametrize("label,method,commands", _cells())
def test_cell(scenes, monkeypatch, label, method, commands):
    monkeypatch.chdir(scenes)
    for command in commands:
        assert sslkit(*_args(command)) == 0, command
    last = shlex.split(commands[-1])
    run = Path(last[last.index("-o") + 1])
    logs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1] and math.isfinite(logs[0]["loss"])
    if method.startswith("detcon"):
        assert 0 < logs[0]["paired_masks"] <= 1
    if method == "univip":  # the run's candidates, read as the run read them: some image has some
        import yaml

        from sslkit.methods.univip import UniVIP

        store = UniVIP.candidates(yaml.safe_load((run / "config.yaml").read_text()))
        assert sum(len(b) for _, _, b in store.iter_rows()) > 0
    if method == "orl" and label not in ("COCO ground truth",):
        from sslkit.views.orl_pairs import OrlPairs

        pairs = OrlPairs(Path(shlex.split(commands[0])[-1]))
        assert pairs.stats()["pairs"] > 0
        regions = pairs.params["proposals"].get("regions")
        maps = label.startswith(("FH", "grid", "your masks"))
        assert (regions is not None) == maps, label  # a label-map source records its conversion
        if maps:
            assert regions["from"] == "label maps" and regions["segment_order"] == "size"


# -- the conversions, as the loaders apply them ---------------------------------------------------------


def test_detcon_paints_the_filtered_boxes_of_a_boxes_file(scenes):
    """MaskStore on selective-search boxes: ORL's filter (reusing boxes_filtered), scaled to the image,
    painted by box_order; several fields form DetCon's offset union."""
    from sslkit.io.artefacts import Artefact, ArtefactWriter
    from sslkit.ops.regions import boxes_to_labels
    from sslkit.proposals.filters import BoxFilter
    from sslkit.views.detcon import FIELD_OFFSET, BoxMasks, MaskStore

    filt = BoxFilter(min_size=16)
    store = MaskStore(scenes / "ss_fast.h5", "all", BoxMasks(filt, "rank"))
    assert store.fields == ("boxes",) and store.boxes["boxes"].field == "boxes"  # refiltered: 16 != propose's 96
    d = store.describe()["from_boxes"]
    assert d["box_order"] == "rank" and d["filter"]["min_size"] == 16
    with Artefact(scenes / "ss_fast.h5") as a:
        for row in (0, 3):
            name, h, w = a.file_name[row], int(a.height[row]), int(a.width[row])
            raw = a.ragged("boxes", row)
            want = boxes_to_labels(raw[filt.apply(raw)], h, w, "rank")
            np.testing.assert_array_equal(store.labels(name, h, w)[0], want)
            # at another size (a resized copy of the image) the boxes are scaled first
            half = store.labels(name, h // 2, w // 2)[0]
            scale = np.array([(w // 2) / w, (h // 2) / h] * 2, np.float32)
            np.testing.assert_array_equal(half, boxes_to_labels(raw[filt.apply(raw)] * scale, h // 2, w // 2, "rank"))
    # propose's own boxes_filtered stand in when the filter is ORL's (the default)
    assert MaskStore(scenes / "ss_fast.h5").boxes["boxes"].field == "boxes_filtered"
    # a file with label maps and boxes: the union of the two, ids of the second field offset
    both = scenes / "fh_and_boxes.h5"
    with Artefact(scenes / "fh.h5") as fh, Artefact(scenes / "my_boxes.h5") as mine, \
            ArtefactWriter(both, "sslkit.proposals", params=mine.params, ragged={"boxes": ("float32", (4,))},
                           label_maps=["fh_s500_c500"]) as w:
        for row in range(len(fh)):
            rec = fh.record(row, [], ["fh_s500_c500"])
            rec.ragged = {"boxes": mine.ragged("boxes", mine.index_of(rec.file_name))}
            w.add(rec)
    assert MaskStore(both).fields == ("fh_s500_c500",)  # "all": the label maps
    union = MaskStore(both, "fh_s500_c500,boxes", BoxMasks(BoxFilter(0, 0, 1, 0)))
    with Artefact(both) as a:
        name, h, w = a.file_name[1], int(a.height[1]), int(a.width[1])
        lab = union.labels(name, h, w)
        assert lab.shape == (2, h, w) and lab[1].min() >= FIELD_OFFSET
        np.testing.assert_array_equal(lab[1] - FIELD_OFFSET, boxes_to_labels(a.ragged("boxes", 1), h, w))


def test_orl_and_univip_take_segment_boxes(scenes):
    """CandidateBoxes on label maps: each segment's box (background left out), ordered, then the filter."""
    from sslkit.io.artefacts import Artefact
    from sslkit.ops.regions import segment_boxes
    from sslkit.proposals.filters import BoxFilter
    from sslkit.views.candidates import CandidateBoxes, SegmentRule

    filt = BoxFilter(min_size=16, fallback=False)
    with Artefact(scenes / "fh.h5") as a:
        row = 2
        hw = (int(a.height[row]), int(a.width[row]))
        parts = [segment_boxes(a.label_map(f, row), hw) for f in ("fh_s500_c500", "fh_s1000_c1000")]
        pooled = np.concatenate([p[1] for p in parts])
        by_size = pooled[np.argsort(-np.concatenate([p[2] for p in parts]), kind="stable")]
        for order, want in (("size", by_size), ("id", pooled)):
            c = CandidateBoxes.open(scenes / "fh.h5", filt, segments=SegmentRule(("fh_s500_c500", "fh_s1000_c1000"),
                                                                                 order))
            assert c.kind == "segments" and c.describe()["segment_order"] == order
            np.testing.assert_array_equal(c.at(row), want[filt.apply(want)])
            assert [r for r, _, _ in c.iter_rows()] == list(range(len(a)))
    # COCO instance masks: the background (0) is no box; the instances' boxes are (the GT boxes, up to the map)
    from sslkit.io.coco import annotations_by_image, coco_boxes_xyxy, load_coco

    gt = CandidateBoxes.open(scenes / "gt.h5", BoxFilter(0, 0, 1, 0))
    assert gt.background == 0
    coco = load_coco(scenes / "train.json")
    anns = annotations_by_image(coco)
    with Artefact(scenes / "gt.h5") as a:
        for row in range(len(a)):
            got = gt.at(row)
            n = len(np.unique(a.label_map("gt_instances", row))) - (0 in a.label_map("gt_instances", row))
            assert len(got) == n
            boxes = coco_boxes_xyxy(anns[int(a.image_id[row])])
            # every segment box lies within a GT box, to a pixel (instance masks are drawn inside their boxes)
            for b in got:
                assert ((boxes[:, :2] <= b[:2] + 1) & (boxes[:, 2:] >= b[2:] - 1)).all(1).any()


def test_univip_stage_records_the_conversion(scenes, tmp_path):
    from sslkit.io.artefacts import Artefact

    out = tmp_path / "cands.h5"
    assert sslkit("sample-views", scenes / "train.json", "-m", "univip", "--proposals", scenes / "grid.h5",
                  "-o", out, "--min-size", 0, "-q", "--set", "segment_order=id") == 0
    with Artefact(out) as a:
        regions = a.params["proposals"]["regions"]
        assert regions["fields"] == ["grid_n5"] and regions["segment_order"] == "id"
        assert regions["filter"]["fallback"] is False
        assert all(len(a.ragged("boxes", r)) == 25 for r in range(len(a)))  # the 25 cells, none dropped
    assert sslkit("show", out, "-o", tmp_path / "u.png") == 0  # the stored (converted) boxes


def test_show_draws_what_each_method_reads(scenes, tmp_path, capsys):
    from PIL import Image

    from sslkit.io.artefacts import Artefact

    with Artefact(scenes / "ss_fast.h5") as a:
        name, h, w = a.file_name[0], int(a.height[0]), int(a.width[0])
    cases = [
        (["ss_fast.h5", "--for", "detcon-b", "--set", "filter_min_size=16"], (w, h), "boxes painted large-first"),
        (["ss_fast.h5", "--for", "detcon-s", "--set", "box_order=rank"], (w, h), "boxes painted rank"),
        (["fh.h5", "--for", "detcon-b"], (3 * w + 12, h), "fh_s500_c500: "),  # one panel per field
        (["fh.h5", "--for", "orl", "--set", "min_size=16"], (w, h), "boxes of the segments of"),
        (["my_masks.h5", "--for", "univip", "--set", "filter_min_size=0"], (w, h), "univip candidates"),
        (["ss_fast.h5", "--for", "univip", "--set", "filter_min_size=16"], (w, h), "boxes (filtered)"),
        (["ss_fast.h5", "--views", "detcon-b", "--set", "filter_min_size=16", "--size", 64], (2 * 256 + 6, 256),
         "segments sampled"),
        (["fh.h5", "--views", "univip", "--set", "filter_min_size=16"], None, "candidates;"),
    ]
    for i, (args, size, caption) in enumerate(cases):
        png = tmp_path / f"{i}.png"
        capsys.readouterr()
        assert sslkit("show", scenes / args[0], *args[1:], "--image", name, "-o", png) == 0, args
        assert caption in capsys.readouterr().err.replace("\n", ""), args
        if size is not None:
            assert Image.open(png).size == size, args
    assert sslkit("show", scenes / "fh.h5", "--for", "orl", "--grid", 4, "-o", tmp_path / "g.png") == 0
    bad = [(["--for", "mcl"], "--for 'mcl' is not one of"),
           (["--for", "orl", "--views", "univip"], "either --for or --views"),
           (["--set", "box_order=rank"], "--set changes how --for or --views"),
           (["--for", "detcon-b", "--set", "box_order=top"], "box_order must be one of"),
           (["--for", "orl", "--set", "segment_order=area"], "segment_order='area' is not one of size, id"),
           (["--for", "orl", "--set", "box_order=rank"], "has no setting 'box_order'"),
           (["--for", "univip", "--set", "segment_fields=grid_n5"], "has no label-map field 'grid_n5'")]
    for args, message in bad:
        capsys.readouterr()
        assert sslkit("show", scenes / "fh.h5", *args, "-o", tmp_path / "x.png") == 2, args
        assert message in capsys.readouterr().err, args
    capsys.readouterr()
    assert sslkit("show", scenes / "ss_fast.h5", "--for", "orl", "--set", "segment_fields=fh_s500_c500",
                  "-o", tmp_path / "x.png") == 2
    assert "but the file has no label maps" in capsys.readouterr().err
