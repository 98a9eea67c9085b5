"""The dataset-level driver of ``sslkit propose``: shards, a process pool, resumable chunks, merge.

Flow of one run (docs/proposals.md, "Scale: workers, resume, shards"):

1. Take the images of this shard (``--shard i/n``: the contiguous source rows
   ``[floor(i*N/n), floor((i+1)*N/n))``) and cut them into chunks of
   ``chunk_size`` consecutive images.
2. Chunks already saved in the stage folder ``<output>.partial/`` by an
   earlier, interrupted run of the same job are kept; the others are computed
   by ``workers`` spawned processes, one image per task, results collected in
   order through a bounded window, and each finished chunk is saved
   atomically (:class:`~sslkit.io.artefacts.ChunkStage`).
3. When every chunk is saved, the artefact is assembled chunk by chunk with
   :class:`~sslkit.io.artefacts.ArtefactWriter` (temporary file + rename) and
   the stage folder is removed.

Memory is bounded by one chunk plus the in-flight window, whatever the
dataset size.  The output depends only on the images and parameters, not on
``workers``, ``chunk_size`` or interruptions.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from sslkit.errors import UserError
from sslkit.io.artefacts import Artefact, ArtefactWriter, ChunkStage, Record, check_output
from sslkit.io.images import ImageRecord, ImageSource
from sslkit.proposals.algorithms import Algorithm, process_image

FORMAT = "sslkit.proposals"
DEFAULT_CHUNK_SIZE = 32
#: fault injection for tests: SIGKILL this process after saving that many chunks (simulates ``kill -9``)
KILL_AFTER_ENV = "SSLKIT_TEST_KILL_AFTER_CHUNKS"


def default_workers() -> int:
    """Every core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` with ``0 <= i < n`` → ``(i, n)``."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r} is not of the form i/n", None, "e.g. --shard 0/4 … --shard 3/4") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text}: need 0 <= i < n", None, "shards are numbered 0 … n-1")
    return i, n


def shard_range(num_images: int, index: int, count: int) -> tuple[int, int]:
    """Contiguous source rows of shard ``index`` of ``count``: sizes differ by at most one."""
    return index * num_images // count, (index + 1) * num_images // count


def stage_dir_for(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def _digest(records: Sequence[ImageRecord]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.image_id}\t{r.file_name}\n".encode())
    return h.hexdigest()


def source_params(source: ImageSource) -> dict:
    """Where the images are, recorded so ``sslkit show`` finds them without flags."""
    d = {"kind": source.kind, "root": str(Path(source.root).resolve()), "num_images": len(source)}
    if source.coco_path is not None:
        d["coco"] = str(Path(source.coco_path).resolve())
    return d


def job_params(source: ImageSource, algo: Algorithm) -> dict:
    """Everything that determines the output, except the shard."""
    import cv2

    return {**algo.params(), "source": source_params(source), "opencv_version": cv2.__version__}


def job_id(base: dict, source: ImageSource) -> str:
    """What makes shards parts of one job: the parameters and the image list, not where the images are
    mounted (cluster nodes may see them under different paths)."""
    key = {k: v for k, v in base.items() if k != "source"}
    key["source"] = {"kind": source.kind, "images": _digest(source.records)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


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
    from sslkit.console import info, progress

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
    chunks = [records[k:k + chunk_size] for k in range(0, len(records), chunk_size)]
    ragged, maps = algo.fields()

    from sslkit import __version__

    fingerprint = {"params": params, "images": _digest(records), "chunk_size": chunk_size,
                   "sslkit_version": __version__}
    stage_dir = stage_dir_for(output)
    try:
        stage = ChunkStage(stage_dir, fingerprint)
    except UserError:
        if not overwrite:
            raise
        ChunkStage(stage_dir, json.loads((stage_dir / "stage.json").read_text())).remove()
        stage = ChunkStage(stage_dir, fingerprint)
    done = stage.done() & set(range(len(chunks)))
    todo = [k for k in range(len(chunks)) if k not in done]
    if done:
        info(f"resuming: {len(done)} of {len(chunks)} chunks already in {stage_dir}", quiet)

    kill_after = int(os.environ.get(KILL_AFTER_ENV, "0") or 0)
    t0 = time.perf_counter()
    computed = 0
    workers = max(1, min(workers, sum(len(chunks[k]) for k in todo) or 1))
    tasks = ((r.image_id, r.file_name, str(r.path)) for k in todo for r in chunks[k])
    label = f"{algo.name}" + (f" shard {shard[0]}/{shard[1]}" if shard else "")
    with progress(quiet) as bar:
        task = bar.add_task(label, total=len(records), completed=sum(len(chunks[k]) for k in done))
        results = _results(algo, tasks, workers)
        try:
            for saved, k in enumerate(todo, start=1):
                recs, skipped = [], []
                for _ in chunks[k]:
                    res = next(results)
                    (recs if isinstance(res, Record) else skipped).append(res)
                    bar.advance(task)
                stage.save(k, recs, skipped)
                computed += len(chunks[k])
                if kill_after and saved >= kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
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

    all_skipped: list[tuple[str, str]] = []
    with ArtefactWriter(output, FORMAT, params=params, ragged=ragged, label_maps=maps) as w:
        for k in range(len(chunks)):
            recs, skipped = stage.load(k)
            w.add_many(recs, skipped)
            all_skipped += skipped
    stage.remove()
    return Summary(output, w.num_images, all_skipped, seconds, computed, len(done))


def merge_shards(inputs: Sequence[Path], output: Path, *, overwrite: bool = False, quiet: bool = False) -> Summary:
    """Join the shard files of one job into the file a single run would have written."""
    from sslkit.console import progress

    output = Path(output)
    if any(Path(p).resolve() == output.resolve() for p in inputs):
        raise UserError("the merge output is one of its inputs", output, "choose another -o")
    check_output(output, FORMAT, overwrite)
    shards = []
    for p in inputs:
        a = Artefact(p, FORMAT)
        s = a.params.get("shard")
        if not s:
            a.close()
            raise UserError("not a shard (it was made without --shard)", p, "merge only files made with --shard i/n")
        shards.append((s, a))
    try:
        first, fa = shards[0]
        base = {k: v for k, v in fa.params.items() if k != "shard"}
        by_index: dict[int, Path] = {}
        for s, a in shards:
            if s["job"] != first["job"] or s["count"] != first["count"]:
                raise UserError(f"is a shard of another job than {fa.path} (different images or parameters)", a.path,
                                "merge the shards of one propose job")
            if s["index"] in by_index:
                raise UserError(f"shard {s['index']}/{s['count']} is given twice ({by_index[s['index']]})", a.path)
            by_index[s["index"]] = a.path
        missing = sorted(set(range(first["count"])) - set(by_index))
        if missing:
            raise UserError(f"missing shard(s) {', '.join(map(str, missing))} of {first['count']}", fa.path,
                            "pass every shard file of the job")
        shards.sort(key=lambda sa: sa[0]["index"])
        expect = 0
        for s, a in shards:
            if s["start"] != expect:
                raise UserError(f"shard {s['index']} starts at image {s['start']}, expected {expect}", a.path)
            expect = s["stop"]
        if expect != first["num_source_images"]:
            raise UserError(f"shards cover {expect} of {first['num_source_images']} images", fa.path)

        ragged = {n: fa.field_spec(n) for n in fa.ragged_names}
        maps = fa.map_names
        t0 = time.perf_counter()
        skipped_all: list[tuple[str, str]] = []
        total = sum(len(a) for _, a in shards)
        with progress(quiet) as bar, ArtefactWriter(output, FORMAT, params={**base, "shard": None},
                                                    ragged=ragged, label_maps=maps) as w:
            task = bar.add_task("merge", total=total)
            for _, a in shards:
                for rec in a.records(list(ragged), maps):
                    w.add(rec)
                    bar.advance(task)
                for fn, why in a.skipped:
                    w.add_skipped(fn, why)
                    skipped_all.append((fn, why))
    finally:
        for _, a in shards:
            a.close()
    return Summary(output, total, skipped_all, time.perf_counter() - t0, total, 0)
