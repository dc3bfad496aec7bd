"""`SemiTrainer`: one teacher-student step, and Semi-DETR's components where they are switched on.

Each step (paper Fig. 3 and eq. 13):
  1. the EMA teacher (eval mode, never DDP-wrapped, no gradient) predicts on the weak views;
  2. pseudo labels: the teacher's detections with class-aware NMS (SEMI.PSEUDO_NMS_THRESH, passed to
     `teacher.predict`; evaluation NMS never applies here), score >= tau_s, mapped from each weak view
     into its strong view;
  3. [CQC] cross-view candidates and the teacher's embeddings c_t of them, or (official variant) their
     RoI features, which the student's projector embeds (semi/query_consistency.py);
  4. one student forward over labeled images + strong views (loss groups "" and "unsup"), with
     one-to-many assignment in Stage-wise Hybrid Matching's first stage, one-to-one after it;
  5. [CQC + CPM] the teacher decodes the student's embeddings; mined candidates enter the consistency loss;
  6. monitoring (semi/monitoring.py): counts and, where the ground truth is loaded, quality of the pseudo
     labels and of the mined candidates, logged with the losses;
  7. L = L_sup + w_u * L_unsup (+ w_c * L_c, times w_u too in the official CQC), backward, clip, step
     (skipped if anything is non-finite);
  8. hooks: EMA update of the teacher, stage switch, evaluation, checkpoints.
"""
import logging
import time
from typing import Optional

import torch
from detectron2.utils import comm
from torch.profiler import record_function

from ..modeling.detector import loss_group_prefix
from ..semi.monitoring import step_metrics
from ..semi.pseudo_labels import IMAGES_WITHOUT_PSEUDO_LABELS, PseudoLabeler
from ..semi.query_consistency import CrossViewConsistency
from .stage import ONE_TO_ONE, StageSchedule
from .train_loop import DetrTrainer, autocast_step

__all__ = ["SemiTrainer", "UNSUP_GROUP", "UNSUP_PREFIX"]

logger = logging.getLogger(__name__)

# The loss group of the pseudo-labeled strong views; the detector prefixes its loss names with UNSUP_PREFIX.
UNSUP_GROUP = "unsup"
UNSUP_PREFIX = loss_group_prefix(UNSUP_GROUP)
CONSISTENCY_LOSS = "loss_consistency"


class SemiTrainer(DetrTrainer):
    def __init__(self, model, teacher, data_loader, optimizer, *, pseudo_labeler: PseudoLabeler,
                 unsup_weight: float, pseudo_label_denoising_stages=(ONE_TO_ONE,),
                 stage_schedule: StageSchedule = StageSchedule(), pseudo_nms_thresh: float = 0.6,
                 clip_pseudo_boxes: bool = True, one_to_many_for_labeled: bool = True,
                 consistency: Optional[CrossViewConsistency] = None, images_without_pseudo_labels: str = "background",
                 visualizer=None, vis_period: int = 0, **kwargs):
        """
        Args:
            model: the student (possibly DDP-wrapped); teacher: its EMA copy (eval mode, no grad).
            data_loader: yields (labeled batch, unlabeled batch of {"weak", "strong"} view pairs).
            pseudo_labeler: turns teacher detections into strong-view targets.
            unsup_weight: w_u.
            pseudo_label_denoising_stages: stages in which pseudo labels also become denoising queries.
            stage_schedule: the training stage of each iteration (engine/stage.py, the one owner).
            pseudo_nms_thresh: class-aware NMS IoU of the teacher's detections (0 = none).
            clip_pseudo_boxes: clip the teacher's boxes to the weak view (before NMS and the mapping).
            one_to_many_for_labeled: labeled images also use one-to-many assignment in stage 1.
            consistency: Semi-DETR's cross-view query consistency with its pseudo-label miner, or None.
            images_without_pseudo_labels: "background" (official: all their queries are trained as
                background) or "ignore" (they add no unsupervised loss), see IMAGES_WITHOUT_PSEUDO_LABELS.
            visualizer: callable(iteration, weak views, strong views, PseudoLabelBatch) writing a PNG.
        """
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.teacher = teacher
        self.pseudo_labeler = pseudo_labeler
        self.unsup_weight = unsup_weight
        self.pseudo_label_denoising_stages = tuple(pseudo_label_denoising_stages)
        self.stage_schedule = stage_schedule
        self.pseudo_nms_thresh = pseudo_nms_thresh
        self.clip_pseudo_boxes = clip_pseudo_boxes
        self.one_to_many_for_labeled = one_to_many_for_labeled
        self.consistency = consistency
        if images_without_pseudo_labels not in IMAGES_WITHOUT_PSEUDO_LABELS:
            raise ValueError(f"images_without_pseudo_labels={images_without_pseudo_labels!r}: use one of "
                             f"{list(IMAGES_WITHOUT_PSEUDO_LABELS)}")
        self.empty_image_class_weight = IMAGES_WITHOUT_PSEUDO_LABELS[images_without_pseudo_labels]
        self.visualizer = visualizer
        self.vis_period = vis_period

    @property
    def stage(self) -> str:
        return self.stage_schedule.at(self.iter)

    @autocast_step  # SOLVER.AMP: teacher inference, student forward and cross-view decoding alike
    def run_step(self):
        assert self.model.training, "[SemiTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        with record_function("semi/data"):
            labeled, unlabeled = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        self.mapper_stats.update(labeled + unlabeled)
        weak = [pair["weak"] for pair in unlabeled]
        strong = [pair["strong"] for pair in unlabeled]
        stage = self.stage
        consistency_on = self.consistency is not None and self.consistency.active(stage)

        # 1. Teacher. Inference mode is cheapest, but its tensors can never enter autograd; with CQC the
        #    teacher's encoded images are decoded again with the student's c_s (which carries gradient).
        with torch.no_grad() if consistency_on else torch.inference_mode():
            with record_function("semi/teacher_inference"):
                predictions, teacher_encoded = self.teacher.predict(
                    weak, return_encoded=True, nms_thresh=self.pseudo_nms_thresh, clip=self.clip_pseudo_boxes)
            with record_function("semi/cqc_candidates"):
                candidates = self.consistency.candidates(self.teacher, teacher_encoded, predictions, weak, strong) \
                    if consistency_on else None
        if not consistency_on:
            predictions = [_clone_instances(p) for p in predictions]
            teacher_encoded = None
        # 2. Pseudo labels in the strong views.
        with record_function("semi/pseudo_labels"):
            pseudo = self.pseudo_labeler(predictions, weak, strong)

        # 4. Student on labeled images + strong views.
        assignment = stage
        labeled_assignment = assignment if self.one_to_many_for_labeled else ONE_TO_ONE
        denoise = stage in self.pseudo_label_denoising_stages
        student_inputs = [{**x, "assignment": labeled_assignment} for x in labeled]
        cross_inputs = self.consistency.student_inputs(candidates) if consistency_on else [{}] * len(strong)
        student_inputs += [
            {**view, **cross, "instances": labels, "loss_group": UNSUP_GROUP, "denoise": denoise,
             "assignment": assignment, "class_loss_weight": 1.0 if len(labels) else self.empty_image_class_weight}
            for view, labels, cross in zip(strong, pseudo.strong, cross_inputs)
        ]
        with record_function("semi/student_forward"):
            loss_dict, outputs = self.model(student_inputs, return_outputs=True)
        loss_dict = {name: value * self.unsup_weight if name.startswith(UNSUP_PREFIX) else value
                     for name, value in loss_dict.items()}

        # 5. Cross-view consistency on the mined candidates.
        selection = None
        if consistency_on:
            unlabeled_slice = slice(len(labeled), None)
            with record_function("semi/cqc_loss"):
                consistency, selection = self.consistency.loss(
                    self.teacher, teacher_encoded, candidates, outputs.cross_hidden[:, unlabeled_slice],
                    outputs.cross_embeddings, outputs.outputs["pred_logits"][-1, unlabeled_slice],
                    outputs.outputs["pred_boxes"][-1, unlabeled_slice])
            loss_dict[CONSISTENCY_LOSS] = consistency * (self.unsup_weight if self.consistency.scale_by_unsup_weight
                                                         else 1.0)
        elif outputs.cross_embeddings is not None:
            # A stage without CQC (official: stage 2): keep the projector in the graph for DDP.
            loss_dict[CONSISTENCY_LOSS] = outputs.cross_embeddings.sum() * 0.0

        # 6. Monitoring.
        with record_function("semi/monitoring"):
            metrics = {**step_metrics(pseudo, strong, candidates, selection), **self.data_metrics()}
        self.apply_update(loss_dict, data_time, extra_metrics=metrics)
        if self.visualizer is not None and self.vis_period > 0 and comm.is_main_process() \
                and (self.iter + 1) % self.vis_period == 0:
            self.visualizer(self.iter, weak, strong, pseudo)


def _clone_instances(instances):
    cloned = type(instances)(instances.image_size)
    for name, value in instances.get_fields().items():
        cloned.set(name, value.clone())
    return cloned
