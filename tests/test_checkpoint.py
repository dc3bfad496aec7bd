"""Checkpoint files: torchvision ImageNet weights from a local file, atomic writes."""
import os

import torch
import torchvision
from detectron2.modeling import build_model

from helpers import tiny_detector_cfg
from semidetr.engine.checkpoint import SemiDetrCheckpointer, convert_torchvision_resnet, last_checkpoint


def test_torchvision_resnet_weights_load_into_the_backbone(tmp_path):
    """MODEL.WEIGHTS may be torchvision's resnet state dict (as saved by torch.save); nothing is downloaded."""
    resnet = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(resnet.state_dict(), path)
    cfg = tiny_detector_cfg()
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    model = build_model(cfg)
    SemiDetrCheckpointer(model).load(str(path))
    backbone = model.backbone.state_dict()
    torch.testing.assert_close(backbone["stem.conv1.weight"], resnet.conv1.weight)
    torch.testing.assert_close(backbone["res2.0.conv1.norm.running_mean"], resnet.layer1[0].bn1.running_mean)
    torch.testing.assert_close(backbone["res3.0.shortcut.weight"], resnet.layer2[0].downsample[0].weight)
    torch.testing.assert_close(backbone["res5.1.conv2.norm.weight"], resnet.layer4[1].bn2.weight)


def test_conversion_names():
    converted = convert_torchvision_resnet({"conv1.weight": 1, "bn1.running_var": 2, "layer3.1.bn2.bias": 3,
                                            "layer1.0.downsample.1.weight": 4, "fc.weight": 5})
    assert converted == {"backbone.stem.conv1.weight": 1, "backbone.stem.conv1.norm.running_var": 2,
                         "backbone.res4.1.conv2.norm.bias": 3, "backbone.res2.0.shortcut.norm.weight": 4}


def test_atomic_save_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    checkpointer = SemiDetrCheckpointer(model, str(tmp_path), atomic=True)
    checkpointer.save("model_0000009", iteration=9)
    assert last_checkpoint(str(tmp_path)) == os.path.join(str(tmp_path), "model_0000009.pth")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]  # no temporary left
    other = torch.nn.Linear(3, 2)
    extra = SemiDetrCheckpointer(other).load(str(tmp_path / "model_0000009.pth"))
    assert extra["iteration"] == 9
    torch.testing.assert_close(other.weight, model.weight)
