"""Crash safety and bad input (issue 22): full disks, read-only places, stale temporaries of killed
writers, damaged checkpoints, outputs checked before the work, and logs that survive a resume."""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from sslkit.errors import DiskFullError, UserError
from sslkit.io import atomic
from sslkit.io.checkpoint import save_checkpoint
from tests.conftest import run_cli as sslkit


def _errline(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def _raise_on_write(errnum):
    def write(self, data):
        raise OSError(errnum, os.strerror(errnum))
    return write


def test_full_disk_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic.write_text_atomic(target, "old")
    monkeypatch.setattr(type(target), "write_bytes", _raise_on_write(errno.ENOSPC))
    with pytest.raises(DiskFullError, match="no space left on the device") as e:
        atomic.write_text_atomic(target, "new")
    assert e.value.exit_code == 1 and str(target) in e.value.line()
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_read_only_place_is_one_line_naming_the_users_path(tmp_path, monkeypatch):
    target = tmp_path / "w.pth"
    monkeypatch.setattr(atomic.tempfile, "mkstemp", lambda **k: (_ for _ in ()).throw(
        OSError(errno.EROFS, "Read-only file system")))
    with pytest.raises(UserError, match="read-only file system") as e:
        atomic.check_writable(target)
    assert e.value.exit_code == 2 and e.value.path == str(target) and ".tmp" not in e.value.line()


def test_checkpoint_that_cannot_fit_fails_before_writing(tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(DiskFullError, match="needed"):
        save_checkpoint(tmp_path / "last.pth", {"model": {"w": torch.zeros(10_000)}})
    assert not list(tmp_path.iterdir())


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    target = tmp_path / "p.h5"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".p.h5.{atomic._HOST}-{dead}.abc123.tmp"
    live = tmp_path / f".p.h5.{atomic._HOST}-{os.getppid()}.def456.tmp"
    other = tmp_path / f".q.h5.{atomic._HOST}-{dead}.ghi789.tmp"
    for p in (stale, live, other):
        p.write_bytes(b"x" * 100)
    atomic.write_text_atomic(target, "new")
    assert not stale.exists() and live.exists() and other.exists() and target.read_text() == "new"


def test_outputs_are_checked_before_the_work(photo_dir, tmp_path, capsys, monkeypatch):
    """linprobe, semisup and detect refuse an output they could not write before computing anything."""
    import sslkit.eval.detect.run as detect_run
    import sslkit.eval.linprobe as linprobe
    import sslkit.eval.semisup.run as semisup_run

    def never(*a, **k):
        raise AssertionError("the work started before the output was checked")

    for mod, name in ((linprobe, "run_linprobe"), (semisup_run, "run_semisup"), (detect_run, "run_detect")):
        monkeypatch.setattr(mod, name, never)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    out = blocker / "m.json"  # its folder is a file: nothing can be written there
    common = ["random", "--arch", "resnet_tiny", "--train", photo_dir, "--val", photo_dir]
    for args in (["linprobe", *common, "-o", out], ["semisup", *common, "--fraction", 0.5, "-o", out],
                 ["detect", *common, "--out", tmp_path / "d", "-o", out]):
        assert sslkit(*args) == 2, args
        line = _errline(capsys)
        assert "cannot write" in line and str(out) in line, line


def test_malformed_detectron2_pkl_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pkl"
    with open(bad, "wb") as f:
        pickle.dump({"model": {"stem.conv1.weight": "not an array"}}, f)
    assert sslkit("export", bad, "-o", tmp_path / "x.pth") == 2
    assert "not numeric arrays: stem.conv1.weight" in _errline(capsys)
    with open(bad, "wb") as f:
        pickle.dump({"model": ["a", "list"]}, f)
    assert sslkit("export", bad, "-o", tmp_path / "x.pth") == 2
    assert "not a dict" in _errline(capsys)


def test_pretrain_out_that_is_a_file_and_warmup_hint(photo_dir, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert sslkit("pretrain", photo_dir, "-m", "byol", "-o", f) == 2
    assert "is a file" in _errline(capsys)
    assert sslkit("pretrain", photo_dir, "-m", "byol", "-o", tmp_path / "r", "--epochs", 1) == 2
    assert "--warmup-epochs" in _errline(capsys)


TINY = ["-m", "byol", "--arch", "resnet_tiny", "--image-size", 32, "--batch-size", 2, "--epochs", 2,
        "--warmup-epochs", 0, "--workers", 0, "--set", "proj_hidden_dim=16", "--set", "pred_hidden_dim=16",
        "--set", "proj_dim=8", "--no-tensorboard", "-q", "--log-every", 3]


def _log(run) -> list[dict]:
    keep = ("step", "epoch", "loss", "lr", "momentum")
    return [{k: r[k] for k in keep} for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())]


def test_log_after_a_resume_equals_the_uninterrupted_log(photo_dir, tmp_path):
    """The loss sums since the last record travel in the checkpoint: stopping at a step that is not a
    multiple of --log-every and resuming writes the same records as one run."""
    assert sslkit("pretrain", photo_dir, *TINY, "-o", tmp_path / "full") == 0
    assert sslkit("pretrain", photo_dir, *TINY, "-o", tmp_path / "cut", "--max-steps", 2) == 0
    assert sslkit("pretrain", photo_dir, *TINY, "-o", tmp_path / "cut") == 0
    full, cut = _log(tmp_path / "full"), _log(tmp_path / "cut")
    assert len(full) == len(cut) >= 2 and full == cut


def test_damaged_last_checkpoint_names_the_newest_good_epoch(photo_dir, tmp_path, capsys):
    run = tmp_path / "r"
    assert sslkit("pretrain", photo_dir, *TINY, "-o", run, "--set", "keep_last=0") == 0
    last = run / "last.pth"
    last.unlink()
    last.write_bytes(b"PK\x03\x04 truncated")
    assert sslkit("pretrain", "-o", run) == 2
    line = _errline(capsys)
    assert "cannot be resumed" in line and "epoch_0002.pth" in line and len(line) > 200  # never cut short


def test_numeric_arrays_pass_the_pkl_check():
    from sslkit.models.convert import detectron2_to_torchvision

    sd = detectron2_to_torchvision({"stem.conv1.weight": np.zeros((4, 3, 7, 7), np.float32)})
    assert sd["conv1.weight"].shape == (4, 3, 7, 7)


def test_detcon_trains_on_a_folder_whose_masks_skipped_an_unreadable_image(photo_dir, tmp_path, capsys):
    import shutil

    imgs = tmp_path / "imgs"
    shutil.copytree(photo_dir, imgs)
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    assert sslkit("propose", imgs, "--algo", "felzenszwalb", "-o", tmp_path / "fh.h5", "-q", "-j", 1) == 0
    capsys.readouterr()
    assert sslkit("pretrain", imgs, "-m", "detcon-s", "--masks", tmp_path / "fh.h5", "-o", tmp_path / "r",
                  "--arch", "resnet_tiny", "--image-size", 64, "--batch-size", 2, "--epochs", 1, "--warmup-epochs", 0,
                  "--workers", 0, "--set", "proj_hidden_dim=16", "--set", "proj_dim=8", "--no-tensorboard", "-q") == 0
    err = capsys.readouterr().err
    assert err.count("skipped as unreadable") == 1 and "broken.jpg" in err


def test_a_second_writer_of_a_run_folder_is_refused_while_the_first_lives(photo_dir, tmp_path, capsys):
    import time

    run = tmp_path / "r"
    first = subprocess.Popen([sys.executable, "-m", "sslkit", "pretrain", str(photo_dir), *map(str, TINY), "-o",
                              str(run), "--epochs", "500"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not ((run / ".lock").exists() and (run / ".lock").read_text()) and time.time() < deadline:
            time.sleep(0.1)
        capsys.readouterr()
        assert sslkit("pretrain", photo_dir, *TINY, "-o", run, "--epochs", 500) == 2
        line = _errline(capsys)
        assert "being written by another process" in line and f"pid {first.pid}" in line
    finally:
        first.kill()
        first.wait()
    # the holder died (kill -9): its lock went with it
    assert sslkit("pretrain", photo_dir, *TINY, "-o", run, "--epochs", 500, "--max-steps", 1) == 0


def test_a_second_propose_on_the_same_output_is_refused_while_the_first_lives(photo_dir, tmp_path, capsys):
    import time

    out = tmp_path / "p.h5"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from sslkit.io.lock import exclusive\n"
                               f"with exclusive({str(out)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert sslkit("propose", photo_dir, "-o", out, "--algo", "grid", "-q") == 2
        assert f"pid {holder.pid}" in _errline(capsys)
        assert sslkit("sample-views", photo_dir, "-m", "univip", "--proposals", tmp_path / "none.h5", "-o", out) == 2
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert sslkit("propose", photo_dir, "-o", out, "--algo", "grid", "-q") == 0


def test_a_chunk_of_another_job_is_never_adopted(tmp_path):
    """Two jobs on one output (issue 22): the second's chunks carry its fingerprint, the first's are removed,
    whatever happened to stage.json."""
    from sslkit.io.artefacts import Record
    from sslkit.io.chunks import ChunkStage

    a = ChunkStage(tmp_path / "st", {"algo": "ss"}, name="t")
    a.save(0, [Record(1, "a.jpg", 4, 4, {"boxes": np.zeros((2, 4), np.float32)})], [])
    (tmp_path / "st" / "stage.json").unlink()  # what a racing second writer left behind
    b = ChunkStage(tmp_path / "st", {"algo": "felzenszwalb"}, name="t")
    assert b.done() == set() and not list((tmp_path / "st").glob(f"chunk-{a.key}-*"))
    assert ChunkStage(tmp_path / "st", {"algo": "felzenszwalb"}, name="t").pending(1) == [0]


def test_a_failed_hdf5_write_on_a_full_disk_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch):
    import shutil

    import h5py

    from sslkit.io.artefacts import ArtefactWriter, Record

    target = tmp_path / "p.h5"
    usage = shutil.disk_usage(tmp_path)

    def full(*a, **k):
        monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: usage._replace(free=0))
        raise OSError("Can't write data (file write failed)")  # h5py names no errno

    with pytest.raises(DiskFullError, match="no space left"):
        with ArtefactWriter(target, "sslkit.proposals", ragged={"boxes": ("float32", (4,))}) as w:
            w.add(Record(1, "a.jpg", 4, 4, {"boxes": np.zeros((2, 4), np.float32)}))
            monkeypatch.setattr(h5py.Dataset, "resize", full)
            w.flush()
    monkeypatch.undo()
    assert not target.exists() and not list(tmp_path.glob(".*.tmp"))


def test_a_folder_without_one_readable_image_is_exit_2_and_writes_nothing(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for k in range(3):
        (imgs / f"bad{k}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    assert sslkit("propose", imgs, "-o", tmp_path / "p.h5", "--algo", "grid", "-q") == 2
    assert "none of the 3 images could be read" in _errline(capsys)
    assert not (tmp_path / "p.h5").exists() and not (tmp_path / "p.h5.partial").exists()


def test_export_to_an_unwritable_place_names_the_users_path(photo_dir, tmp_path, capsys):
    run = tmp_path / "r"
    assert sslkit("pretrain", photo_dir, *TINY, "-o", run, "--max-steps", 1) == 0
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert sslkit("export", run / "last.pth", "-o", blocker / "x.pth") == 2
    line = _errline(capsys)
    assert "cannot write" in line and str(blocker / "x.pth") in line and ".tmp" not in line
