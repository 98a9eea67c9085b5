"""HDF5 artefacts, chunk staging and checkpoints: round trips, validation, atomicity."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from sslkit.errors import FormatError, UserError
from sslkit.io.artefacts import FORMAT_VERSIONS, Artefact, ArtefactWriter, Record, check_output
from sslkit.io.checkpoint import (
    load_checkpoint,
    load_detectron2_pkl,
    load_weights_file,
    rng_state,
    save_checkpoint,
    save_detectron2_pkl,
    set_rng_state,
)
from sslkit.io.chunks import ChunkStage


def _records(n=5, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = 10 + i, 12 + 2 * i
        lm = rng.integers(0, 1000, size=(h, w)).astype(np.uint16)  # ids above 255
        out.append(Record(100 + i, f"d/f{i}.jpg", h, w, {"boxes": rng.random((i, 4)).astype(np.float32)},
                          {"masks": lm}))
    return out


def _write(path, recs, **kw):
    with ArtefactWriter(path, "sslkit.proposals", params={"algo": "x", "n": 3},
                        ragged={"boxes": ("float32", (4,))}, label_maps=["masks"], **kw) as w:
        for r in recs:
            w.add(r)
        w.add_skipped("bad.jpg", "truncated image file")


def test_roundtrip_ragged_masks_and_table(tmp_path):
    recs = _records()
    p = tmp_path / "a.h5"
    _write(p, recs, flush_every=2)
    with Artefact(p, "sslkit.proposals") as a:
        assert len(a) == 5 and a.params == {"algo": "x", "n": 3}
        assert a.ragged_names == ["boxes"] and a.map_names == ["masks"]
        assert a.counts("boxes").tolist() == [0, 1, 2, 3, 4]
        for i, r in enumerate(recs):
            assert np.array_equal(a.ragged("boxes", i), r.ragged["boxes"])
            lm = a.label_map("masks", i)
            assert lm.dtype == np.uint16 and np.array_equal(lm, r.label_maps["masks"])
        assert lm.max() > 255
        assert a.index_of("d/f3.jpg") == 3 and a.index_of(104) == 4 and a.index_of("102") == 2
        assert a.skipped == [("bad.jpg", "truncated image file")]
        assert [b.shape[0] for _, b in a.iter_ragged("boxes", block=2)] == [0, 1, 2, 3, 4]
        assert a.attrs["format_version"] == FORMAT_VERSIONS["sslkit.proposals"]
        with pytest.raises(UserError, match="no image"):
            a.index_of("nope.jpg")


def test_public_accessors_and_kind_attrs(tmp_path):
    """What other modules read and write instead of the HDF5 objects: whole fields, map sizes, rows by
    name, single records, and kind-specific attributes set once a job knows its counts."""
    recs = _records(4)
    p = tmp_path / "a.h5"
    with ArtefactWriter(p, "sslkit.proposals", params={}, ragged={"boxes": ("float32", (4,))}, label_maps=["masks"],
                        attrs={"views_like": "x"}) as w:
        w.add_many(recs)
        w.set_attrs(num_boxes=6)
        with pytest.raises(ValueError, match="standard attributes"):
            w.set_attrs(num_images=1)
    with Artefact(p) as a:
        assert a.kind_attrs == {"views_like": "x", "num_boxes": 6}
        np.testing.assert_array_equal(a.ragged_data("boxes"), np.concatenate([r.ragged["boxes"] for r in recs]))
        assert a.map_sizes("masks").tolist() == [[r.height, r.width] for r in recs]
        assert a.row("d/f2.jpg") == 2 and a.row("nope.jpg") is None
        rec = a.record(3)
        assert (rec.image_id, rec.file_name) == (103, "d/f3.jpg")
        assert np.array_equal(rec.label_maps["masks"], recs[3].label_maps["masks"])
        assert [r.file_name for r in a.records(["boxes"], [], rows=[2, 0])] == ["d/f2.jpg", "d/f0.jpg"]


def test_reader_validation_one_line(tmp_path):
    p = tmp_path / "a.h5"
    _write(p, _records(2))
    with pytest.raises(FormatError, match="is a sslkit.proposals file, expected sslkit.views"):
        Artefact(p, "sslkit.views")
    txt = tmp_path / "t.h5"
    txt.write_text("hello")
    with pytest.raises(FormatError, match="not an HDF5 file"):
        Artefact(txt)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = 1
    with pytest.raises(FormatError, match="not an sslkit artefact"):
        Artefact(plain)
    with h5py.File(p, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(FormatError, match="newer than this sslkit reads"):
        Artefact(p)
    with h5py.File(p, "a") as f:
        f.attrs["format_version"] = 1
        f.attrs["complete"] = False
    with pytest.raises(FormatError, match="incomplete"):
        Artefact(p)
    with pytest.raises(UserError, match="no such file"):
        Artefact(tmp_path / "missing.h5")


def test_failed_writer_leaves_nothing_and_keeps_old_file(tmp_path):
    p = tmp_path / "a.h5"
    _write(p, _records(2))
    before = p.read_bytes()
    with pytest.raises(RuntimeError):
        with ArtefactWriter(p, "sslkit.proposals", ragged={"boxes": ("float32", (4,))}) as w:
            w.add(_records(1)[0])
            raise RuntimeError("crash mid-write")
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == ["a.h5"]


def test_killed_writer_never_leaves_a_valid_file(tmp_path):
    """SIGKILL a writer mid-stream: nothing under the final name, and its temp file is refused."""
    out = tmp_path / "k.h5"
    code = f"""
import numpy as np, time
from sslkit.io.artefacts import ArtefactWriter, Record
w = ArtefactWriter({str(out)!r}, "sslkit.proposals", ragged={{"boxes": ("float32", (4,))}}, flush_every=1)
for i in range(100000):
    w.add(Record(i, f"f{{i}}.jpg", 5, 5, {{"boxes": np.zeros((3, 4))}}))
    if i == 20:
        print("started", flush=True)
    time.sleep(0.001)
w.close()
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    temps = list(tmp_path.glob(".k.h5.*.tmp"))
    assert temps, "the writer's temporary file should be there (it was killed)"
    with pytest.raises(FormatError):
        Artefact(temps[0])


def test_check_output_refuses_any_existing_file_without_overwrite(tmp_path):
    """Issue 22: an existing artefact is never replaced silently, even by one of its own kind."""
    p = tmp_path / "a.h5"
    _write(p, _records(1))
    with pytest.raises(UserError, match="already exists and is a sslkit.proposals file"):
        check_output(p, "sslkit.proposals", overwrite=False)
    check_output(p, "sslkit.proposals", overwrite=True)
    with pytest.raises(UserError, match="already exists and is a sslkit.proposals file"):
        check_output(p, "sslkit.views", overwrite=False)
    other = tmp_path / "notes.txt"
    other.write_text("precious")
    with pytest.raises(UserError, match="not an sslkit artefact"):
        check_output(other, "sslkit.proposals", overwrite=False)
    check_output(other, "sslkit.proposals", overwrite=True)


def test_chunk_stage_roundtrip_and_fingerprint(tmp_path):
    st = ChunkStage(tmp_path / "stage", {"algo": "ss", "n": 5})
    recs = _records(3)
    st.save(0, recs[:2], [("x.jpg", "corrupt")])
    st.save(2, recs[2:], [])
    (tmp_path / "stage" / ".chunk-000001.npz.abc.tmp").write_bytes(b"half")  # a killed save
    assert st.done() == {0, 2}
    back, skipped = st.load(0)
    assert skipped == [("x.jpg", "corrupt")]
    assert back[1].file_name == recs[1].file_name
    assert np.array_equal(back[1].ragged["boxes"], recs[1].ragged["boxes"])
    assert np.array_equal(back[1].label_maps["masks"], recs[1].label_maps["masks"])
    assert ChunkStage(tmp_path / "stage", {"algo": "ss", "n": 5}).done() == {0, 2}
    with pytest.raises(UserError, match="different inputs or parameters"):
        ChunkStage(tmp_path / "stage", {"algo": "fh", "n": 5})
    st.remove()
    assert not (tmp_path / "stage").exists()


def test_checkpoint_roundtrip_weights_only(tmp_path):
    p = tmp_path / "c.pth"
    sd = {"backbone.w": torch.randn(3, 3)}
    save_checkpoint(p, {"method": "byol", "config": {"arch": "resnet_tiny", "lr": 0.1}, "model": sd,
                        "epoch": 2, "step": 10, "rng": rng_state()})
    ck = load_checkpoint(p)
    assert ck["format"] == "sslkit.checkpoint" and ck["method"] == "byol" and ck["step"] == 10
    assert torch.equal(ck["model"]["backbone.w"], sd["backbone.w"])
    assert load_weights_file(p)[0] == "checkpoint"


def test_rng_state_restores_all_generators():
    import random

    st = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(st)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    p = tmp_path / "evil.pth"
    torch.save({"format": "sslkit.checkpoint", "model": _Evil()}, p)
    with pytest.raises(FormatError, match="refused to load"):
        load_checkpoint(p)
    pk = tmp_path / "evil.pkl"
    pk.write_bytes(pickle.dumps({"model": _Evil()}))
    with pytest.raises(FormatError, match="not a detectron2 weight file"):
        load_detectron2_pkl(pk)


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "sd.pth"
    torch.save({"w": torch.zeros(2)}, p)
    with pytest.raises(FormatError, match="not an sslkit checkpoint"):
        load_checkpoint(p)
    assert load_weights_file(p)[0] == "state_dict"
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(FormatError, match="not a readable PyTorch file"):
        load_weights_file(bad)


def test_detectron2_pkl_roundtrip(tmp_path):
    p = save_detectron2_pkl(tmp_path / "w.pkl", {"stem.conv1.weight": np.ones((2, 3), np.float32)},
                            {"matching_heuristics": False})
    d = load_detectron2_pkl(p)
    assert d["__author__"] == "sslkit" and np.array_equal(d["model"]["stem.conv1.weight"], np.ones((2, 3)))
