"""The one training loop and what it is made of.

``config`` (settings and their resolution), ``data`` (dataset, resumable sampler, per-sample
seeding), ``dist`` (launchers, process group, gathers), ``launch`` (elastic multi-process start),
``optim`` (SGD/LARS/AdamW), ``schedules`` (lr and EMA momentum), ``ema``, ``logger`` and
``trainer`` (the loop, checkpoints, resume). Submodules import torch; import them where needed.
"""
