"""Linear SVMs on frozen features: the VOC07 protocol of Goyal et al. 2019, as ORL runs it.

Following ``benchmarks/svm_tools`` of OpenSelfSup (copied from
fair_self_supervision_benchmark):

* features are L2-normalised (``x / (‖x‖ + 1e-5)``);
* one binary ``LinearSVC`` per class (one-vs-rest: label 1 for the class, -1 otherwise) with
  ``class_weight={1: 2, -1: 1}``, squared hinge, L2 penalty, dual, ``tol=1e-4``,
  ``max_iter=2000``;
* for every class the cost is chosen from the list (ORL: 1, 10, 100) by the mean
  scikit-learn average precision of a 3-fold (stratified, unshuffled) cross-validation on the
  training split, then the SVM is refitted on the whole training split with that cost;
* test scores are the SVMs' decision values: multi-label tasks report VOC mAP
  (:func:`sslkit.eval.metrics.voc_ap`); single-label tasks take the arg-max over classes;
* multi-label "ignored" (-1, VOC difficult) training labels are negatives, as there.

**Low-shot** (:func:`low_shot_svm`, ORL Table 2; ``create_voc_low_shot_challenge_samples.py``,
``train_svm_low_shot.py``, ``test_svm_low_shot.py``, ``aggregate_low_shot_svm_stats.py``): for
each of ``samples`` independent draws and each k, every class gets its own training set of k
positives and (C − 1)·k negatives drawn from the training split; one SVM per class and cost is
fitted on it (no cross-validation) and tested on the whole test split.  The mAP of each cost is
averaged over the draws and — as the benchmark's aggregation does — the best cost's mean is
reported (a choice made on the test split; its std/min/max over draws come with it).

Differences, all recorded in the metrics: a class with fewer positives (or negatives) than
folds is cross-validated with as many folds as it has (at least 2), and with fewer than 2 it
is fitted with the first cost without cross-validation; a class with no positive training
sample gets no SVM and the lowest score everywhere.  (The original helper also appends
0.5^4 … 0.5^19 to the cost list; pass them with ``costs`` to reproduce that.)
"""

from __future__ import annotations

import warnings

import numpy as np

from sslkit.eval.metrics import voc_ap

NO_SVM_SCORE = -1e6


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-5)


def _svc(cost: float):
    from sklearn.svm import LinearSVC

    return LinearSVC(C=cost, class_weight={1: 2, -1: 1}, intercept_scaling=1.0, penalty="l2",
                     loss="squared_hinge", tol=1e-4, dual=True, max_iter=2000)


def _one_class(x: np.ndarray, y: np.ndarray, test_x: np.ndarray, costs: tuple[float, ...], folds: int):
    """(test scores, chosen cost or None, mean CV AP per cost, convergence warnings) of one class."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import cross_val_score

    n_pos = int((y == 1).sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return np.full(len(test_x), NO_SVM_SCORE if n_pos == 0 else -NO_SVM_SCORE), None, [None] * len(costs), 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        k = min(folds, n_pos, n_neg)
        cv_ap: list[float | None] = [None] * len(costs)
        if k >= 2:
            cv_ap = [float(np.mean(cross_val_score(_svc(c), x, y, cv=k, scoring="average_precision")))
                     for c in costs]
            best = int(np.nanargmax(cv_ap))
        else:
            best = 0
        clf = _svc(costs[best]).fit(x, y)
        scores = clf.decision_function(test_x)
    n_warn = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    return scores, costs[best], cv_ap, n_warn


def svm_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int,
               costs: tuple[float, ...] = (1.0, 10.0, 100.0), folds: int = 3, jobs: int = 1,
               progress=None, desc: str = "svm") -> tuple[np.ndarray, dict]:
    """(N_test, C) SVM decision values and a record of the chosen costs.

    ``train_y`` is (N,) class indices (one-vs-rest) or (N, C) 0/1 rows (one SVM per column).
    """
    from joblib import Parallel, delayed

    x = l2_normalise(train_x)
    tx = l2_normalise(test_x)
    Y = np.asarray(train_y)
    if Y.ndim == 1:
        Y = (Y[:, None] == np.arange(num_classes)[None, :])
    Y = np.where(Y > 0, 1, -1).astype(np.int32)
    task = progress.add_task(desc, total=num_classes) if progress else None
    results = []
    gen = Parallel(n_jobs=jobs, return_as="generator")(
        delayed(_one_class)(x, Y[:, c], tx, tuple(costs), folds) for c in range(num_classes))
    for r in gen:
        results.append(r)
        if progress:
            progress.advance(task)
    scores = np.stack([r[0] for r in results], axis=1) if results else np.zeros((len(tx), 0))
    info = {"costs": list(costs), "folds": folds, "chosen_cost": [r[1] for r in results],
            "cv_ap": [r[2] for r in results], "classes_without_svm": [c for c, r in enumerate(results) if r[1] is None],
            "convergence_warnings": int(sum(r[3] for r in results))}
    return scores, info


def low_shot_targets(Y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """One low-shot draw: per class, k rows with label 1 and (C − 1)·k rows with label 0 keep
    their label; every other row is -1 (not used for that class)."""
    n, num_classes = Y.shape
    out = np.full((n, num_classes), -1, np.int8)
    for c in range(num_classes):
        pos, neg = np.flatnonzero(Y[:, c] == 1), np.flatnonzero(Y[:, c] == 0)
        n_neg = (num_classes - 1) * k
        if len(pos) < k or len(neg) < n_neg:
            raise ValueError(f"class {c} has {len(pos)} positives and {len(neg)} negatives; "
                             f"{k}-shot needs {k} and {n_neg}")
        out[rng.choice(pos, k, replace=False), c] = 1
        out[rng.choice(neg, n_neg, replace=False), c] = 0
    return out


def _low_shot_class(x: np.ndarray, t: np.ndarray, test_x: np.ndarray, test_t: np.ndarray,
                    costs: tuple[float, ...]) -> list[float]:
    """Test AP (0–1) of one class's SVM for every cost, trained on the rows where ``t`` ≠ -1."""
    from sklearn.exceptions import ConvergenceWarning

    m = t != -1
    y = np.where(t[m] == 1, 1, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return [voc_ap(_svc(c).fit(x[m], y).decision_function(test_x), test_t) for c in costs]


def _as_targets(y: np.ndarray, num_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 1:
        return (y[:, None] == np.arange(num_classes)[None, :]).astype(np.int8)
    return y.astype(np.int8)


def low_shot_svm(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 num_classes: int, shots: tuple[int, ...], samples: int = 5,
                 costs: tuple[float, ...] = (1.0, 10.0, 100.0), seed: int = 0, jobs: int = 1,
                 progress=None, desc: str = "low-shot svm") -> dict:
    """The low-shot SVM benchmark; labels are (N,) class indices or (N, C) rows of 1/0/-1.

    Returns ``{"shots": {k: {"mAP", "std", "min", "max", "cost", "mAP_per_cost"}}, ...}`` in percent.
    """
    from joblib import Parallel, delayed

    x, tx = l2_normalise(train_x), l2_normalise(test_x)
    Y, TY = _as_targets(train_y, num_classes), _as_targets(test_y, num_classes)
    draws = {(s, k): low_shot_targets(Y, k, np.random.default_rng((seed, s, k))) for s in range(samples) for k in shots}
    jobs_list = [(s, k, c) for (s, k) in draws for c in range(num_classes)]
    task = progress.add_task(desc, total=len(jobs_list)) if progress else None
    ap = np.zeros((samples, len(shots), num_classes, len(costs)))
    gen = Parallel(n_jobs=jobs, return_as="generator")(
        delayed(_low_shot_class)(x, draws[s, k][:, c], tx, TY[:, c], tuple(costs)) for s, k, c in jobs_list)
    for (s, k, c), aps in zip(jobs_list, gen, strict=True):
        ap[s, shots.index(k), c] = aps
        if progress:
            progress.advance(task)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # classes without test positives are NaN
        per_draw = np.nanmean(ap, axis=2) * 100.0  # (samples, shots, costs): mAP over classes
    out = {}
    for i, k in enumerate(shots):
        mean = per_draw[:, i].mean(0)
        b = int(np.argmax(mean))
        out[str(k)] = {"mAP": float(mean[b]), "std": float(per_draw[:, i, b].std()),
                       "min": float(per_draw[:, i, b].min()), "max": float(per_draw[:, i, b].max()),
                       "cost": costs[b], "mAP_per_cost": [round(float(v), 4) for v in mean]}
    return {"shots": out, "samples": samples, "costs": list(costs),
            "cost_selection": "best mean test mAP over draws (the benchmark's aggregation)"}
