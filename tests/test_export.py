"""`sslkit export`: torchvision / detectron2 weights from a training checkpoint, and back."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from sslkit.io.checkpoint import load_detectron2_pkl, save_checkpoint
from sslkit.models.backbones import build_backbone
from sslkit.models.convert import (
    KeyMapError,
    backbone_digest,
    detectron2_config,
    detectron2_to_torchvision,
    file_sha256,
    load_backbone,
    torchvision_to_detectron2,
    tv_key_to_d2,
)
from tests.conftest import run_cli as sslkit


def randomised(arch: str, seed: int) -> nn.Module:
    """A backbone whose every tensor (BN statistics included) is distinct, so no mix-up goes unseen."""
    torch.manual_seed(seed)
    net = build_backbone(arch)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    return net.eval()


def make_checkpoint(path, arch="resnet_tiny", method="byol", epoch=3, step=120, with_target=True):
    """A checkpoint as 'sslkit pretrain' writes it: online (+ target) backbone, heads, encoders table."""
    online = randomised(arch, 1)
    target = randomised(arch, 2) if with_target else None
    model = {"backbone." + k: v for k, v in online.state_dict().items()}
    encoders = {"online": "backbone."}
    if target is not None:
        model.update({"target_backbone." + k: v for k, v in target.state_dict().items()})
        encoders["target"] = "target_backbone."
    model["projector.0.weight"] = torch.randn(8, online.feat_dim)
    model["predictor.0.weight"] = torch.randn(8, 8)
    save_checkpoint(path, {"method": method, "config": {"arch": arch, "image_size": 64}, "epoch": epoch, "step": step,
                           "model": model, "encoders": encoders, "default_encoder": "online"})
    return online, target


def tv_model(arch: str, sd: dict) -> nn.Module:
    m = torchvision.models.get_model(arch, weights=None)
    m.fc = nn.Identity()
    m.load_state_dict(sd, strict=True)
    return m.eval()


# -- detectron2's names, written from detectron2/modeling/backbone/resnet.py -----------------------
# BasicStem: conv1 (Conv2d with .norm).  ResNet: stages named "res" + str(i + 2), nn.Sequential of
# blocks.  BottleneckBlock: conv1, conv2, conv3, each with .norm; shortcut (with .norm) only when
# in_channels != out_channels.  BasicBlock (R18/34): conv1, conv2 (+ norm), same shortcut rule.
# build_resnet_backbone: blocks {18: [2,2,2,2], 34/50: [3,4,6,3], 101: [3,4,23,3]}; stem 64 channels;
# res2 out 256 (bottleneck) or 64 (R18/34), doubled per stage.  Default norm FrozenBN: weight, bias,
# running_mean, running_var.
NORM = ("weight", "bias", "running_mean", "running_var")


def detectron2_resnet_names(depth: int) -> set[str]:
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    bottleneck = depth >= 50
    convs = ("conv1", "conv2", "conv3") if bottleneck else ("conv1", "conv2")
    names = {"stem.conv1.weight"} | {f"stem.conv1.norm.{n}" for n in NORM}
    in_ch, out_ch = 64, 256 if bottleneck else 64
    for s, n_blocks in enumerate(blocks):
        for b in range(n_blocks):
            layers = list(convs) + (["shortcut"] if in_ch != out_ch else [])
            for c in layers:
                names.add(f"res{s + 2}.{b}.{c}.weight")
                names |= {f"res{s + 2}.{b}.{c}.norm.{n}" for n in NORM}
            in_ch = out_ch
        out_ch *= 2
    return names


def test_reference_name_list_is_detectron2s():
    r50 = detectron2_resnet_names(50)
    assert len(r50) == 265
    for k in ("stem.conv1.weight", "stem.conv1.norm.running_var", "res2.0.shortcut.weight",
              "res2.0.shortcut.norm.bias", "res3.0.shortcut.norm.running_mean", "res4.5.conv3.weight",
              "res5.2.conv3.norm.running_var"):
        assert k in r50
    assert "res2.1.shortcut.weight" not in r50 and "res4.6.conv1.weight" not in r50
    r18 = detectron2_resnet_names(18)
    assert "res2.0.shortcut.weight" not in r18 and "res3.0.shortcut.norm.weight" in r18
    assert not any(".conv3." in k for k in r18)


@pytest.mark.parametrize("arch,depth", [("resnet18", 18), ("resnet34", 34), ("resnet50", 50), ("resnet101", 101)])
def test_detectron2_names_match_detectron2_resnet(arch, depth):
    with torch.device("meta"):  # names only: no memory
        keys = [k for k in build_backbone(arch).state_dict() if not k.endswith("num_batches_tracked")]
    assert {tv_key_to_d2(k) for k in keys} == detectron2_resnet_names(depth)


def test_detectron2_r50_arrays():
    d2 = torchvision_to_detectron2(build_backbone("resnet50").state_dict())
    assert set(d2) == detectron2_resnet_names(50)
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in d2.values())
    # shapes of detectron2's R50: bottleneck 64 → 256, stride in the 3x3
    assert d2["stem.conv1.weight"].shape == (64, 3, 7, 7)
    assert d2["res2.0.conv1.weight"].shape == (64, 64, 1, 1)
    assert d2["res2.0.conv3.weight"].shape == (256, 64, 1, 1)
    assert d2["res2.0.shortcut.weight"].shape == (256, 64, 1, 1)
    assert d2["res5.2.conv3.norm.running_var"].shape == (2048,)


def test_d2_to_torchvision_inverts_exactly():
    net = randomised("resnet18", 0)
    sd = net.state_dict()
    back = detectron2_to_torchvision(torchvision_to_detectron2(sd))
    assert set(back) == set(sd)
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            assert int(back[k]) == 0  # recreated: FrozenBN keeps no counter
        else:
            assert torch.equal(back[k], v), k


def test_unmappable_keys_are_errors():
    sd = build_backbone("resnet_tiny").state_dict()
    with pytest.raises(KeyMapError, match="fc.weight"):
        torchvision_to_detectron2({**sd, "fc.weight": torch.zeros(2, 2)})
    with pytest.raises(KeyMapError, match="backbone.conv1.weight"):
        torchvision_to_detectron2({"backbone." + k: v for k, v in sd.items()})
    with pytest.raises(KeyMapError, match="backbone.bottom_up"):
        detectron2_to_torchvision({"backbone.bottom_up.stem.conv1.weight": np.zeros((16, 3, 7, 7), np.float32)})


def test_torchvision_export_loads_strict_and_matches(tmp_path, capsys):
    online, target = make_checkpoint(tmp_path / "ck.pth", arch="resnet18")
    assert sslkit("export", tmp_path / "ck.pth", "-o", tmp_path / "r18.pth") == 0
    sd = torch.load(tmp_path / "r18.pth", weights_only=True)
    assert not any(k.startswith("fc.") for k in sd)
    m = tv_model("resnet18", sd)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), online(x))
        assert not torch.allclose(m(x), target(x))
    side = json.loads((tmp_path / "r18.pth.json").read_text())
    assert side["arch"] == "resnet18" and side["method"] == "byol" and side["encoder"] == "online"
    assert side["source"]["sha256"] == file_sha256(tmp_path / "ck.pth")
    assert (side["source"]["epoch"], side["source"]["step"]) == (3, 120)
    assert side["input"]["format"] == "RGB" and side["input"]["pixel_mean"] == [0.485, 0.456, 0.406]
    assert side["file_sha256"] == file_sha256(tmp_path / "r18.pth")
    assert "load_state_dict" in capsys.readouterr().out
    # --encoder picks the other backbone
    assert sslkit("export", tmp_path / "ck.pth", "-o", tmp_path / "t18.pth", "--encoder", "target", "-q") == 0
    m = tv_model("resnet18", torch.load(tmp_path / "t18.pth", weights_only=True))
    with torch.no_grad():
        assert torch.equal(m(x), target(x))
    assert json.loads((tmp_path / "t18.pth.json").read_text())["encoder"] == "target"


def test_resnet50_export_loads_into_torchvision(tmp_path):
    online, _ = make_checkpoint(tmp_path / "ck.pth", arch="resnet50", method="mocov2", with_target=False)
    assert sslkit("export", tmp_path / "ck.pth", "-o", tmp_path / "r50.pth", "-q") == 0
    m = tv_model("resnet50", torch.load(tmp_path / "r50.pth", weights_only=True))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), online(x))
    assert json.loads((tmp_path / "r50.pth.json").read_text())["method"] == "mocov2"


def test_detectron2_export_and_back(tmp_path, capsys):
    online, _ = make_checkpoint(tmp_path / "ck.pth", arch="resnet18")
    assert sslkit("export", tmp_path / "ck.pth", "-o", tmp_path / "r18.pth", "-q") == 0
    # an exported torchvision file converts to detectron2
    assert sslkit("export", tmp_path / "r18.pth", "-o", tmp_path / "r18.pkl") == 0
    out = capsys.readouterr().out
    for line in ("PIXEL_MEAN: [123.675, 116.28, 103.53]", "PIXEL_STD: [58.395, 57.12, 57.375]", "DEPTH: 18",
                 "STRIDE_IN_1X1: False", "RES2_OUT_CHANNELS: 64", 'FORMAT: "RGB"'):
        assert line in out
    data = load_detectron2_pkl(tmp_path / "r18.pkl")
    assert set(data["model"]) == detectron2_resnet_names(18)
    assert data["matching_heuristics"] is True and data["__author__"] != "Caffe2"
    assert data["pixel_mean"] == [123.675, 116.28, 103.53] and data["input_format"] == "RGB"
    assert data["sslkit"]["origin"]["path"] == str((tmp_path / "ck.pth").resolve())
    np.testing.assert_array_equal(data["model"]["res3.0.shortcut.norm.running_var"],
                                  online.layer2[0].downsample[1].running_var.numpy())
    # … and back to torchvision, into torchvision's resnet18 with strict=True
    assert sslkit("export", tmp_path / "r18.pkl", "-o", tmp_path / "back.pth", "-q") == 0
    m = tv_model("resnet18", torch.load(tmp_path / "back.pth", weights_only=True))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), online(x))
    # every container of the same weights has the same backbone digest
    digests = {load_backbone(tmp_path / f)[1]["backbone_sha256"] for f in ("ck.pth", "r18.pth", "r18.pkl", "back.pth")}
    assert digests == {backbone_digest(online.state_dict())}


def test_detectron2_config_lines():
    c50 = detectron2_config("resnet50")
    assert "DEPTH: 50" in c50 and "RES2_OUT_CHANNELS" not in c50 and "STRIDE_IN_1X1: False" in c50
    cx = detectron2_config("resnext101_32x8d")
    assert "NUM_GROUPS: 32" in cx and "WIDTH_PER_GROUP: 8" in cx and "DEPTH: 101" in cx
    assert detectron2_config("resnet_tiny").startswith("#")


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_unknown_encoder_lists_names(tmp_path, capsys):
    make_checkpoint(tmp_path / "ck.pth")
    capsys.readouterr()
    assert sslkit("export", tmp_path / "ck.pth", "-o", tmp_path / "x.pth", "--encoder", "momentum") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "momentum" in line and "online, target" in line
    assert not (tmp_path / "x.pth").exists()


@pytest.mark.parametrize("damage", ["extra", "missing", "shape"])
def test_unconverted_or_missing_key_is_an_error(tmp_path, capsys, damage):
    sd = randomised("resnet_tiny", 0).state_dict()
    if damage == "extra":
        sd["layer1.0.se.fc1.weight"] = torch.zeros(4, 16)
    elif damage == "missing":
        del sd["layer4.0.bn2.running_var"]
    else:
        sd["layer2.0.conv1.weight"] = torch.zeros(32, 16, 5, 5)
    torch.save(sd, tmp_path / "bad.pth")
    for out in ("x.pth", "x.pkl"):
        assert sslkit("export", tmp_path / "bad.pth", "-o", tmp_path / out) == 2
        line = _one_error_line(capsys.readouterr().err)
        key = {"extra": "layer1.0.se.fc1.weight", "missing": "layer4.0.bn2.running_var",
               "shape": "layer2.0.conv1.weight"}[damage]
        assert key in line and "bad.pth" in line
        assert not (tmp_path / out).exists()


def test_extra_tensor_under_encoder_prefix_is_an_error(tmp_path, capsys):
    net = build_backbone("resnet_tiny")
    model = {"backbone." + k: v for k, v in net.state_dict().items()}
    model["backbone.extra_head.weight"] = torch.zeros(3)
    save_checkpoint(tmp_path / "ck.pth", {"method": "byol", "config": {"arch": "resnet_tiny"}, "epoch": 0, "step": 0,
                                          "model": model, "encoders": {"online": "backbone."},
                                          "default_encoder": "online"})
    assert sslkit("export", tmp_path / "ck.pth", "-o", tmp_path / "x.pkl") == 2
    assert "unexpected extra_head.weight" in _one_error_line(capsys.readouterr().err)


def test_output_rules(tmp_path, capsys):
    make_checkpoint(tmp_path / "ck.pth")
    assert sslkit("export", tmp_path / "ck.pth", "-o", tmp_path / "x.pth", "--format", "detectron2") == 2
    assert ".pkl" in _one_error_line(capsys.readouterr().err)
    assert sslkit("export", tmp_path / "ck.pth", "-o", tmp_path / "x.pkl", "--format", "torchvision") == 2
    capsys.readouterr()
    assert sslkit("export", tmp_path / "ck.pth", "-o", tmp_path / "x.pth", "-q") == 0
    assert sslkit("export", tmp_path / "ck.pth", "-o", tmp_path / "x.pth") == 2
    assert "--overwrite" in _one_error_line(capsys.readouterr().err)
    assert sslkit("export", tmp_path / "ck.pth", "-o", tmp_path / "x.pth", "--overwrite", "-q") == 0


def test_info_shows_exports(tmp_path, capsys):
    make_checkpoint(tmp_path / "ck.pth", arch="resnet_tiny")
    assert sslkit("export", tmp_path / "ck.pth", "-o", tmp_path / "t.pth", "-q") == 0
    assert sslkit("export", tmp_path / "ck.pth", "-o", tmp_path / "t.pkl", "-q", "--encoder", "target") == 0
    capsys.readouterr()
    assert sslkit("info", tmp_path / "t.pth", "--json") == 0
    d = json.loads(capsys.readouterr().out)
    assert d["arch"] == "resnet_tiny" and d["method"] == "byol" and d["encoder"] == "online"
    assert d["trained"] == "epoch 3, step 120" and d["exported_from"] == str((tmp_path / "ck.pth").resolve())
    assert sslkit("info", tmp_path / "t.pkl", "--json") == 0
    d = json.loads(capsys.readouterr().out)
    assert d["arch"] == "resnet_tiny" and d["encoder"] == "target" and d["matching_heuristics"] is True
    assert d["input_format"] == "RGB" and d["detectron2_config"].startswith("#")
    assert sslkit("info", tmp_path / "ck.pth", "--json") == 0
    d = json.loads(capsys.readouterr().out)
    assert d["encoders"] == {"online": "backbone.", "target": "target_backbone."} and d["default_encoder"] == "online"
    # a sidecar that no longer describes its file is reported and not trusted
    sd = torch.load(tmp_path / "t.pth", weights_only=True)
    sd["conv1.weight"] = sd["conv1.weight"] + 1
    torch.save(sd, tmp_path / "t.pth")
    assert sslkit("info", tmp_path / "t.pth", "--json") == 0
    d = json.loads(capsys.readouterr().out)
    assert "method" not in d and re.search("sha256 differs", d["sidecar"])
    assert load_backbone(tmp_path / "t.pth")[1].get("method") is None


def test_random_weights_need_arch(capsys):
    from sslkit.errors import UserError

    with pytest.raises(UserError, match="--arch"):
        load_backbone("random")
    a, ma = load_backbone("random", arch="resnet_tiny", seed=3)
    b, mb = load_backbone("random", arch="resnet_tiny", seed=3)
    assert ma["backbone_sha256"] == mb["backbone_sha256"] != load_backbone("random", arch="resnet_tiny", seed=4)[1]["backbone_sha256"]
