"""The images and artefacts the GPU check (benchmarks/gpu_check.py, tests/test_gpu.py) trains on,
built offline from the photos bundled in scikit-image (nothing is downloaded).

``build(root, n, min_side, max_side, device)``: demo scenes (real-photo composites written as JPEGs,
with COCO boxes and masks) → DetCon grid masks → UniVIP candidates from the ground-truth boxes →
a tiny BYOL stage 1 → ORL stage-2 pairs from the ground-truth boxes (so no selective search, which
needs opencv-contrib). ``repeat(json, k)`` lists every image ``k`` times (same files, new ids): an
end-to-end benchmark then runs for many steps without reaching an epoch end, where the trainer
would write a checkpoint inside the timed window.
"""

from __future__ import annotations

import json
from pathlib import Path


def sslkit(*args) -> None:
    from sslkit.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        if e.code:
            raise RuntimeError(f"sslkit {' '.join(map(str, args[:3]))} … exited {e.code}") from None


def build(root: Path, n: int = 16, min_side: int = 96, max_side: int = 160, device: str = "cpu") -> dict[str, Path]:
    root = Path(root)
    demo = root / "demo"
    out = {"images": demo / "train.json", "val": demo / "val.json", "masks": root / "grid.h5",
           "univip": root / "cands.h5", "stage1": root / "s1" / "last.pth", "orl": root / "pairs.h5"}
    if all(p.exists() for p in out.values()):
        return out
    if not out["images"].exists():
        sslkit("demo-data", demo, "--n", n, "--min-side", min_side, "--max-side", max_side, "--quiet",
               "--sources", "pip", "--val-fraction", 0.25)
    images = out["images"]
    if not out["masks"].exists():
        sslkit("propose", images, "--algo", "grid", "-o", out["masks"], "-q", "--workers", 1)
    if not out["univip"].exists():
        sslkit("sample-views", images, "-m", "univip", "--source", "gt", "--coco", images, "-o", out["univip"], "-q")
    if not out["stage1"].exists():
        sslkit("pretrain", images, "-m", "byol", "-o", root / "s1", "--arch", "resnet_tiny", "--image-size", 32,
               "--batch-size", 4, "--epochs", 1, "--warmup-epochs", 0, "--workers", 0, "-q", "--no-tensorboard",
               "--set", "proj_hidden_dim=32", "--set", "pred_hidden_dim=32", "--set", "proj_dim=16")
    if not out["orl"].exists():
        sslkit("sample-views", images, "-m", "orl", "--source", "gt", "--coco", images, "--ckpt", out["stage1"],
               "-o", out["orl"], "--knn", 3, "--image-size", 64, "--roi-size", 64, "--min-size", 16, "--workers", 0,
               "--device", device, "-q")
    return out


def repeat(coco_json: Path, k: int, out: Path) -> Path:
    """A COCO json listing each image of ``coco_json`` ``k`` times (new ids, the same files)."""
    data = json.loads(Path(coco_json).read_text())
    images = [{**im, "id": r * 10_000_000 + im["id"]} for r in range(k) for im in data["images"]]
    Path(out).write_text(json.dumps({**data, "images": images, "annotations": []}))
    return Path(out)
