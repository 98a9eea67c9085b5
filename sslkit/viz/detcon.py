"""``sslkit show MASKS.h5 --views detcon-b``: the two augmented views DetCon contrasts for one image.

Both views are sampled exactly as in training (the method's own view pipelines and mask
sampling, seeded by ``--seed`` and the image row); every sampled segment gets the same colour in
both views, unsampled pixels are dimmed, and the lines show the backbone's final feature grid
(the cells masks are pooled over). The masks are read as training reads ``--masks`` (a boxes file:
painted into label maps), with the method's defaults or ``--set`` (:func:`sslkit.viz.regions.consumer`).
"""

from __future__ import annotations

import numpy as np

from sslkit.errors import UserError
from sslkit.methods import get_method
from sslkit.transforms import IMAGENET_MEAN, IMAGENET_STD
from sslkit.views.detcon import DetConViews
from sslkit.viz.base import Rendering, ShowOptions
from sslkit.viz.draw import color
from sslkit.viz.regions import consumer

#: views are drawn at least this large so that the feature grid stays visible
MIN_SIDE = 256


def _to_uint8(view) -> np.ndarray:
    v = view.float().numpy().transpose(1, 2, 0) * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)
    return (np.clip(v, 0, 1) * 255).round().astype(np.uint8)


def _draw_view(view, labels, sampled: list[int], palette: dict[int, tuple[int, int, int]], grid: int) -> np.ndarray:
    import cv2

    img = _to_uint8(view).astype(np.float32)
    lab = labels.numpy()  # (S, H, W)
    shown = np.full(lab.shape[1:], -1, np.int64)
    for seg in sampled:  # a pixel shows the first field in which it belongs to a sampled segment
        hit = (lab == seg).any(0) & (shown < 0)
        shown[hit] = seg
    out = img * 0.35
    for seg in sampled:
        m = shown == seg
        out[m] = img[m] * 0.3 + np.array(palette[seg], np.float32) * 0.7
    out = out.round().astype(np.uint8)
    scale = max(1, -(-MIN_SIDE // out.shape[0]))
    out = cv2.resize(out, (out.shape[1] * scale, out.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    step = out.shape[0] / grid
    for k in range(1, grid):
        p = int(round(k * step))
        out[p, :] = 255
        out[:, p] = 255
    return out


def render(art, row: int, image: np.ndarray, opts: ShowOptions) -> Rendering:
    import torch

    method = get_method(opts.views)
    store, _ = consumer(opts.views, art.path, opts.sets)
    if art.file_name[row] not in store.row:
        raise UserError(f"has no regions for {art.file_name[row]}", art.path)
    size = opts.size or 224
    views = DetConViews(method.view_augs(size), num_masks=method.DEFAULTS["num_masks"], keep_labels=True)
    labels = store.labels(art.file_name[row], image.shape[0], image.shape[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.seed * 1_000_003 + row)
        v1, v2, _, _, i1, i2, m1, m2 = views(image, labels)
    s1, s2 = sorted(set(i1.tolist())), sorted(set(i2.tolist()))
    palette = {seg: color(k) for k, seg in enumerate(sorted(set(s1) | set(s2)))}
    a = _draw_view(v1, m1, s1, palette, views.grid)
    b = _draw_view(v2, m2, s2, palette, views.grid)
    gap = np.full((a.shape[0], 6, 3), 0, np.uint8)
    shared = len(set(s1) & set(s2))
    return Rendering(np.concatenate([a, gap, b], axis=1),
                     f"{art.file_name[row]}: {len(s1)} | {len(s2)} segments sampled, {shared} in both views")
