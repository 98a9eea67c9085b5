"""`sslkit sample-views` as a dispatcher: stages come from the method registry, flags map onto the
chosen stage's settings, and what does not apply is refused in one line (the stages themselves are
tested in test_orl.py and test_univip.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sslkit.config import Key
from sslkit.views.stage import StageResult, ViewStage
from tests.conftest import one_line_error
from tests.conftest import run_cli as sslkit


class _Toy(ViewStage):
    """A stage a test method declares: records what it was called with."""

    name = "toy"
    VIEWS_KIND = "toy-views"
    SUMMARY = "A toy stage that counts the images of IMAGES and remembers its settings for the test."
    SETTINGS = {"side": Key(8, int, "a size"), "min_size": Key(1.0, float, "the filter's flag name, reused")}
    calls: list = []

    @classmethod
    def run(cls, source, output, settings, inputs, *, overwrite, quiet):
        cls.calls.append((len(source), dict(settings), inputs))
        return StageResult(Path(output), f"wrote {output}", {"images": len(source)})


@pytest.fixture
def toy(monkeypatch):
    from sslkit.methods import METHODS

    monkeypatch.setitem(METHODS, "toy-method", type("ToyMethod", (), {"view_stage": _Toy}))
    _Toy.calls.clear()
    return _Toy


def test_a_registered_stage_is_found_by_its_name_or_its_method(toy, photo_dir, tmp_path, capsys):
    for name in ("toy", "toy-method"):
        assert sslkit("sample-views", photo_dir, "-m", name, "-o", tmp_path / "t.h5", "--set", "side=3",
                      "--min-size", 2, "-q") == 0
        n, settings, inputs = toy.calls[-1]
        assert n == 5 and settings == {"side": 3, "min_size": 2.0} and inputs.proposals is None
    capsys.readouterr()
    assert sslkit("sample-views", "--help") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--method toy" in out and "(also toy-method)" in out and "counts the images of IMAGES" in out
    assert "--method orl" in out and "--method univip" in out and "side=8" in out


def test_what_the_stage_does_not_have_is_refused(toy, photo_dir, tmp_path, capsys):
    run = ["sample-views", photo_dir, "-o", tmp_path / "x.h5"]
    assert "--knn does not apply to -m toy" in one_line_error(capsys, *run, "-m", "toy", "--knn", 3)
    assert "--proposals does not apply to -m toy" in one_line_error(capsys, *run, "-m", "toy", "--proposals", photo_dir)
    assert "--shard does not apply to -m toy" in one_line_error(capsys, *run, "-m", "toy", "--shard", "0/2")
    assert "--knn does not apply to -m univip" in one_line_error(capsys, *run, "-m", "univip", "--knn", 3)
    assert "--merge does not apply to -m univip" in one_line_error(capsys, "sample-views", "-m", "univip", "--merge",
                                                           tmp_path / "a.h5", "-o", tmp_path / "x.h5")
    err = one_line_error(capsys, *run, "-m", "byol")
    assert "--method 'byol' is not one of " in err
    assert all(name in err.split(" — ")[0] for name in ("orl", "univip", "toy", "toy-method")) and "byol," not in err
    assert "did you mean 'side'" in one_line_error(capsys, *run, "-m", "toy", "--set", "sides=3")
    assert "side='big' is not a valid int" in one_line_error(capsys, *run, "-m", "toy", "--set", "side=big")
    assert "--merge takes only shard files and -o (got --knn)" in one_line_error(
        capsys, "sample-views", "-m", "orl", "--merge", tmp_path / "a.h5", "--knn", 3, "-o", tmp_path / "x.h5")
    assert not toy.calls and not (tmp_path / "x.h5").exists()


def test_print_config_resolves_defaults_set_and_flags(capsys):
    capsys.readouterr()
    assert sslkit("sample-views", "-m", "orl", "--set", "knn=5", "--set", "pair_ratio=0.3", "--pair-ratio", 0.2,
                  "--min-size", 48, "--print-config") == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["knn"] == 5 and cfg["pair_ratio"] == 0.2 and cfg["min_size"] == 48.0  # a flag beats --set
    assert cfg["image_size"] == 224 and cfg["top_n"] == 100 and cfg["ckpt"] is None
    assert sslkit("sample-views", "-m", "univip", "--print-config") == 0
    assert yaml.safe_load(capsys.readouterr().out) == {"min_size": 96.0, "max_ratio": 3.0, "max_iou": 0.5, "top_n": 100,
                                                       "segment_fields": "all", "segment_order": "size"}
