"""Issue 14 (semi-supervised side): the pseudo-label rule, the one owner of the stage and of NMS, the
official and paper CQC, and the Table-4 rows differing only in their component."""
import importlib.util
import os
from types import SimpleNamespace

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from helpers import tiny_detector_cfg
from semidetr import add_semidetr_config
from semidetr.engine.semi_trainer import CONSISTENCY_LOSS, SemiTrainer
from semidetr.engine.stage import ONE_TO_MANY, ONE_TO_ONE, StageSchedule, evaluation_nms
from semidetr.modeling.cross_view import CQC_VARIANTS, CrossViewQueryEmbedding, resolve_cqc
from semidetr.modeling.detector import DetectorOutputs, TrainingOutputs
from semidetr.semi.cost_mining import MinedSelection
from semidetr.semi.monitoring import cross_view_metrics, duplicate_hits, pseudo_label_metrics
from semidetr.semi.pseudo_labels import PseudoLabeler
from semidetr.semi.query_consistency import CrossViewCandidates, CrossViewConsistency, consistency_loss

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDENTITY = [[1.0, 0, 0], [0, 1, 0], [0, 0, 1]]


def _cfg(*config_and_opts):
    cfg = get_cfg()
    add_semidetr_config(cfg)
    if config_and_opts and config_and_opts[0].endswith(".yaml"):
        cfg.merge_from_file(os.path.join(REPO_ROOT, config_and_opts[0]))
        config_and_opts = config_and_opts[1:]
    cfg.merge_from_list(list(config_and_opts))
    return cfg


def _view(matrix=IDENTITY, size=(100, 200)):
    return {"transform_matrix": torch.tensor(matrix, dtype=torch.float32), "image": torch.zeros(3, *size)}


def _tiny_model():
    from detectron2.modeling import build_model
    return build_model(tiny_detector_cfg()).eval()


def _fixed_outputs(model, logits, boxes):
    """Make the model's network return these (Q, K) logits and (Q, 4) boxes (one layer, one image)."""
    outputs = DetectorOutputs(pred_logits=logits[None, None], pred_boxes=boxes[None, None])
    model.forward_outputs = lambda images, *args: (outputs, None, None, None)


# ------------------------------------------------------------------------------------------------------
# Pseudo labels: NMS passed explicitly to predict, boxes clipped to the weak view, duplicates logged
def test_predict_takes_its_nms_explicitly_and_evaluation_nms_does_not_reach_it():
    model = _tiny_model()
    logits = torch.full((30, 3), -9.0)
    logits[0, 1], logits[1, 1], logits[2, 2] = 3.0, 2.0, 1.0  # queries 0 and 1 duplicate one object
    boxes = torch.full((30, 4), 0.2)
    boxes[:3] = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.21, 0.2], [0.5, 0.5, 0.2, 0.2]])
    _fixed_outputs(model, logits, boxes)
    x = [{"image": torch.zeros(3, 64, 64)}]
    # Class-aware: query 2 (another class, same box) survives; the duplicate of query 0 does not.
    with_nms = model.predict(x, nms_thresh=0.6)[0]
    assert with_nms.pred_classes.tolist() == [1, 2] and with_nms.scores[0] == torch.sigmoid(torch.tensor(3.0))
    assert len(model.predict(x, nms_thresh=0.0)[0]) == 30  # top-k without NMS
    # The evaluation setting is used only when no NMS is passed (inference), and an evaluation restores it.
    with evaluation_nms(model, 0.6):
        assert len(model.predict(x)[0]) == 2
        assert len(model.predict(x, nms_thresh=0.0)[0]) == 30
    assert model.test_nms_thresh == 0.0 and len(model.predict(x)[0]) == 30


def test_predict_clips_teacher_boxes_to_the_view_before_mapping():
    model = _tiny_model()
    logits = torch.full((30, 3), -9.0)
    logits[0, 0] = 3.0
    boxes = torch.full((30, 4), 0.2)
    boxes[0] = torch.tensor([0.1, 0.5, 0.4, 0.2])  # x from -0.1 to 0.3: beyond the left edge
    _fixed_outputs(model, logits, boxes)
    x = [{"image": torch.zeros(3, 100, 200)}]
    clipped = model.predict(x, nms_thresh=0.6, clip=True)[0].pred_boxes.tensor[0]
    raw = model.predict(x, nms_thresh=0.6, clip=False)[0].pred_boxes.tensor[0]
    torch.testing.assert_close(clipped, torch.tensor([0.0, 40, 60, 60]))
    torch.testing.assert_close(raw, torch.tensor([-20.0, 40, 60, 60]))
    # Strong view = the weak view shifted right by 30 px: the clipped box starts at the image's edge (30),
    # the unclipped one would cover the strong view's fill (10 to 30).
    predictions = Instances((100, 200))
    predictions.scores, predictions.pred_classes = torch.tensor([0.9, 0.9]), torch.tensor([0, 0])
    predictions.pred_boxes = Boxes(torch.stack([clipped, raw]))
    strong = _view([[1.0, 0, 30], [0, 1, 0], [0, 0, 1]])
    mapped = PseudoLabeler(0.4)([predictions], [_view()], [strong]).strong[0].gt_boxes.tensor
    assert mapped[0, 0] == 30 and mapped[1, 0] == 10


def test_duplicate_measure_counts_boxes_on_an_object_already_hit():
    gt = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])
    gt_classes = torch.tensor([0, 0])
    pred = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 11], [1, 0, 10, 10], [50, 50, 60, 60], [80, 80, 90, 90]])
    # 3 boxes on object 0 (2 duplicates), 1 on object 1, 1 on nothing
    assert duplicate_hits(pred, torch.zeros(5, dtype=torch.long), gt, gt_classes) == 2
    assert duplicate_hits(pred, torch.tensor([0, 1, 1, 0, 0]), gt, gt_classes) == 0  # other classes miss
    predictions = Instances((100, 200))
    predictions.pred_boxes, predictions.scores = Boxes(pred), torch.full((5,), 0.9)
    predictions.pred_classes = torch.zeros(5, dtype=torch.long)
    weak, strong = _view(), _view()
    monitor = Instances((100, 200))
    monitor.gt_boxes, monitor.gt_classes = Boxes(gt), gt_classes
    strong["monitor_instances"] = monitor
    metrics = pseudo_label_metrics(PseudoLabeler(0.4)([predictions], [weak], [strong]), [strong])
    assert metrics["pseudo/precision@0.5"] == pytest.approx(4 / 5)  # the duplicates count as correct here
    assert metrics["pseudo/duplicates@0.5"] == pytest.approx(2 / 5)  # and show up here


def test_monitoring_counts_the_monitored_images_of_a_mixed_batch():
    """A batch mixing a monitored set with a folder without ground truth is still monitored, on the
    images that have ground truth (SEMI.MONITOR_UNLABELED_GT with a plain unlabeled folder)."""
    gt = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])
    predictions = Instances((100, 200))
    predictions.pred_boxes = Boxes(torch.tensor([[0.0, 0, 10, 10], [80, 80, 90, 90]]))
    predictions.scores, predictions.pred_classes = torch.full((2,), 0.9), torch.zeros(2, dtype=torch.long)
    monitored, unmonitored = _view(), _view()
    monitor = Instances((100, 200))
    monitor.gt_boxes, monitor.gt_classes = Boxes(gt), torch.zeros(2, dtype=torch.long)
    monitored["monitor_instances"] = monitor
    strong = [monitored, unmonitored]
    metrics = pseudo_label_metrics(PseudoLabeler(0.4)([predictions, predictions], [_view(), _view()], strong), strong)
    assert metrics["pseudo/labels_per_image"] == pytest.approx(2.0)
    assert metrics["pseudo/precision@0.5"] == pytest.approx(1 / 2)  # the unmonitored image's boxes not counted
    assert metrics["pseudo/recall@0.5"] == pytest.approx(1 / 2)
    assert "pseudo/precision@0.5" not in pseudo_label_metrics(PseudoLabeler(0.4)([predictions], [_view()], [_view()]),
                                                              [_view()])


def test_mean_std_floor_drops_pseudo_labels_below_the_images_mean_plus_std():
    predictions = Instances((100, 200))
    scores = torch.tensor([0.9, 0.7, 0.45, 0.1, 0.1, 0.1, 0.1, 0.1])  # mean + std = 0.62
    predictions.scores, predictions.pred_classes = scores, torch.zeros(8, dtype=torch.long)
    predictions.pred_boxes = Boxes(torch.tensor([[10.0, 10, 40, 40]]).repeat(8, 1))
    assert PseudoLabeler(0.4).filter(predictions).scores.tolist() == pytest.approx([0.9, 0.7, 0.45])
    assert PseudoLabeler(0.4, mean_std_floor=True).filter(predictions).scores.tolist() == pytest.approx([0.9, 0.7])
    assert _cfg().SEMI.PSEUDO_MEAN_STD_FLOOR  # the official rule by default


# ------------------------------------------------------------------------------------------------------
# The stage: one owner, derived from the iteration
def test_stage_schedule_from_the_iteration():
    schedule = StageSchedule.from_config(_cfg("SEMIDETR.SHM.ENABLED", "True", "SEMIDETR.SHM.O2M_ITERS", "3"))
    assert [schedule.at(i) for i in range(5)] == [ONE_TO_MANY] * 3 + [ONE_TO_ONE] * 2
    off = StageSchedule.from_config(_cfg("SEMIDETR.SHM.O2M_ITERS", "3"))  # SHM off: one-to-one throughout
    assert off.at(0) == ONE_TO_ONE


class _Teacher(nn.Module):
    """Predicts two boxes on each weak view and records how it was asked to."""

    def __init__(self):
        super().__init__()
        self.test_nms_thresh = 0.7  # an evaluation setting that must not reach the pseudo labels
        self.calls = []

    def predict(self, views, return_encoded=False, nms_thresh=None, clip=True):
        self.calls.append({"nms_thresh": nms_thresh, "clip": clip})
        results = []
        for view in views:
            r = Instances(tuple(view["image"].shape[-2:]))
            r.pred_boxes = Boxes(torch.tensor([[10.0, 10, 40, 40], [50, 20, 90, 60]]))
            r.scores, r.pred_classes = torch.tensor([0.9, 0.8]), torch.tensor([0, 1])
            results.append(r)
        return results, None


class _Student(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))
        self.inputs = []

    def forward(self, inputs, return_outputs=False):
        self.inputs.append(inputs)
        losses = {"loss_class": self.weight * 1.0, "unsup_loss_class": self.weight * 2.0}
        return losses, TrainingOutputs(DetectorOutputs(), None, None)


def _semi_trainer(**kwargs):
    student, teacher = _Student(), _Teacher()
    labeled = [{"image": torch.zeros(3, 100, 200), "instances": Instances((100, 200))}]
    unlabeled = [{"weak": _view(), "strong": _view()}]
    loader = iter(lambda: (labeled, unlabeled), None)
    trainer = SemiTrainer(student, teacher, loader, torch.optim.SGD(student.parameters(), lr=0.1),
                          pseudo_labeler=PseudoLabeler(0.4), unsup_weight=4.0, **kwargs)
    return trainer, student, teacher


@pytest.mark.parametrize("denoising, expected", [(None, [False, False, True]),  # the default: official
                                                 (("one_to_many", "one_to_one"), [True, True, True])])
def test_semi_step_follows_the_stage_and_passes_the_pseudo_label_nms(denoising, expected):
    extra = {} if denoising is None else {"pseudo_label_denoising_stages": denoising}
    trainer, student, teacher = _semi_trainer(stage_schedule=StageSchedule(2), pseudo_nms_thresh=0.6,
                                              clip_pseudo_boxes=False, **extra)
    with EventStorage(0) as storage:
        for iteration in range(3):
            trainer.iter = storage.iter = iteration
            trainer.run_step()
    unsup = [inputs[1] for inputs in student.inputs]
    assert [x["assignment"] for x in unsup] == [ONE_TO_MANY, ONE_TO_MANY, ONE_TO_ONE]
    assert [x["denoise"] for x in unsup] == expected
    assert all(x["assignment"] == ONE_TO_MANY for x in (inputs[0] for inputs in student.inputs[:2]))
    # One NMS, the pseudo-label one, passed explicitly (not the teacher's evaluation setting).
    assert teacher.calls == [{"nms_thresh": 0.6, "clip": False}] * 3


def test_default_pseudo_label_rule_is_the_official_one_for_every_semi_config():
    for config in ("configs/quick_schedules/ssod_baseline_shapes10_cpu.yaml",
                   "configs/quick_schedules/semidetr_shapes10_cpu.yaml",
                   "configs/coco_partial/dino_ssod_baseline_10pct.yaml", "configs/coco_partial/semidetr_dino_10pct.yaml",
                   "configs/voc/semidetr_dino.yaml", "configs/coco_full/semidetr_dino.yaml"):
        cfg = _cfg(config)
        assert cfg.SEMI.PSEUDO_NMS_THRESH == 0.6 and cfg.SEMI.PSEUDO_CLIP_BOXES, config
        assert list(cfg.SEMI.PSEUDO_LABEL_DENOISING) == ["one_to_one"], config
        assert cfg.SEMIDETR.CQC.VARIANT == "official", config
    # T1 of COCO-Full: the official warm_up_step (the paper says 180k)
    assert _cfg("configs/coco_full/semidetr_dino.yaml").SEMIDETR.SHM.O2M_ITERS == 120000


@pytest.mark.parametrize("key, value", [("SEMIDETR.CQC.VARIANT", "both"), ("SEMIDETR.CQC.CANDIDATES", "all"),
                                        ("SEMIDETR.CQC.PROJECTOR", "resnet"), ("SEMIDETR.CQC.LOSS", "l1")])
def test_cqc_config_errors_name_the_key(key, value):
    from semidetr.engine.config_checks import check_config

    cfg = _cfg("configs/quick_schedules/semidetr_shapes10_cpu.yaml", key, value)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        check_config(cfg)


# ------------------------------------------------------------------------------------------------------
# Cross-view query consistency
def test_cqc_variants_resolve_and_one_key_selects_the_papers():
    official = resolve_cqc(_cfg("SEMIDETR.CQC.ENABLED", "True"))
    assert official == CQC_VARIANTS["official"]
    assert official["loss_weight"] == 10.0 and official["stages"] == ("one_to_many",)
    assert official["scale_by_unsup_weight"] and official["candidates"] == "mined_or_score"
    paper = resolve_cqc(_cfg("configs/coco_partial/semidetr_dino_10pct.yaml", "SEMIDETR.CQC.VARIANT", "paper"))
    assert paper == CQC_VARIANTS["paper"] and paper["loss"] == "cosine" and len(paper["stages"]) == 2
    # A key set explicitly overrides its variant's value, alone.
    mixed = resolve_cqc(_cfg("SEMIDETR.CQC.VARIANT", "paper", "SEMIDETR.CQC.LOSS_WEIGHT", "2.5",
                             "SEMIDETR.CQC.STAGES", "['one_to_many']"))
    assert mixed == {**CQC_VARIANTS["paper"], "loss_weight": 2.5, "stages": ("one_to_many",)}
    with pytest.raises(ValueError, match="SEMIDETR.CQC.VARIANT"):
        resolve_cqc(_cfg("SEMIDETR.CQC.VARIANT", "both"))


def test_official_consistency_loss_is_the_channel_mean_of_the_normalised_mse():
    student = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [3.0, 0.0]]])  # (L=2, M=2, C=2)
    teacher = torch.tensor([[[2.0, 0.0], [1.0, 0.0]], [[-1.0, -1.0], [0.0, 1.0]]])
    normalize = nn.functional.normalize
    per_layer = [nn.functional.mse_loss(normalize(student[l], dim=-1), normalize(teacher[l], dim=-1)) for l in range(2)]
    assert consistency_loss(student, teacher, "official_mse").item() == pytest.approx(sum(per_layer).item())
    # (2 - 2 cos) / C: the normalised MSE divided by the width C = 2
    assert consistency_loss(student, teacher, "official_mse").item() == pytest.approx(
        consistency_loss(student, teacher, "normalized_mse").item() / 2)
    # Two images without a candidate add their zero-weight placeholders to the average (2 boxes -> 4 entries).
    assert consistency_loss(student, teacher, "official_mse", extra_count=2).item() == pytest.approx(
        sum(per_layer).item() / 2)


class _StubMiner:
    """Candidates: every detection; selection: a fixed keep mask per image."""

    def __init__(self, keep):
        self.keep = keep

    def candidates(self, scores):
        return [torch.ones_like(s, dtype=torch.bool) for s in scores]

    def select(self, labels, boxes, logits, pred_boxes):
        return MinedSelection([k.clone() for k in self.keep], 1.0, "fixed")


class _CqcTeacher(nn.Module):
    """A teacher whose decoder returns the content of each cross-view query (two decoder layers)."""

    def __init__(self, d_model=8):
        super().__init__()
        self.cross_view_embedding = CrossViewQueryEmbedding(d_model, strides=[8, 16], roi_size=2)
        self.cross_view_embedding.requires_grad_(False)
        self.decoded = []

    def decode_queries(self, encoded, denoising, content, reference):
        self.decoded.append((content, reference))
        return None, torch.stack([content, 2 * content])


def _teacher_encoded(d_model=8):
    images = SimpleNamespace(image_sizes=[(64, 64)])
    return SimpleNamespace(images=images, srcs=[torch.randn(1, d_model, 8, 8), torch.randn(1, d_model, 4, 4)])


def _prediction(boxes, scores):
    p = Instances((64, 64))
    p.pred_boxes, p.scores = Boxes(torch.tensor(boxes)), torch.tensor(scores)
    p.pred_classes = torch.zeros(len(scores), dtype=torch.long)
    return p


def test_cqc_candidates_are_mapped_into_the_strong_view():
    cqc = CrossViewConsistency(_StubMiner([torch.tensor([True, True])]), min_box_size=1.0)
    teacher = _CqcTeacher()
    strong = {"transform_matrix": torch.tensor([[-2.0, 0, 128], [0, 2, 0], [0, 0, 1]]), "image": torch.zeros(3, 128, 128)}
    candidates = cqc.candidates(teacher, _teacher_encoded(), [_prediction([[4.0, 4, 20, 12], [30, 30, 62, 62]],
                                                                           [0.9, 0.3])],
                                [_view(size=(64, 64))], [strong])
    # 2x scale then a horizontal flip of the 128 px strong view
    torch.testing.assert_close(candidates.strong_boxes[0], torch.tensor([[88.0, 8, 120, 24], [4, 60, 68, 124]]))
    torch.testing.assert_close(candidates.weak_boxes[0], torch.tensor([[4.0, 4, 20, 12], [30, 30, 62, 62]]))
    assert candidates.teacher_embeddings[0].shape == (2, 8) and candidates.teacher_rois is None
    inputs = cqc.student_inputs(candidates)
    assert set(inputs[0]) == {"cross_view_queries", "cross_view_boxes"}
    # Official structure: the teacher's RoI features go to the student, which projects them itself.
    official = CrossViewConsistency(_StubMiner([torch.tensor([True, True])]), structure="official")
    rois = official.candidates(teacher, _teacher_encoded(), [_prediction([[4.0, 4, 20, 12]], [0.9])],
                               [_view(size=(64, 64))], [strong])
    assert rois.teacher_embeddings is None and rois.teacher_rois[0].shape == (1, 8, 2, 2)
    assert set(official.student_inputs(rois)[0]) == {"cross_view_roi_features", "cross_view_boxes"}


def _loss_inputs(structure="paper", keep=(True, False), scores=(0.9, 0.3), **kwargs):
    """Two candidates; the student's decoded embedding of the first equals the teacher's decoding of it,
    the second's does not. Returns (loss, metrics, c_s)."""
    cqc = CrossViewConsistency(_StubMiner([torch.tensor(keep)]), structure=structure, **kwargs)
    teacher = _CqcTeacher()
    own = torch.tensor([[1.0] * 8, [0.0, 1] + [0] * 6], requires_grad=True)  # c_s, decoded by the teacher
    candidates = CrossViewCandidates(
        [torch.tensor([[0.0, 0, 10, 10], [10, 10, 30, 30]])], [torch.tensor([[0.0, 0, 10, 10], [10, 10, 30, 30]])],
        [torch.zeros(2, dtype=torch.long)], [torch.tensor(scores)], [torch.zeros(2, 8)], [(64, 64)], [(64, 64)])
    student_hidden = torch.stack([own.detach(), 2 * own.detach()])[:, None].clone()  # (L, 1, X, C)
    student_hidden[:, 0, 1] = torch.eye(8)[0]  # the second candidate disagrees: cos 0 with the teacher's
    loss, selection = cqc.loss(teacher, None, candidates, student_hidden, own, torch.zeros(1, 5, 3), torch.zeros(1, 5, 4))
    return loss, cross_view_metrics(candidates, selection, [_view(size=(64, 64))]), own


def test_cqc_loss_uses_only_the_boxes_cpm_keeps():
    loss, metrics, _ = _loss_inputs(keep=(True, False))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)  # the kept box agrees; the other is left out
    assert metrics["cqc/selected_per_image"] == 1
    assert _loss_inputs(keep=(True, True))[0].item() == pytest.approx(1.0)  # (0 + 2 layers x (1 - 0)) / 2 boxes
    # The official candidate set adds the boxes with score >= tau_s to the ones CPM keeps.
    union = _loss_inputs(keep=(True, False), scores=(0.9, 0.5), candidates="mined_or_score", score_threshold=0.4)[0]
    assert union.item() == pytest.approx(1.0)


@pytest.mark.parametrize("grad_through_teacher", [True, False])
def test_cqc_gradient_reaches_c_s_only_through_the_teacher_decoder(grad_through_teacher):
    loss, _, own = _loss_inputs(keep=(True, True), grad_through_teacher=grad_through_teacher)
    loss.backward()
    assert own.grad is not None  # in the graph either way (DDP)
    assert (own.grad.abs().sum() > 0) == grad_through_teacher


def test_cqc_official_structure_is_a_stop_gradient_target_and_loss_weight_scales():
    loss, _, own = _loss_inputs("official", keep=(True, True), loss="official_mse", grad_through_teacher=True)
    assert not loss.requires_grad  # the teacher's decoding carries no gradient to c
    weighted = _loss_inputs("official", keep=(True, True), loss="official_mse", loss_weight=10.0)[0]
    assert weighted.item() == pytest.approx(10 * loss.item()) and loss.item() > 0


def test_official_cqc_loss_is_multiplied_by_w_u():
    """The trainer applies w_u to the consistency loss of the official variant (and only there)."""

    class _Consistency(CrossViewConsistency):
        def active(self, stage):
            return True

        def candidates(self, *args):
            return None

        def student_inputs(self, candidates):
            return [{}]

        def loss(self, *args):
            return torch.tensor(1.5), {}

    for scale, expected in ((True, 6.0), (False, 1.5)):
        consistency = _Consistency(_StubMiner([]), scale_by_unsup_weight=scale)
        trainer, student, _ = _semi_trainer(consistency=consistency)
        student.forward = lambda inputs, return_outputs=False: (
            {"loss_class": student.weight * 1.0},
            TrainingOutputs(DetectorOutputs(pred_logits=torch.zeros(1, 2, 5, 3), pred_boxes=torch.zeros(1, 2, 5, 4)),
                            torch.zeros(1, 2, 0, 8), torch.zeros(0, 8)))
        captured = {}
        trainer.apply_update = lambda loss_dict, *a, **k: captured.update(loss_dict)
        with EventStorage(0):
            trainer.iter = 0
            trainer.run_step()
        assert captured[CONSISTENCY_LOSS].item() == pytest.approx(expected)


def test_student_projects_official_roi_features_in_its_forward():
    from detectron2.modeling import build_model

    cfg = tiny_detector_cfg()
    cfg.SEMI.ENABLED = cfg.SEMIDETR.CQC.ENABLED = True  # official variant: the "conv" projector
    model = build_model(cfg).train()
    assert model.cross_view_embedding.projector_kind == "conv"
    x = {"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "instances": Instances((64, 64))}
    x["instances"].gt_boxes, x["instances"].gt_classes = Boxes(torch.zeros(0, 4)), torch.zeros(0, dtype=torch.long)
    x["cross_view_roi_features"] = torch.randn(3, 64, 7, 7)
    x["cross_view_boxes"] = torch.tensor([[0.0, 0, 20, 20], [10, 10, 40, 50], [5, 5, 60, 60]])
    _, outputs = model([x], return_outputs=True)
    assert outputs.cross_embeddings.shape == (3, 64) and outputs.cross_hidden.shape == (2, 1, 3, 64)
    outputs.cross_hidden.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.cross_view_embedding.parameters())


# ------------------------------------------------------------------------------------------------------
# Table 4 rows differ only in their component
def test_table4_rows_differ_only_in_their_component():
    spec = importlib.util.spec_from_file_location("run_ssod_benchmarks", os.path.join(REPO_ROOT, "tools/run_ssod_benchmarks.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = SimpleNamespace(iters=1000)
    _, ssod, semidetr, _, _ = script.SETTINGS["shapes10"]
    rows = {row: _cfg(f"configs/quick_schedules/{ssod if row == 'ssod_baseline' else semidetr}",
                      *script.row_overrides(row, args)) for row in ("ssod_baseline", "shm", "shm_cqc", "semidetr")}
    # The pseudo-label rule and every other SEMI setting are the same in every row.
    for row, cfg in rows.items():
        assert cfg.SEMI == rows["ssod_baseline"].SEMI, row
    assert not rows["ssod_baseline"].SEMIDETR.SHM.ENABLED and rows["shm"].SEMIDETR.SHM.ENABLED
    assert not rows["shm"].SEMIDETR.CQC.ENABLED and rows["shm_cqc"].SEMIDETR.CQC.ENABLED
    assert rows["shm_cqc"].SEMIDETR.CPM.METHOD == "mean_std" and rows["semidetr"].SEMIDETR.CPM.METHOD == "gmm"
    assert rows["shm"].SEMIDETR.SHM == rows["semidetr"].SEMIDETR.SHM


# ------------------------------------------------------------------------------------------------------
# Strong views: the box-exact switch
def test_box_exact_geometry_keeps_the_translations_and_makes_mapped_boxes_tight():
    from semidetr.data.transforms import build_view_augmentation

    assert build_view_augmentation(_cfg(), "strong").geometric_ops == ("translate_x", "translate_y", "rotate", "shear")
    exact = build_view_augmentation(_cfg("INPUT.AUG.BOX_EXACT_GEOMETRY", "True"), "strong")
    assert exact.geometric_ops == ("translate_x", "translate_y")
    spec = importlib.util.spec_from_file_location("measure", os.path.join(REPO_ROOT, "tools/measure_view_box_accuracy.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tight, _ = tool.measure(_cfg("INPUT.AUG.BOX_EXACT_GEOMETRY", "True"), samples=10, seed=0)
    assert all(iou.min() > 0.999 for iou, _ in tight.values())
    loose, _ = tool.measure(_cfg("INPUT.AUG.GEOMETRIC_OPS", "['rotate']"), samples=10, seed=0)
    assert loose["circle"][0].mean() < 0.9  # the box of a rotated box is larger than the circle's box
