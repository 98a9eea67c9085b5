"""The dataset-level driver of ``sslkit propose``: shards, a process pool, resumable chunks, merge.

Flow of one run (docs/proposals.md, "Scale: workers, resume, shards"):

1. Take the images of this shard (``--shard i/n``: the contiguous source rows
   ``[floor(i*N/n), floor((i+1)*N/n))``) and cut them into chunks of
   ``chunk_size`` consecutive images.
2. Chunks already saved in the stage folder ``<output>.partial/`` by an
   earlier, interrupted run of the same job are kept; the others are computed
   by ``workers`` spawned processes, one image per task, results collected in
   order through a bounded window, and each finished chunk is saved
   atomically (:class:`~sslkit.io.chunks.ChunkStage`).
3. When every chunk is saved, the artefact is assembled chunk by chunk with
   :class:`~sslkit.io.artefacts.ArtefactWriter` (temporary file + rename) and
   the stage folder is removed.

Shards are joined by :func:`sslkit.io.shards.merge_shards`. Memory is bounded by one chunk plus the in-flight window, whatever the
dataset size.  The output depends only on the images and parameters, not on
``workers``, ``chunk_size`` or interruptions.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from sslkit import __version__
from sslkit.console import info, progress
from sslkit.errors import UserError
from sslkit.io.artefacts import ArtefactWriter, Record, check_output
from sslkit.io.chunks import ChunkStage, chunk_ranges, partial_dir
from sslkit.io.images import ImageSource
from sslkit.io.shards import job_id, merge_shards, records_digest, shard_range
from sslkit.proposals.algorithms import Algorithm, process_image

FORMAT = "sslkit.proposals"
DEFAULT_CHUNK_SIZE = 32


def default_workers() -> int:
    """Every core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def job_params(source: ImageSource, algo: Algorithm) -> dict:
    """Everything that determines the output, except the shard."""
    import cv2

    return {**algo.params(), "source": source.location(), "opencv_version": cv2.__version__}


# -- worker side ---------------------------------------------------------------------------------------------
def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:  # parent was killed (kill -9): do not linger as an orphan
            os._exit(1)
        time.sleep(1.0)


def _init_worker(parent_pid: int | None) -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would oversubscribe
    if parent_pid is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _run_one(algo: Algorithm, task: tuple[int, str, str]) -> Record | tuple[str, str]:
    import cv2

    try:
        return process_image(algo, task)
    except cv2.error as e:  # OpenCV failing on one odd image must not end a dataset-long job
        return task[1], f"OpenCV failed: {str(e).strip().splitlines()[-1][:200]}"


def _results(algo: Algorithm, tasks: Iterator[tuple[int, str, str]], workers: int) -> Iterator:
    """Per-image results in task order; at most ``4 * workers`` images in flight."""
    if workers <= 1:
        _init_worker(None)
        for t in tasks:
            yield _run_one(algo, t)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ex = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(os.getpid(),))
    ok = False
    try:
        window: deque = deque()
        for t in tasks:
            window.append(ex.submit(_run_one, algo, t))
            if len(window) >= 4 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
        ok = True
    finally:
        ex.shutdown(wait=ok, cancel_futures=not ok)


# -- parent side ---------------------------------------------------------------------------------------------
@dataclass
class Summary:
    output: Path
    num_images: int
    skipped: list[tuple[str, str]]
    seconds: float
    computed: int
    resumed_chunks: int

    @property
    def rate(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def run_propose(
    source: ImageSource,
    algo: Algorithm,
    output: Path,
    *,
    shard: tuple[int, int] | None = None,
    workers: int = 1,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    overwrite: bool = False,
    quiet: bool = False,
) -> Summary:
    """Compute ``algo`` over ``source`` (or one shard of it) into the artefact ``output``; resumable."""

    output = Path(output)
    check_output(output, FORMAT, overwrite)
    if chunk_size < 1:
        raise UserError("--chunk-size must be at least 1")
    base = job_params(source, algo)
    start, stop = 0, len(source)
    shard_info = None
    if shard is not None:
        start, stop = shard_range(len(source), *shard)
        shard_info = {"index": shard[0], "count": shard[1], "start": start, "stop": stop,
                      "num_source_images": len(source), "job": job_id(base, source)}
    params = {**base, "shard": shard_info}
    records = source.records[start:stop]
    chunks = [records[r.start:r.stop] for r in chunk_ranges(0, len(records), chunk_size)]
    ragged, maps = algo.fields()

    fingerprint = {"params": params, "images": records_digest(records), "chunk_size": chunk_size,
                   "sslkit_version": __version__}
    stage_dir = partial_dir(output)
    stage = ChunkStage(stage_dir, fingerprint, name="propose", overwrite=overwrite)
    todo = stage.pending(len(chunks))
    resumed = len(chunks) - len(todo)
    if resumed:
        info(f"resuming: {resumed} of {len(chunks)} chunks already in {stage_dir}", quiet)

    t0 = time.perf_counter()
    computed = 0
    workers = max(1, min(workers, sum(len(chunks[k]) for k in todo) or 1))
    tasks = ((r.image_id, r.file_name, str(r.path)) for k in todo for r in chunks[k])
    label = f"{algo.name}" + (f" shard {shard[0]}/{shard[1]}" if shard else "")
    with progress(quiet) as bar:
        task = bar.add_task(label, total=len(records), completed=len(records) - sum(len(chunks[k]) for k in todo))
        results = _results(algo, tasks, workers)
        try:
            for k in todo:
                recs, skipped = [], []
                for _ in chunks[k]:
                    res = next(results)
                    (recs if isinstance(res, Record) else skipped).append(res)
                    bar.advance(task)
                stage.save(k, recs, skipped)
                computed += len(chunks[k])
        except KeyboardInterrupt:
            info(f"interrupted: {len(stage.done())} of {len(chunks)} chunks are saved in {stage_dir}; "
                 "rerun the same command to resume", quiet)
            raise
        except BrokenProcessPool as e:
            raise RuntimeError(f"a worker process died ({e}; out of memory?); {len(stage.done())} of {len(chunks)} "
                               f"chunks are saved in {stage_dir}, rerun the same command to resume") from e
        finally:
            results.close()
    seconds = time.perf_counter() - t0

    if records and shard is None and not any(stage.count(k) for k in range(len(chunks))):
        first = next((sk[0] for k in range(len(chunks)) for sk in [stage.load(k)[1]] if sk), ("?", "unknown"))
        stage.remove()
        raise UserError(f"none of the {len(records)} images could be read (e.g. {first[0]}: {first[1]})",
                        source.coco_path or source.root, "check the folder or json; nothing was written")
    all_skipped: list[tuple[str, str]] = []
    with ArtefactWriter(output, FORMAT, params=params, ragged=ragged, label_maps=maps,
                        expected_bytes=stage.nbytes()) as w:
        for k in range(len(chunks)):
            recs, skipped = stage.load(k)
            w.add_many(recs, skipped)
            all_skipped += skipped
    stage.remove()
    return Summary(output, w.num_images, all_skipped, seconds, computed, resumed)


def merge_propose_shards(inputs: Sequence[Path], output: Path, *, overwrite: bool = False,
                         quiet: bool = False) -> Summary:
    """Join the shard files of one job into the file a single run would have written."""
    m = merge_shards(inputs, output, FORMAT, command="propose", overwrite=overwrite, quiet=quiet)
    return Summary(m.output, m.num_images, m.skipped, m.seconds, m.num_images, 0)
