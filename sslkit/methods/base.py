"""The method contract: what a method file provides and the engine relies on.

A method is an ``nn.Module`` built from the resolved config. It owns

* ``backbone``: the evaluation encoder, a torchvision ResNet from
  :func:`sslkit.models.backbones.build_backbone` (``fc = Identity``);
* its heads, EMA/momentum copies and buffers (queues), all inside ``state_dict()``;
* :meth:`forward_train` (``batch → {"loss": tensor, other scalars to log}``), which the engine
  calls through DDP (``forward`` delegates to it);
* :meth:`on_after_step`, called after every optimizer step (EMA / momentum updates);
* :meth:`encoders`, ``{name: state_dict prefix}`` of every backbone in ``state_dict()`` that can be
  exported (e.g. BYOL's online and target networks), and ``default_encoder``;
* optionally :meth:`param_groups`, its own optimizer groups (e.g. SimSiam's fixed-lr predictor);
* optionally :meth:`export_parts`, detector parts it pretrains beside an encoder's backbone
  (``{encoder: {part: state_dict prefix}}``; MCL: ``fpn`` and the box ``head`` convs). ``sslkit
  export --include`` picks among them (default: the backbone and every part), and ``detect``
  initialises its FPN / box head from them. A part has a fixed layout: ``fpn`` is
  :class:`sslkit.models.fpn.FPN`, ``head`` is :func:`sslkit.models.heads.box_head_convs` with 4 convs
  (key maps: :mod:`sslkit.models.parts`);
* class-level ``DEFAULTS`` (its hyper-parameters, overriding the engine's defaults where they
  differ, e.g. optimizer and lr) with ``HELP`` for its own keys, and :meth:`make_transform`, the
  view pipeline for one decoded image;
* :meth:`make_plan_dataset`, its views as per-sample parameter rows for the planned data paths
  (``data_path: cpu`` renders them in the loader workers, ``gpu`` on the training device): any
  method whose views are a plain :class:`~sslkit.transforms.MultiView` gets it from the base
  class; a method with geometry (masks, boxes, second images) declares its own, and one that has
  none trains on ``data_path: cpu`` through its ``make_dataset`` and refuses ``gpu``;
* optionally ``view_stage``, its offline view stage (:class:`sslkit.views.stage.ViewStage`), which
  ``sslkit sample-views -m NAME`` runs.

It has no loop, data loader, checkpoint or CLI code: those are the engine's.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from sslkit.models.backbones import build_backbone
from sslkit.transforms import MultiView
from sslkit.views.dataset import ImageDataset
from sslkit.views.plan import MultiViewPlan
from sslkit.views.stage import ViewStage


class Method(nn.Module, abc.ABC):
    #: registry name (``--method``)
    name: ClassVar[str] = ""
    #: hyper-parameters: engine keys it overrides + its own keys (bool/int/float/str values)
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    #: help for its own keys
    HELP: ClassVar[dict[str, str]] = {}
    #: its keys that name files (artefacts, checkpoints): made absolute and checked when resolved
    PATH_KEYS: ClassVar[tuple[str, ...]] = ()
    #: the encoder ``export``/``linprobe`` use unless told otherwise
    default_encoder: ClassVar[str] = ""
    #: how the method's batch is collated (a tuple of view tensors by default)
    collate: ClassVar[Callable] = staticmethod(default_collate)
    #: its offline view stage (``sslkit sample-views -m NAME``), if it has one
    view_stage: ClassVar[type[ViewStage] | None] = None

    def __init__(self, cfg: dict):
        super().__init__()
        self.backbone = build_backbone(cfg["arch"])

    @property
    def feat_dim(self) -> int:
        return self.backbone.feat_dim

    def forward(self, batch) -> dict[str, torch.Tensor]:
        return self.forward_train(batch)

    @abc.abstractmethod
    def forward_train(self, batch) -> dict[str, torch.Tensor]:
        """The loss of one (local) batch: ``{"loss": scalar with grad, …other detached scalars}``."""

    def on_after_step(self, step: int, total_steps: int) -> dict[str, float]:
        """Called after optimizer step ``step`` (0-based) of ``total_steps``; returns values to log."""
        return {}

    @abc.abstractmethod
    def encoders(self) -> dict[str, str]:
        """``{encoder name: state_dict key prefix}``, e.g. ``{"online": "backbone."}``."""

    def param_groups(self) -> list[dict] | None:
        """Optimizer groups ``[{"params": [...]}, {"params": [...], "fixed_lr": True}, …]`` covering every
        trainable parameter once, or None (the default: the optimizer's own grouping). A group with
        ``fixed_lr`` keeps the peak lr (the schedule's base value) instead of following the schedule."""
        return None
    def export_parts(self) -> dict[str, dict[str, str]]:
        """Exportable detector parts per encoder, ``{encoder: {part: state_dict prefix}}``; parts are
        ``fpn`` and ``head`` (see the module docstring). Saved in every checkpoint as ``parts``."""
        return {}

    def ema_state(self) -> dict | None:
        """The checkpoint's ``ema`` entry: the momentum schedule and which module follows which, or None."""
        return None

    @classmethod
    @abc.abstractmethod
    def make_transform(cls, cfg: dict) -> Callable:
        """The view pipeline: a decoded HWC uint8 RGB array → one training sample."""

    @classmethod
    def make_dataset(cls, cfg: dict, source) -> Dataset:
        """The training dataset over an :class:`~sslkit.io.images.ImageSource`.

        The engine's sampler asks for items by ``(epoch, index)`` keys; an item is
        ``(sample, skipped)`` with ``skipped`` a list of ``(file_name, reason)`` of unreadable images
        it replaced (see :class:`sslkit.views.dataset.ImageDataset`). Samples are collated by ``collate``.
        """

        return ImageDataset(source, cls.make_transform(cfg), seed=cfg["seed"])

    @classmethod
    def make_plan_dataset(cls, cfg: dict, source, mode: str) -> Dataset | None:
        """Its views as a :class:`~sslkit.views.plan.PlanDataset` (``mode`` "cpu": rendered in the
        loader worker, "gpu": on the training device), or None when it has no plan.

        The base class plans the views of a method that keeps the base ``make_dataset`` and
        ``collate`` and whose ``make_transform`` is a plain ``MultiView`` (one row per ViewAug);
        any other method returns None unless it overrides this.
        """

        if cls.make_dataset.__func__ is not Method.make_dataset.__func__ or cls.collate is not default_collate:
            return None
        transform = cls.make_transform(cfg)
        if type(transform) is not MultiView:
            return None
        return MultiViewPlan(source, transform.views, cfg["seed"], mode)

    @classmethod
    def validate(cls, cfg: dict) -> None:
        """Method-specific config checks; raise :class:`~sslkit.errors.UserError`."""
