"""RegionCL (regioncl.txt; spec regioncl.md): the swap geometry, the region losses' switches and
stop-gradient, the three variants on their bases, the offline stage and its picture. The losses and a
whole RegionCL-M step against transcriptions of the digest's pseudo-code: tests/test_references.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslkit.engine import config as C
from sslkit.errors import UserError
from sslkit.methods import METHODS
from sslkit.methods.mocov2 import MoCoV2
from sslkit.methods.regioncl import RegionCLM
from sslkit.methods.regioncl_ops import mask_pool_regions, region_info_nce, region_simsiam_loss
from sslkit.views.regioncl import (
    RegionCLSwapStage,
    SwapBox,
    partner_index,
    region_valid,
    sample_box,
    swap_generator,
    swap_regions,
)
from sslkit.views.stage import StageInputs
from tests.conftest import run_cli

TINY = {"arch": "resnet_tiny", "image_size": 64, "batch_size": 6, "proj_hidden_dim": 32, "pred_hidden_dim": 16,
        "proj_dim": 16, "queue_size": 48, "regioncl_cells_min": 1, "regioncl_cells_max": 1}


def cfg_of(method: str, **over) -> dict:
    cls = METHODS[method]
    keys = C.method_keys(cls)
    return C.resolve(cls, [("test", {k: v for k, v in {**TINY, **over}.items() if k in keys})])


def batch_of(b: int, size: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, size, size, generator=g)
    return x, (x + 0.1 * torch.randn(b, 3, size, size, generator=g)).flip(-1)


# ------------------------------------------------------------------------------------ swap geometry


@pytest.mark.parametrize("origin", ["aligned", "official"])
@pytest.mark.parametrize("b", [6, 5])
def test_composite_is_the_query_outside_the_box_and_the_partner_inside(origin, b):
    x = torch.randn(b, 3, 224, 224)
    partner = partner_index(b)
    for step in range(6):
        box = sample_box(swap_generator(0, 0, step), 224, 224, 3, 5, origin)
        out = swap_regions(x, box, partner)
        inside = torch.zeros(224, 224, dtype=torch.bool)
        inside[box.y0:box.y0 + box.h, box.x0:box.x0 + box.w] = True
        for i in range(b):
            assert torch.equal(out[i][:, ~inside], x[i][:, ~inside])
            assert torch.equal(out[i][:, inside], x[b - 1 - i][:, inside])
        assert inside.sum() == box.h * box.w > 0 and (~inside).any()


def test_partner_is_the_reversed_batch_an_involution_masked_only_at_an_odd_middle():
    for b in (2, 6, 7):
        p = partner_index(b)
        assert torch.equal(p[p], torch.arange(b))
        assert p.tolist() == list(range(b - 1, -1, -1))
        assert region_valid(b).tolist() == [i != b - 1 - i for i in range(b)]
    assert region_valid(7).sum() == 6 and not region_valid(7)[3]


def test_aligned_boxes_lie_on_the_cell_grid_and_cover_every_allowed_size_and_origin():
    sizes, origins = set(), set()
    for step in range(400):
        box = sample_box(swap_generator(3, 1, step), 224, 224, 3, 5)
        assert box.aligned and box.y0 % 32 == 0 and box.x0 % 32 == 0
        assert 3 <= box.ch <= 5 and 3 <= box.cw <= 5
        assert box.cy + box.ch <= 7 and box.cx + box.cw <= 7
        sizes.add((box.ch, box.cw))
        origins.add((box.ch, box.cy))
    assert sizes == {(h, w) for h in (3, 4, 5) for w in (3, 4, 5)}
    assert origins == {(h, y) for h in (3, 4, 5) for y in range(8 - h)}  # uniform cell origins: all reached


def test_official_origin_follows_the_authors_pixel_rule_and_can_leave_the_grid():
    off_grid = 0
    for step in range(300):
        box = sample_box(swap_generator(0, 0, step), 224, 224, 3, 5, "official")
        assert 0 <= box.y0 <= 223 - box.h and 0 <= box.x0 <= 223 - box.w  # min(., W - 1 - r_w)
        assert (box.cy, box.cx) == (box.y0 // 32, box.x0 // 32) and (box.ch, box.cw) == (box.h // 32, box.w // 32)
        off_grid += not box.aligned
    assert off_grid > 0  # the bug the docs describe: e.g. 127 px with a 96-px box


def test_box_draws_are_a_function_of_seed_rank_and_step():
    draw = lambda *a: sample_box(swap_generator(*a), 224, 224, 3, 5)  # noqa: E731
    assert draw(0, 0, 5) == draw(0, 0, 5)
    assert len({draw(0, r, s) for r in range(2) for s in range(20)}) > 10


def test_bad_sizes_and_cells_are_clear_errors():
    with pytest.raises(ValueError, match="not a multiple of the backbone's output stride 32"):
        sample_box(swap_generator(0, 0, 0), 80, 80, 1, 1)
    with pytest.raises(ValueError, match="does not fit the 2x2 feature grid"):
        sample_box(swap_generator(0, 0, 0), 64, 64, 3, 5)


def test_pooled_paste_of_source_j_comes_from_composite_partner_j():
    """Constant-colour images and an 'identity backbone' (average-pool by R): after re-indexing by
    partner, paste row j has image j's colour, canvas row i image i's (spec §7 test 3)."""
    b = 6
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, 128, 128).contiguous()
    partner = partner_index(b)
    for step in range(5):
        box = sample_box(swap_generator(0, 0, step), 128, 128, 1, 3)
        paste_in, canvas = mask_pool_regions(F.avg_pool2d(swap_regions(x, box, partner), 32), box)
        assert torch.equal(canvas[:, 0], torch.arange(b, dtype=torch.float32))
        assert torch.equal(paste_in[:, 0], partner.float())  # composite i holds partner(i)'s paste
        assert torch.equal(paste_in[partner][:, 0], torch.arange(b, dtype=torch.float32))  # by source


def test_mask_pooling_is_the_mean_inside_and_outside_the_cells():
    f = torch.randn(2, 5, 4, 4)
    box = SwapBox(32, 0, 64, 96, 1, 0, 2, 3)
    paste, canvas = mask_pool_regions(f, box)
    inside = box.cell_mask(4, 4)
    assert torch.allclose(paste, f[:, :, inside].mean(-1)) and torch.allclose(canvas, f[:, :, ~inside].mean(-1))


# ------------------------------------------------------------------------------------ losses


def test_the_intra_composite_negative_is_a_stop_gradient():
    b = 4
    cv = F.normalize(torch.randn(b, 8), dim=1).requires_grad_()
    pin = F.normalize(torch.randn(b, 8), dim=1).requires_grad_()
    k, queue = F.normalize(torch.randn(b, 8), dim=1), F.normalize(torch.randn(12, 8), dim=1)
    loss, _ = region_info_nce(cv, pin, k, queue, partner_index(b), region_valid(b), 0.2, use_paste=False)
    loss.backward()
    assert pin.grad is None or torch.count_nonzero(pin.grad) == 0  # only reached through sg(paste)
    assert torch.count_nonzero(cv.grad) > 0


def test_table10_switches_drop_their_terms():
    b, g = 4, torch.Generator().manual_seed(1)
    cv, pin, k = (F.normalize(torch.randn(b, 8, generator=g), dim=1) for _ in range(3))
    queue = F.normalize(torch.randn(12, 8, generator=g), dim=1)
    args = (cv, pin, k, queue, partner_index(b), region_valid(b), 0.2)
    both, _ = region_info_nce(*args)
    canvas, _ = region_info_nce(*args, use_paste=False)
    paste, _ = region_info_nce(*args, use_canvas=False)
    assert torch.allclose(both, 0.5 * (canvas + paste))
    no_neg, _ = region_info_nce(*args, intra_negative=False)
    assert no_neg < both  # one negative fewer in every denominator


def test_regioncl_s_region_term_is_the_mean_negative_cosine_with_the_sources_other_view():
    b, g = 5, torch.Generator().manual_seed(2)
    pc, pp, z = (torch.randn(b, 8, generator=g) for _ in range(3))
    partner, valid = partner_index(b), region_valid(b)
    rows = [i for i in range(b) if i != b - 1 - i]
    cos = lambda a, c: float(F.cosine_similarity(a[None], c[None]))  # noqa: E731
    ref = 0.5 * (np.mean([-cos(pc[i], z[i]) for i in rows]) + np.mean([-cos(pp[b - 1 - j], z[j]) for j in rows]))
    assert abs(float(region_simsiam_loss(pc, pp, z, partner, valid)) - ref) < 1e-6


# ------------------------------------------------------------------------------------ the variants


def _twin(cls_a, cls_b, **over):
    torch.manual_seed(0)
    a = cls_a(cfg_of(cls_a.name, **over))
    torch.manual_seed(0)
    b = cls_b(cfg_of(cls_b.name, **over))
    return a, b


def test_regioncl_m_instance_term_is_moco_v2s_loss():
    batch = batch_of(6)
    moco, rcl = _twin(MoCoV2, RegionCLM)
    ref = moco(batch)
    out = rcl(batch)
    assert torch.equal(out["loss_ins"], ref["loss"].detach())
    assert torch.allclose(out["loss"], out["loss_ins"] + out["loss_reg"])


@pytest.mark.parametrize("base, variant", [("mocov2", "regioncl-m"), ("simsiam", "regioncl-s"),
                                           ("densecl", "regioncl-d")])
def test_region_weight_0_is_the_base_method_exactly(base, variant):
    """Same init, same batches, two SGD steps: equal losses at every step and equal final weights,
    queues and BN statistics (the variant only adds its swap counter)."""
    batch = batch_of(6)
    a, b = _twin(METHODS[base], METHODS[variant], reg_weight=0.0)
    opt_a = torch.optim.SGD([p for p in a.parameters() if p.requires_grad], lr=0.1)
    opt_b = torch.optim.SGD([p for p in b.parameters() if p.requires_grad], lr=0.1)
    for step in range(2):
        la, lb = a(batch)["loss"], b(batch)["loss"]
        assert torch.equal(la, lb)
        for opt, loss, m in ((opt_a, la, a), (opt_b, lb, b)):
            opt.zero_grad()
            loss.backward()
            opt.step()
            m.on_after_step(step, 2)
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sb) - set(sa) == {"swap_step"} and int(sb["swap_step"]) == 2
    assert all(torch.equal(sa[n], sb[n]) for n in sa)


def test_regioncl_m_region_loss_is_eq2_on_the_pooled_composite_features():
    """Recompute the step by hand: swap with step 0's box, C5 map, mask pooling, projector, eq. 2."""
    x_q, x_k = batch_of(6)
    torch.manual_seed(0)
    m = RegionCLM(cfg_of("regioncl-m"))
    queue = m.queue.clone()
    out = m((x_q, x_k))
    torch.manual_seed(0)
    ref = RegionCLM(cfg_of("regioncl-m"))
    from sslkit.models.backbones import res5

    with torch.no_grad():
        ref.projector(ref.backbone(x_q))  # same BN batch statistics sequence as the method
        k = ref._keys(x_k)
        box = sample_box(swap_generator(0, 0, 0), 64, 64, 1, 1)
        partner = partner_index(6)
        paste, canvas = mask_pool_regions(res5(ref.backbone, swap_regions(x_q, box, partner)), box)
        cv, ps = F.normalize(ref.projector(torch.cat([canvas, paste])), dim=1).chunk(2)
        want, _ = region_info_nce(cv, ps, k, queue, partner, region_valid(6), 0.2)
    assert torch.allclose(out["loss_reg"], want, atol=1e-6)
    assert int(m.swap_step) == 1


@pytest.mark.parametrize("method", ["regioncl-m", "regioncl-s", "regioncl-d"])
def test_variants_backpropagate_through_the_region_branch_and_never_enqueue_regions(method):
    torch.manual_seed(0)
    m = METHODS[method](cfg_of(method))
    out = m(batch_of(6))
    assert "loss_reg" in out and math.isfinite(float(out["loss"].detach()))
    out["loss"].backward()
    assert m.backbone.conv1.weight.grad.abs().sum() > 0
    if hasattr(m, "queue_ptr"):
        assert int(m.queue_ptr) == 6  # one key per image; region rows are not keys
    torch.manual_seed(0)
    base = METHODS[method](cfg_of(method, reg_weight=0.0))
    assert "loss_reg" not in base(batch_of(6))


def test_settings_that_cannot_work_are_one_line_errors():
    good = cfg_of("regioncl-m", world_size=1)
    RegionCLM.validate(good)
    with pytest.raises(UserError, match="does not fit the 2x2 feature grid"):
        RegionCLM.validate({**good, "regioncl_cells_min": 3, "regioncl_cells_max": 5})
    with pytest.raises(UserError, match="not a multiple of the backbone's output stride 32"):
        RegionCLM.validate({**good, "image_size": 80})
    with pytest.raises(UserError, match="both off"):
        RegionCLM.validate({**good, "regioncl_canvas": False, "regioncl_paste": False})


def test_the_swap_step_is_in_the_state_dict_and_a_loaded_model_continues_from_it():
    torch.manual_seed(0)
    a = RegionCLM(cfg_of("regioncl-m"))
    for _ in range(3):
        a(batch_of(6))
    b = RegionCLM(cfg_of("regioncl-m"))
    b(batch_of(6))  # b's own counter is 1 before loading
    b.load_state_dict(a.state_dict())
    assert b._next_swap_step() == 3 and int(b.swap_step) == 4


# ------------------------------------------------------------------------------------ offline stage


def test_swap_stage_freezes_the_training_swaps_and_show_draws_them(photo_dir, tmp_path, capsys):
    from sslkit.io.artefacts import Artefact
    from sslkit.io.images import ImageSource

    src = ImageSource.from_arg(photo_dir)
    settings = {"image_size": 64, "batch_size": 5, "steps": 3, "regioncl_cells_min": 1, "regioncl_cells_max": 1,
                "seed": 4}
    out = tmp_path / "swaps.h5"
    res = RegionCLSwapStage.run(src, out, settings, StageInputs(), overwrite=False, quiet=True)
    assert res.summary["steps"] == 1 and res.summary["images"] == 5  # 5 photos: one full batch
    with Artefact(out, "sslkit.views") as a:
        assert a.attrs["views_kind"] == "regioncl-swaps" and a.attrs["grid"] == 2
        want = sample_box(swap_generator(4, 0, 0), 64, 64, 1, 1)
        queries = [a.ragged("query", r) for r in range(5)]
        for r in range(5):
            step, slot, partner, valid = a.ragged("swap", r)[0].tolist()
            assert (step, slot, partner, valid) == (0, r, 4 - r, int(r != 2))
            x1, y1, x2, y2 = a.ragged("paste_box", r)[0].tolist()
            assert (x1, y1, x2 - x1, y2 - y1) == (want.x0, want.y0, want.w, want.h)
            assert a.ragged("paste_cells", r)[0].tolist() == [x1 // 32, y1 // 32, x2 // 32, y2 // 32]
            comp = a.ragged("composite", r)
            inside = np.zeros((64, 64), bool)
            inside[y1:y2, x1:x2] = True
            assert np.array_equal(comp[~inside], queries[r][~inside])
            assert np.array_equal(comp[inside], queries[partner][inside])
        name = a.file_name[2]
    png = tmp_path / "swap.png"
    assert run_cli("show", out, "--image", name, "-o", png) == 0
    assert run_cli("show", out, "--image", "#1", "-o", png) == 0  # the second image of the frozen batch
    assert "pairs with itself" in capsys.readouterr().err  # the odd batch's middle image
    from PIL import Image

    assert Image.open(png).size == (3 * 256 + 2 * 8, 256 + 20)


def test_swap_stage_refuses_boxes_that_do_not_fit_and_too_few_images(photo_dir, tmp_path):
    from sslkit.io.images import ImageSource

    src = ImageSource.from_arg(photo_dir)
    with pytest.raises(UserError, match="does not fit the 2x2 feature grid"):
        RegionCLSwapStage.run(src, tmp_path / "a.h5", {"image_size": 64}, StageInputs(), overwrite=False, quiet=True)
    with pytest.raises(UserError, match="fewer than one batch of 8"):
        RegionCLSwapStage.run(src, tmp_path / "b.h5", {"image_size": 64, "regioncl_cells_min": 1,
                                                       "regioncl_cells_max": 1}, StageInputs(), overwrite=False,
                              quiet=True)
    assert not (tmp_path / "b.h5").exists()
