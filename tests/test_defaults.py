"""Each method's defaults are the constants its sources give: one table per method, checked against the
method's resolved defaults (engine defaults < ``DEFAULTS``).

A table lists every key of the method's ``DEFAULTS`` with its value and where it comes from ([P] paper,
[C] authors' code, [I] our choice where both are silent; digests in ../shared/specs). The test fails
when a default drifts from its table, when ``DEFAULTS`` gains a key the table does not source, and for
a registered method without a table — so a method added later needs its table here.
"""

from __future__ import annotations

import pytest

from sslkit.engine import config as C
from sslkit.methods import METHODS

BYOL = {
    "arch": ("resnet50", "ORL §3.2 / BYOL §3.3"),
    "image_size": (224, "ORL §3.2"),
    "batch_size": (512, "ORL config: 64 × 8 GPUs [C]"),
    "epochs": (800, "ORL §3.2 (COCO)"),
    "optimizer": ("sgd", "ORL config [C]"),
    "lr": (0.2, "ORL config: 0.2 × B/256 [C]"),
    "lr_scaling": ("linear", "ORL config [C]"),
    "weight_decay": (1e-4, "ORL config, on all parameters [C]"),
    "optim_momentum": (0.9, "ORL config [C]"),
    "warmup_epochs": (4.0, "ORL config [C]"),
    "warmup_start_factor": (1e-4, "ORL config: mmcv warmup_ratio [C]"),
    "lars_lr_placement": ("outside", "BYOL utils/optimizers.py: optax lars, lr after the momentum [C]"),
    "sync_bn": (True, "ORL config [C]"),
    "ema_momentum": (0.99, "BYOL §3.2; ORL §3.2"),
    "ema_schedule": ("cosine", "BYOL §3.2"),
    "proj_hidden_dim": (4096, "BYOL §3.3"),
    "proj_dim": (256, "BYOL §3.3"),
    "pred_hidden_dim": (4096, "BYOL §3.3"),
}

MOCOV2 = {
    "arch": ("resnet50", "MoCo v2 §3"),
    "image_size": (224, "main_moco.py [C]"),
    "batch_size": (256, "MoCo v2 §3"),
    "epochs": (200, "MoCo v2 Table 1"),
    "optimizer": ("sgd", "main_moco.py [C]"),
    "lr": (0.03, "MoCo v2 §3: 0.03 at batch 256"),
    "lr_scaling": ("linear", "Goyal et al. (sslkit convention)"),
    "weight_decay": (1e-4, "main_moco.py [C]"),
    "optim_momentum": (0.9, "main_moco.py [C]"),
    "warmup_epochs": (0.0, "main_moco.py --cos: no warm-up [C]"),
    "sync_bn": (False, "MoCo: shuffle-BN instead [P]"),
    "ema_momentum": (0.999, "MoCo §3.2"),
    "ema_schedule": ("constant", "MoCo §3.2"),
    "queue_size": (65536, "MoCo §3.2 / main_moco.py --moco-k [C]"),
    "temperature": (0.2, "MoCo v2 §3"),
    "proj_hidden_dim": (2048, "MoCo v2 §3: 2-layer MLP head, builder.py --mlp [C]"),
    "proj_dim": (128, "MoCo §3.3 / builder.py [C]"),
    "shuffle_bn": (True, "MoCo §3.3"),
}

SIMCLR = {
    "arch": ("resnet50", "SimCLR §2.3"),
    "image_size": (224, "SimCLR app. A"),
    "batch_size": (4096, "SimCLR §2.3 default setting"),
    "epochs": (100, "SimCLR §2.3 default setting"),
    "optimizer": ("lars", "SimCLR §2.2"),
    "lr": (0.3, "SimCLR app. B.1: 0.3 × B/256"),
    "lr_scaling": ("linear", "SimCLR app. B.1"),
    "weight_decay": (1e-6, "SimCLR §2.3"),
    "optim_momentum": (0.9, "lars_optimizer.py [C]"),
    "lars_eta": (1e-3, "lars_optimizer.py EETA_DEFAULT [C]"),
    "warmup_epochs": (10.0, "SimCLR §2.3"),
    "warmup_start_factor": (0.0, "SimCLR §2.3 linear warm-up [C]"),
    "sync_bn": (True, "SimCLR §2.2 global BN"),
    "lars_lr_placement": ("inside", "lars_optimizer.py classic_momentum=True [C]"),
    "temperature": (0.1, "SimCLR Table 5 / README ImageNet command [C]"),
    "loss_directions": ("sum", "objective.py: loss_a + loss_b [C]"),
    "proj_hidden_dim": (2048, "SimCLR §2.1 / model_util.py [C]"),
    "proj_dim": (128, "SimCLR §2.3"),
}

_DETCON = {
    "arch": ("resnet50", "DetCon §4"),
    "image_size": (224, "DetCon §3.1"),
    "batch_size": (4096, "DetCon §4.1 / appendix A.3"),
    "optimizer": ("lars", "DetCon appendix; official code [C]"),
    "lars_eta": (1e-3, "official code [C]"),
    "lars_lr_placement": ("outside", "official optax lars: momentum, then scale(-lr) [C] (-S: same code base [I])"),
    "lr_scaling": ("linear", "official code: base lr × B/256 [C]"),
    "optim_momentum": (0.9, "official code [C]"),
    "warmup_start_factor": (0.0, "official learning_schedule: linear warm-up from 0 [C]"),
    "sync_bn": (True, "official code: cross-replica BN [C]"),
    "masks": ("", "input (sslkit propose artefact)"),
    "mask_fields": ("all", "spec §6.2 union of the label maps [I]"),
    "num_masks": (16, "DetCon §3.1"),
    "temperature": (0.1, "DetCon §3.1"),
    "mask_pool": ("hard", "official code [C] (paper text: soft)"),
    "negatives": ("global", "DetCon Table 5a"),
    "local_negatives": (True, "official code default [C]"),
    "epochs": (1000, "DetCon Table 1"),
    "warmup_epochs": (10.0, "official code ⌊epochs/100⌋ [C]; SimCLR (-S)"),
}

DETCON_S = {
    **_DETCON,
    "lr": (0.3, "SimCLR: 0.3 × B/256 (spec §3)"),
    "weight_decay": (1e-6, "SimCLR (spec §6.7)"),
    "proj_hidden_dim": (2048, "SimCLR v1 projector (spec §6.7)"),
    "proj_dim": (128, "SimCLR v1 projector (spec §6.7)"),
}

DETCON_B = {
    **_DETCON,
    "lr": (0.2, "DetCon appendix (1000 epochs); code default [C]"),
    "weight_decay": (1.5e-6, "DetCon appendix (1000 epochs)"),
    "ema_momentum": (0.996, "DetCon §3.1 / code default [C]"),
    "ema_schedule": ("cosine", "BYOL §3.2 [C]"),
    "proj_hidden_dim": (4096, "BYOL §3.3 [C]"),
    "proj_dim": (256, "BYOL §3.3 [C]"),
    "pred_hidden_dim": (4096, "BYOL §3.3 [C]"),
}

ORL = {
    **BYOL,  # ORL §3.2: stage 3 uses stage 1's hyper-parameters
    "views": ("", "input (sample-views --method orl)"),
    "patch_size": (96, "ORL §3.1: patches resized to 96×96"),
    "intra_weight": (1.0, "ORL Eq. 2, §3.1: all loss weights 1"),
    "inter_weight": (1.0, "ORL Eq. 2, §3.1"),
    "knn_k_used": (0, "all K = 10 neighbours of the file (Table 5b ablation setting)"),
    "pair_ratio_used": (0.0, "all pairs of the file (Table 5b ablation setting)"),
    "init_from": ("", "ORL config pretrained=None: stage 3 from scratch [C]"),
}

UNIVIP = {
    **BYOL,  # UniVIP §4: "for COCO(+) we fully follow the setting of ORL"
    "views": ("", "input (sample-views --method univip or propose)"),
    "candidate_field": ("boxes", "raw selective search, filtered on the fly [I]"),
    "filter_min_size": (96.0, "ORL filter values (spec §2.1)"),
    "filter_max_ratio": (3.0, "ORL filter values (spec §2.1)"),
    "filter_max_iou": (0.5, "ORL filter values (spec §2.1)"),
    "filter_top_n": (100, "ORL filter values (spec §2.1)"),
    "num_instances": (4, "UniVIP §3.2 / Table 8(c)"),
    "instance_size": (96, "UniVIP §3.3"),
    "scene_overlap": (True, "UniVIP Table 8(a)"),
    "naive_only": (False, "UniVIP Table 8(b): selective search"),
    "naive_min_size": (64, "UniVIP §3.2"),
    "naive_max_ratio": (3.0, "UniVIP §3.2"),
    "naive_max_iou": (0.5, "UniVIP §3.2"),
    "overlap_tries": (50, "spec §2.2 [I]"),
    "scene_weight": (1.0, "UniVIP Eq. 12"),
    "scene_instance_weight": (1.0, "UniVIP Eq. 12"),
    "instance_weight": (1.0, "UniVIP Eq. 12"),
    "ot_eps": (0.1, "OTA code (spec §2.4) [I]"),
    "ot_iters": (50, "OTA code (spec §2.4) [I]"),
    "ot_marginals": ("raw", "UniVIP Eq. 9–10 as printed [P] (docs/univip.md)"),
}

#: method name → its table; a registered method without one fails
TABLES = {"byol": BYOL, "mocov2": MOCOV2, "simclr": SIMCLR, "detcon-s": DETCON_S, "detcon-b": DETCON_B,
          "orl": ORL, "univip": UNIVIP}


@pytest.mark.parametrize("name", list(METHODS))
def test_defaults_are_the_cited_constants(name):
    if name not in TABLES:
        pytest.fail(f"method {name!r} has no table of cited defaults in tests/test_defaults.py")
    table = TABLES[name]
    cls = METHODS[name]
    unsourced = sorted(set(cls.DEFAULTS) - set(table))
    assert not unsourced, f"{name}: DEFAULTS keys without a cited source in the table: {unsourced}"
    resolved = C.resolve(cls, [])
    drift = {k: (resolved[k], v) for k, (v, _) in table.items() if resolved[k] != v or type(resolved[k]) is not type(v)}
    assert not drift, f"{name}: defaults that differ from their sources (now, cited): {drift}"
