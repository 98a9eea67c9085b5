"""Region conversions (sslkit.ops.regions) against brute force: painting boxes pixel by pixel, and segment
boxes from the label map resized with the readers' own rule."""

from __future__ import annotations

import numpy as np
import pytest

from sslkit.ops.regions import boxes_to_labels, paint_order, segment_boxes
from sslkit.proposals.masks import resize_labels


def _paint_brute(boxes, h, w, order):
    """Per pixel: the ids of the boxes containing its centre; the one painted last wins."""
    out = np.zeros((h, w), np.int64)
    rank = {int(k): i for i, k in enumerate(paint_order(boxes, order))}
    for y in range(h):
        for x in range(w):
            hits = [k for k, (x1, y1, x2, y2) in enumerate(boxes) if x1 <= x + 0.5 < x2 and y1 <= y + 0.5 < y2]
            if hits:
                out[y, x] = max(hits, key=rank.get) + 1
    return out


def _random_boxes(rng, n, h, w):
    x = np.sort(rng.uniform(-5, w + 5, (n, 2)), 1)
    y = np.sort(rng.uniform(-5, h + 5, (n, 2)), 1)
    b = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], 1)
    b[: n // 2] = np.round(b[: n // 2])  # integer boxes too, where the centre rule matters most
    return b.astype(np.float32)


@pytest.mark.parametrize("order", ["large-first", "small-first", "rank"])
def test_boxes_to_labels_is_the_per_pixel_rule(order):
    rng = np.random.default_rng(0)
    for trial in range(6):
        h, w = rng.integers(5, 23, 2)
        boxes = _random_boxes(rng, int(rng.integers(0, 9)), h, w)
        got = boxes_to_labels(boxes, h, w, order)
        assert got.dtype == np.uint16 and got.shape == (h, w)
        np.testing.assert_array_equal(got, _paint_brute(boxes, h, w, order), err_msg=f"trial {trial}")


def test_paint_orders():
    boxes = np.array([[0, 0, 10, 10], [2, 2, 4, 4], [0, 0, 6, 6], [5, 5, 9, 9]], np.float32)  # areas 100 4 36 16
    assert paint_order(boxes, "large-first").tolist() == [0, 2, 3, 1]
    assert paint_order(boxes, "small-first").tolist() == [1, 3, 2, 0]
    assert paint_order(boxes, "rank").tolist() == [3, 2, 1, 0]
    lab = boxes_to_labels(boxes, 12, 12, "large-first")
    assert lab[3, 3] == 2 and lab[1, 1] == 3 and lab[8, 8] == 4 and lab[11, 11] == 0  # nested boxes stay visible
    assert boxes_to_labels(boxes, 12, 12, "rank")[3, 3] == 1  # the first box of the list on top
    with pytest.raises(ValueError):
        paint_order(boxes, "biggest")


def _segment_boxes_brute(labels, hw, background=None):
    full = resize_labels(labels, hw)
    ids, boxes, sizes = [], [], []
    for v in np.unique(full):
        if v == background:
            continue
        ys, xs = np.nonzero(full == v)
        ids.append(v)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        sizes.append(len(ys))
    return np.array(ids, np.int64), np.array(boxes, np.float32).reshape(-1, 4), np.array(sizes, np.int64)


@pytest.mark.parametrize("map_hw,image_hw", [((7, 9), (7, 9)), ((7, 9), (23, 40)), ((5, 5), (97, 64)),
                                             ((12, 10), (7, 6)), ((9, 13), (9, 31))])
def test_segment_boxes_are_those_of_the_resized_map(map_hw, image_hw):
    rng = np.random.default_rng(1)
    for trial in range(5):
        labels = rng.integers(0, 6, map_hw).astype(np.uint16)
        labels[labels == 4] = 300  # ids above 255 survive
        for bg in (None, 0):
            got = segment_boxes(labels, image_hw, background=bg)
            want = _segment_boxes_brute(labels, image_hw, background=bg)
            for g, w_ in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w_, err_msg=f"trial {trial}")


def test_round_trip_of_disjoint_integer_boxes():
    boxes = np.array([[0, 0, 5, 4], [5, 0, 12, 4], [0, 4, 12, 9]], np.float32)
    lab = boxes_to_labels(boxes, 9, 12)
    ids, back, sizes = segment_boxes(lab)
    assert ids.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(back, boxes)
    assert sizes.tolist() == [20, 28, 60]
    ids, back, _ = segment_boxes(np.zeros((4, 4), np.uint16), background=0)
    assert len(ids) == 0 and back.shape == (0, 4)
