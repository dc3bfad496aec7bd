"""Pseudo labels: teacher detections on the weak view -> targets of the student on the strong view.

The teacher's detections arrive clipped to the weak view and after class-aware NMS (both done by
`detector.predict`, with the settings SEMI.PSEUDO_CLIP_BOXES / SEMI.PSEUDO_NMS_THRESH passed by the
SemiTrainer); here they are filtered by score (tau_s, and the image's mean + std with
SEMI.PSEUDO_MEAN_STD_FLOOR) and mapped into the strong view."""
from dataclasses import dataclass
from typing import Dict, List

from detectron2.structures import Instances
from torch import Tensor

from ..data.geometry import map_instances
from .cost_mining import mean_std_candidates

__all__ = ["PseudoLabeler", "PseudoLabelBatch", "IMAGES_WITHOUT_PSEUDO_LABELS"]

# SEMI.IMAGES_WITHOUT_PSEUDO_LABELS -> classification-loss weight of an unlabeled image without pseudo labels.
IMAGES_WITHOUT_PSEUDO_LABELS = {"background": 1.0, "ignore": 0.0}


@dataclass
class PseudoLabelBatch:
    """Pseudo labels of a batch of unlabeled images (their metrics: semi/monitoring.py).

    strong: per image, Instances in the strong view's pixel frame with gt_boxes, gt_classes, scores;
    weak: the same labels in the weak view (before mapping, after filtering), for visualisation and
    for Semi-DETR's cross-view queries; kept: per image, which weak labels survived the mapping.
    """

    strong: List[Instances]
    weak: List[Instances]
    kept: List[Tensor]


class PseudoLabeler:
    """Score filter (tau_s) and the weak -> strong box mapping of the teacher's (NMS-ed) detections."""

    def __init__(self, score_threshold: float, min_box_size: float = 1.0, mean_std_floor: bool = False):
        """mean_std_floor: keep only detections that also score >= the mean + std of their image's
        detections (SEMI.PSEUDO_MEAN_STD_FLOOR, the official code's rule)."""
        if not 0.0 < score_threshold < 1.0:
            raise ValueError(f"PseudoLabeler: score_threshold={score_threshold} must lie in (0, 1)")
        self.score_threshold = score_threshold
        self.min_box_size = min_box_size
        self.mean_std_floor = mean_std_floor

    def filter(self, predictions: Instances) -> Instances:
        keep = predictions.scores >= self.score_threshold
        if self.mean_std_floor:
            keep &= mean_std_candidates(predictions.scores)
        return predictions[keep]

    def __call__(self, predictions: List[Instances], weak_views: List[Dict], strong_views: List[Dict]) -> PseudoLabelBatch:
        """predictions: the teacher's detections in each weak view's frame (`detector.predict`)."""
        strong_labels, weak_labels, kept_masks = [], [], []
        for prediction, weak, strong in zip(predictions, weak_views, strong_views):
            selected = self.filter(prediction)
            mapped, keep = map_instances(selected, weak, strong, self.min_box_size)
            strong_labels.append(_as_targets(mapped))
            weak_labels.append(_as_targets(selected))
            kept_masks.append(keep)
        return PseudoLabelBatch(strong_labels, weak_labels, kept_masks)


def _as_targets(detections: Instances) -> Instances:
    """Detections (pred_boxes, pred_classes, scores) as the student's targets (gt_boxes, gt_classes, scores)."""
    targets = Instances(detections.image_size)
    targets.gt_boxes = detections.pred_boxes
    targets.gt_classes = detections.pred_classes
    targets.scores = detections.scores
    return targets
