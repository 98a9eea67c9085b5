"""Image decoding, image sources and COCO input."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from sslkit.errors import UserError
from sslkit.io.images import ImageDecodeError, ImageSource, load_rgb, read_image_size
from tests.conftest import real_photo


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_rgb_jpeg_roundtrip(tmp_path):
    arr = real_photo("coffee", 96)
    p = _save(Image.fromarray(arr), tmp_path / "c.png")
    out, (h, w) = load_rgb(p)
    assert out.dtype == np.uint8 and out.shape == arr.shape and (h, w) == arr.shape[:2]
    assert np.array_equal(out, arr)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    g = Image.fromarray(real_photo("astronaut", 64)).convert("L")
    out, _ = load_rgb(_save(g, tmp_path / "g.png"))
    assert out.shape[2] == 3
    assert np.array_equal(out[..., 0], np.asarray(g)) and np.array_equal(out[..., 0], out[..., 2])


def test_cmyk_jpeg_decodes_to_rgb(tmp_path):
    rgb = Image.fromarray(real_photo("chelsea", 64))
    p = _save(rgb.convert("CMYK"), tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(p).mode == "CMYK"
    out, _ = load_rgb(p)
    assert out.shape == (rgb.height, rgb.width, 3)
    # close to the original colours (JPEG + CMYK round trip)
    assert np.abs(out.astype(int) - np.asarray(rgb).astype(int)).mean() < 12


def test_rgba_composited_over_black(tmp_path):
    a = np.zeros((8, 8, 4), np.uint8)
    a[..., 0] = 200
    a[:, :4, 3] = 255  # left half opaque, right half transparent
    out, _ = load_rgb(_save(Image.fromarray(a, "RGBA"), tmp_path / "a.png"))
    assert (out[:, :4, 0] == 200).all() and (out[:, 4:] == 0).all()


def test_16bit_png_keeps_ids_above_255_scaled(tmp_path):
    a = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    p = tmp_path / "s16.png"
    Image.fromarray(a).save(p)
    assert Image.open(p).mode.startswith("I")
    out, _ = load_rgb(p)
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    assert np.array_equal(out[..., 0], (a >> 8).astype(np.uint8))


def test_exif_orientation_applied(tmp_path):
    arr = real_photo("rocket", 64)  # landscape
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif, quality=95)
    out, (h, w) = load_rgb(p)
    assert out.shape[:2] == (arr.shape[1], arr.shape[0]) == (h, w)
    assert read_image_size(p) == (h, w)


def test_max_side_downscale_reports_original_size(tmp_path):
    arr = real_photo("astronaut", 128)
    p = _save(Image.fromarray(arr), tmp_path / "big.jpg", quality=90)
    out, (h, w) = load_rgb(p, max_side=50)
    assert max(out.shape[:2]) == 50 and (h, w) == arr.shape[:2]


@pytest.mark.parametrize("content,needle", [
    (b"", "not a readable image"),
    (b"this is not an image at all", "not a readable image"),
])
def test_garbage_files_raise_decode_error(tmp_path, content, needle):
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageDecodeError) as e:
        load_rgb(p)
    assert needle in e.value.reason and e.value.path == str(p)


def test_truncated_jpeg_raises_decode_error(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(real_photo("coffee", 128)).save(buf, "JPEG", quality=90)
    p = tmp_path / "trunc.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    with pytest.raises(ImageDecodeError) as e:
        load_rgb(p)
    assert "truncated" in e.value.reason


def test_folder_source_recursive_sorted_stable(photo_dir):
    src = ImageSource.from_arg(photo_dir)
    names = [r.file_name for r in src]
    assert names == sorted(names) and "sub/immunohistochemistry.jpg" in names
    assert [r.image_id for r in src] == list(range(len(src)))
    assert [r.file_name for r in ImageSource.from_arg(photo_dir)] == names
    (photo_dir / "notes.txt").write_text("x")  # ignored: not an image extension
    assert len(ImageSource.from_arg(photo_dir)) == len(src)


def test_folder_source_errors(tmp_path):
    with pytest.raises(UserError, match="no images found"):
        ImageSource.from_arg(tmp_path)
    with pytest.raises(UserError, match="no such file"):
        ImageSource.from_arg(tmp_path / "missing")
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(UserError, match="not a folder or a .json"):
        ImageSource.from_arg(tmp_path / "x.csv")


def _coco(photo_dir, **over):
    d = {"images": [{"id": 7, "file_name": "coffee.jpg", "height": 1, "width": 1},
                    {"id": 3, "file_name": "astronaut.jpg", "height": 1, "width": 1}],
         "annotations": [{"id": 1, "image_id": 7, "bbox": [1, 2, 3, 4], "category_id": 1}],
         "categories": [{"id": 1, "name": "thing"}]}
    d.update(over)
    return d


def test_coco_source_keeps_ids_and_finds_root(tmp_path, photo_dir):
    j = tmp_path / "ann.json"
    j.write_text(json.dumps(_coco(photo_dir)))
    with pytest.raises(UserError, match="--image-root"):
        ImageSource.from_arg(j)
    src = ImageSource.from_arg(j, image_root=photo_dir)
    assert [r.image_id for r in src] == [7, 3] and src.root == photo_dir
    assert src.by_id(3).file_name == "astronaut.jpg"
    # json placed beside the images needs no --image-root
    j2 = photo_dir / "ann.json"
    j2.write_text(json.dumps(_coco(photo_dir)))
    assert ImageSource.from_arg(j2).root == photo_dir
    j2.unlink()


@pytest.mark.parametrize("text,needle", [
    ("{not json", "not valid JSON"),
    ('{"foo": 1}', "no 'images' list"),
    ('{"images": [{"id": 1}]}', "lacks 'id' or 'file_name'"),
    ('{"images": [{"id": 1, "file_name": "a"}, {"id": 1, "file_name": "b"}]}', "duplicate image id 1"),
    ('{"images": [{"id": 1, "file_name": "a"}], "annotations": [{"image_id": 2, "bbox": [0,0,1,1]}]}',
     "unknown image id 2"),
    ('{"images": [{"id": 1, "file_name": "a"}], "annotations": [{"image_id": 1, "bbox": [0,0,1]}]}',
     "expected 4"),
])
def test_coco_validation_one_line(tmp_path, text, needle):
    j = tmp_path / "bad.json"
    j.write_text(text)
    with pytest.raises(UserError) as e:
        ImageSource.from_arg(j, image_root=tmp_path)
    assert needle in str(e.value) and str(j) in str(e.value) and "\n" not in str(e.value)


def test_coco_masks_polygon_and_rle():
    from pycocotools import mask as mask_utils

    from sslkit.io.coco import ann_to_mask, coco_boxes_xyxy

    poly = {"segmentation": [[2, 2, 8, 2, 8, 6, 2, 6]], "bbox": [2, 2, 6, 4]}
    m = ann_to_mask(poly, 10, 12)
    assert m.shape == (10, 12) and m[3:6, 3:8].all() and m[0].sum() == 0
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode()
    assert np.array_equal(ann_to_mask({"segmentation": rle, "bbox": [2, 2, 6, 4]}, 10, 12), m)
    # uncompressed RLE, column-major: the first 12 pixels (column 0 and two of column 1) are 0
    unc = {"segmentation": {"size": [10, 12], "counts": [12, 108]}, "bbox": [0, 0, 12, 10]}
    mu = ann_to_mask(unc, 10, 12)
    assert mu.sum() == 108 and mu[:, 0].sum() == 0 and mu[:2, 1].sum() == 0 and mu[2:, 1].all()
    assert coco_boxes_xyxy([poly]).tolist() == [[2, 2, 8, 6]]
