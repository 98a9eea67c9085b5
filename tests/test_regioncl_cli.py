"""`sslkit pretrain -m simsiam|densecl|regioncl-m|regioncl-s|regioncl-d` through the CLI on 5 real photos at
64 px (R = 32: a 2x2 feature grid, so the boxes are 1 cell: `regioncl_cells_min/max=1`), resume
bit-identity, export, and the one-line errors for boxes that do not fit."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from sslkit.io.checkpoint import load_checkpoint
from tests.conftest import run_cli as sslkit
from tests.test_pretrain import _same_state, fails, log_lines, run

TINY = ["--arch", "resnet_tiny", "--image-size", "64", "--batch-size", "4", "--workers", "0", "--quiet",
        "--no-tensorboard", "--warmup-epochs", "0", "--set", "proj_hidden_dim=32"]
CELLS = ["--set", "regioncl_cells_min=1", "--set", "regioncl_cells_max=1"]
ARGS = {"simsiam": ["--set", "pred_hidden_dim=16", "--set", "proj_dim=32"],
        "densecl": ["--queue-size", "16"],
        "regioncl-m": ["--queue-size", "16", *CELLS],
        "regioncl-s": ["--set", "pred_hidden_dim=16", "--set", "proj_dim=32", *CELLS],
        "regioncl-d": ["--queue-size", "16", *CELLS]}


@pytest.mark.parametrize("method", list(ARGS))
def test_new_methods_train_from_the_cli_and_export(photo_dir, tmp_path, method):
    out = tmp_path / method
    run(photo_dir, "-m", method, "-o", out, "--epochs", 1, "--log-every", 1, *TINY, *ARGS[method], "--batch-size", 2)
    logs = log_lines(out)
    assert [r["step"] for r in logs] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in logs)
    ck = load_checkpoint(out / "last.pth")
    assert ck["method"] == method and ck["step"] == 2
    if method.startswith("regioncl"):
        assert all("loss_reg" in r for r in logs) and int(ck["model"]["swap_step"]) == 2
    if method in ("densecl", "regioncl-m", "regioncl-d"):
        assert int(ck["model"]["queue_ptr"]) == 4 and ck["default_encoder"] == "query"
        assert "momentum" in logs[-1]
    if method == "densecl":
        assert int(ck["model"]["queue2_ptr"]) == 4 and {"loss_global", "loss_dense"} <= set(logs[-1])
    weights = tmp_path / "backbone.pth"
    assert sslkit("export", out / "last.pth", "-o", weights, "-q") == 0
    sd = torch.load(weights, weights_only=True)
    assert torch.equal(sd["conv1.weight"], ck["model"]["backbone.conv1.weight"])


def test_simsiam_predictor_lr_is_not_decayed_in_a_run(photo_dir, tmp_path):
    out = tmp_path / "s"
    run(photo_dir, "-m", "simsiam", "-o", out, "--epochs", 2, "--lr", 0.05, *TINY, *ARGS["simsiam"], "--batch-size", 2)
    groups = load_checkpoint(out / "last.pth")["optimizer"]["param_groups"]
    peak = 0.05 * 2 / 256
    assert [g["fixed_lr"] for g in groups] == [None, peak]
    assert groups[1]["lr"] == peak and groups[0]["lr"] < peak  # the rest followed the cosine


@pytest.mark.parametrize("method", ["regioncl-m", "regioncl-s", "regioncl-d"])
def test_interrupted_and_resumed_regioncl_run_is_bit_identical(photo_dir, tmp_path, method):
    """Uninterrupted 3 epochs x 2 steps vs: stop at step 3 (mid-epoch), run on to 5 and be 'killed' (back
    to the step-3 checkpoint), resume to the end: same weights, queues, swap counter and optimizer state."""
    common = [photo_dir, "-m", method, *TINY, *ARGS[method], "--epochs", 3, "--batch-size", 2, "--save-every", 100]
    full, part = tmp_path / "full", tmp_path / "part"
    run(*common, "-o", full)
    run(*common, "-o", part, "--max-steps", 3)
    shutil.copy(part / "last.pth", tmp_path / "step3.pth")
    run(*common, "-o", part, "--max-steps", 5)
    shutil.copy(tmp_path / "step3.pth", part / "last.pth")
    run(*common, "-o", part)
    a, b = load_checkpoint(full / "last.pth"), load_checkpoint(part / "last.pth")
    assert a["step"] == 6 and int(a["model"]["swap_step"]) == 6
    _same_state(a, b)
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == [g["lr"] for g in b["optimizer"]["param_groups"]]


def test_boxes_that_do_not_fit_the_grid_are_one_line_errors(photo_dir, tmp_path, capsys):
    code, err = fails(capsys, photo_dir, "-m", "regioncl-m", "-o", tmp_path / "a", *TINY, "--queue-size", "16")
    assert code == 2 and "regioncl_cells_max 5 does not fit the 2x2 feature grid" in err
    assert "regioncl_cells_min=1" in err and "Traceback" not in err
    code, err = fails(capsys, photo_dir, "-m", "regioncl-s", "-o", tmp_path / "b", *TINY, *CELLS, "--image-size", "80")
    assert code == 2 and "not a multiple of the backbone's output stride 32" in err
    assert not (tmp_path / "a" / "last.pth").exists()


def test_odd_per_rank_batch_warns_and_masks(photo_dir, tmp_path, capsys):
    run(photo_dir, "-m", "regioncl-m", "-o", tmp_path / "odd", *TINY, *ARGS["regioncl-m"], "--batch-size", 5,
        "--queue-size", 20, "--max-steps", 1)
    assert "the per-rank batch 5 is odd" in capsys.readouterr().err


@pytest.mark.slow  # 20-30 s on 2 cores (two gloo ranks); the default suite has MoCo v2's 2-rank run
def test_two_rank_regioncl_d_run_on_cpu(photo_dir, tmp_path):
    """--procs 2: shuffle-BN of the key batch across ranks (both queues take the global batch), one
    box per rank and step."""
    out = tmp_path / "ddp"
    run(photo_dir, "-m", "regioncl-d", "-o", out, "--epochs", 1, "--procs", 2, "--log-every", 1, *TINY,
        *ARGS["regioncl-d"])
    ck = load_checkpoint(out / "last.pth")
    assert ck["config"]["world_size"] == 2 and ck["step"] == 1  # 5 photos, global batch 4
    assert int(ck["model"]["queue_ptr"]) == int(ck["model"]["queue2_ptr"]) == 4
    assert int(ck["model"]["swap_step"]) == 1
    assert all(math.isfinite(r["loss"]) for r in log_lines(out))
