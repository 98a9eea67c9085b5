"""Killed at every commit point (issue 22): ``kill -9`` a long-running command when it has just committed a
chunk, when it is about to rename a finished file into place, and while it writes a checkpoint; then
rerun it. Promises checked (docs/design.md, "Crash safety"): no half-valid file under a final name, no
temporary left behind by the rerun, and the rerun's output identical to an uninterrupted run's.

The CLI runs in a subprocess with ``SSLKIT_TEST_KILL_AT=POINT:N`` (sslkit/_testing.py): the process
SIGKILLs itself the N-th time it reaches POINT.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from sslkit._testing import kill_at

SIGKILL_RC = -9


def cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sslkit", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*.tmp"))


def h5_content(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_same_h5(a: Path, b: Path) -> None:
    ca, cb = h5_content(a), h5_content(b)
    assert ca.keys() == cb.keys()
    for k in ca:
        assert np.array_equal(ca[k], cb[k]), k


def assert_same_weights(a: Path, b: Path) -> None:
    ma = torch.load(a, weights_only=True)["model"]
    mb = torch.load(b, weights_only=True)["model"]
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


@pytest.fixture(scope="module")
def images(photo_dir, tmp_path_factory):
    return photo_dir


@pytest.mark.parametrize("point", ["commit:propose:2", "rename:p.h5:1"])
def test_propose_killed_at_a_commit_point_resumes_to_the_same_file(images, tmp_path, point):
    ref = tmp_path / "ref" / "p.h5"
    assert cli("propose", images, "-o", ref, "--algo", "grid", "--chunk-size", 2, "-j", 1, "-q").returncode == 0
    out = tmp_path / "run" / "p.h5"
    args = ("propose", images, "-o", out, "--algo", "grid", "--chunk-size", 2, "-j", 1, "-q")
    assert cli(*args, env=kill_at(*point.rsplit(":", 1))).returncode == SIGKILL_RC
    assert not out.exists()  # nothing half-valid under the final name
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert_same_h5(ref, out)
    assert not temporaries(out.parent) and not out.with_name("p.h5.partial").exists()


def _pretrain_args(images, out):
    return ("pretrain", images, "-m", "byol", "--arch", "resnet_tiny", "--image-size", 32, "--batch-size", 2,
            "--epochs", 2, "--warmup-epochs", 0, "--workers", 0, "--set", "proj_hidden_dim=16", "--set",
            "pred_hidden_dim=16", "--set", "proj_dim=8", "--no-tensorboard", "-q", "--save-every", 1, "-o", out)


@pytest.mark.parametrize("point", ["rename:last.pth:1", "rename:last.pth:3", "rename:epoch_0001.pth:1"])
def test_pretrain_killed_while_writing_a_checkpoint_resumes_to_the_same_weights(images, tmp_path, point):
    ref = tmp_path / "ref"
    assert cli(*_pretrain_args(images, ref)).returncode == 0
    run = tmp_path / "run"
    assert cli(*_pretrain_args(images, run), env=kill_at(*point.rsplit(":", 1))).returncode == SIGKILL_RC
    assert temporaries(run)  # the killed writer's temporary is there …
    for p in run.glob("*.pth"):  # … and every checkpoint under a final name loads
        torch.load(p, weights_only=True)
    r = cli(*_pretrain_args(images, run))
    assert r.returncode == 0, r.stderr
    assert_same_weights(ref / "last.pth", run / "last.pth")
    assert not temporaries(run)  # … and the rerun swept it


def test_sample_views_killed_at_each_commit_point_resumes_to_the_same_pairs(images, tmp_path):
    props = tmp_path / "props.h5"
    assert cli("propose", images, "-o", props, "-q", "-j", 1, "--mode", "fast").returncode == 0
    stage1 = tmp_path / "s1"
    assert cli(*_pretrain_args(images, stage1)).returncode == 0
    common = ("sample-views", images, "-m", "orl", "--proposals", props, "--ckpt", stage1 / "last.pth", "--knn", 2,
              "--min-size", 8, "--image-size", 32, "--roi-size", 32, "--chunk-size", 2, "--workers", 0, "-q")
    ref = tmp_path / "ref.h5"
    assert cli(*common, "-o", ref).returncode == 0
    for point in ("commit:orl-embed:1", "commit:orl-pairs:1", "rename:pairs.h5:1"):
        out = tmp_path / point.replace(":", "_") / "pairs.h5"
        assert cli(*common, "-o", out, env=kill_at(*point.rsplit(":", 1))).returncode == SIGKILL_RC, point
        assert not out.exists()
        r = cli(*common, "-o", out)
        assert r.returncode == 0, r.stderr
        assert_same_h5(ref, out)
        assert not temporaries(out.parent), point


def test_detect_killed_while_writing_its_checkpoint_resumes_to_the_same_weights(tmp_path):
    """detect: a kill between writing last.pth's temporary and renaming it (the second checkpoint,
    save_every=1), then a rerun: the weights and AP of an uninterrupted run, and no temporary left."""
    scenes = tmp_path / "scenes"
    assert cli("demo-data", scenes, "--n", 10, "--min-side", 96, "--max-side", 128, "-q").returncode == 0
    args = ("detect", "random", "--arch", "resnet_tiny", "--train", scenes / "train.json", "--val",
            scenes / "val.json", "--iters", 3, "--min-size", 96, "--max-size", 128, "--batch-size", 2,
            "--fpn-channels", 16, "--workers", 0, "--precise-bn-iters", 1, "--save-every", 1, "--no-tensorboard", "-q")
    assert cli(*args, "--out", tmp_path / "ref").returncode == 0
    run = tmp_path / "run"
    assert cli(*args, "--out", run, env=kill_at("rename:last.pth", 2)).returncode == SIGKILL_RC
    assert temporaries(run)
    r = cli(*args, "--out", run)
    assert r.returncode == 0, r.stderr
    assert_same_weights(tmp_path / "ref" / "last.pth", run / "last.pth")
    assert not temporaries(run)
