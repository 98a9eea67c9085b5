"""The planned data paths' files: EXIF orientation on both decoders, reduced-size decoding, non-JPEG and
unusual JPEGs through load_rgb, unreadable files skipped as on the reference path, and a file the
device cannot decode replaced by another sample of the batch."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from sslkit.io.encoded import decode_bgr, read_encoded, reduction_for
from sslkit.io.images import ImageSource, load_rgb
from sslkit.transforms import IMAGENET_STD, MultiView, ViewAug, byol_views
from sslkit.transforms.params import ROW
from sslkit.transforms.render_cpu import normalize
from sslkit.views.dataset import ImageDataset
from sslkit.views.plan import MultiViewPlan, collate_plans
from sslkit.views.plan.device import DeviceViews, decode_sources
from tests.conftest import real_photo

PLAIN = ViewAug(size=48, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)


def _jpeg(path, array, orientation=1, quality=92, **kw):
    img = Image.fromarray(array)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    img.save(path, quality=quality, exif=exif.tobytes(), **kw)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_both_decoders_apply_exif_orientation_as_load_rgb(tmp_path, orientation):
    path = _jpeg(tmp_path / "o.jpg", real_photo("astronaut", 80)[:, :60], orientation)
    want, _ = load_rgb(path)
    enc = read_encoded(path, "o.jpg")
    assert enc.is_jpeg and (enc.height, enc.width) == want.shape[:2]
    cpu = decode_bgr(enc)[:, :, ::-1].astype(int)
    assert cpu.shape == want.shape and np.abs(cpu - want).mean() < 1.5
    batch = collate_plans([([enc], np.zeros((1, len(ROW))), ())])
    images, failed = decode_sources(batch, torch.device("cpu"))
    dev = images[0].permute(1, 2, 0).numpy().astype(int)
    assert not failed and dev.shape == want.shape and np.abs(dev - want).mean() < 1.5


def test_non_jpeg_and_unusual_jpegs_are_decoded_by_load_rgb(tmp_path):
    rgba = np.concatenate([real_photo("coffee", 64), np.full((*real_photo("coffee", 64).shape[:2], 1), 128,
                                                                np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    Image.fromarray(real_photo("chelsea", 64)).convert("P").save(tmp_path / "p.png")
    Image.fromarray(real_photo("rocket", 64)[..., 0].astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(real_photo("rocket", 64)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    for name in ("a.png", "p.png", "g16.png", "cmyk.jpg"):
        enc = read_encoded(tmp_path / name, name)
        assert not enc.is_jpeg
        np.testing.assert_array_equal(enc.data, load_rgb(tmp_path / name)[0])
    gray = _jpeg(tmp_path / "l.jpg", real_photo("rocket", 64)[..., 0])
    assert read_encoded(gray).is_jpeg and decode_bgr(read_encoded(gray)).shape[2] == 3


def test_reduced_decoding_only_where_every_view_stays_a_downscale(tmp_path):
    assert reduction_for([(400, 300, 64), (200, 160, 64)]) == 2
    assert reduction_for([(600, 500, 64)]) == 4 and reduction_for([(600, 500, 224)]) == 2
    assert reduction_for([(600, 500, 64), (100, 90, 64)]) == 1
    photo = real_photo("astronaut", 512)
    enc = read_encoded(_jpeg(tmp_path / "big.jpg", photo, quality=95), "big.jpg")
    half = decode_bgr(enc, 2)
    assert half.shape[:2] == (256, 256)
    import cv2

    want = cv2.resize(decode_bgr(enc, 1), (256, 256), interpolation=cv2.INTER_AREA)
    assert np.abs(half.astype(int) - want).mean() < 3


def _corrupt_folder(tmp_path, photo_dir):
    d = tmp_path / "imgs"
    d.mkdir()
    names = sorted(p.name for p in photo_dir.glob("*.jpg"))
    for n in names:
        (d / n).write_bytes((photo_dir / n).read_bytes())
    data = (photo_dir / names[0]).read_bytes()
    (d / "a_truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "b_not_an_image.jpg").write_text("hello")
    Image.fromarray(real_photo("coffee", 100)).save(d / "c_photo.png")
    return d


def test_unreadable_files_are_skipped_as_on_the_reference_path(tmp_path, photo_dir):
    folder = _corrupt_folder(tmp_path, photo_dir)
    src = ImageSource.from_folder(folder)
    views = tuple(replace(v, blur_p=0.0) for v in byol_views(48))  # PIL's blur is not the tensor pipelines'
    ref = ImageDataset(src, MultiView(views), 5)
    plans = {m: MultiViewPlan(src, views, 5, m) for m in ("cpu", "gpu")}
    scale = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
    for i in range(len(src)):
        (r1, r2), skipped = ref[(0, i)]
        (c, extra), cskip = plans["cpu"][(0, i)]
        (sources, rows, _), gskip = plans["gpu"][(0, i)]
        assert skipped == cskip == gskip
        assert sources[0].file_name == src[(i + len(skipped)) % len(src)].file_name
        for got, want, aug in zip(c, (r1, r2), views, strict=True):
            assert float(((normalize(got, aug) - want) * scale).abs().mean()) < 3  # same draws; PIL's kernels vs OpenCV's
    reasons = dict(x for i in range(len(src)) for x in plans["gpu"][(0, i)][1])
    assert reasons == {"a_truncated.jpg": "truncated image file",
                       "b_not_an_image.jpg": "not a readable image (unknown or corrupt format)"}


def test_a_file_the_device_cannot_decode_is_replaced_by_another_sample(tmp_path, photo_dir, monkeypatch):
    import sslkit.views.plan.device as D

    src = ImageSource.from_folder(photo_dir)
    plan = MultiViewPlan(src, (PLAIN, PLAIN), 0, "gpu")
    batch = plan.collate([plan[(0, i)][0] for i in range(4)])
    batch.paths[2] = str(tmp_path / "gone.jpg")  # the CPU fallback cannot read it either
    real = D._decode_jpegs
    monkeypatch.setattr(D, "_decode_jpegs", lambda datas, device: [
        RuntimeError("nvjpeg") if i == 2 else x for i, x in enumerate(real(datas, device))])
    (v1, v2), skipped = DeviceViews(plan, torch.device("cpu"))(batch)
    assert v1.shape == (4, 3, 48, 48) and [s[0] for s in skipped] == [batch.names[2]]
    assert "file not found" in skipped[0][1]
    torch.testing.assert_close(v1[2], v1[1])  # sample 2 took sample 1's pixels and rows
