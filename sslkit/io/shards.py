"""Jobs split across machines (``--shard i/n``) and the one merger that joins their files.

A shard computes the contiguous rows ``[floor(i*N/n), floor((i+1)*N/n))`` of a job's N images
(:func:`shard_range`) and records ``params["shard"] = {index, count, start, stop, <total>, job}``,
where ``job`` (:func:`job_id`) names everything the output depends on except the shard.
:func:`merge_shards` checks that the files are every shard of one job and writes the file a single
run would have written. Two layouts exist: a shard file holds only its rows (``sslkit propose``),
or the whole image table of which only its rows were computed (ORL stage 2, ``whole_table``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sslkit.console import progress
from sslkit.errors import UserError
from sslkit.io.artefacts import Artefact, ArtefactWriter, Record, check_output


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
    """Contiguous rows of shard ``index`` of ``count``: sizes differ by at most one."""
    return index * num_images // count, (index + 1) * num_images // count


def records_digest(records: Iterable) -> str:
    """sha256 of the ``(image_id, file_name)`` list: which images, in which order."""
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.image_id}\t{r.file_name}\n".encode())
    return h.hexdigest()


def job_id(base: dict, source) -> str:
    """What makes shards parts of one job: the parameters and the image list of ``source`` (an
    :class:`~sslkit.io.images.ImageSource`), not where the images are mounted (cluster nodes may
    see them under different paths)."""
    key = {k: v for k, v in base.items() if k != "source"}
    key["source"] = {"kind": source.kind, "images": records_digest(source.records)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Merged:
    output: Path
    num_images: int
    skipped: list[tuple[str, str]]
    seconds: float


def _open_shards(inputs: Sequence[Path], fmt: str, check: Callable[[Artefact], None] | None) -> list[Artefact]:
    shards: list[Artefact] = []
    try:
        for q in inputs:
            a = Artefact(q, fmt)
            shards.append(a)
            if check is not None:
                check(a)
            if not a.params.get("shard"):
                raise UserError("not a shard (it was made without --shard)", q, "merge only files made with --shard i/n")
    except BaseException:
        for a in shards:
            a.close()
        raise
    return shards


def _check_one_job(shards: list[Artefact], command: str, whole_table: bool, total_key: str) -> None:
    first, fa = shards[0].params["shard"], shards[0]
    seen: dict[int, Path] = {}
    for a in shards:
        s = a.params["shard"]
        if s["job"] != first["job"] or s["count"] != first["count"] or (whole_table and a.file_name != fa.file_name):
            raise UserError(f"is a shard of another job than {fa.path} (different images or parameters)", a.path,
                            f"merge the shards of one {command} job")
        if s["index"] in seen:
            raise UserError(f"shard {s['index']}/{s['count']} is given twice ({seen[s['index']]})", a.path)
        seen[s["index"]] = a.path
    missing = sorted(set(range(first["count"])) - set(seen))
    if missing:
        raise UserError(f"missing shard(s) {', '.join(map(str, missing))} of {first['count']}", fa.path,
                        "pass every shard file of the job")
    shards.sort(key=lambda a: a.params["shard"]["index"])
    expect = 0
    for a in shards:
        s = a.params["shard"]
        if s["start"] != expect:
            raise UserError(f"shard {s['index']} starts at image {s['start']}, expected {expect}", a.path)
        expect = s["stop"]
    if expect != first[total_key]:
        raise UserError(f"shards cover {expect} of {first[total_key]} images", fa.path)


def merge_shards(inputs: Sequence[Path], output: Path, fmt: str, *, command: str, overwrite: bool = False,
                 quiet: bool = False, whole_table: bool = False, total_key: str = "num_source_images",
                 check: Callable[[Artefact], None] | None = None, on_record: Callable[[Record], None] | None = None,
                 final_attrs: Callable[[], dict] | None = None) -> Merged:
    """Join the shard files of one ``command`` job into ``output``.

    ``whole_table``: every shard file lists all images and contributes its rows ``[start, stop)``
    (and the one skipped list they share); otherwise a shard file holds just its rows. ``check``
    vets each file before it is taken as a shard, ``on_record`` sees every merged row, and
    ``final_attrs()`` gives attributes written last (counts over the merged rows); the other
    kind-specific attributes and the params (with ``shard: None``) are the first shard's.
    """
    output = Path(output)
    if any(Path(q).resolve() == output.resolve() for q in inputs):
        raise UserError("the merge output is one of its inputs", output, "choose another -o")
    check_output(output, fmt, overwrite)
    t0 = time.perf_counter()
    shards = _open_shards(inputs, fmt, check)
    try:
        _check_one_job(shards, command, whole_table, total_key)
        fa = shards[0]
        ragged = {n: fa.field_spec(n) for n in fa.ragged_names}
        maps = fa.map_names
        rows = [range(a.params["shard"]["start"], a.params["shard"]["stop"]) if whole_table else range(len(a))
                for a in shards]
        skipped = list(fa.skipped) if whole_table else [s for a in shards for s in a.skipped]
        with progress(quiet) as bar, ArtefactWriter(output, fmt, params={**fa.params, "shard": None}, ragged=ragged,
                                                    label_maps=maps, attrs=fa.kind_attrs) as w:
            task = bar.add_task("merge", total=sum(len(r) for r in rows))
            for fn, why in skipped:
                w.add_skipped(fn, why)
            for a, r in zip(shards, rows, strict=True):
                for rec in a.records(list(ragged), maps, rows=r):
                    if on_record is not None:
                        on_record(rec)
                    w.add(rec)
                    bar.advance(task)
            if final_attrs is not None:
                w.set_attrs(**final_attrs())
    finally:
        for a in shards:
            a.close()
    return Merged(output, w.num_images, skipped, time.perf_counter() - t0)
