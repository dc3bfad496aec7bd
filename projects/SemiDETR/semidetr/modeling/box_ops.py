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


def _pairwise_coordinates(boxes1: Tensor, boxes2: Tensor):
    # One coordinate at a time: broadcasting (..., Q, 1) against (..., 1, T) per coordinate is several
    # times faster on CPU than broadcasting (..., Q, 1, 2) against (..., 1, T, 2) slices.
    first = [c[..., :, None] for c in boxes1.unbind(-1)]
    second = [c[..., None, :] for c in boxes2.unbind(-1)]
    return first, second


def _batched_inter_union(boxes1: Tensor, boxes2: Tensor) -> Tuple[Tensor, Tensor]:
    (x0, y0, x1, y1), (X0, Y0, X1, Y1) = _pairwise_coordinates(boxes1, boxes2)
    inter = (torch.minimum(x1, X1) - torch.maximum(x0, X0)).clamp(min=0) * \
        (torch.minimum(y1, Y1) - torch.maximum(y0, Y0)).clamp(min=0)
    union = (x1 - x0) * (y1 - y0) + (X1 - X0) * (Y1 - Y0) - inter
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
    (x0, y0, x1, y1), (X0, Y0, X1, Y1) = _pairwise_coordinates(boxes1, boxes2)
    enclosing = (torch.maximum(x1, X1) - torch.minimum(x0, X0)).clamp(min=0) * \
        (torch.maximum(y1, Y1) - torch.minimum(y0, Y0)).clamp(min=0)
    return iou - (enclosing - union) / enclosing.clamp(min=eps)
