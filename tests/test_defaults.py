"""Each method's defaults are the constants its sources give: one table per method, checked against the
method's resolved defaults (engine defaults < ``DEFAULTS``).

A table lists every key of the method's ``DEFAULTS`` with its value and where it comes from ([P] paper,
[C] authors' code, [X] the base method's protocol, [I] our choice where both are silent; digests in
../shared/specs). The test fails
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
    # a boxes file as masks (docs/swap.md): DetCon never rasterises boxes
    "box_order": ("large-first", "sslkit's rule: smaller boxes painted on top (docs/swap.md) [I]"),
    "filter_min_size": (96.0, "ORL's candidate filter (spec orl.md §2.3 (iv)): the boxes ORL starts from [I]"),
    "filter_max_ratio": (3.0, "ORL's candidate filter (spec orl.md §2.3 (iv)) [I]"),
    "filter_max_iou": (0.5, "ORL's candidate filter (spec orl.md §2.3 (iv)) [I]"),
    "filter_top_n": (100, "ORL's candidate filter (spec orl.md §2.3 (iv)) [I]"),
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
    # a label-map file as candidates (docs/swap.md)
    "segment_fields": ("all", "every label-map field of the file, pooled [I]"),
    "segment_order": ("size", "largest segments first, before the order-dependent filter [I]"),
}

SIMSIAM = {  # Chen & He, CVPR 2021; facebookresearch/simsiam main_simsiam.py, simsiam/builder.py
    "arch": ("resnet50", "SimSiam §3 'Baseline settings' [P]; main_simsiam.py -a [C]"),
    "image_size": (224, "main_simsiam.py RandomResizedCrop(224) [C]"),
    "batch_size": (512, "SimSiam §3 'Optimizer': 512 by default [P]; main_simsiam.py -b [C]"),
    "epochs": (100, "SimSiam Table 4 (100 ep: 68.1) [P]; main_simsiam.py --epochs, README [C]"),
    "optimizer": ("sgd", "SimSiam §3 'Optimizer' [P]"),
    "lr": (0.05, "SimSiam §3: base lr 0.05 × B/256 [P]; main_simsiam.py --lr [C]"),
    "lr_scaling": ("linear", "SimSiam §3 lr × BatchSize/256 [P]; main_simsiam.py init_lr [C]"),
    "weight_decay": (1e-4, "SimSiam §3 [P]; main_simsiam.py --wd, on every parameter [C]"),
    "optim_momentum": (0.9, "SimSiam §3 [P]; main_simsiam.py --momentum [C]"),
    "warmup_epochs": (0.0, "main_simsiam.py adjust_learning_rate: cosine from epoch 0 [C]"),
    "sync_bn": (True, "SimSiam §3 BN synchronized across devices [P]; convert_sync_batchnorm [C]"),
    "proj_hidden_dim": (2048, "SimSiam §3 'Projection MLP' [P]; builder.py prev_dim [C]"),
    "proj_dim": (2048, "SimSiam §3 'Projection MLP' [P]; main_simsiam.py --dim [C]"),
    "pred_hidden_dim": (512, "SimSiam §3 'Prediction MLP' [P]; main_simsiam.py --pred-dim [C]"),
    "fix_pred_lr": (True, "SimSiam §4.2 Table 1(c) [P]; README's command --fix-pred-lr [C]"),
    "zero_init_residual": (True, "builder.py base_encoder(zero_init_residual=True) [C]"),
}

_DENSECL_CFG = "densecl_imagenet_200ep.py"
DENSECL = {  # Wang et al., CVPR 2021; WXinlong/DenseCL configs/selfsup/densecl/densecl_imagenet_200ep.py
    "arch": ("resnet50", f"{_DENSECL_CFG} ResNet depth 50 [C]"),
    "image_size": (224, f"{_DENSECL_CFG} RandomResizedCrop 224 [C]"),
    "batch_size": (256, f"{_DENSECL_CFG}: 32 × 8 GPUs [C]"),
    "epochs": (200, f"{_DENSECL_CFG} total_epochs [C]"),
    "optimizer": ("sgd", f"{_DENSECL_CFG} [C]"),
    "lr": (0.03, f"{_DENSECL_CFG}: 0.03 at batch 256 [C]"),
    "lr_scaling": ("linear", "[X] MoCo v2 (Goyal et al.; the config has one batch size)"),
    "weight_decay": (1e-4, f"{_DENSECL_CFG} [C]"),
    "optim_momentum": (0.9, f"{_DENSECL_CFG} [C]"),
    "warmup_epochs": (0.0, f"{_DENSECL_CFG}: CosineAnnealing to 0, no warm-up [C]"),
    "sync_bn": (False, f"{_DENSECL_CFG} norm_cfg BN; shuffle-BN instead (densecl.py) [C]"),
    "ema_momentum": (0.999, f"{_DENSECL_CFG} momentum [C]"),
    "ema_schedule": ("constant", "densecl.py _momentum_update_key_encoder: fixed m [C]"),
    "queue_size": (65536, f"{_DENSECL_CFG} queue_len, each of the two queues [C]"),
    "temperature": (0.2, f"{_DENSECL_CFG} ContrastiveHead temperature [C]"),
    "proj_hidden_dim": (2048, f"{_DENSECL_CFG} DenseCLNeck hid_channels [C]"),
    "proj_dim": (128, f"{_DENSECL_CFG} feat_dim / DenseCLNeck out_channels [C]"),
    "shuffle_bn": (True, "densecl.py _batch_shuffle_ddp [C]"),
    "loss_lambda": (0.5, f"{_DENSECL_CFG} loss_lambda: (1 − λ)·L_global + λ·L_dense [C]"),
}

_REGIONCL_CFG = "regionCLM-r50.py"
#: the region swap every RegionCL variant adds (regioncl.txt §3, §4.5; digest §2.2, §6)
_REGIONCL_SWAP = {
    "regioncl_cells_min": (3, f"RegionCL §4.5 Table 9: C_L = 3 [P]; {_REGIONCL_CFG} cutMixLower [C]"),
    "regioncl_cells_max": (5, f"RegionCL §4.5 Table 9: C_U = 5 [P]; {_REGIONCL_CFG} cutMixUpper=6, exclusive [C]"),
    "regioncl_origin": ("aligned", "RegionCL §3.1 box aligned to R [P]; digest §2.2/§6.1 [I] (official = the code's rule)"),
    "regioncl_canvas": (True, "RegionCL Table 10, full model [P]"),
    "regioncl_paste": (True, "RegionCL Table 10, full model [P]"),
}

REGIONCL_M = {  # RegionCL-M: MoCo v2 + the swap; Annbless/RegionCL configs/selfsup/regionCL-M/regionCLM-r50.py
    "arch": ("resnet50", f"RegionCL §4 [P]; {_REGIONCL_CFG} ResNet depth 50 [C]"),
    "image_size": (224, f"RegionCL §4.5 [P]; {_REGIONCL_CFG} RandomResizedCrop 224 [C]"),
    "batch_size": (1024, f"{_REGIONCL_CFG}: 128 × 8 GPUs [C]"),
    "epochs": (200, f"RegionCL §4 [P]; {_REGIONCL_CFG} total_epochs [C]"),
    "optimizer": ("sgd", f"RegionCL §4 [P]; {_REGIONCL_CFG} [C]"),
    "lr": (0.0375, f"{_REGIONCL_CFG}: lr 0.15 at batch 1024 = 0.0375 × 1024/256 [C]"),
    "lr_scaling": ("linear", "[X] MoCo v2 (sslkit convention; gives the config's 0.15 at 1024)"),
    "weight_decay": (1e-4, f"{_REGIONCL_CFG} [C]"),
    "optim_momentum": (0.9, f"{_REGIONCL_CFG} [C]"),
    "warmup_epochs": (0.0, f"{_REGIONCL_CFG}: CosineAnnealing to 0, no warm-up [C]"),
    "sync_bn": (False, f"{_REGIONCL_CFG} norm_cfg BN; shuffle-BN (digest §2.3) [C]"),
    "ema_momentum": (0.999, f"{_REGIONCL_CFG} momentum [C]"),
    "ema_schedule": ("constant", "[X] MoCo v2: fixed m"),
    "queue_size": (65536, f"RegionCL §3.2: K = 65,536 [P]; {_REGIONCL_CFG} queue_len [C]"),
    "temperature": (0.2, f"RegionCL §3.2 eq. 1: τ = 0.2 [P]; {_REGIONCL_CFG} ContrastiveHead [C]"),
    "proj_hidden_dim": (2048, f"{_REGIONCL_CFG} RegionCLNonLinearNeckV1 hid_channels [C]"),
    "proj_dim": (128, f"{_REGIONCL_CFG} feat_dim [C]"),
    "shuffle_bn": (True, "[X] MoCo v2 shuffle-BN; RegionCLM.py [C] (digest §2.3)"),
    "reg_weight": (1.0, f"RegionCL eq. 3: L_ins + L_reg [P]; {_REGIONCL_CFG} loss_cutmix=1.0 [C]"),
    "regioncl_intra_negative": (True, "RegionCL eq. 2 / Table 10, full model [P]"),
    **_REGIONCL_SWAP,
}

REGIONCL_S = {  # RegionCL §4: "the same settings as their own base methods", RegionCL-S for 100 epochs
    **{k: (v, f"[X] SimSiam: {src}") for k, (v, src) in SIMSIAM.items()},
    "epochs": (100, "RegionCL §4: RegionCL-S for 100 epochs [P]"),
    "reg_weight": (1.0, "[I] digest §2.5: weight 1 (form and weight in the missing supplement)"),
    **_REGIONCL_SWAP,
}

REGIONCL_D = {  # RegionCL §4: DenseCL's settings, 200 epochs; the region loss as in RegionCL-M
    **{k: (v, f"[X] DenseCL: {src}") for k, (v, src) in DENSECL.items()},
    "epochs": (200, "RegionCL §4: RegionCL-D for 200 epochs [P]"),
    "reg_weight": (1.0, "[I] digest §2.5: (1 − λ)·(L_ins + w·L_reg) + λ·L_dense keeps instance:region 1:1"),
    "regioncl_intra_negative": (True, "RegionCL §3.2 'as in RegionCL-M', eq. 2 [P]"),
    **_REGIONCL_SWAP,
}

MCL = {  # ../shared/specs/mcl.md §2–3; GuoQiushan/MCL configs/selfsup/MCL/MCL.py, openselfsup/models/mcl.py
    "arch": ("resnet50", "MCL §4.1: ResNet-50 + FPN [P]"),
    "image_size": (224, "MCL.py: RandomResizedCrop(224) [C]"),
    "batch_size": (4096, "MCL.py: 32 GPUs × 128 [C]; §4.1 [P]"),
    "epochs": (100, "MCL §4.1: 100 ImageNet epochs (COCO: 530) [P]"),
    "optimizer": ("lars", "MCL §4.1; MCL.py [P][C]"),
    "lr": (1.0, "MCL §4.1: lr 1.0 × B/256 = 16 at 4096 [P][C]"),
    "lr_scaling": ("linear", "MCL §4.1: × batch/256 [P]"),
    "weight_decay": (1e-5, "MCL §4.1 and Table 10d (1e-5 best) [P][C]"),
    "optim_momentum": (0.9, "MCL.py: LARS momentum 0.9 [C]"),
    "lars_eta": (1e-3, "MCL.py: LARS η 1e-3 [C]"),
    "warmup_epochs": (10.0, "MCL §4.1: 10 warm-up epochs [P]"),
    "warmup_start_factor": (1e-4, "MCL.py: warmup_ratio 1e-4 [C]"),
    "min_lr": (1e-4, "MCL.py: cosine to min_lr 1e-4 (absolute) [C]"),
    "sync_bn": (True, "MCL.py: convert_sync_bn [C]"),
    "grad_clip": (500.0, "MCL.py: grad_clip max_norm 500 [C]"),
    "ema_momentum": (0.99, "MCL §3 / byol_hook.py: 0.99 → 1 [P][C]"),
    "ema_schedule": ("cosine", "byol_hook.py: cosine per iteration [P][C]"),
    "levels": (4, "MCL.py: 4 levels, ratios 1/2/4/8 on P5..P2 [C] (paper's figure: 3)"),
    "montage_fractions": ("1,1/4,1/16,1/32", "mcl.py batch_sizes [B, B/4, B/16, B/32] [C]"),
    "downsample": ("nearest", "mcl.py: F.interpolate default mode [C]"),
    "temperature": (1.0, "latent_pred_head.py: T = 1 with the 2T factor [C]"),
    "level_weights": ("auto", "mcl.py: 1/2, 1/4, 1/8, 1/8 for 4 levels [C]"),
    "loss_mode": ("a", "MCL §3.3 / Table 10b: mode (a) best [P]"),
    "neck": ("fpn", "MCL.py: mmdet-style FPN with BN [C]"),
    "fpn_dim": (256, "MCL.py: FPN out_channels 256 [C]"),
    "head_convs": (4, "MCL.py: DetConvGpNonLinearHead, 4 convs [C]"),
    "head_windows": ("matched", "[I] docs/mcl.md: the windows that enter the loss (the code's 'all': head_windows=all)"),
    "proj_hidden_dim": (2048, "MCL.py: projector 256 → 2048 → 256 [C]"),
    "proj_dim": (256, "MCL.py [C]"),
    "pred_hidden_dim": (2048, "MCL.py: predictors 256 → 2048 → 256, one per level [C]"),
}

#: method name → its table; a registered method without one fails
TABLES = {"byol": BYOL, "mocov2": MOCOV2, "simclr": SIMCLR, "detcon-s": DETCON_S, "detcon-b": DETCON_B,
          "orl": ORL, "univip": UNIVIP, "simsiam": SIMSIAM, "densecl": DENSECL, "regioncl-m": REGIONCL_M,
          "regioncl-s": REGIONCL_S, "regioncl-d": REGIONCL_D, "mcl": MCL}


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
