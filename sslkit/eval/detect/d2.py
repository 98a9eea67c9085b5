"""``sslkit detect --engine detectron2``: the same protocol, trained and evaluated by detectron2 itself.

sslkit writes two files into ``RUN_DIR`` and hands over to detectron2's ``DefaultTrainer`` (what
``tools/train_net.py`` runs), launched with ``detectron2.engine.launch``:

* ``backbone_d2.pkl`` — the backbone renamed to detectron2's ResNet keys
  (:func:`sslkit.models.convert.torchvision_to_detectron2`), ``matching_heuristics`` on, plus the
  pretrained FPN / box-head convs when the weights hold them (``fpn_lateral*``, ``box_head.conv*``);
* ``d2_config.yaml`` — a self-contained config (no ``_BASE_``; every key exists in
  ``detectron2.config.get_cfg()``): PyContrast's ``R_50_FPN_1x_infomin.yaml`` (Mask R-CNN R-FPN,
  ``FREEZE_AT 0``, SyncBN in backbone/FPN/box head/mask head, 4conv1fc, Precise BN, RGB input
  with torchvision's pixel statistics, ``STRIDE_IN_1X1: False``), with the schedule, batch,
  sizes and classes sslkit resolved for this dataset.

detectron2 writes its checkpoints and ``inference/coco_instances_results.json`` under
``RUN_DIR/detectron2/``; sslkit reads the evaluation back into ``RUN_DIR/metrics.json`` (same
schema as the torchvision engine, ``"engine": "detectron2"``).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import yaml

from sslkit import __version__
from sslkit.errors import UserError
from sslkit.eval.detect import METRICS_FORMAT, METRICS_VERSION
from sslkit.eval.detect.data import load_detection_split
from sslkit.eval.detect.evaluate import METRICS
from sslkit.io.atomic import write_text_atomic
from sslkit.io.checkpoint import save_detectron2_pkl
from sslkit.io.images import write_json
from sslkit.models import convert as C
from sslkit.models.convert import detectron2_config
from sslkit.models.parts import to_detectron2

CONFIG = "d2_config.yaml"
WEIGHTS = "backbone_d2.pkl"
OUTPUT = "detectron2"
RESULTS = "sslkit_d2_results.json"
DATASETS = ("sslkit_train", "sslkit_val")


def available() -> bool:
    return importlib.util.find_spec("detectron2") is not None


def d2_norm(cfg: dict, num_gpus: int) -> str:
    """``SyncBN`` as in the InfoMin config when training spans several GPUs; ``BN`` on one (same maths)."""
    return "SyncBN" if cfg["norm"] == "syncbn" and num_gpus > 1 else "BN"


def config_dict(cfg: dict, weights_pkl: str, output_dir: str, num_gpus: int) -> dict:
    """The detectron2 config of the run ``cfg`` (sslkit's resolved settings) as nested dicts."""

    base = yaml.safe_load(detectron2_config(cfg["arch"], weights_pkl))
    if not isinstance(base, dict):
        raise UserError(f"detectron2 has no ResNet of the architecture {cfg['arch']}", None,
                        "use --engine torchvision, or weights of a resnet18/34/50/101/152 or ResNeXt")
    r = cfg["resolved"]
    s = r["schedule"]
    norm = d2_norm(cfg, num_gpus)
    if cfg["precision"] == "bf16":
        raise UserError("detectron2's trainer runs fp32 or fp16 (SOLVER.AMP), not bf16", None,
                        "pass --precision fp16 or fp32 with --engine detectron2")
    model = base["MODEL"]
    model.update({
        "META_ARCHITECTURE": "GeneralizedRCNN", "MASK_ON": True, "DEVICE": "cuda" if cfg["device"] == "cuda" else "cpu",
        "BACKBONE": {"NAME": "build_resnet_fpn_backbone", "FREEZE_AT": cfg["freeze_at"]},
        "FPN": {"IN_FEATURES": ["res2", "res3", "res4", "res5"], "OUT_CHANNELS": cfg["fpn_channels"], "NORM": norm},
        "ANCHOR_GENERATOR": {"SIZES": [[32], [64], [128], [256], [512]], "ASPECT_RATIOS": [[0.5, 1.0, 2.0]]},
        "RPN": {"IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"], "PRE_NMS_TOPK_TRAIN": 2000, "PRE_NMS_TOPK_TEST": 1000,
                "POST_NMS_TOPK_TRAIN": 1000, "POST_NMS_TOPK_TEST": 1000},
        "ROI_HEADS": {"NAME": "StandardROIHeads", "IN_FEATURES": ["p2", "p3", "p4", "p5"],
                      "NUM_CLASSES": len(r["categories"])},
        "ROI_BOX_HEAD": {"NAME": "FastRCNNConvFCHead", "NUM_CONV": 4, "NUM_FC": 1, "NORM": norm,
                         "CONV_DIM": cfg["fpn_channels"], "POOLER_RESOLUTION": 7},
        "ROI_MASK_HEAD": {"NAME": "MaskRCNNConvUpsampleHead", "NUM_CONV": 4, "NORM": norm,
                          "CONV_DIM": cfg["fpn_channels"], "POOLER_RESOLUTION": 14},
    })
    model["RESNETS"].update({"NORM": norm, "OUT_FEATURES": ["res2", "res3", "res4", "res5"]})
    return {
        "MODEL": model,
        "DATASETS": {"TRAIN": [DATASETS[0]], "TEST": [DATASETS[1]]},
        "DATALOADER": {"NUM_WORKERS": cfg["workers"] or 0, "FILTER_EMPTY_ANNOTATIONS": True,
                       "ASPECT_RATIO_GROUPING": True},
        "INPUT": {**base["INPUT"], "MIN_SIZE_TRAIN": list(r["train_sizes"]), "MIN_SIZE_TRAIN_SAMPLING": "choice",
                  "MAX_SIZE_TRAIN": cfg["max_size"], "MIN_SIZE_TEST": r["test_size"], "MAX_SIZE_TEST": cfg["max_size"]},
        "SOLVER": {"IMS_PER_BATCH": cfg["batch_size"], "BASE_LR": s["base_lr"], "MOMENTUM": cfg["momentum"],
                   "WEIGHT_DECAY": cfg["weight_decay"], "WEIGHT_DECAY_NORM": cfg["weight_decay_norm"],
                   "LR_SCHEDULER_NAME": "WarmupMultiStepLR", "STEPS": list(s["steps"]), "GAMMA": s["gamma"],
                   "MAX_ITER": s["iters"], "WARMUP_METHOD": "linear", "WARMUP_FACTOR": s["warmup_factor"],
                   "WARMUP_ITERS": s["warmup_iters"], "CHECKPOINT_PERIOD": r["save_every"],
                   "AMP": {"ENABLED": cfg["precision"] == "fp16"}},
        "TEST": {"EVAL_PERIOD": 0, "PRECISE_BN": {"ENABLED": r["precise_bn_iters"] > 0,
                                                  "NUM_ITER": max(1, r["precise_bn_iters"])}},
        "OUTPUT_DIR": output_dir,
        "SEED": cfg["seed"],
        "VERSION": 2,
    }


def config_yaml(cfg: dict, weights_pkl: str, output_dir: str, num_gpus: int, command: str = "") -> str:
    header = ("# detectron2 config written by sslkit detect --engine detectron2\n"
              f"# {command}\n" if command else "# detectron2 config written by sslkit detect --engine detectron2\n")
    header += ("# PyContrast R_50_FPN_1x_infomin.yaml (Base-RCNN-FPN + Mask R-CNN, FREEZE_AT 0, SyncBN in backbone/\n"
               "# FPN/heads, 4conv1fc, Precise BN; RGB, torchvision pixel statistics, STRIDE_IN_1X1 False),\n"
               f"# schedule {cfg['schedule']} scaled to {cfg['resolved']['num_train_images_used']} training images at "
               f"batch {cfg['batch_size']}\n")
    body = yaml.safe_dump(config_dict(cfg, weights_pkl, output_dir, num_gpus), sort_keys=False,
                          default_flow_style=None, width=120)
    return header + body


def write_backbone_pkl(cfg: dict, path: Path) -> None:
    """The run's backbone (the weights file, or the seeded random init) as a detectron2 .pkl."""

    net, meta = C.load_backbone(cfg["weights"], arch=cfg["arch"], encoder=cfg["encoder"], seed=cfg["seed"])
    model = C.torchvision_to_detectron2(net.state_dict())
    if cfg.get("init_parts"):  # a pretrained FPN / box head (MCL): fpn_lateral*, fpn_output*, box_head.conv*
        _, parts, _ = C.weights_state_dicts(cfg["weights"], encoder=cfg["encoder"], arch=cfg["arch"])
        for part in cfg["init_parts"]:
            model.update(to_detectron2(part, parts[part]))
    save_detectron2_pkl(path, model, extra={
        # bare ResNet names: detectron2 matches them as suffixes of backbone.bottom_up.*
        "matching_heuristics": True, "input_format": "RGB",
        "pixel_mean": list(C.PIXEL_MEAN_255), "pixel_std": list(C.PIXEL_STD_255),
        "sslkit": {"format": C.EXPORT_FORMAT, "format_version": C.EXPORT_VERSION, "arch": meta["arch"],
                   "source": meta["source"], "backbone_sha256": meta["backbone_sha256"]},
    })


def prepare(cfg: dict, run_dir: Path, num_gpus: int, command: str = "") -> tuple[Path, Path]:
    """Write ``backbone_d2.pkl`` and ``d2_config.yaml`` into ``run_dir``; returns their paths."""

    run_dir.mkdir(parents=True, exist_ok=True)
    pkl, yml = run_dir / WEIGHTS, run_dir / CONFIG
    text = config_yaml(cfg, str(pkl.resolve()), str((run_dir / OUTPUT).resolve()), num_gpus, command)
    write_backbone_pkl(cfg, pkl)
    write_text_atomic(yml, text)
    return pkl, yml


def _d2_main(config_path: str, datasets: dict, eval_only: bool, resume: bool, results_path: str) -> None:
    """One detectron2 worker: register the two COCO jsons, train (or load) and evaluate (train_net.py's main)."""
    import os

    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.data.datasets import register_coco_instances
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    for name, (json_file, image_root) in datasets.items():
        register_coco_instances(name, {}, json_file, image_root)
    cfg = get_cfg()
    cfg.merge_from_file(config_path)
    cfg.freeze()
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="detectron2")

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            return COCOEvaluator(dataset_name, output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))

    if eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=True)
        results = Trainer.test(cfg, model)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=resume)
        trainer.train()
        results = getattr(trainer, "_last_eval_results", None)
    if comm.is_main_process():
        with open(results_path, "w") as f:
            json.dump(results or {}, f, default=float)


def run(cfg: dict, run_dir: Path, num_gpus: int, *, nodes: int = 1, node_rank: int = 0, dist_url: str | None = None,
        eval_only: bool = False, resume: bool = True, command: str = "") -> dict:
    """Train and evaluate with detectron2 on ``num_gpus`` GPUs per node (0: CPU); returns the metrics record
    (written to ``RUN_DIR/metrics.json``)."""
    if not available():
        raise UserError("detectron2 is not installed", None, "install it (build from source) or use --engine torchvision")
    from detectron2.engine import launch

    yml = run_dir / CONFIG if eval_only else prepare(cfg, run_dir, num_gpus * nodes, command)[1]
    if eval_only and not yml.exists():
        raise UserError(f"no {CONFIG} (nothing was trained here with detectron2)", run_dir, "train first")
    datasets = {DATASETS[0]: (cfg["train"], str(load_detection_split(cfg["train"], cfg["image_root"]).root)),
                DATASETS[1]: (cfg["val"], str(load_detection_split(
                    cfg["val"], cfg["val_image_root"] or cfg["image_root"]).root))}
    results_path = run_dir / RESULTS
    results_path.unlink(missing_ok=True)
    launch(_d2_main, max(1, num_gpus) if cfg["device"] == "cuda" else 1, num_machines=nodes, machine_rank=node_rank,
           dist_url=dist_url or "auto", args=(str(yml), datasets, eval_only, resume, str(results_path)))
    if not results_path.exists():
        raise RuntimeError(f"detectron2 finished without results ({results_path} missing); see {run_dir / OUTPUT}/log.txt")
    record = metrics_record(cfg, json.loads(results_path.read_text()), run_dir, eval_only, command)
    write_json(run_dir / "metrics.json", record)
    return record


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)


def metrics_record(cfg: dict, results: dict, run_dir: Path, eval_only: bool, command: str) -> dict:
    """detectron2's ``COCOEvaluator`` results (percent, ``AP-<category>`` entries) → sslkit's metrics schema."""

    r = cfg["resolved"]
    out = {"format": METRICS_FORMAT, "format_version": METRICS_VERSION, "sslkit_version": __version__,
           "command": command, "engine": "detectron2", "eval_only": eval_only,
           "weights": {k: cfg[k] for k in ("weights", "arch", "encoder", "backbone_sha256")},
           "run_dir": str(run_dir), "detectron2_config": str(run_dir / CONFIG),
           "train": {"json": cfg["train"], "num_images": r["num_train_images"],
                     "num_images_used": r["num_train_images_used"]},
           "val": {"json": cfg["val"], "num_images": r["num_val_images"]},
           "categories": r["categories"], "schedule": r["schedule"],
           "predictions": str(run_dir / OUTPUT / "inference" / "coco_instances_results.json"), "notes": []}
    for iou in ("bbox", "segm"):
        res = results.get(iou)
        if not res:
            continue
        out[iou] = {m: _num(res.get(m)) for m in METRICS}
        out[iou]["per_category"] = {k[3:]: _num(v) for k, v in res.items() if k.startswith("AP-")}
    if "bbox" not in out:
        out["notes"].append("detectron2 returned no bbox results")
    return out
