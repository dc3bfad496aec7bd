"""Config switches of the SEMI and SEMIDETR groups that had no behaviour test, each checked from the config
to what the semi-supervised step does with it.

* SEMI.PSEUDO_MEAN_STD_FLOOR and SEMI.PSEUDO_CLIP_BOXES: short runs of the real Trainer (the micro data,
  the SSOD quick config) whose teacher's detections are recorded; the pseudo labels of the step and the
  boxes the teacher hands over are compared with what the switch says.
* SEMIDETR.CQC.* and SEMIDETR.CPM.*: one `SemiTrainer.run_step` of the tiny DINO (tests/helpers.py) with
  the cross-view consistency and the pseudo-label miner built from the config as the Trainer builds them
  (`build_cross_view_consistency`); the step's logged consistency loss and CQC / CPM metrics, the student's
  inputs and its projector's gradients show each key acting. Steps that differ in one key share the
  models, the images and the random draws, so their values can be compared exactly."""
import functools
import logging
import os

import pytest
import torch
from detectron2.engine import default_argument_parser
from detectron2.utils.events import EventStorage
from torch import nn

from conftest import REPO_ROOT
from helpers import recorded_log_messages, synthetic_input, tiny_detector_cfg
from semidetr.engine.defaults import setup_cfg
from semidetr.engine.semi_trainer import CONSISTENCY_LOSS, SemiTrainer
from semidetr.engine.stage import StageSchedule
from semidetr.engine.trainer import (
    Trainer,
    build_cross_view_consistency,
    build_pseudo_labeler,
    build_teacher,
    build_trainer,
)
from test_semi_wiring import _opts, wide_box_weights  # noqa: F401 (the fixture)

SSOD_CONFIG = os.path.join(REPO_ROOT, "configs/quick_schedules/ssod_baseline_shapes10_cpu.yaml")
TAU = 0.001  # the wiring runs' tau_s: an untrained teacher's boxes pass it


# ----------------------------------------------------------------------------------------------------
# SEMI.PSEUDO_MEAN_STD_FLOOR, SEMI.PSEUDO_CLIP_BOXES through a Trainer run
class _TeacherRun:
    """One iteration of the SSOD quick config on the micro data (tests/test_semi_wiring.py's settings: tau_s
    0.001, no pseudo-label NMS) from the wide-box initialisation, recording what the teacher predicts."""

    def __init__(self, specs, out, weights, *overrides):
        opts = _opts(specs, out, "MODEL.WEIGHTS", weights, *overrides)
        cfg = setup_cfg(default_argument_parser().parse_args(["--config-file", SSOD_CONFIG, *opts]))
        trainer = build_trainer(cfg)
        trainer.resume_or_load(resume=False)
        teacher = trainer.models()["teacher"]
        predict, self.predictions, self.view_sizes = teacher.predict, [], []

        def recording_predict(views, **kwargs):
            results = predict(views, **kwargs)
            self.predictions += [p.to("cpu") for p in results[0]]
            self.view_sizes += [tuple(v["image"].shape[-2:]) for v in views]
            return results

        teacher.predict = recording_predict
        trainer.train()
        self.metrics = {name: history.values()[0][0] for name, history in trainer.storage.histories().items()}

    def pseudo_labels_before_mapping(self):
        """How many detections passed the pseudo-label filter: the labels kept plus those the mapping dropped."""
        return round(self.metrics["pseudo/labels_per_image"] * len(self.predictions)
                     + self.metrics["pseudo/dropped_by_mapping"])

    def count(self, keep):
        return sum(int(keep(p.scores).sum()) for p in self.predictions)


def _above_mean_plus_std(scores):
    """The official rule: score >= the image's mean + (population) std (dino_detr_ssod.py:918-939)."""
    return scores >= scores.mean() + scores.std(unbiased=False) - 1e-6


@pytest.fixture(scope="module")
def teacher_runs(micro_shapes, tmp_path_factory, wide_box_weights):  # noqa: F811 (fixture)
    return {
        "floor_clipped": _TeacherRun(micro_shapes, tmp_path_factory.mktemp("floor"), wide_box_weights,
                                     "SEMI.PSEUDO_MEAN_STD_FLOOR", "True", "SEMI.PSEUDO_CLIP_BOXES", "True"),
        "tau_only_unclipped": _TeacherRun(micro_shapes, tmp_path_factory.mktemp("no_floor"), wide_box_weights,
                                          "SEMI.PSEUDO_MEAN_STD_FLOOR", "False", "SEMI.PSEUDO_CLIP_BOXES", "False"),
    }


def test_mean_std_floor_keeps_only_the_detections_above_their_images_mean_plus_std(teacher_runs):
    """SEMI.PSEUDO_MEAN_STD_FLOOR True: the step's pseudo labels are the teacher detections with score >=
    tau_s and >= their image's mean + std; False: score >= tau_s alone. (The two rules differ here: tau_s
    is 0.001, far below every image's mean + std.)"""
    floor, tau_only = teacher_runs["floor_clipped"], teacher_runs["tau_only_unclipped"]
    with_floor = floor.count(lambda s: (s >= TAU) & _above_mean_plus_std(s))
    assert 0 < with_floor < floor.count(lambda s: s >= TAU)
    assert floor.pseudo_labels_before_mapping() == with_floor
    assert tau_only.pseudo_labels_before_mapping() == tau_only.count(lambda s: s >= TAU)


def test_clip_boxes_clips_the_teachers_boxes_to_the_weak_view(teacher_runs):
    """SEMI.PSEUDO_CLIP_BOXES True: every box the teacher hands to the pseudo labeler lies inside its weak
    view; False: the wide boxes of this initialisation reach past the view's edges."""

    def outside(run):
        count = 0
        for prediction, (height, width) in zip(run.predictions, run.view_sizes):
            boxes = prediction.pred_boxes.tensor
            count += int(((boxes[:, :2] < 0).any(1) | (boxes[:, 2] > width) | (boxes[:, 3] > height)).sum())
        return count

    assert teacher_runs["floor_clipped"].predictions and outside(teacher_runs["floor_clipped"]) == 0
    assert outside(teacher_runs["tau_only_unclipped"]) > 0


# ----------------------------------------------------------------------------------------------------
# SEMIDETR.CQC.* and SEMIDETR.CPM.* through SemiTrainer.run_step
class _Recording(nn.Module):
    """The student, recording the inputs of each forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.inputs = []

    def forward(self, inputs, return_outputs=False):
        self.inputs.append(inputs)
        return self.model(inputs, return_outputs=return_outputs)


def _views(image):
    """A weak view (the 64x64 image) and a strong view (its mirror image at 48x48): the two models see other
    pixels, and the student's initial boxes (on the grids of its feature maps) lie elsewhere in the strong
    view than the teacher's boxes mapped into it, so the boxes' matching costs are not 0."""
    strong = nn.functional.interpolate(image[None].float(), size=(48, 48), mode="bilinear", align_corners=False)
    matrix = torch.tensor([[-0.75, 0, 48], [0, 0.75, 0], [0, 0, 1]])
    return {"weak": {"image": image, "transform_matrix": torch.eye(3), "height": 64, "width": 64},
            "strong": {"image": strong[0].round().to(torch.uint8).flip(-1), "transform_matrix": matrix,
                       "height": 48, "width": 48}}


class CqcStep:
    """One Semi-DETR step (SHM in its one-to-many stage, CQC on, official variant unless overridden) of the
    tiny DINO on 2 unlabeled images (no labeled image: CQC concerns the unlabeled ones), the parts built from
    the config."""

    def __init__(self, opts, widen_student_boxes=False):
        cfg = tiny_detector_cfg()
        cfg.SEMI.ENABLED = cfg.SEMIDETR.SHM.ENABLED = cfg.SEMIDETR.CQC.ENABLED = True
        cfg.SEMIDETR.SHM.O2M_ITERS = 100
        cfg.SEMI.PSEUDO_NMS_THRESH = 0.0
        cfg.merge_from_list(list(opts))
        torch.manual_seed(0)
        student = Trainer.build_model(cfg).train()
        teacher = build_teacher(student)
        if widen_student_boxes:  # a student whose boxes differ from the teacher's: every cost term counts
            with torch.no_grad():
                for name, value in student.named_parameters():
                    if name.startswith("transformer.bbox_embed.") and name.endswith("layers.2.bias"):
                        value[2:] += 1.0
        predict, self.teacher_scores = teacher.predict, []

        def recording_predict(views, **kwargs):
            results = predict(views, **kwargs)
            self.teacher_scores += [p.scores.clone() for p in results[0]]
            return results

        teacher.predict = recording_predict
        self.student = _Recording(student)
        unlabeled = [_views(synthetic_input(64, 64, 0, seed=seed)["image"]) for seed in (2, 3)]
        trainer = SemiTrainer(
            self.student, teacher, iter(lambda: ([], unlabeled), None),
            torch.optim.SGD(student.parameters(), lr=0.0), pseudo_labeler=build_pseudo_labeler(cfg),
            unsup_weight=cfg.SEMI.UNSUP_LOSS_WEIGHT, stage_schedule=StageSchedule.from_config(cfg),
            pseudo_nms_thresh=cfg.SEMI.PSEUDO_NMS_THRESH, consistency=build_cross_view_consistency(cfg))
        with EventStorage(0) as storage:
            torch.manual_seed(0)
            trainer.run_step()
        self.metrics = {name: value for name, (value, _) in storage.latest().items()}
        self.projector_grads = [p.grad for p in student.cross_view_embedding.parameters()]
        self.projector = student.cross_view_embedding

    @property
    def loss(self):
        return self.metrics[CONSISTENCY_LOSS]

    def candidates(self):
        """Cross-view candidates of the 2 unlabeled images (a scaled mirror image: the mapping drops none)."""
        return round(self.metrics["cqc/boxes_per_image"] * 2)

    def selected(self):
        return round(self.metrics["cqc/selected_per_image"] * 2)

    def unlabeled_inputs(self):
        return self.student.inputs[0]


@functools.lru_cache(maxsize=None)
def cqc_step(*opts, widen_student_boxes=False) -> CqcStep:
    return CqcStep(opts, widen_student_boxes)


# Keys whose effects are checked separately share a step (each step costs about a second).
TOPK_2_ROI_3_MLP = ("SEMIDETR.CPM.METHOD", "topk", "SEMIDETR.CPM.TOPK", "2", "SEMIDETR.CQC.ROI_SIZE", "3",
                    "SEMIDETR.CQC.PROJECTOR", "mlp")


def test_cpm_method_topk_and_score_thresh_choose_the_cqc_candidates():
    """SEMIDETR.CPM.METHOD with its keys: "topk" takes SEMIDETR.CPM.TOPK detections per image, "fixed" those
    scoring >= SEMIDETR.CPM.SCORE_THRESH (0: all 30 detections), "gmm" (default) the mean + std candidates,
    of which it keeps the low-cost ones (fewer: a two-component mixture over distinct costs)."""
    assert cqc_step(*TOPK_2_ROI_3_MLP).candidates() == 2 * 2
    fixed = cqc_step("SEMIDETR.CPM.METHOD", "fixed", "SEMIDETR.CPM.SCORE_THRESH", "0.0")
    assert fixed.candidates() == 2 * 30 and "cpm/cost_threshold" not in fixed.metrics
    gmm = cqc_step()
    assert gmm.candidates() == sum(int(_above_mean_plus_std(s).sum()) for s in gmm.teacher_scores)
    assert 0 < gmm.metrics["cpm/candidates_per_image"] * 2 == gmm.candidates()
    assert 0 < gmm.selected() < gmm.candidates()  # tau_s 0.4: "mined_or_score" adds none (below)


def test_cpm_cost_weights_weigh_the_matching_cost():
    """SEMIDETR.CPM.COST_CLASS / COST_GIOU / COST_BBOX: all three doubled, every matching cost doubles (the
    matching itself is unchanged), and so does the GMM's cost threshold of the batch. A weight left out
    would change the costs' proportions instead. (The student's boxes are widened, so that its predictions
    differ from the teacher's boxes and the L1 and GIoU terms are not ~0.)"""
    default = cqc_step(widen_student_boxes=True)
    doubled = cqc_step("SEMIDETR.CPM.COST_CLASS", "4.0", "SEMIDETR.CPM.COST_GIOU", "4.0",
                       "SEMIDETR.CPM.COST_BBOX", "10.0", widen_student_boxes=True)
    assert doubled.metrics["cpm/cost_threshold"] == pytest.approx(2 * default.metrics["cpm/cost_threshold"], rel=1e-5)
    assert doubled.selected() == default.selected()


def test_cqc_loss_weight_and_the_official_unsupervised_weight_scale_the_consistency_loss():
    """SEMIDETR.CQC.LOSS_WEIGHT 5 instead of the official 10 and SEMI.UNSUP_LOSS_WEIGHT 2 instead of 4: the
    official consistency loss is multiplied by both (w_c and w_u), so it is a quarter of the default's."""
    default = cqc_step()
    assert default.loss > 0
    scaled = cqc_step("SEMIDETR.CQC.LOSS_WEIGHT", "5.0", "SEMI.UNSUP_LOSS_WEIGHT", "2.0")
    assert scaled.loss == pytest.approx(default.loss / 4, rel=1e-5)


# The paper variant with another loss form, w_u and no gradient through the teacher (values: the loss form
# and w_u; gradients: GRAD_THROUGH_TEACHER).
PAPER_OTHER = ("SEMIDETR.CQC.VARIANT", "paper", "SEMIDETR.CQC.LOSS", "normalized_mse", "SEMI.UNSUP_LOSS_WEIGHT", "2.0",
               "SEMIDETR.CQC.GRAD_THROUGH_TEACHER", "False")


def test_paper_variant_is_not_scaled_by_w_u_and_its_loss_key_picks_the_form():
    """SEMIDETR.CQC.VARIANT "paper": the cosine loss (eq. 11) with w_c = 1, not multiplied by w_u;
    SEMIDETR.CQC.LOSS "normalized_mse" is 2 - 2 cos, twice the cosine loss, whatever w_u is (and
    GRAD_THROUGH_TEACHER changes gradients only)."""
    paper = cqc_step("SEMIDETR.CQC.VARIANT", "paper")
    assert paper.loss > 0
    assert cqc_step(*PAPER_OTHER).loss == pytest.approx(2 * paper.loss, rel=1e-5)


def test_variant_decides_what_the_student_decodes_and_grad_through_teacher_what_trains_its_projector():
    """SEMIDETR.CQC.VARIANT "official": the student receives the teacher's RoI features and projects them
    itself, so its projector trains through its own decoding; "paper": it receives the teacher's
    embeddings c_t, and its projector (c_s) trains only through the teacher's decoder, i.e. only with
    SEMIDETR.CQC.GRAD_THROUGH_TEACHER."""
    official = cqc_step()
    paper = cqc_step("SEMIDETR.CQC.VARIANT", "paper")
    paper_stopped = cqc_step(*PAPER_OTHER)
    assert all({"cross_view_roi_features", "cross_view_boxes"} <= set(x) for x in official.unlabeled_inputs())
    assert all("cross_view_queries" in x and "cross_view_roi_features" not in x for x in paper.unlabeled_inputs())
    for step in (official, paper):
        assert any(g is not None and g.abs().sum() > 0 for g in step.projector_grads)
    assert all(g is not None for g in paper_stopped.projector_grads)  # in the graph (DDP), zero
    assert all(g.abs().sum() == 0 for g in paper_stopped.projector_grads)


def test_cqc_candidates_mined_or_score_adds_the_boxes_at_or_above_tau_s():
    """SEMIDETR.CQC.CANDIDATES: "mined_or_score" (official) adds to CPM's selection the candidates scoring
    >= SEMI.PSEUDO_SCORE_THRESH; at tau_s 0.001 that is every candidate. "mined" keeps CPM's selection
    alone (fewer). At the default tau_s 0.4 no candidate of the untrained teacher scores that high."""
    union = cqc_step("SEMI.PSEUDO_SCORE_THRESH", str(TAU))
    mined = cqc_step("SEMI.PSEUDO_SCORE_THRESH", str(TAU), "SEMIDETR.CQC.CANDIDATES", "mined")
    assert union.selected() == union.candidates() > 0
    assert mined.candidates() == union.candidates() and 0 < mined.selected() < mined.candidates()
    default = cqc_step()
    assert max(float(s.max()) for s in default.teacher_scores) < 0.4
    assert default.selected() == mined.selected()


def test_roi_size_and_projector_shape_the_cross_view_embedding():
    """SEMIDETR.CQC.ROI_SIZE: the RoI features the student receives (official variant) are ROI_SIZE x
    ROI_SIZE (default 7); SEMIDETR.CQC.PROJECTOR "mlp" replaces the official conv projector by the paper's
    MLP, which embeds the same features."""
    default = cqc_step()
    assert all(x["cross_view_roi_features"].shape[-2:] == (7, 7) for x in default.unlabeled_inputs())
    assert any(isinstance(m, nn.Conv2d) for m in default.projector.modules())
    small_mlp = cqc_step(*TOPK_2_ROI_3_MLP)
    features = [x["cross_view_roi_features"] for x in small_mlp.unlabeled_inputs()]
    assert sum(len(f) for f in features) > 0 and all(f.shape[-2:] == (3, 3) for f in features)
    assert not any(isinstance(m, nn.Conv2d) for m in small_mlp.projector.modules())
    assert small_mlp.loss > 0 and any(g.abs().sum() > 0 for g in small_mlp.projector_grads)


def test_cqc_stages_decide_in_which_stage_the_consistency_loss_is_trained():
    """SEMIDETR.CQC.STAGES: the official variant's ['one_to_many'] has no consistency loss in the one-to-one
    stage (SHM off: every iteration is one-to-one; the projector stays in the graph with a zero loss);
    ['one_to_one'] trains it there."""
    official = cqc_step("SEMIDETR.SHM.ENABLED", "False")
    assert official.metrics.get(CONSISTENCY_LOSS, 0.0) == 0.0 and "cqc/boxes_per_image" not in official.metrics
    one_to_one = cqc_step("SEMIDETR.SHM.ENABLED", "False", "SEMIDETR.CQC.STAGES", "['one_to_one']")
    assert one_to_one.loss > 0 and one_to_one.candidates() > 0


# ----------------------------------------------------------------------------------------------------
# Boundaries where a comparison decides
def test_cqc_candidate_scoring_exactly_tau_s_joins_the_official_candidates():
    """"mined_or_score": a candidate CPM does not keep joins the loss when its score is >= tau_s, so exactly
    at tau_s it does (float32 scores, as predicted) and one float32 step below it does not. Two boxes: the
    kept one agrees (cosine loss 0), the other disagrees (1 - cos = 1 at both layers)."""
    from test_fidelity_semi import _loss_inputs

    at = torch.tensor(0.4, dtype=torch.float32)
    below = torch.nextafter(at, torch.tensor(0.0)).item()
    union = {score: _loss_inputs(keep=(True, False), scores=(0.9, score), candidates="mined_or_score",
                                 score_threshold=0.4)[0].item() for score in (at.item(), below)}
    assert union[at.item()] == pytest.approx(1.0)  # (0 + 2) / 2 boxes
    assert union[below] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("o2m_iters, warns", [(4, True), (3, False)])
def test_one_to_many_warning_when_t1_is_exactly_max_iter(micro_shapes, tmp_path, o2m_iters, warns):
    """README: SEMIDETR.SHM.O2M_ITERS >= SOLVER.MAX_ITER warns that the final model is one-to-many. With T1 =
    MAX_ITER = 4 the last iteration (3) is still one-to-many: a warning; with T1 = 3 it is one-to-one: none."""
    from conftest import micro_config_args

    opts = micro_config_args(micro_shapes, tmp_path, "DATASETS.TRAIN", "('micro_train.1@25',)",
                             "DATASETS.TRAIN_UNLABELED", "('micro_train.1@25-unlabeled',)", "SOLVER.MAX_ITER", "4",
                             "SEMIDETR.SHM.O2M_ITERS", str(o2m_iters))
    with recorded_log_messages("semidetr", logging.WARNING) as messages:
        setup_cfg(default_argument_parser().parse_args(
            ["--config-file", os.path.join(REPO_ROOT, "configs/quick_schedules/semidetr_shapes10_cpu.yaml"), *opts]),
            for_training=False)
    warned = [m for m in messages if "SEMIDETR.SHM.O2M_ITERS" in m and "one-to-many" in m]
    assert bool(warned) == warns, messages.messages
