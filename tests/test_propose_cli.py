"""`sslkit propose` and `sslkit show` as a user runs them, on tiny real photos plus broken files.

Commands run in-process through ``sslkit.cli.main`` (the real error handling, one-line errors,
exit codes); the kill-and-resume test runs the installed entry point in a subprocess because
it SIGKILLs that process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from sslkit._testing import kill_at
from sslkit.io.artefacts import Artefact, ArtefactWriter
from sslkit.proposals.masks import felzenszwalb, resize_labels
from tests.conftest import real_photo

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """4 real photos (≤160 px, one in a subfolder) + a corrupt and a truncated JPEG."""
    d = tmp_path_factory.mktemp("props_images")
    (d / "sub").mkdir()
    for i, name in enumerate(PHOTOS):
        Image.fromarray(real_photo(name, 160)).save((d / "sub" if i == 3 else d) / f"{name}.jpg", quality=92)
    (d / "broken.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    whole = (d / "coffee.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    return d


def call(*args) -> int:
    """``sslkit ARGS`` in this process, through the real entry point; the exit code."""
    from sslkit.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code or 0
    return 0


def run(capsys, *args) -> tuple[int, str, str]:
    """``sslkit ARGS`` in this process: (exit code, stdout, stderr)."""
    rc = call(*args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def dump(path: Path) -> dict:
    """Every dataset and the params of an artefact: what must match between equivalent runs."""
    out = {}
    with h5py.File(path, "r") as f:
        out["params"] = json.loads(f.attrs["params"])
        out["format"] = f.attrs["format"]

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
        f.visititems(visit)
    return out


def assert_same(a: Path, b: Path) -> None:
    da, db = dump(a), dump(b)
    assert da.keys() == db.keys()
    for k in da:
        if isinstance(da[k], np.ndarray):
            assert da[k].dtype == db[k].dtype, k
            np.testing.assert_array_equal(da[k], db[k], err_msg=k)
        else:
            assert da[k] == db[k], k


@pytest.fixture(scope="module")
def ss_run(images, tmp_path_factory) -> Path:
    """The reference selective-search run (1 worker, small chunks)."""
    out = tmp_path_factory.mktemp("ss") / "props.h5"
    assert call("propose", images, "-o", out, "--workers", "1", "--chunk-size", "2", "-q") == 0
    return out


def test_selective_search_artefact(ss_run, images):
    with Artefact(ss_run, "sslkit.proposals") as a:
        assert sorted(a.file_name) == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "sub/rocket.jpg"]
        skipped = dict(a.skipped)
        assert set(skipped) == {"broken.jpg", "truncated.jpg"}
        assert all(skipped.values())
        p = a.params
        assert p["filter"] == {"min_size": 96.0, "max_ratio": 3.0, "max_iou": 0.5, "top_n": 100, "fallback": True}
        assert p["source"]["root"] == str(images.resolve()) and p["shard"] is None
        for i in range(len(a)):
            h, w = int(a.height[i]), int(a.width[i])
            assert (h, w) == Image.open(images / a.file_name[i]).size[::-1]
            raw, kept = a.ragged("boxes", i), a.ragged("boxes_filtered", i)
            assert raw.dtype == np.float32 and len(raw) > 10
            assert (raw[:, :2] >= 0).all() and (raw[:, 2] <= w).all() and (raw[:, 3] <= h).all()
            assert (raw[:, 2] > raw[:, 0]).all() and (raw[:, 3] > raw[:, 1]).all()
            # the filtered boxes are raw boxes, in raw order, ≥ 96 px a side (or ORL's boxes[0] fallback)
            idx = [int(np.flatnonzero((raw == k).all(1))[0]) for k in kept]
            assert idx == sorted(idx) and 1 <= len(kept) <= 100
            sides = np.minimum(kept[:, 2] - kept[:, 0], kept[:, 3] - kept[:, 1])
            assert (sides >= 96).all() or idx == [0]


def test_deterministic_and_workers_do_not_matter(ss_run, images, tmp_path, capsys):
    again, pooled = tmp_path / "again.h5", tmp_path / "pooled.h5"
    assert run(capsys, "propose", images, "-o", again, "--workers", "1", "--chunk-size", "2", "-q")[0] == 0
    assert run(capsys, "propose", images, "-o", pooled, "--workers", "2", "--chunk-size", "3", "-q")[0] == 0
    assert_same(ss_run, again)
    assert_same(ss_run, pooled)


def test_max_side_maps_boxes_to_original_pixels(images, tmp_path, capsys):
    out = tmp_path / "small.h5"
    rc, _, err = run(capsys, "propose", images, "-o", out, "--max-side", "64", "--max-boxes", "30", "--json", "-q")
    assert rc == 0, err
    with Artefact(out) as a:
        assert a.params["max_side"] == 64
        for i in range(len(a)):
            raw = a.ragged("boxes", i)
            assert len(raw) <= 30
            assert raw[:, 2:].max() > 64  # searched at ≤64 px, stored in original (≤160 px) pixels
            assert raw[:, 2].max() <= a.width[i] and raw[:, 3].max() <= a.height[i]


def test_kill_and_resume_equals_uninterrupted(ss_run, images, tmp_path):
    out = tmp_path / "props.h5"
    exe = Path(sys.executable).with_name("sslkit")
    cmd = ([str(exe)] if exe.exists() else [sys.executable, "-m", "sslkit"]) + [
        "propose", str(images), "-o", str(out), "--workers", "2", "--chunk-size", "2", "-q"]
    killed = subprocess.run(cmd, env={**os.environ, **kill_at("commit:propose", 1)}, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    stage = tmp_path / "props.h5.partial"
    assert not out.exists() and len(list(stage.glob("chunk-*.npz"))) == 1
    done = subprocess.run(cmd + ["--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["resumed_chunks"], summary["computed"]) == (1, 4)  # 6 files in chunks of 2: 1 kept, 2 redone
    assert not stage.exists()
    assert_same(ss_run, out)


def test_resume_refuses_other_parameters(images, tmp_path, capsys):
    out = tmp_path / "p.h5"
    stage = tmp_path / "p.h5.partial"
    stage.mkdir()
    (stage / "stage.json").write_text(json.dumps({"params": "from another run"}))
    rc, _, err = run(capsys, "propose", images, "-o", out, "--algo", "grid", "-q")
    assert rc == 2 and "different inputs or parameters" in err
    rc, _, err = run(capsys, "propose", images, "-o", out, "--algo", "grid", "-q", "--overwrite")
    assert rc == 0, err
    assert out.exists() and not stage.exists()


def test_shards_merge_to_the_single_run(ss_run, images, tmp_path, capsys):
    parts = [tmp_path / f"part{i}.h5" for i in range(3)]
    for i, p in enumerate(parts):
        assert run(capsys, "propose", images, "-o", p, "--shard", f"{i}/3", "--workers", "1", "-q")[0] == 0
    with Artefact(parts[0]) as a:
        assert a.params["shard"]["index"] == 0 and a.params["shard"]["count"] == 3
        assert (a.params["shard"]["start"], a.params["shard"]["stop"]) == (0, 2)
    merged = tmp_path / "all.h5"
    rc, _, err = run(capsys, "propose", "--merge", parts[2], parts[0], parts[1], "-o", merged, "-q")
    assert rc == 0, err
    assert_same(ss_run, merged)

    rc, _, err = run(capsys, "propose", "--merge", parts[0], parts[1], "-o", tmp_path / "x.h5")
    assert rc == 2 and "missing shard(s) 2 of 3" in err
    rc, _, err = run(capsys, "propose", "--merge", parts[0], parts[0], parts[1], parts[2], "-o", tmp_path / "x.h5")
    assert rc == 2 and "given twice" in err
    rc, _, err = run(capsys, "propose", "--merge", parts[0], ss_run, "-o", tmp_path / "x.h5")
    assert rc == 2 and "not a shard" in err
    other = tmp_path / "other1.h5"
    assert run(capsys, "propose", images, "-o", other, "--shard", "1/3", "--top-n", "5", "-q")[0] == 0
    rc, _, err = run(capsys, "propose", "--merge", parts[0], other, parts[2], "-o", tmp_path / "x.h5")
    assert rc == 2 and "another job" in err
    assert not (tmp_path / "x.h5").exists()


def test_wrong_output_refused_without_overwrite(images, tmp_path, capsys):
    notes = tmp_path / "notes.h5"
    notes.write_text("my notes")
    rc, _, err = run(capsys, "propose", images, "-o", notes, "--algo", "grid")
    assert rc == 2 and err.startswith("error: ") and "not an sslkit artefact" in err and "--overwrite" in err
    assert notes.read_text() == "my notes"
    views = tmp_path / "views.h5"
    ArtefactWriter(views, "sslkit.views").close()
    rc, _, err = run(capsys, "propose", images, "-o", views, "--algo", "grid")
    assert rc == 2 and "sslkit.views" in err
    assert run(capsys, "propose", images, "-o", notes, "--algo", "grid", "--overwrite", "-q")[0] == 0
    with Artefact(notes, "sslkit.proposals") as a:
        assert len(a) == 4


def test_options_of_another_algorithm_are_refused(images, tmp_path, capsys):
    rc, _, err = run(capsys, "propose", images, "-o", tmp_path / "a.h5", "--scales", "500")
    assert rc == 2 and "--scales does not apply to --algo selective-search" in err
    rc, _, err = run(capsys, "propose", images, "-o", tmp_path / "a.h5", "--algo", "felzenszwalb",
                     "--scales", "500,1000", "--min-sizes", "500")
    assert rc == 2 and "--min-sizes has 1 values for 2 --scales" in err
    rc, _, err = run(capsys, "propose", images, "-o", tmp_path / "a.h5", "--shard", "3/3")
    assert rc == 2 and "0 <= i < n" in err


def test_felzenszwalb_maps_multi_scale_and_ids_above_255(images, tmp_path, capsys):
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 120, 3), dtype=np.uint8)).save(noise / "noise.png")
    out = tmp_path / "fh.h5"
    rc, _, err = run(capsys, "propose", noise, "-o", out, "--algo", "felzenszwalb", "--scales", "1,1000",
                     "--min-sizes", "1,1000", "--max-side", "0", "-q")
    assert rc == 0, err
    with Artefact(out) as a:
        assert a.map_names == ["fh_s1000_c1000", "fh_s1_c1"]
        fine = a.label_map("fh_s1_c1", 0)
        assert fine.dtype == np.uint16 and fine.shape == (80, 120) and fine.max() > 255
        np.testing.assert_array_equal(fine, felzenszwalb(np.asarray(Image.open(noise / "noise.png")), 1, 1))

    out = tmp_path / "fh_default.h5"
    assert run(capsys, "propose", images, "-o", out, "--algo", "felzenszwalb", "--max-side", "64", "-q")[0] == 0
    with Artefact(out) as a:
        assert a.map_names == ["fh_s1000_c1000"] and a.params["max_side"] == 64
        for i in range(len(a)):
            m = a.label_map("fh_s1000_c1000", i)
            assert max(m.shape) == 64  # stored at reduced size; readers resize (resize_labels)
            assert resize_labels(m, (a.height[i], a.width[i])).shape == (a.height[i], a.width[i])


def test_grid_maps(images, tmp_path, capsys):
    out = tmp_path / "grid.h5"
    assert run(capsys, "propose", images, "-o", out, "--algo", "grid", "--grid-n", "3", "-q")[0] == 0
    with Artefact(out) as a:
        assert a.map_names == ["grid_n3"] and len(a) == 4 and len(a.skipped) == 2
        np.testing.assert_array_equal(a.label_map("grid_n3", 0), np.arange(9).reshape(3, 3))


def test_show_boxes_masks_and_sheet(ss_run, images, tmp_path, capsys):
    one = tmp_path / "one.png"
    rc, _, err = run(capsys, "show", ss_run, "--image", "coffee.jpg", "-o", one)
    assert rc == 0, err
    assert Image.open(one).size == Image.open(images / "coffee.jpg").size
    raw = tmp_path / "raw.png"
    assert run(capsys, "show", ss_run, "--image", images / "sub" / "rocket.jpg", "--field", "boxes",
               "--top", "5", "-o", raw)[0] == 0
    assert Image.open(raw).size == Image.open(images / "sub" / "rocket.jpg").size
    assert not np.array_equal(np.asarray(Image.open(raw)), np.asarray(Image.open(images / "sub" / "rocket.jpg")))

    grid = tmp_path / "grid.h5"
    assert run(capsys, "propose", images, "-o", grid, "--algo", "grid", "-q")[0] == 0
    sheet = tmp_path / "sheet.png"
    assert run(capsys, "show", grid, "--grid", "4", "--tile", "64", "-o", sheet)[0] == 0
    assert Image.open(sheet).size == (2 * 64, 2 * (64 + 18))  # 2x2 cells of tile + caption

    rc, _, err = run(capsys, "show", ss_run, "--field", "nope", "-o", tmp_path / "x.png")
    assert rc == 2 and "has no field 'nope'" in err


def test_show_finds_moved_images_with_images_flag(ss_run, images, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(images, moved)
    art = tmp_path / "props.h5"
    shutil.copy(ss_run, art)
    with h5py.File(art, "a") as f:  # as if the images had been elsewhere when it was made
        p = json.loads(f.attrs["params"])
        p["source"]["root"] = str(tmp_path / "gone")
        f.attrs["params"] = json.dumps(p)
    rc, _, err = run(capsys, "show", art, "-o", tmp_path / "a.png")
    assert rc == 2 and "image not found" in err and "--images" in err
    rc, _, err = run(capsys, "show", art, "--images", moved, "--image", "chelsea.jpg", "-o", tmp_path / "a.png")
    assert rc == 0, err


def test_image_too_small_for_the_filter_keeps_orl_fallback(tmp_path, capsys):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    Image.fromarray(real_photo("chelsea", 64)).save(tiny / "cat.png")
    for flag, expect_first in (("--fallback", True), ("--no-fallback", False)):
        out = tmp_path / f"{flag}.h5"
        assert run(capsys, "propose", tiny, "-o", out, flag, "-q")[0] == 0
        with Artefact(out) as a:
            raw, kept = a.ragged("boxes", 0), a.ragged("boxes_filtered", 0)
            assert len(raw) > 1 and a.params["filter"]["fallback"] is expect_first
            np.testing.assert_array_equal(kept, raw[:1] if expect_first else np.zeros((0, 4), np.float32))
