"""Self-describing checkpoints: what a checkpointer given the run's config saves (model_info), and the
check of a checkpoint against the model a config builds (classes first, then the weights)."""
import pytest
import torch
import yaml
from detectron2.modeling import build_model

from helpers import tiny_detector_cfg
from semidetr.engine.checkpoint import (
    MODEL_INFO_KEY,
    CheckpointMismatchError,
    SemiDetrCheckpointer,
    export_weights,
    read_model_info,
)


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


def test_exported_weights_load_like_the_checkpoint_in_half_the_precision_without_the_trainer_state(tmp_path):
    cfg = _shm_cfg()
    trained = build_model(cfg)
    optimizer = torch.optim.AdamW(trained.parameters())
    SemiDetrCheckpointer(trained, str(tmp_path), cfg=cfg, optimizer=optimizer).save("run", iteration=12)
    source, target = str(tmp_path / "run.pth"), str(tmp_path / "shipped" / "weights.pth")
    export_weights(source, target)
    shipped = torch.load(target, weights_only=False)
    assert set(shipped) == {"model", MODEL_INFO_KEY}  # no optimizer, scheduler, iteration
    assert shipped[MODEL_INFO_KEY] == read_model_info(source)  # still names its config, classes and stage
    floating = {name: t for name, t in trained.state_dict().items() if t.is_floating_point()}
    assert floating and all(shipped["model"][name].dtype == torch.float16 for name in floating)
    integer = {name: t for name, t in trained.state_dict().items() if not t.is_floating_point()}
    assert all(shipped["model"][name].dtype == t.dtype for name, t in integer.items())

    # Loaded as MODEL.WEIGHTS, the float16 copy becomes the float32 model up to float16 rounding.
    loaded = build_model(cfg)
    SemiDetrCheckpointer(loaded).load(target, checkpointables=[])
    for name, value in loaded.state_dict().items():
        assert value.dtype == trained.state_dict()[name].dtype, name
        torch.testing.assert_close(value, trained.state_dict()[name], rtol=1e-3, atol=1e-4)
    # float32 keeps the weights exactly; the EMA teacher of a semi-supervised checkpoint is kept too.
    torch.save({**torch.load(source, weights_only=False), "teacher": trained.state_dict()}, source)
    export_weights(source, target, torch.float32)
    shipped = torch.load(target, weights_only=False)
    assert set(shipped) == {"model", "teacher", MODEL_INFO_KEY}
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(shipped["teacher"][name], value, rtol=0, atol=0)


def test_export_refuses_a_file_without_weights(tmp_path):
    torch.save({"optimizer": {}}, tmp_path / "state.pth")
    with pytest.raises(ValueError, match=r"state\.pth holds no weights"):
        export_weights(str(tmp_path / "state.pth"), str(tmp_path / "out.pth"))
    with pytest.raises(ValueError, match=r"missing\.pth does not exist"):
        export_weights(str(tmp_path / "missing.pth"), str(tmp_path / "out.pth"))
    assert not (tmp_path / "out.pth").exists()


def test_export_tool_says_what_it_wrote_and_names_a_bad_file(tmp_path, capsys):
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location(
        "export_weights_tool", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                            "tools/export_weights.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cfg = _shm_cfg()
    SemiDetrCheckpointer(build_model(cfg), str(tmp_path), cfg=cfg).save("run", iteration=3)
    assert tool.main([str(tmp_path / "run.pth"), str(tmp_path / "w.pth"), "--dtype", "bfloat16"]) == 0
    assert "w.pth: model (" in capsys.readouterr().out
    assert torch.load(tmp_path / "w.pth", weights_only=False)["model"]["transformer.class_embed.0.bias"].dtype == torch.bfloat16
    assert tool.main([str(tmp_path / "nothing.pth"), str(tmp_path / "x.pth")]) == 1
    assert "nothing.pth does not exist" in capsys.readouterr().err
