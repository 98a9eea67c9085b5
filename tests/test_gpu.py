"""Every CUDA path of sslkit, marked ``gpu`` (skipped by the default suite): run them with
``pytest -m gpu tests/test_gpu.py`` on a GPU machine (benchmarks/gpu_check.sh does, then times).

``SSLKIT_TEST_DEVICE=cpu`` runs the same tests on CPU with tiny settings (``gpu_check.sh --smoke``),
so the file is known to work before a GPU is at hand; ``SSLKIT_GPU_DATA`` points at data already
built by ``benchmarks/gpu_check_data.py`` (else the module builds its own, tiny).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sslkit.engine import config as C
from sslkit.methods import METHODS
from tests.conftest import real_photo
from tests.conftest import run_cli as sslkit

DEVICE = os.environ.get("SSLKIT_TEST_DEVICE", "cuda")
SMOKE = DEVICE == "cpu"
ARCH = "resnet_tiny" if SMOKE else "resnet18"
SIZE = 32 if SMOKE else 64
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")]
PRECISIONS = ("bf16",) if SMOKE else ("bf16", "fp16")
HEADS = {"proj_hidden_dim": 64, "pred_hidden_dim": 64, "proj_dim": 32}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu_check_data

    root = os.environ.get("SSLKIT_GPU_DATA") or tmp_path_factory.mktemp("gpudata")
    return gpu_check_data.build(Path(root), device=DEVICE)


def _cfg(method: str, data, **over) -> dict:
    cls = METHODS[method]
    keys = C.method_keys(cls)
    layer = {"arch": ARCH, "image_size": SIZE, "batch_size": 8, "images": str(data["images"]), "device": DEVICE,
             "warmup_epochs": 0.0, **{k: v for k, v in HEADS.items() if k in keys}}
    if method.startswith("detcon"):
        layer["masks"] = str(data["masks"])
    if method == "orl":
        layer.update(views=str(data["orl"]), patch_size=32)
    if method == "univip":
        layer.update(views=str(data["univip"]), instance_size=32, naive_min_size=12)
    if method in ("mocov2", "densecl", "regioncl-m", "regioncl-d"):
        layer["queue_size"] = 64
    if method == "mcl":  # 8 images fill every level with one montage per coarser level
        layer.update(montage_fractions="1,1/4,1/4,1/4", fpn_dim=16)
    if method.startswith("regioncl"):  # a 2x2 feature grid at 64 px: one-cell boxes (docs/regioncl.md)
        layer.update(image_size=max(SIZE, 64), regioncl_cells_min=1, regioncl_cells_max=1)
    layer.update(over)
    return C.resolve(cls, [("gpu test", {k: v for k, v in layer.items() if k in keys})])


def _shapes(x):
    if isinstance(x, torch.Tensor):
        return (tuple(x.shape), x.dtype)
    if isinstance(x, dict):
        return {k: _shapes(v) for k, v in x.items()}
    if isinstance(x, (int, float)):  # e.g. MCL's batch seed
        return type(x)
    return [_shapes(v) for v in x]


def _steps(method: str, data, precision: str, data_path: str, steps: int = 3, **over) -> tuple[list, object]:
    """``steps`` training steps through the engine's feed and step function; (losses, first batch)."""
    from sslkit.engine.data import StepBatchSampler
    from sslkit.engine.feed import make_feed
    from sslkit.engine.loop import Amp, train_step
    from sslkit.engine.optim import build_optimizer
    from sslkit.io.images import ImageSource

    cls = METHODS[method]
    cfg = _cfg(method, data, precision=precision, data_path=data_path, **over)
    device = torch.device(DEVICE)
    feed = make_feed(cls, cfg, ImageSource.from_arg(cfg["images"]), device)
    sampler = StepBatchSampler(len(feed.dataset), cfg["batch_size"], 0, 1, 0)
    loader = torch.utils.data.DataLoader(feed.dataset, batch_sampler=sampler, collate_fn=feed.collate,
                                         num_workers=0, pin_memory=not SMOKE)
    torch.manual_seed(0)
    model = cls(cfg).to(device)
    if cfg["channels_last"]:
        model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, "sgd", 0.01, 1e-4)
    amp = Amp(precision, DEVICE)
    losses, first = [], None
    for epoch in range(steps):
        sampler.set_epoch(epoch)
        for batch, _ in feed.batches(loader):
            first = first if first is not None else batch
            out, _ = train_step(model, model, opt, amp, batch, 0.01, len(losses), steps)
            losses.append(float(out["loss"].detach()))
            if len(losses) == steps:
                return losses, first
    return losses, first


_REFERENCE: dict[str, object] = {}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_in_autocast_on_both_data_paths(data, method, precision):
    if method not in _REFERENCE:
        _REFERENCE[method] = _steps(method, data, "bf16", "pil", steps=1)[1]
    ref = _REFERENCE[method]
    for path in ("gpu",) if SMOKE or precision != "bf16" else ("gpu", "cpu"):
        losses, batch = _steps(method, data, precision, path)
        assert len(losses) == 3 and all(math.isfinite(x) for x in losses), (path, losses)
        assert _shapes(batch) == _shapes(ref), path  # the reference path's batch layout
        tensors = batch.values() if isinstance(batch, dict) else batch
        assert all(t.device.type == DEVICE for t in tensors if isinstance(t, torch.Tensor))


def test_channels_last_and_compile(data, monkeypatch):
    if SMOKE:  # inductor's CPU code generation takes minutes; the smoke run checks the tracing only
        compile_ = torch.nn.Module.compile
        monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_(self, backend="eager"))
    losses, batch = _steps("byol", data, "bf16", "gpu", channels_last=True)
    assert batch[0].is_contiguous(memory_format=torch.channels_last) and all(map(math.isfinite, losses))
    from sslkit.engine.pretrain import _compile_encoders

    cls = METHODS["byol"]
    cfg = _cfg("byol", data, channels_last=True)
    torch.manual_seed(0)
    model = cls(cfg).to(DEVICE).to(memory_format=torch.channels_last)
    eager = model.backbone(batch[0].float()).detach()
    _compile_encoders(model)
    compiled = model.backbone(batch[0].float())
    torch.testing.assert_close(compiled.float(), eager.float(), rtol=2e-2, atol=2e-2)


def test_syncbn_conversion_trains(data, tmp_path):
    import torch.distributed as dist
    from torch import nn

    cls = METHODS["byol"]
    cfg = _cfg("byol", data)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(cls(cfg))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    if SMOKE:
        return  # SyncBatchNorm runs on CUDA only
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = model.to(DEVICE)
        x = torch.randn(8, 3, SIZE, SIZE, device=DEVICE)
        bn = next(m for m in model.modules() if isinstance(m, nn.SyncBatchNorm))
        before = bn.running_mean.clone()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model((x, x.flip(-1)))
        out["loss"].backward()
        assert math.isfinite(float(out["loss"])) and not torch.equal(before, bn.running_mean)
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    finally:
        dist.destroy_process_group()


def _torchrun(run_dir: Path, data, steps: int, *extra) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "sslkit",
            "pretrain", data["images"], "-m", "byol", "-o", run_dir, "--arch", ARCH, "--image-size", SIZE,
            "--batch-size", 4, "--epochs", 2, "--warmup-epochs", 0, "--workers", 1, "--log-every", 1,
            "--no-tensorboard", "-q", "--max-steps", steps, "--save-every", 1, "--data-path", "gpu",
            *[a for k, v in HEADS.items() for a in ("--set", f"{k}={v}")], *extra]
    if SMOKE:
        args += ["--gpus", 0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=300)


def test_torchrun_nccl_run_saves_and_resumes(data, tmp_path):
    run = tmp_path / "run"
    for steps in (2, 4):
        p = _torchrun(run, data, steps, "--precision", "bf16")
        assert p.returncode == 0, p.stderr[-2000:]
    logs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in logs)
    from sslkit.io.checkpoint import load_checkpoint

    ck = load_checkpoint(run / "last.pth")
    assert ck["step"] == 4 and ck["config"]["device"] == DEVICE and ck["config"]["precision"] == "bf16"


def test_detect_runs_a_few_iterations_at_r50_fpn(data, tmp_path):
    size = ["--arch", "resnet_tiny", "--fpn-channels", 16, "--min-size", 96, "--max-size", 128] if SMOKE else \
        ["--arch", "resnet50", "--min-size", 320, "--max-size", 512]
    out = tmp_path / "det"
    assert sslkit("detect", "random", "--train", data["images"], "--val", data["val"], "--out", out, "--iters", 4,
                  "--batch-size", 2, "--device", DEVICE, "--precision", "bf16", "--workers", 0, "--log-every", 1,
                  "--precise-bn-iters", 1, "--no-tensorboard", "--quiet", *size) == 0
    logs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if "loss" in x]
    assert logs and all(math.isfinite(r["loss"]) for r in logs)


def _jpeg(path, array, orientation=1, **kw):
    from PIL import Image

    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    Image.fromarray(array).save(path, quality=90, exif=exif.tobytes(), **kw)
    return path


def test_device_decoding_matches_the_cpu_decoder(tmp_path):
    from sslkit.io.encoded import read_encoded
    from sslkit.io.images import load_rgb
    from sslkit.views.plan import collate_plans
    from sslkit.views.plan.device import DECODE_COUNTS, decode_sources

    photo = real_photo("astronaut", 200)[:, :150]
    files = [_jpeg(tmp_path / f"o{o}.jpg", photo, o) for o in range(1, 9)]
    files += [_jpeg(tmp_path / "prog.jpg", photo, progressive=True), _jpeg(tmp_path / "gray.jpg", photo[..., 0]),
              _jpeg(tmp_path / "odd.jpg", photo[:101, :77], subsampling=0)]
    encoded = [read_encoded(f, f.name) for f in files]
    batch = collate_plans([([e], np.zeros((1, 19)), ()) for e in encoded])
    before = dict(DECODE_COUNTS)
    images, failed = decode_sources(batch, torch.device(DEVICE))
    assert not failed
    # the plain baseline JPEGs (every EXIF orientation) decode on the device, not by the CPU fallback
    assert DECODE_COUNTS["device"] - before["device"] >= 8, {k: DECODE_COUNTS[k] - before[k] for k in before}
    for f, img in zip(files, images, strict=True):
        want, _ = load_rgb(f)
        got = img.permute(1, 2, 0).cpu().numpy().astype(int)
        assert img.device.type == DEVICE and got.shape == want.shape, f.name
        assert np.abs(got - want).mean() < 2.0, f.name


def test_device_renderer_matches_cpu_tensors():
    from sslkit.transforms import byol_views
    from sslkit.transforms.params import ViewDrawer
    from sslkit.transforms.render_device import render_views

    image = torch.from_numpy(real_photo("coffee", 200).copy()).permute(2, 0, 1).contiguous()
    for aug in byol_views(SIZE):
        drawer = ViewDrawer(aug)
        torch.manual_seed(0)
        rows = np.stack([drawer.draw(*image.shape[1:]) for _ in range(16)])
        which = np.zeros(16, int)
        cpu = render_views([image], rows, which, aug)
        dev = render_views([image.to(DEVICE)], rows, which, aug)
        assert dev.device.type == DEVICE
        torch.testing.assert_close(dev.cpu(), cpu, rtol=0, atol=0.05)  # kernel rounding only (normalised units)


def test_prefetch_on_a_side_stream_equals_inline(data):
    from sslkit.engine.data import StepBatchSampler
    from sslkit.engine.feed import make_feed
    from sslkit.io.images import ImageSource

    got = {}
    for prefetch in (0, 2):
        cfg = _cfg("detcon-b", data, data_path="gpu", data_prefetch=prefetch)
        feed = make_feed(METHODS["detcon-b"], cfg, ImageSource.from_arg(cfg["images"]), torch.device(DEVICE))
        if not SMOKE:
            assert (feed.prefetch > 0) == (prefetch > 0)
        loader = torch.utils.data.DataLoader(feed.dataset, batch_sampler=StepBatchSampler(len(feed.dataset), 4, 0, 1, 0),
                                             collate_fn=feed.collate, num_workers=0)
        got[prefetch] = [b for b, _ in feed.batches(loader)]
    assert len(got[0]) == len(got[2]) > 0
    for a, b in zip(got[0], got[2], strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-5)  # same kernels, another stream
