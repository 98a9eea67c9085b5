"""Detection transfer: Mask R-CNN R-FPN fine-tuned on a COCO json, evaluated with pycocotools.

Layers, detectron2-style:

* :mod:`~sslkit.eval.detect.data` — COCO json → images and torchvision targets, the resumable
  aspect-grouped batch stream;
* :mod:`~sslkit.eval.detect.model` — Mask R-CNN + FPN on an sslkit backbone (InfoMin/PyContrast
  R50-FPN settings where torchvision allows them);
* :mod:`~sslkit.eval.detect.schedule` — detectron2's 1× recipe scaled to any dataset and batch;
* :mod:`~sslkit.eval.detect.evaluate` — COCO results and COCOeval (bbox and segm);
* :mod:`~sslkit.eval.detect.train` — the run: training, Precise BN, checkpoints/resume,
  distributed evaluation, ``metrics.json`` (what ``sslkit detect`` calls);
* :mod:`~sslkit.eval.detect.d2` — the same protocol on detectron2, when it is installed.

See docs/detect.md.  This module stays import-light (no torch): the viewer reads the
predictions' metadata through it.
"""

from __future__ import annotations

from pathlib import Path

METRICS_FORMAT = "sslkit.detect_metrics"
METRICS_VERSION = 1
PREDICTIONS_FORMAT = "sslkit.detections"
PREDICTIONS_VERSION = 1
PREDICTIONS = "predictions.json"


def predictions_meta_path(path: str | Path) -> Path:
    """Where the metadata of a COCO results file lives: ``predictions.json`` → ``predictions.meta.json``."""
    path = Path(path)
    return path.with_name(path.stem + ".meta.json")
