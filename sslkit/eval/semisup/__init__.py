"""Semi-supervised fine-tuning (``sslkit semisup``): settings, subsets, data and the run; see :mod:`.run`."""

from sslkit.eval.semisup.data import epoch_batches
from sslkit.eval.semisup.settings import KEYS, SemisupConfig, lr_factor
from sslkit.eval.subsets import (
           Sample,
           class_balanced_subset,
           default_weight_decay,
           split_samples,
           subset_from_file,
)

__all__ = ["KEYS", "Sample", "SemisupConfig", "class_balanced_subset", "default_weight_decay", "epoch_batches",
           "lr_factor", "split_samples", "subset_from_file"]
