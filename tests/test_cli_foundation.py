"""The CLI skeleton as a user meets it: help, version, one-line errors, `sslkit info`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch

from sslkit import __version__
from sslkit.io.artefacts import ArtefactWriter, Record
from sslkit.io.checkpoint import save_checkpoint


def sslkit(*args, check_rc=None):
    """Run the real entry point (python -m sslkit) and return (rc, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "sslkit", *map(str, args)], capture_output=True, text=True)
    if check_rc is not None:
        assert p.returncode == check_rc, (p.returncode, p.stdout, p.stderr)
    return p.returncode, p.stdout, p.stderr


def test_version_and_help():
    _, out, _ = sslkit("--version", check_rc=0)
    assert out.strip() == f"sslkit {__version__}"
    _, out, _ = sslkit("--help", check_rc=0)
    assert "info" in out
    _, out, _ = sslkit("info", "--help", check_rc=0)
    assert "Example" in out


def test_user_error_is_one_line_exit_2_no_traceback(tmp_path):
    rc, out, err = sslkit("info", tmp_path / "missing.h5")
    assert rc == 2
    assert err.strip() == f"error: {tmp_path / 'missing.h5'}: no such file"
    assert "Traceback" not in err
    rc, _, err = sslkit("--verbose", "info", tmp_path / "missing.h5")
    assert rc == 2 and "Traceback" in err and err.strip().endswith("no such file")


def test_unknown_command_is_usage_error():
    rc, _, err = sslkit("frobnicate")
    assert rc == 2 and "No such command" in err


def test_info_on_artefact_json(tmp_path):
    p = tmp_path / "p.h5"
    with ArtefactWriter(p, "sslkit.proposals", params={"algo": "grid"}, ragged={"boxes": ("float32", (4,))},
                        label_maps=["masks"], command="sslkit propose x -o p.h5") as w:
        for i in range(3):
            w.add(Record(i, f"{i}.jpg", 4, 6, {"boxes": np.zeros((i, 4))}, {"masks": np.full((4, 6), 999)}))
        w.add_skipped("broken.jpg", "truncated image file")
    _, out, _ = sslkit("info", p, "--json", check_rc=0)
    d = json.loads(out)
    assert d["kind"] == "sslkit.proposals" and d["num_images"] == 3
    assert d["command"] == "sslkit propose x -o p.h5" and d["params"] == {"algo": "grid"}
    assert d["fields"]["boxes"]["per_image"]["total"] == 3 and d["fields"]["boxes"]["per_image"]["images_with_none"] == 1
    assert d["skipped"] == [{"file_name": "broken.jpg", "reason": "truncated image file"}]
    _, out, _ = sslkit("info", p, check_rc=0)
    assert "sslkit.proposals" in out and "broken.jpg: truncated image file" in out


def test_info_on_checkpoint_and_state_dict(tmp_path):
    ck = tmp_path / "last.pth"
    save_checkpoint(ck, {"method": "byol", "config": {"arch": "resnet_tiny"}, "epoch": 1, "step": 7,
                         "model": {"backbone.w": torch.zeros(4, 4)}, "optimizer": None})
    _, out, _ = sslkit("info", ck, "--json", check_rc=0)
    d = json.loads(out)
    assert d["kind"] == "sslkit.checkpoint" and d["method"] == "byol" and d["step"] == 7
    assert d["num_parameters"] == 16 and d["has"]["optimizer"] is False
    sd = tmp_path / "w.pth"
    torch.save({"conv1.weight": torch.zeros(2, 3, 1, 1)}, sd)
    _, out, _ = sslkit("info", sd, "--json", check_rc=0)
    assert json.loads(out)["kind"] == "torchvision state_dict"


def test_info_rejects_unknown_files(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("hi")
    rc, _, err = sslkit("info", f)
    assert rc == 2 and "not an sslkit artefact" in err and str(f) in err


def test_opencv_conflict_detection(monkeypatch):
    from importlib import metadata

    from sslkit import _env

    real = metadata.version

    def fake(name):
        if name == "opencv-python":
            return "4.10.0"
        return real(name)

    monkeypatch.setattr(_env.metadata, "version", fake)
    msg = _env.opencv_conflict()
    assert msg and "opencv-python" in msg and "shadow" in msg
