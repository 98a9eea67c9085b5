"""`sslkit semisup`: class-balanced subsets, subset lists, the ORL schedule, and the fine-tuning run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sslkit.errors import UserError
from sslkit.eval.semisup import (
    Sample,
    SemisupConfig,
    class_balanced_subset,
    default_weight_decay,
    epoch_batches,
    lr_factor,
    subset_from_file,
)
from tests.conftest import REAL_PHOTOS, real_photo
from tests.conftest import run_cli as sslkit

TINY = ["--epochs", 2, "--batch-size", 8, "--image-size", 32, "--resize", 37, "--workers", 0, "--eval-batch-size", 16]


def _imbalanced():
    counts = {"cat": 50, "dog": 30, "eel": 3, "fox": 1}
    names = sorted(counts)
    labels = np.concatenate([np.full(n, names.index(c)) for c, n in counts.items()])
    keys = [f"{names[c]}/{i:03d}.jpg" for i, c in enumerate(labels)]
    return labels, keys, names


def test_subset_is_class_balanced_and_keeps_every_class():
    labels, keys, names = _imbalanced()
    idx = class_balanced_subset(labels, keys, names, 0.1, seed=0)
    per = np.bincount(labels[idx], minlength=4)
    # 8 = round(0.1 × 84) shared equally; fox (1) and eel (3) give what they cannot fill to cat and dog
    assert per.tolist() == [3, 2, 2, 1] and len(idx) == 8
    tiny = class_balanced_subset(labels, keys, names, 0.001, seed=0)
    assert np.bincount(labels[tiny], minlength=4).tolist() == [1, 1, 1, 1]
    assert len(class_balanced_subset(labels, keys, names, 1.0, seed=0)) == len(labels)
    with pytest.raises(UserError):
        class_balanced_subset(labels, keys, names, 0.0, seed=0)


def test_subset_is_deterministic_and_independent_of_listing_order():
    labels, keys, names = _imbalanced()
    a = class_balanced_subset(labels, keys, names, 0.25, seed=3)
    assert np.array_equal(a, class_balanced_subset(labels, keys, names, 0.25, seed=3))
    assert not np.array_equal(a, class_balanced_subset(labels, keys, names, 0.25, seed=4))
    perm = np.random.default_rng(0).permutation(len(labels))
    b = class_balanced_subset(labels[perm], [keys[i] for i in perm], names, 0.25, seed=3)
    assert sorted(keys[i] for i in a) == sorted(keys[perm[i]] for i in b)


def test_subset_file_matches_paths_or_bare_names(tmp_path):
    samples = [Sample(tmp_path / f, f, f, k) for k, f in enumerate(["n01/n01_1.JPEG", "n01/n01_2.JPEG", "n02/n02_7.JPEG"])]
    (tmp_path / "list.txt").write_text("n01_2.JPEG\nn02/n02_7.JPEG\n\n")
    assert subset_from_file(samples, tmp_path / "list.txt").tolist() == [1, 2]
    (tmp_path / "bad.txt").write_text("n01_2.JPEG\nn09_1.JPEG\n")
    with pytest.raises(UserError, match="1 of its 2 names are not in the training split"):
        subset_from_file(samples, tmp_path / "bad.txt")


def test_orl_schedule_and_weight_decay():
    cfg = SemisupConfig()
    assert cfg.milestone_epochs() == [12, 16]
    assert [lr_factor(cfg, e) for e in (0, 11, 12, 15, 16, 19)] == pytest.approx([1, 1, 0.2, 0.2, 0.04, 0.04])
    assert default_weight_decay(0.01) == 0.0 and default_weight_decay(0.1) == 1e-4
    assert cfg.lr * cfg.head_lr_mult == pytest.approx(1.0)
    batches = epoch_batches(17, 8, seed=0, epoch=0)
    assert [len(b) for b in batches] == [8, 9]  # a last batch of one joins the previous one (BatchNorm)
    assert sorted(i for b in batches for _, i in b) == list(range(17))
    assert batches == epoch_batches(17, 8, seed=0, epoch=0) and batches != epoch_batches(17, 8, seed=0, epoch=1)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    d = tmp_path_factory.mktemp("scenes")
    assert sslkit("demo-data", d, "--n", 15, "--min-side", 96, "--max-side", 128, "--quiet") == 0
    return d


def test_semisup_on_coco_objects_writes_top1_top5(scenes, tmp_path):
    out = tmp_path / "m.json"
    assert sslkit("semisup", "random", "--arch", "resnet_tiny", "--train", scenes / "train.json", "--val",
                  scenes / "val.json", "--task", "objects", "--fraction", 0.01, *TINY, "--save-subset",
                  tmp_path / "s1.txt", "-o", out, "--quiet") == 0
    m = json.loads(out.read_text())
    assert 0.0 <= m["results"]["top1"] <= m["results"]["top5"] <= 100.0
    assert m["settings"]["weight_decay"] == 0.0 and m["settings"]["milestone_epochs"] == [1, 2]
    assert m["settings"]["lr_head"] == pytest.approx(100 * m["settings"]["lr_backbone"])
    sub = m["train"]["subset"]
    classes_in_train = len({a["category_id"] for a in json.loads((scenes / "train.json").read_text())["annotations"]})
    assert sub["per_class_min"] == 1 and sub["classes_covered"] == classes_in_train
    assert len(m["history"]) == 2 and all(np.isfinite(h["loss"]) for h in m["history"])
    # the same seed gives the same files; listed boxes are file#box
    assert sslkit("semisup", "random", "--arch", "resnet_tiny", "--train", scenes / "train.json", "--val",
                  scenes / "val.json", "--task", "objects", "--fraction", 0.01, *TINY, "--epochs", 1,
                  "--save-subset", tmp_path / "s2.txt", "--quiet") == 0
    assert (tmp_path / "s1.txt").read_text() == (tmp_path / "s2.txt").read_text()
    assert "#" in (tmp_path / "s1.txt").read_text()


def test_semisup_on_class_folders_with_a_subset_file(tmp_path):
    root = tmp_path / "train"
    for name in REAL_PHOTOS[:3]:
        (root / name).mkdir(parents=True)
        img = real_photo(name, 64)
        for k in range(4):
            Image.fromarray(np.roll(img, 7 * k, axis=1)).save(root / name / f"{name}_{k}.jpg")
    (tmp_path / "list.txt").write_text("".join(f"{n}_0.jpg\n{n}_1.jpg\n" for n in REAL_PHOTOS[:3]))
    out = tmp_path / "m.json"
    assert sslkit("semisup", "random", "--arch", "resnet_tiny", "--train", root, "--val", root, "--subset-file",
                  tmp_path / "list.txt", *TINY, "-o", out, "--quiet") == 0
    m = json.loads(out.read_text())
    assert m["train"]["subset"]["num_samples"] == 6 and m["train"]["subset"]["per_class_max"] == 2
    assert m["settings"]["weight_decay"] == 1e-4  # 6 of 12 images: above 1 %
    assert "top1" in m["results"] and "top5" not in m["results"]  # 3 classes: top-5 is always 100
    assert m["val"]["num_samples_used"] == 12


def test_semisup_bad_input_is_a_one_line_error(scenes, tmp_path, capsys):
    base = ["semisup", "random", "--arch", "resnet_tiny", "--train", scenes / "train.json", "--val",
            scenes / "val.json", *TINY]
    cases = [
        ([*base, "--task", "objects"], "--fraction"),
        ([*base, "--task", "objects", "--fraction", 0.1, "--subset-file", tmp_path / "x.txt"], "one of them"),
        ([*base, "--task", "multilabel", "--fraction", 0.1], "single-label"),
        ([*base, "--task", "objects", "--fraction", 1.5], "--fraction"),
        (["semisup", "random", "--train", scenes / "train.json", "--val", scenes / "val.json", "--task", "objects",
          "--fraction", 0.1], "--arch"),
    ]
    for args, needle in cases:
        capsys.readouterr()
        assert sslkit(*args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and needle in err, err


def _model_of(run_dir):
    import torch

    return torch.load(run_dir / "last.pth", weights_only=True)["model"]


def test_semisup_resumes_exactly_from_its_run_dir(scenes, tmp_path):
    """A run stopped after 3 steps and continued ends with the weights, history and metrics of an
    uninterrupted run (the loop, the RNG state and the per-epoch statistics travel in last.pth)."""
    import torch

    base = ["semisup", "random", "--arch", "resnet_tiny", "--train", scenes / "train.json", "--val",
            scenes / "val.json", "--task", "objects", "--fraction", 0.3, *TINY, "--quiet"]
    assert sslkit(*base, "--run-dir", tmp_path / "full", "-o", tmp_path / "full.json") == 0
    assert sslkit(*base, "--run-dir", tmp_path / "cut", "--set", "max_steps=3") == 0
    part = torch.load(tmp_path / "cut" / "last.pth", weights_only=True)
    assert part["step"] == 3
    assert sslkit(*base, "--run-dir", tmp_path / "cut", "-o", tmp_path / "cut.json") == 0
    a, b = _model_of(tmp_path / "full"), _model_of(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fa, fb = json.loads((tmp_path / "full.json").read_text()), json.loads((tmp_path / "cut.json").read_text())
    assert fa["results"] == fb["results"]
    assert [h["loss"] for h in fa["history"]] == [h["loss"] for h in fb["history"]]
    # a run-defining setting cannot change on resume; max_steps without a run folder is refused
    assert sslkit(*base, "--run-dir", tmp_path / "cut", "--lr", 0.5) == 2
    assert sslkit(*base, "--set", "max_steps=2") == 2


def test_semisup_print_config_and_unknown_setting(scenes, capsys):
    base = ["semisup", "random", "--arch", "resnet_tiny", "--train", scenes / "train.json", "--val",
            scenes / "val.json", "--task", "objects", "--fraction", 0.1]
    capsys.readouterr()
    assert sslkit(*base, "--set", "gamma=0.5", "--print-config") == 0
    out = capsys.readouterr().out
    assert "gamma: 0.5" in out and "milestones:" in out
    assert sslkit(*base, "--set", "gama=0.5") == 2
    assert "did you mean 'gamma'" in capsys.readouterr().err


def test_semisup_on_two_cpu_processes(scenes, tmp_path):
    """--procs 2 splits every global batch over two gloo ranks and still reports one record."""
    out = tmp_path / "m.json"
    assert sslkit("semisup", "random", "--arch", "resnet_tiny", "--train", scenes / "train.json", "--val",
                  scenes / "val.json", "--task", "objects", "--fraction", 0.3, *TINY, "--procs", 2,
                  "--run-dir", tmp_path / "r", "-o", out, "--quiet") == 0
    m = json.loads(out.read_text())
    assert m["settings"]["world_size"] == 2 and len(m["history"]) == 2
    assert 0.0 <= m["results"]["top1"] <= 100.0
