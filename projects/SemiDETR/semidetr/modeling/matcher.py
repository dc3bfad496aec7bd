"""One-to-one Hungarian matching between predictions and targets (DETR's matcher, batched).

The matcher is separate from the criterion (as in DETR): it runs without gradient and only decides which
prediction is assigned to which target. The cost of all decoder layers and all images is computed as one
padded tensor on the predictions' device and copied to the host once; scipy's `linear_sum_assignment`
then solves each (layer, image) block. Matching a batch therefore gives exactly the per-image matching.
"""
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from torch.profiler import record_function

from .box_ops import batched_generalized_box_iou, cxcywh_to_xyxy

__all__ = ["Assignment", "HungarianMatcher", "pad_targets", "focal_class_cost", "pairwise_matching_cost"]


@dataclass
class Assignment:
    """Flat list of (layer, image, query) -> target pairs, every field of shape (M,).

    `target` indexes the concatenation of all images' targets. `weight` is the soft target of each pair
    (1 for one-to-one matching; the normalised alignment metric for one-to-many assignment).
    """

    layer: Tensor
    image: Tensor
    query: Tensor
    target: Tensor
    weight: Tensor

    @staticmethod
    def empty(device) -> "Assignment":
        z = torch.zeros(0, dtype=torch.long, device=device)
        return Assignment(z, z, z, z, torch.zeros(0, device=device))


def pad_targets(targets: List[Dict[str, Tensor]], device):
    """Stack per-image targets into padded (N, T) labels, (N, T, 4) boxes and a (N, T) validity mask."""
    labels = pad_sequence([t["labels"].to(device) for t in targets], batch_first=True)
    boxes = pad_sequence([t["boxes"].to(device).reshape(-1, 4) for t in targets], batch_first=True)
    valid = pad_sequence([torch.ones_like(t["labels"], dtype=torch.bool, device=device) for t in targets],
                         batch_first=True)
    return labels, boxes, valid


def focal_class_cost(prob: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
    """Focal-loss classification cost (Deformable DETR): prob (..., N, Q, K), labels (N, T) -> (..., N, Q, T)."""
    index = labels[..., None, :].expand(*prob.shape[:-1], labels.shape[-1])
    prob = prob.gather(-1, index)
    neg_cost = (1 - alpha) * prob.pow(gamma) * (-(1 - prob + 1e-8).log())
    pos_cost = alpha * (1 - prob).pow(gamma) * (-(prob + 1e-8).log())
    return pos_cost - neg_cost


def pairwise_matching_cost(
    pred_logits: Tensor, pred_boxes: Tensor, labels: Tensor, boxes: Tensor, *,
    cost_class: float, cost_bbox: float, cost_giou: float, focal_alpha: float, focal_gamma: float,
) -> Tensor:
    """C = w_class * focal + w_bbox * L1 + w_giou * (-GIoU) for every (prediction, target) pair.

    pred_logits (..., N, Q, K), pred_boxes (..., N, Q, 4) normalised cxcywh; labels (N, T), boxes (N, T, 4).
    Returns (..., N, Q, T). Also the per-pseudo-box cost of Semi-DETR's cost-based mining (eq. 12).
    """
    class_cost = focal_class_cost(pred_logits.sigmoid(), labels, focal_alpha, focal_gamma)
    l1_cost = (pred_boxes[..., :, None, :] - boxes[..., None, :, :]).abs().sum(-1)
    giou_cost = -batched_generalized_box_iou(cxcywh_to_xyxy(pred_boxes), cxcywh_to_xyxy(boxes))
    return cost_class * class_cost + cost_bbox * l1_cost + cost_giou * giou_cost


def solve_assignments(cost: Tensor, counts: List[int], weight_device) -> Assignment:
    """Solve one linear assignment per (layer, image) block of a (L, N, Q, T) cost (T padded)."""
    num_layers, batch_size = cost.shape[:2]
    # Non-finite predictions must not crash the solver: they get a huge cost, the loss computed from them
    # is non-finite as well, and the trainer skips that step.
    cost = torch.nan_to_num(cost.detach().float(), nan=1e8, posinf=1e8, neginf=-1e8)
    cost_cpu = cost.cpu().numpy()  # the single device->host copy
    parts = {"layer": [], "image": [], "query": [], "target": []}
    offsets = np.cumsum([0] + counts[:-1])
    for layer in range(num_layers):
        for image in range(batch_size):
            n = counts[image]
            if n == 0:
                continue
            rows, cols = linear_sum_assignment(cost_cpu[layer, image, :, :n])
            parts["layer"].append(np.full(len(rows), layer))
            parts["image"].append(np.full(len(rows), image))
            parts["query"].append(rows)
            parts["target"].append(cols + offsets[image])
    if not parts["layer"]:
        return Assignment.empty(weight_device)
    flat = torch.from_numpy(np.stack([np.concatenate(parts[k]) for k in ("layer", "image", "query", "target")]))
    flat = flat.to(device=weight_device, dtype=torch.long, non_blocking=True)
    return Assignment(flat[0], flat[1], flat[2], flat[3], torch.ones(flat.shape[1], device=weight_device))


class HungarianMatcher(nn.Module):
    """One-to-one assignment minimising the DETR matching cost (focal class, L1 and GIoU)."""

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all matching costs are 0 (MODEL.DETR.COST_*)")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @torch.no_grad()
    @record_function("matching/hungarian")
    def forward(self, pred_logits: Tensor, pred_boxes: Tensor, targets: List[Dict[str, Tensor]]) -> Assignment:
        """pred_logits (L, N, Q, K) and pred_boxes (L, N, Q, 4) for L prediction layers (or without the
        leading L); targets per image {"labels": (n,), "boxes": (n, 4) normalised cxcywh}."""
        if pred_logits.dim() == 3:
            pred_logits, pred_boxes = pred_logits[None], pred_boxes[None]
        counts = [len(t["labels"]) for t in targets]
        if sum(counts) == 0:
            return Assignment.empty(pred_logits.device)
        labels, boxes, _ = pad_targets(targets, pred_logits.device)
        cost = pairwise_matching_cost(
            pred_logits.float(), pred_boxes.float(), labels, boxes,
            cost_class=self.cost_class, cost_bbox=self.cost_bbox, cost_giou=self.cost_giou,
            focal_alpha=self.focal_alpha, focal_gamma=self.focal_gamma,
        )
        return solve_assignments(cost, counts, pred_logits.device)
