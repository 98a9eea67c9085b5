"""A linear classifier on frozen features: ORL/OpenSelfSup's linear head and schedule.

Head (OpenSelfSup ``MultiClsHead``, one per probed stage): BatchNorm without affine parameters
on the pooled feature — per channel, over batch and pooled positions — then ``Linear`` on the
flattened feature, weights ~ N(0, 0.01²), bias 0.

``sgd`` (the ORL non-VOC protocol): SGD, batch 256, momentum 0.9 (Nesterov), weight decay
1e-4, lr 0.01 decayed ×0.1 at three equally spaced points — epochs × 2/7, 4/7, 6/7, which
gives ORL's ImageNet [8, 16, 24] of 28, Places [4, 8, 12] of 14 and iNat [24, 48, 72] of 84.
Cross-entropy for single-label tasks, binary cross-entropy per class for multi-label.

``lbfgs`` (for small data, where a few hundred SGD steps do not converge): the BN statistics
are set to the training set's mean and variance (what BN's running averages converge to),
and the linear layer is fitted full-batch with L-BFGS on the same loss plus
``weight_decay / 2 · ‖W‖²``.

**Choosing the weight decay** (:func:`select_weight_decay`): with several candidate values the
probe picks one by k-fold cross-validation on the training features only, then refits on all
of them — the protocol of Kornblith et al. 2019 ("Do Better ImageNet Models Transfer Better?",
§3: ℓ2-regularised logistic regression with L-BFGS, the penalty chosen on a held-out part of the
training split) that SimCLR (Chen et al. 2020, appendix B.8) and BYOL use for transfer.  Folds are
made of whole *groups* (every crop of one image, or every object sharing an annotation field
such as the photo it came from), so no group is both fitted and scored — otherwise the
cross-validation rewards memorising instances that the evaluation split does not contain.
The criterion is the mean fold top-1 (single-label) or VOC mAP (multi-label); ties go to
the larger weight decay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sslkit.eval.metrics import mean_ap, topk_accuracy


@dataclass(frozen=True)
class LinearConfig:
    epochs: int = 28
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    solver: str = "sgd"
    lbfgs_iters: int = 300
    seed: int = 0

    @property
    def milestones(self) -> list[int]:
        return [round(self.epochs * 2 * k / 7) for k in (1, 2, 3)]


class LinearHead(nn.Module):
    """BN(affine=False) → Linear.  ``channels`` < ``dim``: the feature is a flattened (C, H, W)
    pooled map and BN normalises per channel over batch and positions, as OpenSelfSup's
    ``BatchNorm2d`` on the pooled map does; otherwise per dimension."""

    def __init__(self, dim: int, num_classes: int, channels: int | None = None):
        super().__init__()
        channels = channels or dim
        if dim % channels:
            raise ValueError(f"feature dim {dim} is not a multiple of {channels} channels")
        self.channels = channels
        self.bn = nn.BatchNorm1d(channels, affine=False)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels == x.shape[1]:
            return self.bn(x)
        return self.bn(x.view(len(x), self.channels, -1)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.normalise(x))


def _loss(multilabel: bool):
    return nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()


def _target(y: torch.Tensor, multilabel: bool) -> torch.Tensor:
    return (y > 0).float() if multilabel else y.long()  # multi-label: ignored (-1) entries are negatives


def train_linear(x: np.ndarray, y: np.ndarray, num_classes: int, multilabel: bool, cfg: LinearConfig,
                 device: torch.device, progress=None, desc: str = "linear", channels: int | None = None) -> LinearHead:
    """Fit a :class:`LinearHead` on features ``x`` (N, D) and labels ``y`` ((N,) or (N, C))."""
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        head = LinearHead(x.shape[1], num_classes, channels).to(device)
    X = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    Y = torch.from_numpy(np.ascontiguousarray(y))
    crit = _loss(multilabel)
    if cfg.solver == "lbfgs":
        return _fit_lbfgs(head, X, Y, multilabel, cfg, device, crit, progress, desc)
    opt = torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, cfg.milestones, gamma=0.1)
    task = progress.add_task(desc, total=cfg.epochs) if progress else None
    n = len(X)
    head.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, cfg.batch_size):
            idx = perm[s:s + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples; only a last batch of one is skipped
                continue
            xb = X[idx].to(device, non_blocking=True)
            yb = _target(Y[idx], multilabel).to(device, non_blocking=True)
            loss = crit(head(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if progress:
            progress.advance(task)
    return head.eval()


def _fit_lbfgs(head: LinearHead, X, Y, multilabel, cfg, device, crit, progress, desc) -> LinearHead:
    Xd = X.to(device)
    Yd = _target(Y, multilabel).to(device)
    with torch.no_grad():
        per_channel = Xd.view(len(Xd), head.channels, -1).transpose(0, 1).reshape(head.channels, -1)
        head.bn.running_mean.copy_(per_channel.mean(1))
        head.bn.running_var.copy_(per_channel.var(1, unbiased=True))
    head.eval()
    with torch.no_grad():
        Z = head.normalise(Xd)
    opt = torch.optim.LBFGS(head.fc.parameters(), lr=1.0, max_iter=cfg.lbfgs_iters, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)
    task = progress.add_task(desc + " (L-BFGS)", total=1) if progress else None

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = crit(head.fc(Z), Yd) + 0.5 * cfg.weight_decay * head.fc.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    if progress:
        progress.advance(task)
    return head


WD_GRID = tuple(float(f"{10 ** (e / 2):.3g}") for e in range(-12, 1))  # 1e-6, 3.16e-6, …, 1


def group_folds(groups: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Fold index (0 … folds−1) of every sample; all samples of a group share a fold.

    Groups are shuffled with ``seed`` and dealt, largest first, to the fold with the fewest
    samples (as scikit-learn's ``GroupKFold``, but seeded), so folds are about equal in size.
    Raises ``ValueError`` with fewer groups than folds."""
    _, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    if len(counts) < folds:
        raise ValueError(f"{len(counts)} groups cannot make {folds} cross-validation folds")
    order = np.random.default_rng(seed).permutation(len(counts))
    order = order[np.argsort(-counts[order], kind="stable")]
    fold_of_group = np.empty(len(counts), np.int64)
    sizes = np.zeros(folds, np.int64)
    for g in order:
        f = int(np.argmin(sizes))
        fold_of_group[g] = f
        sizes[f] += counts[g]
    return fold_of_group[inverse.ravel()]


def _fold_metric(scores: np.ndarray, y: np.ndarray, multilabel: bool) -> float:
    return mean_ap(scores, y)["mAP"] if multilabel else topk_accuracy(scores, y, ks=(1,))["top1"]


def select_weight_decay(x: np.ndarray, y: np.ndarray, groups: np.ndarray, num_classes: int, multilabel: bool,
                        cfg: LinearConfig, grid: tuple[float, ...], folds: int, device: torch.device,
                        channels: int | None = None, progress=None, desc: str = "wd") -> tuple[float, dict]:
    """The weight decay of ``grid`` with the best mean cross-validated metric, and the record of the search.

    ``groups`` (N,) labels the samples that must stay in one fold (see :func:`group_folds`)."""
    from dataclasses import replace

    fold = group_folds(groups, folds, cfg.seed)
    task = progress.add_task(desc + " (cross-validation)", total=len(grid) * folds) if progress else None
    table = []
    for wd in grid:
        vals = []
        for k in range(folds):
            fit, held = fold != k, fold == k
            head = train_linear(x[fit], y[fit], num_classes, multilabel, replace(cfg, weight_decay=wd), device,
                                channels=channels)
            vals.append(_fold_metric(predict(head, x[held], device), y[held], multilabel))
            if progress:
                progress.advance(task)
        valid = [v for v in vals if not np.isnan(v)]  # a multi-label fold may have no positives at all
        table.append(float(np.mean(valid)) if valid else float("nan"))
    best = max(range(len(grid)), key=lambda i: (-np.inf if np.isnan(table[i]) else table[i], grid[i]))
    return grid[best], {"grid": list(grid), "folds": folds, "fold_sizes": np.bincount(fold, minlength=folds).tolist(),
                        "cv_metric": "mAP" if multilabel else "top1", "cv_scores": [round(v, 4) for v in table],
                        "chosen": grid[best]}


@torch.no_grad()
def predict(head: LinearHead, x: np.ndarray, device: torch.device, chunk: int = 4096) -> np.ndarray:
    """Scores (logits) of ``head`` for features ``x``."""
    head.eval()
    out = []
    for s in range(0, len(x), chunk):
        xb = torch.from_numpy(np.ascontiguousarray(x[s:s + chunk], np.float32)).to(device)
        out.append(head(xb).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, head.fc.out_features), np.float32)
