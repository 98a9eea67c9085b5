"""The offline view stage of a method: what ``sslkit sample-views -m NAME`` runs.

A method whose views need work done once per dataset (ORL's kNN RoI pairs, UniVIP's candidate
boxes), or whose online views a user wants to freeze and look at (MCL's montages, RegionCL's
swaps), declares it as ``Method.view_stage``: a :class:`ViewStage` subclass. ``sample-views``
finds every stage through the method registry (no second registry): ``-m`` takes the stage's
``name`` or the name of any method that declares it.

A stage declares its settings as a typed spec (``SETTINGS``, resolved by :func:`sslkit.config.resolve`
like every other stage's), which inputs it reads (``INPUTS``: ``proposals``/``coco`` boxes), and
implements :meth:`ViewStage.run`; a stage that can be split across machines (``SHARDABLE``) takes
its part from ``StageInputs.shard`` and implements :meth:`ViewStage.merge` (``--shard i/n`` /
``--merge``). It writes one ``sslkit.views`` artefact whose ``views_kind`` is ``VIEWS_KIND``.

``sample-views`` derives everything else from these declarations: its flags map onto the
settings of the same name (``--pair-ratio`` → ``pair_ratio``; any setting also as ``--set
KEY=VALUE``), a flag the chosen stage has no setting or input for is refused, and ``--help``
lists every stage's ``SUMMARY``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from sslkit.config import Key
from sslkit.errors import UserError


@dataclass
class StageResult:
    """What a stage reports: the file written, one summary line for the console, the JSON summary,
    and the images it skipped as ``(file_name, reason)``."""

    output: Path
    line: str
    summary: dict[str, Any]
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class StageInputs:
    """What a stage reads besides the images and its settings (each None unless given): the box
    files, and for a ``SHARDABLE`` stage the part of the job to compute."""

    proposals: Path | None = None  # an sslkit.proposals artefact (boxes or label maps)
    coco: Path | None = None  # a COCO instances json (ground-truth boxes)
    source_kind: str | None = None  # "proposals" or "gt" (--source)
    shard: tuple[int, int] | None = None  # (i, n): part i of n (--shard i/n)


class ViewStage(abc.ABC):
    #: the ``-m`` name (also the ``views_kind`` family shown by ``sslkit info``)
    name: ClassVar[str] = ""
    #: ``views_kind`` attribute of the artefact it writes
    VIEWS_KIND: ClassVar[str] = ""
    #: one paragraph for ``sslkit sample-views --help``
    SUMMARY: ClassVar[str] = ""
    #: typed settings (``--set KEY=VALUE``, and the flags of ``sample-views`` that map onto them)
    SETTINGS: ClassVar[dict[str, Key]] = {}
    #: which of ``StageInputs``' files it reads: a subset of {"proposals", "coco"}
    INPUTS: ClassVar[frozenset[str]] = frozenset()
    #: whether it supports ``--shard i/n`` and ``--merge``
    SHARDABLE: ClassVar[bool] = False

    @classmethod
    @abc.abstractmethod
    def run(cls, source, output: Path, settings: dict, inputs: StageInputs, *, overwrite: bool,
            quiet: bool) -> StageResult:
        """Compute the views of every image of ``source`` (an :class:`~sslkit.io.images.ImageSource`)
        and write them to ``output`` atomically (or resumably); raise ``UserError`` for bad input."""

    @classmethod
    def merge(cls, shards: list[Path], output: Path, *, overwrite: bool, quiet: bool) -> StageResult:
        """Join the shard files of one ``--shard i/n`` job into ``output``."""
        raise UserError(f"sample-views -m {cls.name} makes no shards to merge")
