"""Planned views: per-sample view parameters drawn in the loader worker, pixels rendered in the worker
(``data_path: cpu``) or batched on the training device (``data_path: gpu``); see
:mod:`sslkit.views.plan.dataset`. The device side (:mod:`sslkit.views.plan.device`) needs kornia
(``pip install 'sslkit[gpu]'``) and is imported on its own."""

from sslkit.views.plan.dataset import (
    MODES,
    MultiViewPlan,
    PlanBatch,
    PlanDataset,
    collate_plans,
    render_sample_cpu,
)

__all__ = ["MODES", "MultiViewPlan", "PlanBatch", "PlanDataset", "collate_plans", "render_sample_cpu"]
