# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Box geometry between the views of an image: affine matrices, and boxes / Instances moved through them.

Coordinates. Every geometric quantity uses continuous pixel-edge coordinates: an image of width W and
height H spans [0, W] x [0, H], and pixel (column i, row j) covers [i, i + 1] x [j, j + 1] (its centre
is (i + 0.5, j + 0.5)); boxes are XYXY in these coordinates (detectron2's XYXY_ABS convention). A view
records its geometry as one 3x3 affine matrix (`View.matrix`, the view dict's "transform_matrix") that
maps original-image coordinates to view coordinates, so boxes move between any two views of an image
with `map_boxes`, and a view's detections into another view with `map_instances`.

The augmentation policy that draws these matrices (which operations, how strong) is in transforms.py.
"""
import math
from typing import Dict, Tuple, Union

import numpy as np
import torch
from detectron2.structures import Boxes, Instances

__all__ = [
    "MatrixLike",
    "scale_matrix",
    "hflip_matrix",
    "translation_matrix",
    "rotation_matrix",
    "shear_matrix",
    "transform_boxes",
    "map_boxes",
    "map_instances",
]

MatrixLike = Union[torch.Tensor, np.ndarray]


# ---------------------------------------------------------------------------------------------------
# Affine matrices (3x3, float64, pixel-edge coordinates).
# ---------------------------------------------------------------------------------------------------
def scale_matrix(scale_x: float, scale_y: float) -> np.ndarray:
    """Scaling about the origin (the top-left image corner): a resize by these factors."""
    return np.array([[scale_x, 0.0, 0.0], [0.0, scale_y, 0.0], [0.0, 0.0, 1.0]])


def hflip_matrix(width: float) -> np.ndarray:
    """Horizontal flip of an image of this width: x -> width - x."""
    return np.array([[-1.0, 0.0, width], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def translation_matrix(offset_x: float, offset_y: float) -> np.ndarray:
    """Translation by (offset_x, offset_y) pixels."""
    return np.array([[1.0, 0.0, offset_x], [0.0, 1.0, offset_y], [0.0, 0.0, 1.0]])


def rotation_matrix(degrees: float, center: Tuple[float, float]) -> np.ndarray:
    """Rotation about `center` (x, y); positive angles turn the image counter-clockwise as displayed
    (y pointing down), as cv2.getRotationMatrix2D."""
    radians = math.radians(degrees)
    cos, sin = math.cos(radians), math.sin(radians)
    linear = np.array([[cos, sin, 0.0], [-sin, cos, 0.0], [0.0, 0.0, 1.0]])
    return translation_matrix(*center) @ linear @ translation_matrix(-center[0], -center[1])


def shear_matrix(
    shear_x_degrees: float, shear_y_degrees: float, center: Tuple[float, float]
) -> np.ndarray:
    """Shear in x (x += tan(shear_x) * (y - cy)) followed by shear in y (y += tan(shear_y) * (x - cx)),
    both about `center`, so that the image centre stays put and a 30 degree shear keeps most of the
    image in view (a shear about the top-left corner would push the bottom rows out by up to
    0.58 * H)."""
    shear_x = np.array(
        [[1.0, math.tan(math.radians(shear_x_degrees)), 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    )
    shear_y = np.array(
        [[1.0, 0.0, 0.0], [math.tan(math.radians(shear_y_degrees)), 1.0, 0.0], [0.0, 0.0, 1.0]]
    )
    return (
        translation_matrix(*center) @ shear_y @ shear_x @ translation_matrix(-center[0], -center[1])
    )


# ---------------------------------------------------------------------------------------------------
# Box geometry (torch, vectorised; runs on the device of the boxes).
# ---------------------------------------------------------------------------------------------------
def transform_boxes(
    boxes: torch.Tensor,
    matrix: MatrixLike,
    image_size: Tuple[int, int],
    min_size: float = 0.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Move XYXY boxes through an affine map into an image of `image_size` = (height, width).

    Each box's 4 corners are transformed and replaced by their axis-aligned bounding box (as the
    official code does for rotation and shear), which is clipped to the image. Boxes whose clipped
    width or height is zero or below `min_size` are dropped.

    Args:
        boxes: (N, 4) float XYXY boxes in source coordinates.
        matrix: (3, 3) affine map, source -> destination coordinates (any device/float dtype).
        image_size: (height, width) of the destination image.
        min_size: smallest width and height, in destination pixels, of a kept box.

    Returns:
        mapped: (K, 4) kept boxes in destination coordinates, dtype and device of `boxes`.
        keep: (N,) bool mask of the kept input boxes (K = keep.sum()); `~keep` counts the dropped.
    """
    matrix = torch.as_tensor(matrix).to(device=boxes.device, dtype=boxes.dtype)
    x1, y1, x2, y2 = boxes.unbind(-1)
    corners = torch.stack(
        [torch.stack([x1, x1, x2, x2], dim=-1), torch.stack([y1, y2, y1, y2], dim=-1)], dim=-1
    )  # (N, 4 corners, xy)
    corners = corners @ matrix[:2, :2].T + matrix[:2, 2]
    height, width = image_size
    x = corners[..., 0]
    y = corners[..., 1]
    mapped = torch.stack(
        [
            x.amin(dim=-1).clamp(0, width),
            y.amin(dim=-1).clamp(0, height),
            x.amax(dim=-1).clamp(0, width),
            y.amax(dim=-1).clamp(0, height),
        ],
        dim=-1,
    )
    box_widths = mapped[:, 2] - mapped[:, 0]
    box_heights = mapped[:, 3] - mapped[:, 1]
    # `> 0` drops zero-area boxes even with min_size 0; NaN boxes fail every comparison and go too.
    keep = (
        (box_widths > 0) & (box_heights > 0) & (box_widths >= min_size) & (box_heights >= min_size)
    )
    return mapped[keep], keep


def map_boxes(
    boxes: torch.Tensor,
    src_matrix: MatrixLike,
    dst_matrix: MatrixLike,
    dst_image_size: Tuple[int, int],
    min_size: float = 0.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Move XYXY boxes from one view of an image into another view of the same image.

    `map_instances` uses it to bring the teacher's detections from the weak view into the strong view.
    The map is dst_matrix @ inv(src_matrix), composed in float64; then `transform_boxes`.

    Args:
        boxes: (N, 4) XYXY boxes in the source view.
        src_matrix, dst_matrix: (3, 3) maps original image -> source view / destination view.
        dst_image_size: (height, width) of the destination view.
        min_size: smallest width and height of a kept box (INPUT.AUG.MIN_BOX_SIZE).

    Returns:
        (mapped (K, 4), keep (N,) bool), as `transform_boxes`.
    """
    src_matrix = torch.as_tensor(src_matrix).to(torch.float64)
    dst_matrix = torch.as_tensor(dst_matrix).to(device=src_matrix.device, dtype=torch.float64)
    return transform_boxes(
        boxes, dst_matrix @ torch.linalg.inv(src_matrix), dst_image_size, min_size
    )


def map_instances(instances: Instances, src_view: Dict, dst_view: Dict,
                  min_size: float = 0.0) -> Tuple[Instances, torch.Tensor]:
    """The detections (or annotations) of one view of an image, in another view of the same image.

    instances: in `src_view`'s frame, with pred_boxes or gt_boxes; src_view / dst_view: view dicts
    ("transform_matrix", "image"). The boxes go through `map_boxes` into dst_view's frame; the boxes the
    mapping drops (outside the view, or below `min_size`) are dropped with every other field.

    Returns:
        (Instances of dst_view's size with the same fields, keep (N,) bool mask of the kept instances).
    """
    box_field = "pred_boxes" if instances.has("pred_boxes") else "gt_boxes"
    dst_size = tuple(dst_view["image"].shape[-2:])
    src_matrix, dst_matrix = src_view["transform_matrix"], dst_view["transform_matrix"]
    boxes, keep = map_boxes(instances.get(box_field).tensor, src_matrix, dst_matrix, dst_size, min_size)
    mapped = Instances(dst_size)
    for name, value in instances.get_fields().items():
        mapped.set(name, Boxes(boxes) if name == box_field else value[keep])
    return mapped, keep
