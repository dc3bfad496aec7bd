"""Box utilities that torchvision.ops does not provide.

torchvision's `box_iou` / `generalized_box_iou` are pairwise between two 2-D box sets; the matcher and the
one-to-many assigner need the same quantities for a whole padded batch at once, (N, Q, 4) x (N, T, 4) ->
(N, Q, T), without a Python loop over images. Everything else (format conversion, NMS, element-wise
GIoU loss) comes from torchvision.ops.
"""
from typing import Tuple

import torch
from torch import Tensor
from torchvision.ops import box_convert

__all__ = [
    "inverse_sigmoid",
    "batched_box_iou",
    "batched_generalized_box_iou",
    "cxcywh_to_xyxy",
    "xyxy_to_cxcywh",
]


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x) with x clamped to [eps, 1 - eps] so boxes touching the image border stay finite."""
    x = x.clamp(min=0.0, max=1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    return box_convert(boxes, in_fmt="xyxy", out_fmt="cxcywh")


def _batched_inter_union(boxes1: Tensor, boxes2: Tensor) -> Tuple[Tensor, Tensor]:
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    top_left = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    bottom_right = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter, union


def batched_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """IoU of every pair, for xyxy boxes (..., Q, 4) and (..., T, 4) -> (..., Q, T).

    `eps` keeps the IoU of two degenerate (zero-area) boxes at 0 instead of NaN.
    """
    inter, union = _batched_inter_union(boxes1, boxes2)
    return inter / union.clamp(min=eps)


def batched_generalized_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Generalized IoU (Rezatofighi et al. 2019) of every pair, shapes as `batched_box_iou`."""
    inter, union = _batched_inter_union(boxes1, boxes2)
    iou = inter / union.clamp(min=eps)
    top_left = torch.minimum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    bottom_right = torch.maximum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing.clamp(min=eps)
