"""The file ORL's stage 2 writes and stage 3 reads: an ``sslkit.views`` artefact with
``views_kind = "orl-pairs"`` (layout in docs/artefacts.md and docs/orl.md): its fields, how one
row is made (:func:`pairs_record`, the pair rule of spec orl.md §2.3 (v)), and its reader."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sslkit.errors import UserError
from sslkit.io.artefacts import Artefact, Record
from sslkit.ops.knn import PAIR_RATIO, pair_count, top_pairs

FORMAT = "sslkit.views"
VIEWS_KIND = "orl-pairs"


def ragged_fields(k: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The ragged fields of an orl-pairs file (docs/artefacts.md, "sslkit.views: orl-pairs")."""
    return {
        "boxes": ("float32", (4,)),  # filtered boxes, xyxy original pixels, proposal order
        "knn_ids": ("int64", (k,)),  # one row: neighbour rows of /images, nearest first
        "knn_image_ids": ("int64", (k,)),  # one row: their image ids
        "knn_sims": ("float32", (k,)),  # one row: cosine similarities
        "pairs": ("int32", (3,)),  # [neighbour slot k, query box, neighbour box], by slot, best first
        "pair_scores": ("float32", ()),  # cosine of each pair's RoI features
    }


def pairs_attrs(k: int, pair_ratio: float, image_feature: str, roi_feature: str) -> dict:
    """The kind-specific attributes of an orl-pairs file (its counts are added when it is complete)."""
    return {"views_kind": VIEWS_KIND, "knn": k, "pair_ratio": pair_ratio, "image_feature": image_feature,
            "roi_feature": roi_feature, "box_format": "xyxy", "pairs_columns": "neighbour_slot,query_box,neighbour_box"}


def pairs_record(q: int, rows, boxes: np.ndarray, ids: np.ndarray, sims: np.ndarray, roi, ratio: float):
    """Row ``q`` of the output: its boxes, neighbours and (when ``roi`` features are given) its pairs,
    grouped by neighbour slot in slot order, each slot's best pair first."""
    pairs, scores = [np.zeros((0, 3), np.int32)], [np.zeros(0, np.float32)]
    if roi is not None and len(boxes):
        n = pair_count(len(boxes), ratio)
        for slot, j in enumerate(ids.tolist()):
            if roi[j].shape[0] == 0:  # a neighbour without boxes gives no pairs
                continue
            qi, ni, sc = top_pairs(roi[q] @ roi[j].T, n)
            pairs.append(np.stack([np.full(len(qi), slot), qi.cpu().numpy(), ni.cpu().numpy()], 1).astype(np.int32))
            scores.append(sc.float().cpu().numpy())
    r = rows[q]
    return Record(r.image_id, r.file_name, r.height, r.width, {
        "boxes": boxes, "knn_ids": ids[None], "knn_image_ids": np.array([[rows[j].image_id for j in ids]], np.int64),
        "knn_sims": sims[None], "pairs": np.concatenate(pairs), "pair_scores": np.concatenate(scores)})


class OrlPairs:
    """An ``sslkit.views`` file of kind ``orl-pairs``, validated and held in memory (numpy).

    For stage 3 the tables are read once in the main process; DataLoader workers fork and
    share them. ``boxes(i)``, ``neighbours(i)``, ``pairs(i)`` index rows of ``/images``.
    """

    def __init__(self, path: str | os.PathLike, allow_shard: bool = False):
        self.path = Path(path)
        with Artefact(path, FORMAT) as a:
            kind = a.attrs.get("views_kind")
            if kind != VIEWS_KIND:
                raise UserError(f"is a views file of kind {kind!r}, expected {VIEWS_KIND!r}", path,
                                "make ORL pairs with: sslkit sample-views IMAGES --method orl --proposals P.h5 "
                                "--ckpt STAGE1.pth -o pairs.h5")
            self.params = a.params
            if self.params.get("shard") and not allow_shard:
                s = self.params["shard"]
                raise UserError(f"is shard {s['index']}/{s['count']} of a sample-views job", path,
                                "join the shards first: sslkit sample-views --method orl --merge part*.h5 -o pairs.h5")
            missing = [f for f in ragged_fields(1) if f not in a.ragged_names]
            if missing:
                raise UserError(f"damaged orl-pairs file (no field {missing[0]!r})", path)
            self.attrs = a.attrs
            self.file_name = list(a.file_name)
            self.image_id = a.image_id.copy()
            self.height = a.height.copy()
            self.width = a.width.copy()
            self.skipped = a.skipped
            self.box_offsets = a.offsets("boxes")
            self.box_data = a.ragged_data("boxes")
            self.knn_ids = a.ragged_data("knn_ids")
            self.knn_sims = a.ragged_data("knn_sims")
            self.pair_offsets = a.offsets("pairs")
            self.pair_data = a.ragged_data("pairs")
            self.pair_scores = a.ragged_data("pair_scores")
        n = len(self.file_name)
        if self.knn_ids.shape[0] != n or (n and self.knn_ids.shape[1] < 1):
            raise UserError("damaged orl-pairs file (knn_ids does not have one row per image)", path)
        self.k = int(self.knn_ids.shape[1]) if n else 0
        self.pair_ratio = float(self.params.get("pair_ratio", PAIR_RATIO))
        self.row = {name: i for i, name in enumerate(self.file_name)}

    def __len__(self) -> int:
        return len(self.file_name)

    def boxes(self, i: int) -> np.ndarray:
        return self.box_data[self.box_offsets[i]:self.box_offsets[i + 1]]

    def neighbours(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.knn_ids[i], self.knn_sims[i]

    def pairs(self, i: int, slot: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(P, 3) pair rows ``[slot, query box, neighbour box]`` and their scores; of one slot if given."""
        lo, hi = self.pair_offsets[i], self.pair_offsets[i + 1]
        p, s = self.pair_data[lo:hi], self.pair_scores[lo:hi]
        if slot is None:
            return p, s
        a, b = np.searchsorted(p[:, 0], [slot, slot + 1])  # rows are grouped by slot, in slot order
        return p[a:b], s[a:b]

    def stats(self) -> dict:
        nb = np.diff(self.box_offsets)
        npairs = np.diff(self.pair_offsets)
        return {"images": len(self), "k": self.k, "images_without_boxes": int((nb == 0).sum()),
                "images_without_pairs": int((npairs == 0).sum()), "pairs": int(npairs.sum())}
