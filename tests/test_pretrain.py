"""`sslkit pretrain` and `sslkit plot` through the CLI, as a user runs them, on real photos."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import yaml

from sslkit.io.checkpoint import load_checkpoint
from tests.conftest import run_cli as sslkit

#: tiny but real: resnet_tiny at 32 px, small heads, one worker-less process
TINY = ["--arch", "resnet_tiny", "--image-size", "32", "--batch-size", "4", "--workers", "0", "--quiet",
        "--no-tensorboard", "--warmup-epochs", "0", "--set", "proj_hidden_dim=32"]
METHOD_ARGS = {"byol": ["--set", "pred_hidden_dim=32"], "mocov2": ["--queue-size", "16"], "simclr": []}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Eight JPEGs from skimage's bundled photos (astronaut, coffee, chelsea), downscaled, with crops."""
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("images")
    for name in ("astronaut", "coffee", "chelsea"):
        im = Image.fromarray(getattr(data, name)())
        im = im.resize((im.width // 4, im.height // 4))
        im.save(folder / f"{name}.jpg")
        w, h = im.size
        im.crop((0, 0, w * 2 // 3, h * 2 // 3)).save(folder / f"{name}_crop.jpg")
    im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "flip.jpg")
    im.rotate(90, expand=True).save(folder / "rot.jpg")
    return folder


def run(*args) -> None:
    assert sslkit("pretrain", *args) == 0


def fails(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = sslkit("pretrain", *args)
    assert code != 0
    return code, capsys.readouterr().err


def log_lines(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["byol", "mocov2", "simclr"])
def test_every_method_trains_two_steps_from_the_cli(images, tmp_path, method):
    out = tmp_path / method
    run(images, "--method", method, "--out", out, "--epochs", 1, "--log-every", 1, *TINY, *METHOD_ARGS[method])
    logs = log_lines(out)
    assert [r["step"] for r in logs] == [1, 2]  # 8 images / batch 4
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 and r["img_per_s"] > 0 for r in logs)
    ck = load_checkpoint(out / "last.pth")
    assert ck["method"] == method and ck["step"] == 2 and ck["epoch"] == 1
    assert ck["config"]["arch"] == "resnet_tiny" and ck["config"]["batch_size"] == 4
    assert ck["config"] == yaml.safe_load((out / "config.yaml").read_text())
    assert ck["default_encoder"] in ck["encoders"]
    for prefix in ck["encoders"].values():
        assert f"{prefix}conv1.weight" in ck["model"] and not any(k.startswith("fc.") for k in ck["model"])
    for key in ("optimizer", "scheduler", "rng", "data", "metrics", "scaler"):
        assert key in ck
    assert (ck["ema"] is None) == (method == "simclr")
    assert (out / "epoch_0001.pth").exists()


def test_tensorboard_unreadable_images_and_plot(images, tmp_path, capsys):
    imgs = tmp_path / "imgs"
    shutil.copytree(images, imgs)
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    out = tmp_path / "run"
    # 9 files, batch 3: every file is visited each epoch
    args = [imgs, "-m", "byol", "-o", out, "--epochs", 2, "--log-every", 1, *TINY, *METHOD_ARGS["byol"],
            "--batch-size", 3]
    args.remove("--no-tensorboard")
    run(*args)
    err = capsys.readouterr().err
    assert "skipping unreadable image broken.jpg" in err
    assert (out / "skipped_images.tsv").read_text().splitlines()[1].startswith("broken.jpg\t")
    assert list((out / "tb").glob("events.out.tfevents.*"))
    logs = log_lines(out)
    assert logs[-1]["step"] == 6 and "momentum" in logs[-1] and "lr" in logs[-1]
    assert logs[0]["momentum"] == pytest.approx(0.99) and logs[-1]["momentum"] > logs[0]["momentum"]

    png = tmp_path / "curves.png"
    assert sslkit("plot", out, "-o", png) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert sslkit("plot", tmp_path, "-o", tmp_path / "none.png") == 2
    assert not (tmp_path / "none.png").exists()


def _same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"])


@pytest.mark.parametrize("method", ["byol", "mocov2"])
def test_interrupted_and_resumed_run_ends_with_the_same_weights(images, tmp_path, method):
    """Uninterrupted 3 epochs × 4 steps vs: stop at step 5 (mid-epoch), continue to step 7 and be
    'killed' there (the newest checkpoint is the one from step 5, log.jsonl has run ahead),
    then resume to the end. Same weights, optimizer state and queue, and no duplicate log steps."""
    common = [images, "-m", method, *TINY, *METHOD_ARGS[method], "--epochs", 3, "--batch-size", 2,
              "--log-every", 1, "--save-every", 100]
    full, part = tmp_path / "full", tmp_path / "part"
    run(*common, "-o", full)
    run(*common, "-o", part, "--max-steps", 5)
    shutil.copy(part / "last.pth", tmp_path / "step5.pth")
    run(*common, "-o", part, "--max-steps", 7)
    assert load_checkpoint(part / "last.pth")["step"] == 7
    shutil.copy(tmp_path / "step5.pth", part / "last.pth")  # the kill: back to the last checkpoint
    run(*common, "-o", part, "--workers", 1)  # data order and views do not depend on the workers
    a, b = load_checkpoint(full / "last.pth"), load_checkpoint(part / "last.pth")
    assert a["step"] == 12
    _same_state(a, b)
    assert [r["step"] for r in log_lines(part)] == list(range(1, 13))
    assert sorted(p.name for p in part.glob("epoch_*.pth")) == ["epoch_0001.pth", "epoch_0002.pth", "epoch_0003.pth"]


def test_resume_is_automatic_and_guards_the_run_definition(images, tmp_path, capsys):
    out = tmp_path / "r"
    common = [images, "-m", "simclr", "-o", out, "--epochs", 2, *TINY]
    run(*common, "--max-steps", 1)
    code, err = fails(capsys, *common, "--lr", "0.5")
    assert code == 2 and "cannot change lr: 0.3 → 0.5 when resuming" in err
    run("--out", out, "--quiet")  # everything else comes from the checkpoint
    assert load_checkpoint(out / "last.pth")["step"] == 4
    run(*common, "--lr", "0.5", "--no-resume", "--max-steps", 1)  # starts over with the new lr
    ck = load_checkpoint(out / "last.pth")
    assert ck["step"] == 1 and ck["config"]["lr"] == 0.5
    assert [r["step"] for r in log_lines(out)] == [1]
    code, err = fails(capsys, images, "-m", "simclr", "-o", tmp_path / "new", "--resume", *TINY)
    assert code == 2 and "nothing to resume" in err


def test_config_file_then_set_then_flags(images, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: mocov2\nlr: 0.5\nepochs: 30\ntemperature: 0.3\nqueue_size: 4096\n")
    run(images, "--config", cfg, "--set", "epochs=20", "--set", "temperature=0.25", "--epochs", 10,
        "--gpus", 0, "--print-config")
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["method"] == "mocov2"
    assert (resolved["lr"], resolved["epochs"], resolved["temperature"]) == (0.5, 10, 0.25)
    assert resolved["queue_size"] == 4096 and resolved["ema_momentum"] == 0.999  # file, then MoCo default
    cfg.write_text("method: byol\nqueue_size: 4096\n")
    code, err = fails(capsys, images, "--config", cfg, "-o", tmp_path / "x")
    assert code == 2 and "byol has no setting 'queue_size'" in err


def test_bad_inputs_are_one_line_errors(images, tmp_path, capsys):
    code, err = fails(capsys, images, "-m", "byol", "-o", tmp_path / "a", *TINY, "--batch-size", "64")
    assert code == 2 and "fewer than one batch of 64" in err and "Traceback" not in err
    code, err = fails(capsys, images, "-m", "nope", "-o", tmp_path / "b")
    assert code == 2 and "unknown method 'nope'" in err
    code, err = fails(capsys, images, "-m", "byol", "-o", tmp_path / "c", "--procs", "3", *TINY)
    assert code == 2 and "does not split evenly over 3 ranks" in err
    code, err = fails(capsys, images, "-m", "byol", "-o", tmp_path / "d", "--precision", "fp16", "--gpus", "0")
    assert code == 2 and "fp16 autocast needs a GPU" in err
    code, err = fails(capsys, images, "-m", "byol", "-o", tmp_path / "e", "--procs", 1, "--nodes", 2, *TINY)
    assert code == 2 and "--nodes > 1 needs --rdzv-endpoint" in err
    code, err = fails(capsys, images, "-m", "byol", "-o", tmp_path / "f", *TINY, "--set", "view_aug=saturaton=0.8")
    assert code == 2 and "view_aug: unknown view field 'saturaton' (did you mean saturation?)" in err
    assert not (tmp_path / "f" / "last.pth").exists()


def test_view_aug_from_the_cli_is_resolved_and_saved(images, tmp_path, capsys):
    run(images, "-m", "byol", "--set", "view_aug=saturation=0.8 2.solarize_p=0 crop_scale=0.2:1", "--print-config")
    assert yaml.safe_load(capsys.readouterr().out)["view_aug"] == "saturation=0.8 2.solarize_p=0 crop_scale=0.2:1"


def test_two_rank_ddp_run_on_cpu(images, tmp_path, capfd):
    """`--procs 2`: two gloo ranks, each with half of the global batch of 4; MoCo's queue receives
    the keys of the whole global batch each step; only rank 0 writes."""
    out = tmp_path / "ddp"
    run(images, "-m", "mocov2", "-o", out, "--epochs", 1, "--procs", 2, "--log-every", 1,
        *[a for a in TINY if a != "--quiet"], *METHOD_ARGS["mocov2"])
    err = capfd.readouterr().err
    assert "batch 4 (2/rank × 2)" in err
    ck = load_checkpoint(out / "last.pth")
    assert ck["config"]["world_size"] == 2 and ck["step"] == 2
    assert ck["model"]["queue_ptr"].item() == 2 * 4  # 2 steps × global batch
    assert [r["step"] for r in log_lines(out)] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in log_lines(out))
