"""Pseudo-label monitoring: how many pseudo labels and cross-view candidates a step has, and, where the
unlabeled images' ground truth is loaded (SEMI.MONITOR_UNLABELED_GT), how good they are. Nothing here
reaches a loss: the pseudo labeler and the miner return labels and masks, the SemiTrainer asks
`step_metrics` once per step, and tools/pseudo_label_quality.py counts the same hits per class.

A hit is a pseudo box and a ground-truth box of the same class at IoU >= 0.5 (`hit_matrix`): precision is
the share of pseudo boxes that hit an object, recall the share of objects hit, and duplicates the share of
pseudo boxes on an object that another pseudo box already hit (precision counts them as correct).

Monitored images. A batch may mix a monitored data set with an unmonitored one (a plain folder): the
pseudo-label metrics ("pseudo/...@0.5") count the images whose view carries "monitor_instances"; CPM's
precision / recall ("cpm/...@0.5") are logged only when every image of the batch carries them.

Logged names: "pseudo/labels_per_image", "pseudo/dropped_by_mapping", "pseudo/score_mean",
"pseudo/score_min", "pseudo/precision@0.5", "pseudo/recall@0.5", "pseudo/duplicates@0.5"; with CQC
"cqc/boxes_per_image", "cqc/selected_per_image", "cpm/precision@0.5", "cpm/recall@0.5", and for CPM's
GMM rule "cpm/candidates_per_image", "cpm/cost_threshold". Values are python numbers or 0-d tensors (the
trainer converts them with a single host copy).
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..modeling.box_ops import batched_box_iou, cxcywh_to_xyxy, xyxy_to_cxcywh
from .cost_mining import MinedSelection
from .pseudo_labels import PseudoLabelBatch
from .query_consistency import CrossViewCandidates

__all__ = ["hit_matrix", "match_at_iou", "duplicate_hits", "pseudo_label_metrics", "cpm_precision_recall",
           "cross_view_metrics", "step_metrics"]

HIT_IOU = 0.5
Metrics = Dict[str, Union[float, Tensor]]


def _same_class(pred_classes: Tensor, gt_classes: Tensor) -> Tensor:
    return pred_classes[:, None] == gt_classes[None, :]


def hit_matrix(pred_boxes: Tensor, pred_classes: Tensor, gt_boxes: Tensor, gt_classes: Tensor,
               threshold: float = HIT_IOU) -> Tensor:
    """(P, G) bool: pseudo box p hits ground-truth box g (same class, IoU >= threshold). xyxy boxes in one
    frame (IoU is invariant to a per-axis scaling, so normalised boxes give the pixel result)."""
    if len(pred_boxes) == 0 or len(gt_boxes) == 0:
        return torch.zeros(len(pred_boxes), len(gt_boxes), dtype=torch.bool, device=pred_boxes.device)
    return (batched_box_iou(pred_boxes, gt_boxes) >= threshold) & _same_class(pred_classes, gt_classes)


def match_at_iou(pred_boxes: Tensor, pred_classes: Tensor, gt_boxes: Tensor, gt_classes: Tensor,
                 threshold: float = HIT_IOU) -> Tuple[int, int]:
    """(pseudo boxes that hit a ground-truth box, ground-truth boxes hit by a pseudo box) - the counts
    behind precision and recall."""
    hit = hit_matrix(pred_boxes, pred_classes, gt_boxes, gt_classes, threshold)
    return int(hit.any(1).sum()), int(hit.any(0).sum())


def duplicate_hits(pred_boxes: Tensor, pred_classes: Tensor, gt_boxes: Tensor, gt_classes: Tensor,
                   threshold: float = HIT_IOU) -> int:
    """Pseudo boxes that hit an object another pseudo box already hit: each hitting box is assigned to its
    best-IoU same-class object, and an object hit by k boxes counts k - 1 duplicates."""
    if len(pred_boxes) == 0 or len(gt_boxes) == 0:
        return 0
    iou = batched_box_iou(pred_boxes, gt_boxes)
    iou = torch.where(_same_class(pred_classes, gt_classes), iou, torch.full_like(iou, -1.0))
    best_iou, best_gt = iou.max(1)
    hitting = best_iou >= threshold
    return int(hitting.sum()) - int(best_gt[hitting].unique().numel())


def pseudo_label_metrics(pseudo: PseudoLabelBatch, strong_views: Sequence[Dict]) -> Metrics:
    """Counts and scores of a batch's pseudo labels; precision / recall / duplicates on its monitored images."""
    num_images = max(len(pseudo.strong), 1)
    all_scores = torch.cat([labels.scores for labels in pseudo.strong]) if pseudo.strong else torch.zeros(0)
    # Score statistics stay tensors: the trainer converts all metrics with a single host copy.
    empty = all_scores.new_zeros(())
    metrics: Metrics = {
        "pseudo/labels_per_image": float(len(all_scores)) / num_images,
        "pseudo/dropped_by_mapping": float(sum(len(k) - len(l) for k, l in zip(pseudo.kept, pseudo.strong))),
        "pseudo/score_mean": all_scores.mean() if len(all_scores) else empty,
        "pseudo/score_min": all_scores.min() if len(all_scores) else empty,
    }
    precision_hits = recall_hits = num_gt = duplicates = monitored_labels = monitored_images = 0
    for labels, view in zip(pseudo.strong, strong_views):
        if "monitor_instances" not in view:
            continue
        boxes = labels.gt_boxes.tensor
        gt = view["monitor_instances"].to(boxes.device)
        p_hits, r_hits = match_at_iou(boxes, labels.gt_classes, gt.gt_boxes.tensor, gt.gt_classes)
        precision_hits += p_hits
        recall_hits += r_hits
        duplicates += duplicate_hits(boxes, labels.gt_classes, gt.gt_boxes.tensor, gt.gt_classes)
        num_gt += len(gt)
        monitored_labels += len(labels)
        monitored_images += 1
    if monitored_images:
        metrics["pseudo/precision@0.5"] = precision_hits / max(monitored_labels, 1)
        metrics["pseudo/recall@0.5"] = recall_hits / max(num_gt, 1)
        metrics["pseudo/duplicates@0.5"] = duplicates / max(monitored_labels, 1)
    return metrics


def cpm_precision_recall(keep: Sequence[Tensor], labels: Sequence[Tensor], boxes: Sequence[Tensor],
                         gt_classes: Sequence[Tensor], gt_boxes: Sequence[Tensor]) -> Dict[str, float]:
    """Precision / recall of the selected candidates (Table 5's columns). Per image: keep (n_i,) over the
    candidates' labels (n_i,) and boxes (n_i, 4), the ground truth's classes (g_i,) and boxes (g_i, 4), boxes
    normalised cxcywh in one view."""
    precision_hits = recall_hits = num_selected = num_gt = 0
    for mask, label, box, gt_label, gt_box in zip(keep, labels, boxes, gt_classes, gt_boxes):
        selected = cxcywh_to_xyxy(box.reshape(-1, 4)[mask])
        gt_xyxy = cxcywh_to_xyxy(gt_box.reshape(-1, 4).to(selected.device))
        p_hits, r_hits = match_at_iou(selected, label[mask], gt_xyxy, gt_label.to(selected.device))
        precision_hits += p_hits
        recall_hits += r_hits
        num_selected += len(selected)
        num_gt += len(gt_box)
    return {"cpm/precision@0.5": precision_hits / max(num_selected, 1),
            "cpm/recall@0.5": recall_hits / max(num_gt, 1)}


def _normalised_monitor_gt(strong_views: Sequence[Dict]) -> Optional[Tuple[List[Tensor], List[Tensor]]]:
    """The monitoring ground truth of every strong view (classes, normalised cxcywh boxes), or None unless
    every view has it."""
    if not strong_views or not all("monitor_instances" in v for v in strong_views):
        return None
    classes, boxes = [], []
    for view in strong_views:
        h, w = view["image"].shape[-2:]
        gt = view["monitor_instances"]
        classes.append(gt.gt_classes)
        boxes.append(xyxy_to_cxcywh(gt.gt_boxes.tensor / torch.tensor([w, h, w, h], dtype=torch.float32)))
    return classes, boxes


def cross_view_metrics(candidates: CrossViewCandidates, selection: MinedSelection,
                       strong_views: Sequence[Dict]) -> Metrics:
    """Candidates and selected boxes of the consistency loss; CPM's threshold, and its precision / recall
    when every strong view is monitored."""
    counts = candidates.counts
    num_images = max(len(counts), 1)
    metrics: Metrics = {}
    if selection.method == "gmm":
        metrics["cpm/candidates_per_image"] = float(sum(counts)) / num_images
        if math.isfinite(selection.threshold):  # -inf (no cost anywhere) would poison the logged average
            metrics["cpm/cost_threshold"] = selection.threshold
    monitor_gt = _normalised_monitor_gt(strong_views)
    if monitor_gt is not None:
        metrics.update(cpm_precision_recall(selection.keep, candidates.labels,
                                            candidates.normalised_strong_boxes(), *monitor_gt))
    metrics["cqc/boxes_per_image"] = float(sum(counts)) / num_images
    selected = torch.cat(selection.keep).sum() if selection.keep else torch.zeros((), dtype=torch.long)
    metrics["cqc/selected_per_image"] = selected.float() / num_images
    return metrics


def step_metrics(pseudo: PseudoLabelBatch, strong_views: Sequence[Dict],
                 candidates: Optional[CrossViewCandidates] = None,
                 selection: Optional[MinedSelection] = None) -> Metrics:
    """Everything a semi-supervised step logs about its pseudo labels (and, with CQC, its candidates)."""
    metrics = pseudo_label_metrics(pseudo, strong_views)
    if candidates is not None and selection is not None:
        metrics.update(cross_view_metrics(candidates, selection, strong_views))
    return metrics
