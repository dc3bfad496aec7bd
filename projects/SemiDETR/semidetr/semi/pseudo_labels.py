"""Pseudo labels: teacher detections on the weak view -> targets of the student on the strong view.

The teacher's detections arrive clipped to the weak view and after class-aware NMS (both done by
`detector.predict`, with the settings SEMI.PSEUDO_CLIP_BOXES / SEMI.PSEUDO_NMS_THRESH passed by the
SemiTrainer); here they are filtered by score (tau_s, and the image's mean + std with
SEMI.PSEUDO_MEAN_STD_FLOOR) and mapped into the strong view."""
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
from detectron2.structures import Boxes, Instances
from torch import Tensor

from ..data.geometry import map_boxes
from ..modeling.box_ops import batched_box_iou

__all__ = ["PseudoLabeler", "PseudoLabelBatch", "match_at_iou", "duplicate_hits"]


@dataclass
class PseudoLabelBatch:
    """Pseudo labels of a batch of unlabeled images.

    strong: per image, Instances in the strong view's pixel frame with gt_boxes, gt_classes, scores;
    weak: the same labels in the weak view (before mapping, after filtering), for visualisation and
    for Semi-DETR's cross-view queries; kept: per image, which weak labels survived the mapping.
    """

    strong: List[Instances]
    weak: List[Instances]
    kept: List[Tensor]
    metrics: Dict[str, float] = field(default_factory=dict)


def match_at_iou(pred_boxes: Tensor, pred_classes: Tensor, gt_boxes: Tensor, gt_classes: Tensor,
                 threshold: float = 0.5) -> Tuple[int, int]:
    """(pseudo boxes that hit a same-class ground-truth box at IoU >= threshold, ground-truth boxes hit
    by a same-class pseudo box) - the counts behind pseudo-label precision and recall."""
    if len(pred_boxes) == 0 or len(gt_boxes) == 0:
        return 0, 0
    hit = (batched_box_iou(pred_boxes, gt_boxes) >= threshold) & (pred_classes[:, None] == gt_classes[None, :])
    return int(hit.any(1).sum()), int(hit.any(0).sum())


def duplicate_hits(pred_boxes: Tensor, pred_classes: Tensor, gt_boxes: Tensor, gt_classes: Tensor,
                   threshold: float = 0.5) -> int:
    """Pseudo boxes that hit (same class, IoU >= threshold) an object another pseudo box already hit: each
    hitting box is assigned to its best-IoU object, and an object hit by k boxes counts k - 1 duplicates.
    Precision counts every hitting box as correct; this counts the ones that add no new object."""
    if len(pred_boxes) == 0 or len(gt_boxes) == 0:
        return 0
    iou = batched_box_iou(pred_boxes, gt_boxes)
    iou = torch.where(pred_classes[:, None] == gt_classes[None, :], iou, torch.full_like(iou, -1.0))
    best_iou, best_gt = iou.max(1)
    hitting = best_iou >= threshold
    return int(hitting.sum()) - int(best_gt[hitting].unique().numel())


class PseudoLabeler:
    """Score filter (tau_s) and the weak -> strong box mapping of the teacher's (NMS-ed) detections."""

    def __init__(self, score_threshold: float, min_box_size: float = 1.0, mean_std_floor: bool = False):
        """mean_std_floor: keep only detections that also score >= the mean + std of their image's
        detections (SEMI.PSEUDO_MEAN_STD_FLOOR, the official code's rule)."""
        if not 0.0 < score_threshold < 1.0:
            raise ValueError(f"SEMI.PSEUDO_SCORE_THRESH={score_threshold} must lie in (0, 1)")
        self.score_threshold = score_threshold
        self.min_box_size = min_box_size
        self.mean_std_floor = mean_std_floor

    def filter(self, predictions: Instances) -> Instances:
        keep = predictions.scores >= self.score_threshold
        if self.mean_std_floor:
            from .cost_mining import mean_std_candidates  # cost_mining imports this module

            keep &= mean_std_candidates(predictions.scores)
        return predictions[keep]

    def __call__(self, predictions: List[Instances], weak_views: List[Dict], strong_views: List[Dict]) -> PseudoLabelBatch:
        """predictions: the teacher's detections in each weak view's frame (`detector.predict`)."""
        strong_labels, weak_labels, kept_masks = [], [], []
        num_filtered = num_dropped = 0
        scores = []
        # Monitoring counts the images whose ground truth was loaded: a batch may mix a monitored set with
        # an unmonitored one (a plain folder), see SEMI.MONITOR_UNLABELED_GT.
        precision_hits = recall_hits = num_gt = duplicates = monitored_labels = monitored_images = 0
        for prediction, weak, strong in zip(predictions, weak_views, strong_views):
            selected = self.filter(prediction)
            strong_size = tuple(strong["image"].shape[-2:])
            boxes, keep = map_boxes(selected.pred_boxes.tensor, weak["transform_matrix"], strong["transform_matrix"],
                                    strong_size, self.min_box_size)
            labels = Instances(strong_size)
            labels.gt_boxes = Boxes(boxes)
            labels.gt_classes = selected.pred_classes[keep]
            labels.scores = selected.scores[keep]
            weak_instances = Instances(selected.image_size)
            weak_instances.gt_boxes = selected.pred_boxes
            weak_instances.gt_classes = selected.pred_classes
            weak_instances.scores = selected.scores
            strong_labels.append(labels)
            weak_labels.append(weak_instances)
            kept_masks.append(keep)
            num_filtered += len(selected)
            num_dropped += int(len(selected) - len(labels))
            scores.append(labels.scores)
            if "monitor_instances" in strong:
                monitored_images += 1
                monitored_labels += len(labels)
                gt = strong["monitor_instances"].to(boxes.device)
                p_hits, r_hits = match_at_iou(boxes, labels.gt_classes, gt.gt_boxes.tensor, gt.gt_classes)
                precision_hits += p_hits
                recall_hits += r_hits
                duplicates += duplicate_hits(boxes, labels.gt_classes, gt.gt_boxes.tensor, gt.gt_classes)
                num_gt += len(gt)
        all_scores = torch.cat(scores) if scores else torch.zeros(0)
        num_images = max(len(predictions), 1)
        # Score statistics stay tensors: the trainer converts all metrics with a single host copy.
        empty = all_scores.new_zeros(())
        metrics = {
            "pseudo/labels_per_image": float(len(all_scores)) / num_images,
            "pseudo/dropped_by_mapping": float(num_dropped),
            "pseudo/score_mean": all_scores.mean() if len(all_scores) else empty,
            "pseudo/score_min": all_scores.min() if len(all_scores) else empty,
        }
        if monitored_images:
            metrics["pseudo/precision@0.5"] = precision_hits / max(monitored_labels, 1)
            metrics["pseudo/recall@0.5"] = recall_hits / max(num_gt, 1)
            # Share of the pseudo labels that hit an object another pseudo label already hit.
            metrics["pseudo/duplicates@0.5"] = duplicates / max(monitored_labels, 1)
        return PseudoLabelBatch(strong_labels, weak_labels, kept_masks, metrics)
