"""Terms shared by the one-to-one (DETR) and one-to-many (Semi-DETR stage 1) losses."""
from typing import Dict, Optional

from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from .box_ops import cxcywh_to_xyxy
from .matcher import Assignment

__all__ = ["weight_images", "weighted_box_losses"]


def weight_images(loss: Tensor, image_weights: Optional[Tensor]) -> Tensor:
    """Elementwise losses (L, N, Q, K) times a per-image factor (N,); None: unchanged."""
    return loss if image_weights is None else loss * image_weights.to(loss.dtype)[None, :, None, None]


def weighted_box_losses(pred_boxes: Tensor, boxes: Tensor, assignment: Assignment, normalizer: Tensor) -> Dict[str, Tensor]:
    """Per-layer sums of weight * L1 and weight * (1 - GIoU) over the assigned pairs, divided by
    `normalizer` (a scalar or (L,)). pred_boxes (L, N, Q, 4) and boxes (T, 4) normalised cxcywh.

    Indexing with an empty assignment still records the indexing in the autograd graph, so the box head
    gets a (zero) gradient in a batch without targets and DDP sees the same used parameters everywhere.
    """
    a = assignment
    assigned = pred_boxes[a.layer, a.image, a.query].float()
    assigned_targets = boxes[a.target].float()
    l1 = (assigned - assigned_targets).abs().sum(-1)
    giou = generalized_box_iou_loss(cxcywh_to_xyxy(assigned), cxcywh_to_xyxy(assigned_targets), reduction="none")
    zeros = assigned.new_zeros(pred_boxes.shape[0])
    return {
        "bbox": zeros.index_add(0, a.layer, l1 * a.weight) / normalizer,
        "giou": zeros.index_add(0, a.layer, giou * a.weight) / normalizer,
    }
