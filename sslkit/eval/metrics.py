"""Classification metrics, in percent.

* :func:`topk_accuracy` — a sample is right at k when its label is among the k highest scores.
* :func:`voc_ap` — average precision as the VOC07 SVM benchmark computes it on ``test``
  (``svm_helper.get_precision_recall`` / ``calculate_ap`` of Goyal et al.'s
  fair_self_supervision_benchmark, used verbatim by OpenSelfSup and ORL): the area under the
  precision–recall curve after making precision monotone (the "all points" VOC2010+
  definition, not the 11-point VOC2007 one).  It differs from scikit-learn's
  ``average_precision_score`` (no monotone envelope), which the benchmark uses only to pick
  the SVM cost in cross-validation.
"""

from __future__ import annotations

import numpy as np


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> dict[str, float]:
    """``{"top1": …, "top5": …}`` in percent; a k ≥ number of classes is left out (it is 100)."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    out = {}
    order = np.argsort(-scores, axis=1, kind="stable")
    for k in ks:
        if k > 1 and k >= scores.shape[1]:
            continue
        hit = (order[:, :k] == labels[:, None]).any(axis=1)
        out[f"top{k}"] = float(hit.mean() * 100.0)
    return out


def voc_ap(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP (0–1) of one class: ``targets`` 1 = positive, 0 = negative, -1 = ignored (left out, as
    VOC's difficult-only images); ties are ranked in input order."""
    targets = np.asarray(targets)
    keep = targets >= 0
    scores = np.asarray(scores)[keep]
    t = (targets[keep] > 0).astype(np.float64)
    npos = t.sum()
    if npos == 0:
        return float("nan")
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    tp = np.cumsum(t[order])
    fp = np.cumsum(1.0 - t[order])
    prec = tp / (tp + fp)
    rec = tp / npos
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mpre[idx]))


def mean_ap(scores: np.ndarray, targets: np.ndarray) -> dict:
    """``{"mAP": percent, "ap": [per class, None without positives], "classes_evaluated": n}``."""
    aps = [voc_ap(scores[:, c], targets[:, c]) for c in range(targets.shape[1])]
    valid = [a for a in aps if not np.isnan(a)]
    return {"mAP": float(np.mean(valid) * 100.0) if valid else float("nan"),
            "ap": [None if np.isnan(a) else round(a * 100.0, 4) for a in aps],
            "classes_evaluated": len(valid)}
