"""Per-image proposal code: ORL's box filter (hand-computed cases + ORL's own loop), selective search
determinism and box mapping, FH / grid label maps."""

from __future__ import annotations

import numpy as np
import pytest

from sslkit.ops.boxes import box_iou, greedy_suppress, xywh_to_xyxy
from sslkit.proposals.filters import min_size_mask, orl_filter, ratio_mask
from sslkit.proposals.masks import felzenszwalb, grid_labels, resize_labels, scaled_min_size
from sslkit.proposals.selective_search import selective_search, to_original_pixels
from tests.conftest import real_photo


def test_box_iou_hand_computed():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 20], [3, 3, 3, 8]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 1.0, 0.0, 0.5, 0.0]])
    assert box_iou(a, np.zeros((0, 4))).shape == (1, 0)


def test_xywh_to_xyxy():
    np.testing.assert_array_equal(xywh_to_xyxy([[2, 3, 10, 20]]), [[2, 3, 12, 23]])


def test_min_size_both_sides():
    b = xywh_to_xyxy([[0, 0, 96, 96], [0, 0, 95.5, 200], [0, 0, 200, 95], [5, 5, 300, 100]])
    assert min_size_mask(b, 96).tolist() == [True, False, False, True]
    assert min_size_mask(b, 0).all() and min_size_mask(b, None).all()


def test_ratio_both_ways_and_degenerate():
    b = xywh_to_xyxy([[0, 0, 300, 100], [0, 0, 301, 100], [0, 0, 100, 301], [0, 0, 100, 300], [0, 0, 50, 0]])
    assert ratio_mask(b, 3).tolist() == [True, False, False, True, False]
    assert ratio_mask(b, None).all()


def test_greedy_suppression_in_given_order():
    a, b, c, d = [0, 0, 10, 10], [1, 0, 11, 10], [5, 0, 15, 10], [6, 0, 16, 10]
    # IoU(a,b)=9/11 -> b dropped; IoU(a,c)=1/3 -> c kept; IoU(c,d)=9/11 -> d dropped
    assert greedy_suppress(np.array([a, b, c, d]), 0.5).tolist() == [0, 2]
    # order, not score, decides: from d the kept set is d and b (IoU(d,b)=1/3), c and a dropped
    assert greedy_suppress(np.array([d, c, b, a]), 0.5).tolist() == [0, 2]
    # IoU exactly 0.5 is kept (ORL drops only "> 0.5")
    assert greedy_suppress(np.array([[0, 0, 10, 10], [0, 0, 10, 20]]), 0.5).tolist() == [0, 1]
    assert greedy_suppress(np.array([a, c, [20, 0, 30, 10]]), 0.5, limit=2).tolist() == [0, 1]
    assert greedy_suppress(np.array([a, b]), None).tolist() == [0, 1]


def _numpy_greedy(boxes, max_iou, limit=None):
    """The hand-written float64 loop sslkit used before torchvision's NMS: the reference it must equal."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    kept = []
    for i in range(len(b)):
        if kept:
            kb = b[kept]
            iw = np.minimum(kb[:, 2], b[i, 2]) - np.maximum(kb[:, 0], b[i, 0])
            ih = np.minimum(kb[:, 3], b[i, 3]) - np.maximum(kb[:, 1], b[i, 1])
            inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
            union = area[kept] + area[i] - inter
            with np.errstate(divide="ignore", invalid="ignore"):
                if np.where(union > 0, inter / union, 0.0).max() > max_iou:
                    continue
        kept.append(i)
        if limit and len(kept) >= limit:
            break
    return kept


def _numpy_iou(a, b):
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None] + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def test_torchvision_kernels_equal_the_float64_loop_on_real_proposals_and_ties():
    """box_iou / greedy_suppress are torchvision's kernels in float64: bit-identical to the hand-written
    float64 code they replace, on real selective-search boxes (fractional after mapping back to the
    original image) and on boxes exactly at the threshold, where float32 would decide otherwise."""
    import torch
    import torchvision

    for name in ("astronaut", "coffee", "chelsea"):
        img = real_photo(name, 96)
        boxes = to_original_pixels(selective_search(img), img.shape[:2], (331, 497))
        assert not np.all(boxes == np.round(boxes))  # fractional coordinates
        np.testing.assert_array_equal(box_iou(boxes, boxes[:50]), _numpy_iou(boxes, boxes[:50]))
        for thr in (0.3, 0.5, 0.7):
            for limit in (None, 100, 7):
                assert greedy_suppress(boxes, thr, limit).tolist() == _numpy_greedy(boxes, thr, limit), (name, thr)
    # IoU(a, c) = 1/3 exactly: kept at max_iou 1/3 in float64; float32 NMS rounds it above and drops c
    ties = np.array([[0, 0, 10, 10], [0, 0, 10, 20], [0, 0, 10, 30], [0, 0, 30, 10]], np.float32)
    for thr in (0.5, 1 / 3):
        assert greedy_suppress(ties, thr).tolist() == _numpy_greedy(ties, thr)
    assert greedy_suppress(ties, 1 / 3).tolist() == [0, 2, 3]
    assert torchvision.ops.nms(torch.tensor(ties), -torch.arange(4.0), 1 / 3).tolist() == [0]
    degenerate = np.array([[3, 3, 3, 8], [3, 3, 3, 8], [0, 0, 10, 10]], np.float32)  # empty unions: IoU 0
    np.testing.assert_array_equal(box_iou(degenerate, degenerate), _numpy_iou(degenerate, degenerate))
    assert greedy_suppress(degenerate, 0.0).tolist() == _numpy_greedy(degenerate, 0.0) == [0, 1, 2]


def test_orl_filter_hand_computed():
    boxes = xywh_to_xyxy([
        [0, 0, 50, 50],      # 0: too small
        [0, 0, 400, 100],    # 1: ratio 4
        [0, 0, 200, 200],    # 2: kept
        [10, 0, 200, 200],   # 3: IoU 190/210 with 2 -> dropped
        [150, 150, 150, 150],  # 4: IoU 2500/77500 with 2 -> kept
        [300, 0, 100, 100],  # 5: kept
    ])
    assert orl_filter(boxes).tolist() == [2, 4, 5]
    assert orl_filter(boxes, top_n=2).tolist() == [2, 4]
    assert orl_filter(boxes, min_size=None, max_ratio=None, max_iou=None, top_n=None).tolist() == list(range(6))


def test_orl_filter_fallback_and_empty():
    small = xywh_to_xyxy([[5, 5, 20, 30], [0, 0, 10, 10]])
    assert orl_filter(small).tolist() == [0]  # ORL: nothing survives -> boxes[0]
    assert orl_filter(small, fallback=False).tolist() == []  # UniVIP: may be empty
    assert orl_filter(np.zeros((0, 4))).tolist() == []  # no raw boxes: nothing to fall back on


def _orl_box_filter(boxes_xywh, min_size, max_ratio, top_n, max_iou):
    """ORL's own loop (openselfsup/datasets/correspondence.py: box_filter + get_max_iou), on xywh."""
    proposal = []
    for box in boxes_xywh:
        w, h = box[2], box[3]
        if w < min_size or h < min_size:
            continue
        if w / h > max_ratio or h / w > max_ratio:
            continue
        if proposal:
            p = np.array(proposal, np.float64)
            ix = np.maximum(np.minimum(p[:, 0] + p[:, 2], box[0] + w) - np.maximum(p[:, 0], box[0]), 0)
            iy = np.maximum(np.minimum(p[:, 1] + p[:, 3], box[1] + h) - np.maximum(p[:, 1], box[1]), 0)
            inter = ix * iy
            if (inter / (p[:, 2] * p[:, 3] + w * h - inter)).max() > max_iou:
                continue
        proposal.append(box)
    if not proposal:
        proposal.append(boxes_xywh[0])
    return np.array(proposal[:top_n])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_orl_filter_matches_orl_code(seed):
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 400, (2000, 2))
    wh = rng.integers(1, 400, (2000, 2))
    xywh = np.concatenate([xy, wh], 1)
    ref = _orl_box_filter(xywh, 96, 3, 100, 0.5)
    mine = xywh_to_xyxy(xywh)[orl_filter(xywh_to_xyxy(xywh))]
    np.testing.assert_array_equal(mine, xywh_to_xyxy(ref))
    assert 10 < len(ref) <= 100


def test_selective_search_is_deterministic_and_order_independent():
    a, b = real_photo("astronaut", 96), real_photo("coffee", 96)
    first = selective_search(a)
    selective_search(b)  # OpenCV's ranking draws from the C rand(); another image in between must not matter
    again = selective_search(a)
    np.testing.assert_array_equal(first, again)
    assert first.dtype == np.float32 and len(first) > 10
    h, w = a.shape[:2]
    assert (first[:, 0] >= 0).all() and (first[:, 2] <= w).all() and (first[:, 3] <= h).all()
    assert (first[:, 2] > first[:, 0]).all() and (first[:, 3] > first[:, 1]).all()
    assert not np.array_equal(selective_search(a, seed=7), first)  # the seed does reach OpenCV's ranking


def test_boxes_map_back_to_original_pixels():
    b = np.array([[0, 0, 10, 20], [5, 5, 40, 30]], np.float32)  # found on a 30x40 (h x w) image
    out = to_original_pixels(b, (30, 40), (90, 100))
    np.testing.assert_allclose(out, [[0, 0, 25, 60], [12.5, 15, 100, 90]])
    assert out.dtype == np.float32


def test_resize_labels_gives_the_grid_formula():
    H, W, n = 37, 53, 5
    got = resize_labels(grid_labels(n), (H, W))
    y, x = np.mgrid[0:H, 0:W]
    np.testing.assert_array_equal(got, (y * n // H) * n + (x * n // W))


def test_scaled_min_size_by_area():
    assert scaled_min_size(1000, (320, 240), (640, 480)) == 250
    assert scaled_min_size(1000, (640, 480), (640, 480)) == 1000
    assert scaled_min_size(5, (10, 10), (1000, 1000)) == 1


def test_felzenszwalb_keeps_ids_above_255():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    labels = felzenszwalb(noise, scale=1, min_size=1)
    assert labels.dtype == np.uint16 and labels.shape == (96, 96)
    assert labels.max() > 255
    assert len(np.unique(labels)) == int(labels.max()) + 1  # ids are 0..K-1


def test_felzenszwalb_scale_controls_segment_count():
    img = real_photo("chelsea", 128)
    fine, coarse = felzenszwalb(img, 100, 20), felzenszwalb(img, 1000, 20)
    assert fine.max() > coarse.max() >= 1
