"""The labelled subsets of ``sslkit semisup``: class-balanced fractions and subset lists.

``fraction f``: a class-balanced subset of ``round(f·N)`` samples (at least one per class), equal
shares per class as in SimCLR's 1 %/10 % lists ("~12.8 / ~128 images per class"), a class with
fewer samples than its share giving the rest to the others; which samples is a seeded function of
(seed, class name, sorted file names), so the same seed gives the same files whatever order the
data is listed in. ``subset_file``: one file name per line (a path relative to the split root, or
a bare file name such as SimCLR's ``n01440764_10026.JPEG``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslkit.errors import UserError

ONE_PERCENT_WD = 0.0
TEN_PERCENT_WD = 1e-4


def default_weight_decay(fraction: float) -> float:
    """ORL §4.2: weight decay 0 for the 1 % subset, 1e-4 for 10 % (applied to any fraction: ≤ 1 % → 0)."""
    return ONE_PERCENT_WD if fraction <= 0.01 + 1e-9 else TEN_PERCENT_WD


@dataclass(frozen=True)
class Sample:
    path: Path
    key: str  # file name (and box number for objects): what subsets and listings name
    file_name: str
    label: int
    box: tuple[float, float, float, float] | None = None


def split_samples(split) -> list[Sample]:
    """One :class:`Sample` per image (class folders) or per box (COCO objects) of a LabelledSplit."""
    out = []
    for it in split.items:
        for r, label in enumerate(it.labels.tolist()):
            box = None if it.boxes is None else tuple(float(v) for v in it.boxes[r])
            key = it.file_name if box is None else f"{it.file_name}#{r}"
            out.append(Sample(Path(it.path), key, it.file_name, int(label), box))
    return out


def class_balanced_subset(labels: np.ndarray, keys: list[str], class_names: list[str], fraction: float,
                          seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced ``fraction`` of the samples (≥ 1 per class present).

    The total ``max(C, round(fraction·N))`` is shared equally among the classes (classes with
    fewer samples than their share keep all of theirs and the rest is shared by the others);
    within a class the samples are ranked by a permutation seeded by ``(seed, crc32(class name))``
    of the samples sorted by key.
    """
    if not 0 < fraction <= 1:
        raise UserError(f"--fraction must be in (0, 1] (got {fraction})")
    labels = np.asarray(labels)
    present = sorted(set(labels.tolist()))
    members = {c: sorted(np.flatnonzero(labels == c).tolist(), key=lambda i: keys[i]) for c in present}
    total = max(len(present), round(fraction * len(labels)))
    quota, remaining = {}, total
    order = sorted(present, key=lambda c: (len(members[c]), class_names[c]))
    for k, c in enumerate(order):
        share = remaining // (len(order) - k)
        quota[c] = min(len(members[c]), max(1, share))
        remaining -= quota[c]
    chosen = []
    for c in present:
        rng = np.random.default_rng([seed, zlib.crc32(class_names[c].encode())])
        perm = rng.permutation(len(members[c]))
        chosen += [members[c][j] for j in perm[:quota[c]]]
    return np.array(sorted(chosen), dtype=np.int64)


def subset_from_file(samples: list[Sample], path: str | Path) -> np.ndarray:
    """Indices of the samples whose file is listed in ``path`` (relative path or bare file name per line)."""
    p = Path(path)
    if not p.is_file():
        raise UserError("no such subset file", p)
    names = [ln.strip() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise UserError("lists no file names", p, "one file name per line, e.g. n01440764_10026.JPEG")
    wanted = set(names)
    chosen, found = [], set()
    for i, s in enumerate(samples):
        base = s.file_name.rsplit("/", 1)[-1]
        hit = s.file_name if s.file_name in wanted else base if base in wanted else None
        if hit is not None:
            chosen.append(i)
            found.add(hit)
    missing = [n for n in names if n not in found]
    if missing:
        raise UserError(f"{len(missing)} of its {len(names)} names are not in the training split "
                        f"(e.g. {missing[0]})", p, "check that the list belongs to this --train data")
    return np.array(chosen, dtype=np.int64)
