"""Environment checks that would otherwise fail silently.

OpenCV ships as four mutually exclusive wheels that all install the same ``cv2``
package.  sslkit needs ``opencv-contrib-python-headless`` (selective search and
graph segmentation live in ``cv2.ximgproc``).  If ``opencv-python`` or
``opencv-python-headless`` gets installed beside it (some image packages pull
one in), whichever wheel was installed last owns ``cv2`` and
``cv2.ximgproc.segmentation`` may vanish without any error at install time.
"""

from __future__ import annotations

from importlib import metadata

from sslkit.errors import UserError

CONTRIB = "opencv-contrib-python-headless"
SHADOWING = ("opencv-python", "opencv-python-headless", "opencv-contrib-python")
FIX = (f"pip uninstall -y {' '.join(SHADOWING)} {CONTRIB} && pip install {CONTRIB}")


def installed_opencv_wheels() -> list[str]:
    out = []
    for name in (CONTRIB, *SHADOWING):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        out.append(name)
    return out


def opencv_conflict() -> str | None:
    """A one-line description of a shadowing OpenCV wheel, or None when the install is clean."""
    wheels = installed_opencv_wheels()
    others = [w for w in wheels if w != CONTRIB]
    if others:
        return f"{', '.join(others)} installed beside {CONTRIB} can shadow cv2.ximgproc"
    return None


def require_ximgproc():
    """Import cv2 and check ``cv2.ximgproc.segmentation``; raise a UserError with the fix otherwise."""
    try:
        import cv2
    except ImportError as e:
        raise UserError(f"OpenCV is not importable ({e})", None, f"run: {FIX}") from e
    seg = getattr(getattr(cv2, "ximgproc", None), "segmentation", None)
    if seg is None:
        why = opencv_conflict() or f"cv2 {cv2.__version__} has no ximgproc module"
        raise UserError(f"cv2.ximgproc.segmentation is missing: {why}", None, f"run: {FIX}")
    return cv2
