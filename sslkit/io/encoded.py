"""Images as the planned data paths read them: the file's bytes and its header, decoded later.

:func:`read_encoded` reads a file once and parses only its header (format, mode, size, EXIF
orientation). Plain JPEGs (RGB or grayscale, ending in an end-of-image marker) stay as bytes, to be
decoded at a reduced size in the loader worker (:func:`decode_bgr`, ``data_path: cpu``) or on the
training device (``data_path: gpu``). Everything else, i.e. PNG/BMP/WebP, CMYK, 16-bit, alpha,
palette, MPO and truncated JPEGs, is decoded right away by :func:`sslkit.io.images.load_rgb`, so it
follows exactly the CPU path's decoding rules, and unreadable files raise :class:`ImageDecodeError`
as there. ``height``/``width`` are in the upright (EXIF-applied) frame, like every box and crop.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from sslkit.io.images import ImageDecodeError, _oriented_size, _reason, load_rgb

#: libjpeg's DCT scaling factors (decode at 1/d of the size for a fraction of the work)
REDUCTIONS = (1, 2, 4, 8)
_EOI = b"\xff\xd9"


@dataclass
class EncodedImage:
    """One image file: JPEG bytes (``data`` 1-D uint8) or decoded RGB pixels (``data`` (H, W, 3) uint8)."""

    file_name: str
    path: str
    height: int  # upright frame
    width: int
    orientation: int  # EXIF orientation 1..8 of the JPEG bytes (1 for decoded pixels)
    data: np.ndarray

    @property
    def is_jpeg(self) -> bool:
        return self.data.ndim == 1


def _orientation(img: Image.Image) -> int:
    try:
        o = int(img.getexif().get(0x0112, 1))
    except Exception:  # malformed EXIF: treat as upright, as load_rgb does
        return 1
    return o if 1 <= o <= 8 else 1


def read_encoded(path: str | os.PathLike, file_name: str = "") -> EncodedImage:
    """Read ``path``: a plain JPEG stays bytes, anything else is decoded now by ``load_rgb``."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                fmt, mode = img.format, img.mode
                height, width = _oriented_size(img)
                orientation = _orientation(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(path, _reason(e)) from e
    if fmt == "JPEG" and mode in ("RGB", "L") and data.rstrip(b"\0\r\n ").endswith(_EOI) and height and width:
        return EncodedImage(file_name, str(path), height, width, orientation, np.frombuffer(data, np.uint8))
    pixels, _ = load_rgb(path)
    return EncodedImage(file_name, str(path), pixels.shape[0], pixels.shape[1], 1, pixels)


def reduction_for(crops: list[tuple[float, float, int]]) -> int:
    """The largest DCT reduction that keeps every view a downscale of what the full decode gives:
    ``crops`` are ``(crop width, crop height, output side)`` in full-image pixels."""
    best = 1
    for d in REDUCTIONS:
        if all(min(w, h) / d >= side for w, h, side in crops):
            best = d
    return best


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """An (H, W, …) array as PIL's ``exif_transpose`` turns it for EXIF ``orientation`` (a view)."""
    if orientation in (5, 6, 7, 8):
        array = array.swapaxes(0, 1)
    if orientation in (2, 3, 6, 7):
        array = array[:, ::-1]
    if orientation in (3, 4, 7, 8):
        array = array[::-1]
    return array


def decode_bgr(image: EncodedImage, reduction: int = 1) -> np.ndarray:
    """Upright BGR (H′, W′, 3) uint8 pixels, ``H′ = ⌈H / reduction⌉`` for JPEG bytes (libjpeg DCT
    scaling; ``reduction`` 1, 2, 4 or 8), the decoded pixels as they are otherwise (reduction 1)."""
    import cv2

    if not image.is_jpeg:
        return cv2.cvtColor(image.data, cv2.COLOR_RGB2BGR)
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[reduction]
    out = cv2.imdecode(image.data, flag | cv2.IMREAD_IGNORE_ORIENTATION)
    if out is None or out.ndim != 3:
        raise ImageDecodeError(image.path, "not a readable image (corrupt JPEG data)")
    out = orient(out, image.orientation)
    want = (-(-image.height // reduction), -(-image.width // reduction))
    if out.shape[:2] != want:
        raise ImageDecodeError(image.path, f"decoded size {out.shape[1]}x{out.shape[0]} differs from its header")
    return np.ascontiguousarray(out)
