"""End-to-end runs of tools/train_net.py on a micro data set: supervised and semi-supervised training,
--eval-only, checkpoints, exact --resume, the stage switch and its NMS decision, 2 CPU processes."""
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT, micro_config_args

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
from detectron2.engine import default_argument_parser  # noqa: E402

import train_net  # noqa: E402

SUP_CONFIG = os.path.join(REPO_ROOT, "configs/quick_schedules/dino_shapes_cpu.yaml")
SSOD_CONFIG = os.path.join(REPO_ROOT, "configs/quick_schedules/ssod_baseline_shapes10_cpu.yaml")
SEMIDETR_CONFIG = os.path.join(REPO_ROOT, "configs/quick_schedules/semidetr_shapes10_cpu.yaml")


def _semi_args(specs, output_dir, *extra):
    return micro_config_args(specs, output_dir, "DATASETS.TRAIN", "('micro_train.1@25',)",
                             "DATASETS.TRAIN_UNLABELED", "('micro_train.1@25-unlabeled',)",
                             "SOLVER.IMS_PER_BATCH", "3", "SEMI.SAMPLE_RATIO", "(1, 2)", "SEMI.VIS_PERIOD", "0",
                             *extra)


def _run(config, opts, *flags):
    args = default_argument_parser().parse_args(["--config-file", config, *flags, *opts])
    return train_net.main(args)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_supervised_train_then_eval_only(micro_shapes, tmp_path):
    out = tmp_path / "sup"
    _run(SUP_CONFIG, micro_config_args(micro_shapes, out, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
                                       "TEST.EVAL_PERIOD", "0", "SOLVER.IMS_PER_BATCH", "2"))
    assert (out / "model_final.pth").exists() and (out / "model_0000001.pth").exists()
    metrics = [json.loads(line) for line in open(out / "metrics.json")]
    assert any("bbox/AP" in m for m in metrics)  # evaluation after training
    results = _run(SUP_CONFIG, micro_config_args(micro_shapes, out, "MODEL.WEIGHTS", str(out / "model_final.pth")),
                   "--eval-only")
    assert set(results["model"]["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    # Checkpoint round trip: what was saved is what a model loads.
    saved = _state(out / "model_final.pth")["model"]
    from semidetr.engine.defaults import setup_cfg
    from semidetr.engine.trainer import SemiSupervisedTrainer, Trainer, build_trainer, load_weights_for_evaluation
    cfg = setup_cfg(default_argument_parser().parse_args(
        ["--config-file", SUP_CONFIG, *micro_config_args(micro_shapes, tmp_path / "x")]), for_training=False)
    model = Trainer.build_model(cfg)
    assert load_weights_for_evaluation(cfg, model, str(out / "model_final.pth")) == ("model", "one_to_one")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[name])

    # The inference tool: a checkpoint + a folder of images -> PNGs and a JSON of detections.
    images = os.path.dirname(micro_shapes[1].split(":")[1]) + "/images"
    command = [sys.executable, os.path.join(REPO_ROOT, "tools/infer.py"), "--config-file", SUP_CONFIG,
               "--weights", str(out / "model_final.pth"), "--input", images, "--output", str(tmp_path / "pred"),
               "--scale", "2", *micro_config_args(micro_shapes, tmp_path / "infer")]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    detections = json.load(open(tmp_path / "pred" / "detections.json"))
    assert len(detections) == 8 and len(list((tmp_path / "pred").glob("*.png"))) == 8
    assert detections[0]["model"] == "model" and len(detections[0]["scores"]) == 30
    height, width = detections[0]["image_size"]
    assert Image.open(detections[0]["png"]).size == (2 * width, 2 * height)  # --scale 2

    # A semi-supervised run initialised from this supervised checkpoint starts both models from it.
    semi_cfg = setup_cfg(default_argument_parser().parse_args(
        ["--config-file", SSOD_CONFIG, *_semi_args(micro_shapes, tmp_path / "semi_init", "MODEL.WEIGHTS",
                                                   str(out / "model_final.pth"))]), for_training=False)
    trainer = build_trainer(semi_cfg)
    trainer.resume_or_load(resume=False)
    # The two modes are two classes: SEMI.ENABLED picks the teacher-student trainer.
    assert type(trainer) is SemiSupervisedTrainer and set(trainer.models()) == {"teacher", "student"}
    with pytest.raises(ValueError, match="SEMI.ENABLED=True needs SemiSupervisedTrainer, not Trainer"):
        Trainer(semi_cfg)  # would otherwise train on the labeled images only, silently
    for name, value in trainer.models()["teacher"].state_dict().items():
        torch.testing.assert_close(value, saved[name])
        torch.testing.assert_close(trainer.models()["student"].state_dict()[name], saved[name])


def test_stage_decides_nms_at_evaluation(micro_shapes, tmp_path):
    from semidetr.engine.defaults import setup_cfg
    from semidetr.engine.trainer import Trainer, load_weights_for_evaluation

    out = tmp_path / "o2m"
    # T1 beyond the end of training (Table 7's last column): the model stays one-to-many -> NMS at test.
    opts = _semi_args(micro_shapes, out, "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
                      "SEMIDETR.SHM.O2M_ITERS", "10", "SEMIDETR.SHM.TEST_NMS_THRESH", "0.65")
    _run(SEMIDETR_CONFIG, opts)
    cfg = setup_cfg(default_argument_parser().parse_args(["--config-file", SEMIDETR_CONFIG, *opts]), for_training=False)
    # The checkpoint's file name says nothing about the stage; copy it under a misleading one.
    misleading = out / "model_after_switch.pth"
    misleading.write_bytes((out / "model_final.pth").read_bytes())
    model = Trainer.build_model(cfg)
    assert load_weights_for_evaluation(cfg, model, str(misleading)) == ("teacher", "one_to_many")
    assert model.test_nms_thresh == 0.65
    results = _run(SEMIDETR_CONFIG, [*opts, "DATASETS.TEST", "('micro_val',)", "MODEL.WEIGHTS", str(misleading),
                                     "SEMI.EVAL_ONLY_MODEL", "student"], "--eval-only")
    assert "student" in results

    out2 = tmp_path / "o2o"
    opts2 = _semi_args(micro_shapes, out2, "SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
                       "SEMIDETR.SHM.O2M_ITERS", "1")
    _run(SEMIDETR_CONFIG, opts2)
    model = Trainer.build_model(cfg)
    assert load_weights_for_evaluation(cfg, model, str(out2 / "model_final.pth"), "student") == ("student", "one_to_one")
    assert model.test_nms_thresh == 0.0

    # A config that does not build the checkpoint's model (CQC off for a run trained with it): a clear
    # error naming the checkpoint and the run's own config, not a bare load_state_dict failure.
    cfg_without_cqc = setup_cfg(default_argument_parser().parse_args(
        ["--config-file", SEMIDETR_CONFIG, *opts, "SEMIDETR.CQC.ENABLED", "False"]), for_training=False)
    with pytest.raises(ValueError, match=r"model_final\.pth: its teacher does not fit .*unexpected: "
                                         r"cross_view_embedding.*o2o/config\.yaml"):
        load_weights_for_evaluation(cfg_without_cqc, Trainer.build_model(cfg_without_cqc),
                                    str(out2 / "model_final.pth"))


@pytest.mark.parametrize("policy", ["background", "ignore"])
def test_semi_step_without_pseudo_labels(micro_shapes, tmp_path, policy):
    """A threshold no teacher score reaches: every unlabeled image has zero pseudo labels; the step is
    well defined (finite losses, unsupervised box losses exactly zero). "background" (official) trains
    their queries as background; "ignore" makes their whole unsupervised loss zero."""
    out = tmp_path / "zero"
    _run(SSOD_CONFIG, _semi_args(micro_shapes, out, "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "0",
                                 "DATASETS.TEST", "()", "SEMI.PSEUDO_SCORE_THRESH", "0.999",
                                 "SEMI.IMAGES_WITHOUT_PSEUDO_LABELS", policy))
    metrics = [json.loads(line) for line in open(out / "metrics.json")]
    last = metrics[-1]
    assert last["pseudo/labels_per_image"] == 0
    assert last["unsup_loss_bbox"] == 0 and last["unsup_loss_giou"] == 0
    assert all(isinstance(v, (int, float)) and v == v for v in last.values())  # no NaN
    # Decoder, auxiliary layers, encoder proposals (no denoising queries: nothing to denoise).
    unsup_class = [last[k] for k in ("unsup_loss_class", "unsup_loss_class_aux", "unsup_loss_class_enc")]
    assert last["unsup_loss_class_dn"] == 0
    if policy == "ignore":
        assert all(value == 0 for value in unsup_class)
    else:
        assert all(value > 0 for value in unsup_class)


@pytest.mark.parametrize("semi", [False, True], ids=["supervised", "ssod"])
def test_two_processes_on_cpu(micro_shapes, tmp_path, semi):
    """--num-gpus 2 on a CPU machine: 2 gloo processes train and evaluate (Semi-DETR with a rank
    without pseudo labels: test_reliability.py)."""
    out = tmp_path / "ddp"
    if semi:
        config, opts = SSOD_CONFIG, _semi_args(micro_shapes, out, "SOLVER.IMS_PER_BATCH", "6")
    else:
        config, opts = SUP_CONFIG, micro_config_args(micro_shapes, out, "SOLVER.IMS_PER_BATCH", "4")
    command = [sys.executable, os.path.join(REPO_ROOT, "tools/train_net.py"), "--config-file", config,
               "--num-gpus", "2", "--dist-url", "auto", *opts, "SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "0"]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
                            cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (out / "model_final.pth").exists()
    assert "bbox/AP" in open(out / "metrics.json").read()  # distributed evaluation after training
    if semi:
        assert "Semi-supervised batches: 2 labeled + 4 unlabeled images per step over 2 process(es)" in result.stdout
