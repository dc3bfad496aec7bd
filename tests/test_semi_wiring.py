"""How the trainer wires the semi-supervised parts together, checked through behaviour: short runs of the
real Trainer (the tiny DINO of the micro data set) whose logged losses, metrics, weights and checkpoints
change when a switch of SemiTrainer or of the SEMI / SEMIDETR config groups is removed or inverted.

SEMI.PSEUDO_SCORE_THRESH is set to 0.001, so the boxes of an untrained teacher become real pseudo labels
(about 28 per image): the path teacher boxes -> strong-view targets -> unsupervised box losses runs end to
end. An untrained DINO predicts its small, disjoint anchor boxes (no two overlap, so NMS has nothing to
remove); the SSOD runs therefore start (MODEL.WEIGHTS) from an initialisation whose box head predicts
large, overlapping boxes, the duplicates a one-to-many teacher produces. Every run seeds itself (SEED 7): two runs that differ in one switch have the
same student, teacher, data and denoising noise at iteration 0, so their iteration-0 values can be
compared exactly."""
import functools
import logging
import os

import pytest
import torch
from detectron2.engine import default_argument_parser
from torchvision.ops import box_iou

from conftest import REPO_ROOT, micro_config_args
from helpers import recorded_log_messages
from semidetr.engine.defaults import setup_cfg
from semidetr.engine.trainer import Trainer, build_trainer, load_weights_for_evaluation
from semidetr.semi.pseudo_labels import PseudoLabeler

SSOD_CONFIG = os.path.join(REPO_ROOT, "configs/quick_schedules/ssod_baseline_shapes10_cpu.yaml")
SEMIDETR_CONFIG = os.path.join(REPO_ROOT, "configs/quick_schedules/semidetr_shapes10_cpu.yaml")

BOX_TERMS = ("bbox", "giou")
LOSS_SUFFIXES = ("", "_aux", "_enc")

# name -> (config, overrides). MAX_ITER 1 unless a test needs the second step.
RUNS = {
    "ssod": (SSOD_CONFIG, ()),
    "ssod_w1_vis": (SSOD_CONFIG, ("SEMI.UNSUP_LOSS_WEIGHT", "1.0", "SEMI.VIS_PERIOD", "1")),
    "ssod_nms": (SSOD_CONFIG, ("SEMI.PSEUDO_NMS_THRESH", "0.6")),
    "ssod_ignore_unmonitored": (SSOD_CONFIG, ("SEMI.IMAGES_WITHOUT_PSEUDO_LABELS", "ignore",
                                              "SEMI.MONITOR_UNLABELED_GT", "False")),
    # T1 beyond the end: the run ends in the one-to-many stage.
    # (A one-to-many teacher also predicts with SEMIDETR.SHM.TEST_NMS_THRESH, which would change the pseudo
    # labels; 0 keeps them those of "ssod", so that only the assignment differs.)
    "ssod_shm": (SSOD_CONFIG, ("SEMIDETR.SHM.ENABLED", "True", "SEMIDETR.SHM.O2M_ITERS", "5",
                               "SEMIDETR.SHM.TEST_NMS_THRESH", "0.0")),
    "ssod_shm_unlabeled_only": (SSOD_CONFIG, ("SEMIDETR.SHM.ENABLED", "True", "SEMIDETR.SHM.O2M_ITERS", "5",
                                              "SEMIDETR.SHM.TEST_NMS_THRESH", "0.0",
                                              "SEMIDETR.SHM.APPLY_TO_LABELED", "False")),
    # T1 = 1: iteration 0 is one-to-many, iteration 1 (exactly T1) one-to-one.
    "ssod_t1_denoise_o2o": (SSOD_CONFIG, ("SEMIDETR.SHM.ENABLED", "True", "SEMIDETR.SHM.O2M_ITERS", "1",
                                          "SOLVER.MAX_ITER", "2", "SEMI.PSEUDO_LABEL_DENOISING", "['one_to_one']")),
    "ssod_ema_no_warmup": (SSOD_CONFIG, ("SEMI.EMA_WARMUP", "False", "SEMI.EMA_MOMENTUM", "0.9",
                                         "DATASETS.TEST", "('micro_val',)", "SEMI.EVAL_MODELS", "['student']")),
    "semidetr": (SEMIDETR_CONFIG, ("SEMIDETR.SHM.O2M_ITERS", "1", "SOLVER.MAX_ITER", "2",
                                   "SEMIDETR.CQC.STAGES", "['one_to_many']")),
}


@pytest.fixture(scope="module")
def wide_box_weights(micro_shapes, tmp_path_factory):
    """A checkpoint of the untrained tiny DINO with +3 on the width/height logits of its decoder box head:
    every predicted box then covers most of the image."""
    cfg = setup_cfg(default_argument_parser().parse_args(
        ["--config-file", SSOD_CONFIG, *_opts(micro_shapes, tmp_path_factory.mktemp("unused"))]), for_training=False)
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    state = model.state_dict()
    heads = [name for name in state if name.startswith("transformer.bbox_embed.") and name.endswith("layers.2.bias")]
    assert heads
    for name in heads:
        state[name][2:] += 3.0
    path = str(tmp_path_factory.mktemp("wide_box_init") / "wide_boxes.pth")
    torch.save({"model": state}, path)
    return path


def _opts(specs, out, *overrides):
    return micro_config_args(
        specs, out, "DATASETS.TRAIN", "('micro_train.1@25',)", "DATASETS.TRAIN_UNLABELED",
        "('micro_train.1@25-unlabeled',)", "SOLVER.IMS_PER_BATCH", "3", "SEMI.SAMPLE_RATIO", "(1, 2)",
        "SEMI.VIS_PERIOD", "0", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "1",
        "SEMI.PSEUDO_SCORE_THRESH", "0.001",
        # Many pseudo labels per image: no pseudo-label NMS and no mean + std floor unless a run sets them
        # (the official rule's defaults would leave about one of the wide, overlapping boxes); pseudo-label
        # denoising in both stages, so that a stage changes the assignment only.
        "SEMI.PSEUDO_NMS_THRESH", "0.0", "SEMI.PSEUDO_MEAN_STD_FLOOR", "False",
        "SEMI.PSEUDO_LABEL_DENOISING", "['one_to_many', 'one_to_one']", *overrides)


class Run:
    """A finished in-process training run: per-iteration scalars, models, checkpoint, log messages."""

    def __init__(self, specs, out, config, overrides):
        opts = _opts(specs, out, *overrides)
        self.out = str(out)
        self.cfg = setup_cfg(default_argument_parser().parse_args(["--config-file", config, *opts]))
        with recorded_log_messages("semidetr", logging.INFO) as messages:
            trainer = build_trainer(self.cfg)
            trainer.resume_or_load(resume=False)
            self.initial_teacher = _copy_state(trainer.models()["teacher"])
            trainer.train()
        self.log = "\n".join(messages)
        self.teacher = _copy_state(trainer.models()["teacher"])
        self.student = _copy_state(trainer.models()["student"])
        self.student_grads = {n: p.grad.clone() for n, p in trainer.models()["student"].named_parameters()
                              if p.grad is not None}
        self.scalars = {name: dict((it, value) for value, it in history.values())
                        for name, history in trainer.storage.histories().items()}

    def at(self, iteration):
        """Every scalar logged at `iteration`."""
        return {name: values[iteration] for name, values in self.scalars.items() if iteration in values}

    def checkpoint(self):
        return os.path.join(self.out, "model_final.pth")


def _copy_state(module):
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


@pytest.fixture(scope="module")
def runs(micro_shapes, tmp_path_factory, wide_box_weights):
    """Runs on demand, each once per module (a test selection only pays for the runs it uses)."""
    cache = {}

    def get(name):
        if name not in cache:
            config, overrides = RUNS[name]
            if config == SSOD_CONFIG:
                overrides = ("MODEL.WEIGHTS", wide_box_weights, *overrides)
            cache[name] = Run(micro_shapes, tmp_path_factory.mktemp(name), config, overrides)
        return cache[name]

    return get


def _unsup_losses(metrics):
    return {k: v for k, v in metrics.items() if k.startswith("unsup_loss_")}


def _sup_losses(metrics):
    return {k: v for k, v in metrics.items() if k.startswith("loss_")}


# ----------------------------------------------------------------------------------------------------
# Real pseudo labels end to end; w_u; pseudo-label NMS; images without pseudo labels; monitoring.
def test_pseudo_labels_reach_the_unsupervised_box_losses(runs):
    metrics = runs("ssod").at(0)
    assert metrics["pseudo/labels_per_image"] > 5
    for term in BOX_TERMS:
        for suffix in LOSS_SUFFIXES + ("_dn",):
            assert metrics[f"unsup_loss_{term}{suffix}"] > 0, f"unsup_loss_{term}{suffix}"
    assert 0 <= metrics["pseudo/precision@0.5"] <= 1 and 0 <= metrics["pseudo/recall@0.5"] <= 1


def test_unsup_loss_weight_scales_the_unsupervised_losses_only(runs):
    """SEMI.UNSUP_LOSS_WEIGHT 4 (the config) against 1 on the same step: every unsup_* loss is 4 times
    larger, the supervised ones are equal, and the optimised total contains the weighted sum."""
    w4, w1 = runs("ssod").at(0), runs("ssod_w1_vis").at(0)
    unsup4, unsup1 = _unsup_losses(w4), _unsup_losses(w1)
    assert unsup1 and unsup4.keys() == unsup1.keys()
    for name in unsup1:
        assert unsup4[name] == pytest.approx(4.0 * unsup1[name], rel=1e-5), name
    assert _sup_losses(w4) == pytest.approx(_sup_losses(w1), rel=1e-6)
    assert w4["total_loss"] - w1["total_loss"] == pytest.approx(3.0 * sum(unsup1.values()), rel=1e-4)


def test_vis_period_writes_pseudo_label_pictures(runs):
    assert os.listdir(os.path.join(runs("ssod_w1_vis").out, "pseudo_labels")) == ["iter_0000001.png"]
    assert not os.path.exists(os.path.join(runs("ssod").out, "pseudo_labels"))  # SEMI.VIS_PERIOD 0


def test_pseudo_label_nms_removes_duplicates_of_the_same_teacher_output(runs):
    """Same teacher, same views at iteration 0: NMS at 0.6 leaves fewer pseudo labels than no NMS."""
    without, with_nms = runs("ssod").at(0), runs("ssod_nms").at(0)
    assert with_nms["pseudo/labels_per_image"] < without["pseudo/labels_per_image"]
    assert with_nms["pseudo/labels_per_image"] > 0
    assert with_nms["unsup_loss_bbox"] > 0


def test_ignore_policy_leaves_images_with_pseudo_labels_alone_and_monitoring_never_reaches_a_loss(runs):
    """SEMI.IMAGES_WITHOUT_PSEUDO_LABELS "ignore" only changes images without pseudo labels (here every
    image has some), and SEMI.MONITOR_UNLABELED_GT only adds metrics: the losses are those of "ssod"."""
    reference, other = runs("ssod").at(0), runs("ssod_ignore_unmonitored").at(0)
    assert reference["pseudo/labels_per_image"] > 5
    losses = {k: v for k, v in reference.items() if "loss" in k}
    assert {k: other[k] for k in losses} == pytest.approx(losses, rel=1e-6)
    assert "pseudo/precision@0.5" in reference and "pseudo/precision@0.5" not in other
    assert "pseudo/recall@0.5" not in other


def test_score_exactly_at_tau_s_is_a_pseudo_label():
    """config.py: pseudo labels are the teacher boxes with score >= tau_s (float32 scores, as predicted)."""
    from detectron2.structures import Boxes, Instances

    at = torch.tensor(0.4, dtype=torch.float32)
    below = torch.nextafter(at, torch.tensor(0.0))
    predictions = Instances((64, 64))
    predictions.pred_boxes = Boxes(torch.tensor([[2.0, 2, 30, 30], [34, 34, 60, 60]]))
    predictions.scores = torch.stack([at, below])
    predictions.pred_classes = torch.tensor([0, 1])
    view = {"transform_matrix": torch.eye(3), "image": torch.zeros(3, 64, 64)}
    batch = PseudoLabeler(0.4)([predictions], [view], [view])
    assert batch.strong[0].gt_classes.tolist() == [0]
    assert batch.strong[0].scores.tolist() == [at.item()]


# ----------------------------------------------------------------------------------------------------
# Stage-wise hybrid matching: assignment, APPLY_TO_LABELED, the switch at exactly T1, denoising per stage.
def test_one_to_many_stage_changes_the_assignment_of_both_groups(runs):
    """SHM on, iteration 0 < T1: the same step as the one-to-one "ssod" run except the assignment, so the
    matching losses of both groups differ and the denoising losses (the same in both stages) do not."""
    o2o, o2m = runs("ssod").at(0), runs("ssod_shm").at(0)
    assert o2m["pseudo/labels_per_image"] == o2o["pseudo/labels_per_image"]
    for group in ("", "unsup_"):
        assert o2m[f"{group}loss_class"] != pytest.approx(o2o[f"{group}loss_class"], rel=1e-4), group
        assert o2m[f"{group}loss_class_dn"] == pytest.approx(o2o[f"{group}loss_class_dn"], rel=1e-5), group


@functools.lru_cache(maxsize=None)
def _shm_losses(shm_items=()):
    """(one-to-many, one-to-one) losses of the tiny DINO (seed 0, box head widened as in `wide_box_weights`)
    on a fixed batch of large targets, with SEMIDETR.SHM keys set from `shm_items`."""
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances

    from helpers import tiny_detector_cfg

    def image(boxes, classes, seed):
        generator = torch.Generator().manual_seed(seed)
        instances = Instances((96, 128))
        instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.gt_classes = torch.tensor(classes)
        return {"image": torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8, generator=generator),
                "instances": instances, "height": 96, "width": 128}

    batch = [image([[8.0, 6, 110, 90], [30, 20, 100, 80]], [0, 1], 1), image([[5.0, 5, 120, 85]], [2], 2)]
    cfg = tiny_detector_cfg()
    cfg.MODEL.DETR.DN_NUMBER = 0
    cfg.SEMIDETR.SHM.ENABLED = True
    for name, setting in shm_items:
        cfg.SEMIDETR.SHM[name] = setting
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(cfg)
    with torch.no_grad():
        for name, value in model.named_parameters():
            if name.startswith("transformer.bbox_embed.") and name.endswith("layers.2.bias"):
                value[2:] += 3.0
        return ({k: v.item() for k, v in model([{**x, "assignment": "one_to_many"} for x in batch]).items()},
                {k: v.item() for k, v in model(batch).items()})


@pytest.mark.parametrize("key, value", [("ASSIGNER", "max_iou"), ("TOPK", 2), ("ALPHA", 0.5), ("BETA", 2.0),
                                        ("GAMMA", 0.0)])
def test_shm_keys_reach_the_one_to_many_losses(key, value):
    """Each SEMIDETR.SHM key of the stage-1 assignment changes the one-to-many losses of the same model on
    the same batch, and leaves the one-to-one losses alone. (Large targets and wide predicted boxes: the
    alignment metric s^a IoU^b of an untrained model's small boxes is ~0 whatever the keys.)"""
    (default_o2m, default_o2o), (changed_o2m, changed_o2o) = _shm_losses(), _shm_losses(((key, value),))
    assert changed_o2o == pytest.approx(default_o2o, rel=1e-6)
    differences = [abs(changed_o2m[t] / default_o2m[t] - 1) for t in ("loss_class", "loss_bbox", "loss_giou")]
    assert max(differences) > 0.01, differences


def test_apply_to_labeled_false_keeps_labeled_images_one_to_one(runs):
    o2o, o2m, unlabeled_only = runs("ssod").at(0), runs("ssod_shm").at(0), runs("ssod_shm_unlabeled_only").at(0)
    for suffix in LOSS_SUFFIXES:
        for term in ("class",) + BOX_TERMS:
            name = f"loss_{term}{suffix}"
            assert unlabeled_only[name] == pytest.approx(o2o[name], rel=1e-6), name
            assert unlabeled_only["unsup_" + name] == pytest.approx(o2m["unsup_" + name], rel=1e-6), name


def test_stage_switches_exactly_at_t1_and_pseudo_label_denoising_follows_the_stage(runs):
    """SEMI.PSEUDO_LABEL_DENOISING ['one_to_one'] with T1 = 1: at iteration 0 (one-to-many) the pseudo
    labels make no denoising queries, at iteration 1 = T1 (one-to-one) they do; labeled images always do.
    The default (both stages) denoises pseudo labels at iteration 0."""
    run = runs("ssod_t1_denoise_o2o")
    first, second = run.at(0), run.at(1)
    assert first["pseudo/labels_per_image"] > 0 and second["pseudo/labels_per_image"] > 0
    for term in ("class",) + BOX_TERMS:
        assert first[f"unsup_loss_{term}_dn"] == 0, term
        assert second[f"unsup_loss_{term}_dn"] > 0, term
        assert first[f"loss_{term}_dn"] > 0 and second[f"loss_{term}_dn"] > 0, term
        assert runs("ssod").at(0)[f"unsup_loss_{term}_dn"] > 0, term
    assert "Iteration 1: training stage one_to_many -> one_to_one" in run.log
    assert "Iteration 0: training stage" not in run.log


def test_checkpoint_of_a_run_ending_before_t1_predicts_with_nms(runs):
    """SEMIDETR.SHM.O2M_ITERS >= SOLVER.MAX_ITER: the final model is one-to-many, so evaluation runs
    class-aware NMS at SEMIDETR.SHM.TEST_NMS_THRESH - post-processing with NMS really removes the same-class
    duplicates that the same weights predict without it (boxes in the network-input frame, before the
    clipping to the image that changes their overlaps)."""
    run = runs("ssod_shm")
    cfg = run.cfg.clone()
    cfg.defrost()
    cfg.SEMIDETR.SHM.TEST_NMS_THRESH = 0.7  # the evaluation's config; the checkpoint says "one-to-many"
    model = Trainer.build_model(cfg)
    assert load_weights_for_evaluation(cfg, model, run.checkpoint()) == ("teacher", "one_to_many")
    assert model.test_nms_thresh == 0.7
    model.eval()
    batch = next(iter(Trainer.build_test_loader(cfg, "micro_val")))
    with torch.no_grad():
        with_nms = model.predict(batch)[0]
        model.test_nms_thresh = 0.0
        without_nms = model.predict(batch)[0]
    assert _max_same_class_iou(with_nms) <= 0.7
    assert _max_same_class_iou(without_nms) > 0.7
    assert len(with_nms) < len(without_nms)


def _max_same_class_iou(instances):
    iou = box_iou(instances.pred_boxes.tensor, instances.pred_boxes.tensor)
    same = instances.pred_classes[:, None] == instances.pred_classes[None, :]
    iou = iou.masked_fill(~same | torch.eye(len(instances), dtype=torch.bool), 0.0)
    return float(iou.max()) if len(instances) > 1 else 0.0


# ----------------------------------------------------------------------------------------------------
# EMA teacher.
def test_ema_warmup_makes_the_first_teacher_a_copy_of_the_student(runs):
    """SEMI.EMA_WARMUP True (default): d = min(m, 1 - 1/(0 + 1)) = 0 after iteration 0."""
    run = runs("ssod")
    for name, value in run.student.items():
        torch.testing.assert_close(run.teacher[name], value, rtol=0, atol=0, msg=name)


def test_without_ema_warmup_the_teacher_keeps_momentum_from_the_first_step(runs):
    """SEMI.EMA_WARMUP False, m = 0.9: teacher = 0.9 * teacher_0 + 0.1 * student_1."""
    run = runs("ssod_ema_no_warmup")
    changed = 0
    for name, value in run.student.items():
        initial = run.initial_teacher[name]
        if not value.is_floating_point():
            continue
        torch.testing.assert_close(run.teacher[name], initial + 0.1 * (value - initial), rtol=1e-5, atol=1e-6,
                                   msg=name)
        changed += int(not torch.equal(value, initial))
    assert changed > 10


def test_eval_models_scores_only_the_named_models(runs):
    metrics = runs("ssod_ema_no_warmup").scalars
    assert any(name.startswith("student/bbox/") for name in metrics)
    assert not any(name.startswith("teacher/") for name in metrics)


# ----------------------------------------------------------------------------------------------------
# Semi-DETR (SHM + CQC + CPM) end to end.
def test_semidetr_run_with_pseudo_labels_trains_every_part(runs):
    run = runs("semidetr")
    first, second = run.at(0), run.at(1)
    assert first["pseudo/labels_per_image"] > 0
    for metrics in (first, second):
        for term in BOX_TERMS:
            assert metrics[f"unsup_loss_{term}"] > 0 and metrics[f"unsup_loss_{term}_dn"] > 0, term
    assert not any("consistency" in name for name in runs("ssod").scalars)  # SEMIDETR.CQC.ENABLED False
    # SEMIDETR.CQC.STAGES ['one_to_many']: the consistency loss in stage 1 only.
    assert first["loss_consistency"] > 0
    assert second.get("loss_consistency", 0.0) == 0.0
    assert "Iteration 1: training stage one_to_many -> one_to_one" in run.log


def test_eval_only_model_picks_the_teacher_or_the_student_weights(runs):
    """SEMI.EVAL_ONLY_MODEL: after two steps the EMA teacher differs from the student; each choice loads
    its own weights from the checkpoint."""
    run = runs("semidetr")
    saved = torch.load(run.checkpoint(), map_location="cpu", weights_only=True)
    assert any(not torch.equal(saved["model"][n], saved["teacher"][n]) for n in saved["model"])
    for which, key in (("teacher", "teacher"), ("student", "model")):
        model = Trainer.build_model(run.cfg)
        assert load_weights_for_evaluation(run.cfg, model, run.checkpoint(), which) == (which, "one_to_one")
        for name, value in model.state_dict().items():
            torch.testing.assert_close(value, saved[key][name], rtol=0, atol=0, msg=f"{which}: {name}")
