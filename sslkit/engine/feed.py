"""What the training loop iterates: the loader's batches as the method's batches on the device.

``data_path`` (engine key) chooses where views are decoded and augmented; all three draw the same
crops, flips and factors from the same per-sample seeds (:mod:`sslkit.transforms.params`), so a run
may switch between them on resume:

* ``cpu`` (default): loader workers read the JPEG header, draw the views, decode once at a reduced
  size where every view allows and render with OpenCV (:mod:`sslkit.views.plan`); uint8 views travel
  to the device, which normalises them. Methods without a plan use their own ``make_dataset``.
* ``gpu``: workers only read file bytes (and DetCon's masks / ORL's and UniVIP's boxes, carried in
  the worker as geometry); decoding (nvJPEG) and augmentation run batched on the training device,
  ``data_prefetch`` batches ahead on a side CUDA stream (:mod:`sslkit.views.plan.device`). On a CPU
  run the same code runs on CPU tensors. A method without a plan is refused.
* ``pil``: the reference ``torchvision.transforms.v2`` / PIL pipelines of ``Method.make_dataset``.

:func:`make_feed` builds the dataset, the loader's collate and :meth:`Feed.batches`, the one thing
the loop calls per step.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from sslkit.engine.data import SkipAwareCollate
from sslkit.engine.loop import to_device
from sslkit.errors import UserError

DATA_PATHS = ("cpu", "gpu", "pil")


@dataclass
class Feed:
    """The training data of one rank: ``dataset`` and ``collate`` for the DataLoader, and
    :meth:`batches`, which turns the loader's batches into ``(method batch on device, skipped)``."""

    dataset: torch.utils.data.Dataset
    collate: Callable
    path: str
    device: torch.device
    channels_last: bool
    finish: Callable  # a collated loader batch → (the method's batch on the device, extra skipped files)
    prefetch: int = 0

    def batches(self, loader) -> Iterator[tuple[object, list[tuple[str, str]]]]:
        it = (self._one(b) for b in loader)
        if self.prefetch > 0 and self.device.type == "cuda":
            return _prefetched(it, self.device, self.prefetch)
        return it

    def _one(self, item):
        batch, skipped = item
        out, more = self.finish(batch)
        return to_device(out, self.device, self.channels_last), skipped + more


def make_feed(method_cls, cfg: dict, source, device: torch.device) -> Feed:
    """The dataset, collate and device step of ``cfg["data_path"]`` for ``method_cls``."""
    path = cfg["data_path"]
    mode = path if path in ("cpu", "gpu") else None
    plan = method_cls.make_plan_dataset(cfg, source, mode) if mode else None
    if path == "gpu" and plan is None:
        raise UserError(f"{method_cls.name} has no GPU data path (its views are not planned)", None,
                        "use --data-path cpu")
    common = dict(path=path, device=device, channels_last=cfg["channels_last"])
    if plan is None:  # pil, or a method without a plan on the cpu path: its own pipeline
        return Feed(method_cls.make_dataset(cfg, source), SkipAwareCollate(method_cls.collate),
                    finish=lambda b: (b, []), **common)
    if mode == "cpu":
        return Feed(plan, SkipAwareCollate(plan.collate), finish=lambda b: (plan.finish(b, device), []), **common)
    try:
        from sslkit.views.plan.device import DeviceViews  # kornia: the optional `gpu` extra
    except ImportError as e:
        raise UserError(f"--data-path gpu needs kornia ({e})", None, "pip install 'sslkit[gpu]'") from None
    return Feed(plan, SkipAwareCollate(plan.collate), finish=DeviceViews(plan, device), prefetch=cfg["data_prefetch"],
                **common)


_END = object()


def _prefetched(it: Iterator, device: torch.device, depth: int) -> Iterator:
    """Run ``it`` (decode + augment on the device) ``depth`` batches ahead in a thread. On CUDA it
    runs on a side stream; each batch is handed over with an event the main stream waits on, and
    its tensors are recorded on the main stream so the caching allocator keeps them until it is done.
    Errors in the thread are raised here; leaving the loop early stops the thread."""
    cuda = device.type == "cuda"
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    stream = torch.cuda.Stream(device) if cuda else None

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            if cuda:
                torch.cuda.set_device(device)
            with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                for item in it:
                    event = None
                    if cuda:
                        event = torch.cuda.Event()
                        event.record(stream)
                    if not put((item, event)):
                        return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            put(e)

    thread = threading.Thread(target=work, name="sslkit-device-views", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            (batch, skipped), event = item
            if cuda:
                current = torch.cuda.current_stream(device)
                current.wait_event(event)
                _record(batch, current)
            yield batch, skipped
    finally:
        stop.set()
        thread.join()


def _record(x, stream) -> None:
    if isinstance(x, torch.Tensor):
        if x.is_cuda:
            x.record_stream(stream)
    elif isinstance(x, (list, tuple)):
        for v in x:
            _record(v, stream)
    elif isinstance(x, dict):
        for v in x.values():
            _record(v, stream)
