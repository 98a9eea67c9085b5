"""The one training loop and what it is made of.

``loop`` (THE loop and its hooks: logging, checkpoints), ``rundir`` (resume or start over, checkpoint
restore, locks' place), ``pretrain`` (the pretraining adapter: any method on the loop), ``config`` (the
pretraining keys), ``data`` (resumable sampler), ``feed`` (the data paths: cpu / gpu / pil), ``launch``
(elastic multi-process start), ``optim`` (SGD/LARS/AdamW), ``schedules`` (lr), ``bn`` (Precise BN),
``logger``. Detection and semi-supervised fine-tuning are adapters on the same loop (sslkit.eval).
Submodules import torch; import them where needed.
"""
