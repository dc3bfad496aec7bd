"""Self-describing checkpoints: what a checkpointer given the run's config saves (model_info), and the
check of a checkpoint against the model a config builds (classes first, then the weights)."""
import pytest
import torch
import yaml
from detectron2.modeling import build_model

from helpers import tiny_detector_cfg
from semidetr.engine.checkpoint import MODEL_INFO_KEY, CheckpointMismatchError, SemiDetrCheckpointer, read_model_info


def _shm_cfg(num_classes=3):
    cfg = tiny_detector_cfg(num_classes=num_classes)
    cfg.MODEL.DETR.ENC_LAYERS, cfg.MODEL.DETR.DEC_LAYERS = 1, 1
    cfg.SEMIDETR.SHM.ENABLED, cfg.SEMIDETR.SHM.O2M_ITERS = True, 10
    return cfg


def test_model_info_describes_the_model_and_its_stage(tmp_path):
    cfg = _shm_cfg()
    model = build_model(cfg)
    checkpointer = SemiDetrCheckpointer(model, str(tmp_path), cfg=cfg)
    checkpointer.save("model_0000004", iteration=4)
    checkpointer.save("model_0000012", iteration=12)
    early, late = read_model_info(str(tmp_path / "model_0000004.pth")), read_model_info(str(tmp_path / "model_0000012.pth"))
    # Iterations 0..9 train one-to-many (T1 = 10, engine/stage.py); the stage is that of the last iteration.
    assert (early["stage"], late["stage"]) == ("one_to_many", "one_to_one")
    assert early["num_classes"] == 3 and early["class_names"] is None and early["iteration"] == 4
    assert yaml.safe_load(early["config"]) == yaml.safe_load(cfg.dump())
    # A checkpointer without the config writes what it always did.
    SemiDetrCheckpointer(model, str(tmp_path)).save("plain", iteration=0)
    assert MODEL_INFO_KEY not in torch.load(tmp_path / "plain.pth", weights_only=False)
    assert read_model_info(str(tmp_path / "plain.pth")) is None


def test_evaluation_load_rejects_what_does_not_fit(tmp_path):
    cfg = _shm_cfg()
    SemiDetrCheckpointer(build_model(cfg), str(tmp_path), cfg=cfg).save("sup", iteration=0)
    path = str(tmp_path / "sup.pth")

    other_classes = _shm_cfg(num_classes=4)
    with pytest.raises(CheckpointMismatchError, match=r"sup\.pth was trained on 3 classes \(names unknown\) but this "
                                                      r"config builds a model for 4 classes .*MODEL.DETR.NUM_CLASSES"):
        SemiDetrCheckpointer(build_model(other_classes)).load_for_evaluation(path, other_classes, "student")

    # Same classes, another width: detectron2 alone would skip the mismatching tensors with a warning.
    wider = _shm_cfg()
    wider.MODEL.DETR.DIM_FEEDFORWARD = 256
    with pytest.raises(CheckpointMismatchError, match=r"sup\.pth: its weights do not fit .*other shape: transformer"):
        SemiDetrCheckpointer(build_model(wider)).load_for_evaluation(path, wider, "student")

    fitting = build_model(cfg)
    extra = SemiDetrCheckpointer(fitting).load_for_evaluation(path, cfg, "teacher")
    assert extra[MODEL_INFO_KEY]["num_classes"] == 3
    saved = torch.load(path, weights_only=False)["model"]
    for name, value in fitting.state_dict().items():
        torch.testing.assert_close(value, saved[name])
