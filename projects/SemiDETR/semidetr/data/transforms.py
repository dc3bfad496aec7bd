# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Image views of Semi-DETR: SoftTeacher's augmentation pipeline (the policy and the pixel operations).

Geometry (pixel-edge coordinates, the 3x3 matrix every view records, boxes between views) is in
geometry.py; this module draws and applies the views.

Views. `ViewAugmentation` draws and applies one view of an image (HWC uint8 RGB):

1. shortest-edge resize (sampled like detectron2's ResizeShortestEdge: "range" or "choice", longest
   edge capped), interpolated with OpenCV (bilinear, area filtering when shrinking);
2. horizontal flip with probability `flip_prob`;
3. one colour operation and one geometric operation, in random order (SoftTeacher's
   ShuffledSequential of two OneOf's);
4. random erasing of rectangles.

A labeled view uses 1, 2 and optionally the colour operation; the teacher's weak view 1 and 2; the
student's strong view everything; the test view 1 only (see `build_view_augmentation`).

Fill value. Pixels that a geometric operation brings in from outside the image, and erased
rectangles, are set to the constant grey `FILL_VALUE` = 125 (SoftTeacher's `img_fill_val`), the same
in every channel so it does not depend on the channel order.
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np
from detectron2.config import CfgNode
from detectron2.data.transforms import NoOpTransform, ResizeShortestEdge

from .geometry import hflip_matrix, rotation_matrix, scale_matrix, shear_matrix, translation_matrix

__all__ = [
    "COLOR_OPS",
    "GEOMETRIC_OPS",
    "BOX_EXACT_GEOMETRIC_OPS",
    "strong_geometric_ops",
    "FILL_VALUE",
    "View",
    "ViewAugmentation",
    "build_view_augmentation",
    "resize_image",
    "warp_affine",
    "apply_color_op",
    "erase_random_rectangles",
]

# Colour operations (SoftTeacher's list). Magnitude m in [0, 1] is a fraction of each operation's
# strongest setting; m = 0 leaves the image unchanged for the operations that take a magnitude.
COLOR_OPS = (
    "identity",
    "autocontrast",  # per-channel stretch of the intensity range (no magnitude)
    "equalize",  # per-channel histogram equalisation (no magnitude)
    "solarize",  # invert pixels >= 256 - 256 m
    "color",  # saturation factor 1 +- 0.9 m
    "contrast",  # contrast factor 1 +- 0.9 m
    "brightness",  # brightness factor 1 +- 0.9 m
    "sharpness",  # sharpness factor 1 +- 0.9 m
    "posterize",  # keep 8 - round(4 m) bits
)
# Geometric operations of the strong view.
GEOMETRIC_OPS = ("translate_x", "translate_y", "rotate", "shear")
# The ones that map every axis-aligned box exactly onto the box of the transformed object (with the
# resize and the flip, always applied): INPUT.AUG.BOX_EXACT_GEOMETRY keeps only these. A rotation or shear
# maps a box to the bounding box of its four corners, which is larger than the object's tight box for any
# object that does not fill its box (a circle under 30 degrees: IoU 0.7, BENCHMARKS.md).
BOX_EXACT_GEOMETRIC_OPS = ("translate_x", "translate_y")
# Grey written where a warp has no source pixel and into erased rectangles (SoftTeacher: 125).
FILL_VALUE = 125

# Largest change of the ImageEnhance factors: factor = 1 +- 0.9 m lies in [0.1, 1.9], the range of
# RandAugment and SoftTeacher; with m ~ U(0, 1) and a random sign the factor is uniform on it.
_MAX_ENHANCE_DELTA = 0.9
_ENHANCE_OPS = ("color", "contrast", "brightness", "sharpness")
# PIL's ImageFilter.SMOOTH, the degenerate image of the sharpness operation.
_SMOOTH_KERNEL = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13.0


class View(NamedTuple):
    """One augmented view of an image."""

    image: np.ndarray  # HWC uint8, same channel order as the input
    matrix: np.ndarray  # (3, 3) float64 affine map: original-image coordinates -> view coordinates
    ops: List[str]  # names of the applied operations, in order


# The OpenCV warp functions use pixel-centre coordinates (pixel i at i); the matrices here use pixel
# edges (pixel i centred at i + 0.5). A map A in edge coordinates is T(-0.5) A T(+0.5) in OpenCV's.
_EDGE_TO_CENTER = translation_matrix(-0.5, -0.5)
_CENTER_TO_EDGE = translation_matrix(0.5, 0.5)


# ---------------------------------------------------------------------------------------------------
# Pixel operations.
# ---------------------------------------------------------------------------------------------------
def resize_image(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Resize an HWC uint8 image to `size` = (height, width).

    The map is exactly `scale_matrix(width / W, height / H)` in pixel-edge coordinates (OpenCV aligns
    pixel centres the same way). Bilinear when enlarging; area averaging when shrinking, which avoids
    the aliasing of bilinear sampling (OpenCV's bilinear does not low-pass filter). OpenCV rather than
    detectron2's PIL-based ResizeTransform: about 10x faster on the CPU of a loader worker.
    """
    height, width = size
    shrinking = height < image.shape[0] and width < image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def warp_affine(
    image: np.ndarray, matrix: np.ndarray, size: Tuple[int, int], fill: int = FILL_VALUE
) -> np.ndarray:
    """Warp an HWC uint8 image with an affine `matrix` (3x3, source -> destination, pixel-edge
    coordinates) into an image of `size` = (height, width), bilinearly; pixels with no source are
    `fill`. A point at continuous source coordinate p lands exactly at matrix @ p."""
    opencv_matrix = (_EDGE_TO_CENTER @ matrix @ _CENTER_TO_EDGE)[:2]
    return cv2.warpAffine(
        image,
        opencv_matrix,
        (size[1], size[0]),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(fill,) * image.shape[2],
    )


def apply_color_op(image: np.ndarray, name: str, magnitude: float) -> np.ndarray:
    """Apply the colour operation `name` (one of COLOR_OPS) with `magnitude` in [0, 1] to an HWC uint8
    RGB image; returns a new array, or `image` itself for "identity".

    The operations are those of PIL's ImageOps/ImageEnhance used by RandAugment and SoftTeacher,
    computed with OpenCV lookup tables and blends, 3-10x faster than PIL on a loader worker's CPU;
    results agree with PIL within one intensity level (a test checks each operation against PIL).
    The enhancement operations (color, contrast, brightness, sharpness) blend the image with a
    "degenerate" image (grey, mean grey, black, smoothed) by factor = 1 +- 0.9 * magnitude, the sign
    drawn with np.random. Every operation is pointwise, uses global statistics or (sharpness) a 3x3
    kernel that is symmetric under a horizontal flip, so each commutes with a horizontal flip, which
    `ViewAugmentation` relies on (a test checks it).
    """
    if name == "identity":
        return image
    if name == "autocontrast":
        return cv2.LUT(image, _per_channel_lut(image, _autocontrast_lut))
    if name == "equalize":
        return cv2.LUT(image, _per_channel_lut(image, _equalize_lut))
    values = np.arange(256)
    if name == "solarize":
        threshold = 256 - int(round(256 * magnitude))
        return cv2.LUT(image, np.where(values < threshold, values, 255 - values).astype(np.uint8))
    if name == "posterize":
        bits = 8 - int(round(4 * magnitude))
        return cv2.LUT(image, (values & (0xFF << (8 - bits))).astype(np.uint8))
    if name not in _ENHANCE_OPS:
        raise ValueError(f"Unknown colour operation {name!r}; known: {COLOR_OPS}")
    sign = 1.0 if np.random.rand() < 0.5 else -1.0
    factor = 1.0 + sign * _MAX_ENHANCE_DELTA * magnitude
    if name in ("brightness", "contrast"):
        # Blends with a constant image are per-intensity maps: one lookup table. PIL truncates.
        if name == "brightness":
            degenerate = 0.0
        else:
            degenerate = float(int(cv2.mean(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))[0] + 0.5))
        lut = np.clip(degenerate + factor * (values - degenerate), 0, 255).astype(np.uint8)
        return cv2.LUT(image, lut)
    if name == "color":
        degenerate = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    else:  # sharpness: PIL's SMOOTH kernel; PIL leaves the 1-pixel border unfiltered.
        degenerate = cv2.filter2D(image, -1, _SMOOTH_KERNEL, borderType=cv2.BORDER_REPLICATE)
        degenerate[[0, -1]] = image[[0, -1]]
        degenerate[:, [0, -1]] = image[:, [0, -1]]
    # factor * image + (1 - factor) * degenerate, saturated to [0, 255].
    return cv2.addWeighted(image, factor, degenerate, 1.0 - factor, 0.0)


def _per_channel_lut(image: np.ndarray, lut_of_histogram) -> np.ndarray:
    """(1, 256, C) uint8 lookup table for cv2.LUT, one column per channel from its histogram."""
    columns = []
    for channel in range(image.shape[2]):
        histogram = (
            cv2.calcHist([image], [channel], None, [256], [0, 256]).reshape(256).astype(np.int64)
        )
        columns.append(lut_of_histogram(histogram))
    return np.stack(columns, axis=-1)[None].astype(np.uint8)


def _autocontrast_lut(histogram: np.ndarray) -> np.ndarray:
    """PIL's ImageOps.autocontrast (no cutoff) for one channel: stretch [lowest, highest] to [0, 255]."""
    present = np.flatnonzero(histogram)
    if len(present) == 0 or present[-1] <= present[0]:
        return np.arange(256)
    low, high = present[0], present[-1]
    scale = 255.0 / (high - low)
    return np.clip((np.arange(256) * scale - low * scale).astype(np.int64), 0, 255)


def _equalize_lut(histogram: np.ndarray) -> np.ndarray:
    """PIL's ImageOps.equalize for one channel."""
    present = np.flatnonzero(histogram)
    if len(present) <= 1:
        return np.arange(256)
    step = (histogram.sum() - histogram[present[-1]]) // 255
    if step == 0:
        return np.arange(256)
    count_below = np.cumsum(histogram) - histogram
    return np.minimum((step // 2 + count_below) // step, 255)


def erase_random_rectangles(
    image: np.ndarray,
    count_range: Tuple[int, int],
    size_range: Tuple[float, float],
    squared: bool,
    fill: int = FILL_VALUE,
) -> int:
    """Set random rectangles of `image` (HWC, modified in place) to `fill`; returns how many.

    SoftTeacher's RandErase: the number of rectangles is uniform in the inclusive `count_range`; each
    rectangle's width is a fraction of the image width drawn uniformly from `size_range`, and its
    height the same fraction of the image height when `squared` (else an independent fraction); it is
    placed uniformly so that it lies inside the image.
    """
    height, width = image.shape[:2]
    count = np.random.randint(count_range[0], count_range[1] + 1)
    width_fractions = np.random.uniform(size_range[0], size_range[1], size=count)
    height_fractions = (
        width_fractions if squared else np.random.uniform(size_range[0], size_range[1], size=count)
    )
    rect_widths = (width_fractions * width).astype(np.int64)
    rect_heights = (height_fractions * height).astype(np.int64)
    lefts = np.random.randint(0, width - rect_widths + 1)
    tops = np.random.randint(0, height - rect_heights + 1)
    for left, top, rect_width, rect_height in zip(lefts, tops, rect_widths, rect_heights):
        image[top : top + rect_height, left : left + rect_width] = fill
    return count


# ---------------------------------------------------------------------------------------------------
# Views.
# ---------------------------------------------------------------------------------------------------
class ViewAugmentation:
    """Draws and applies one random view of an image (see the module docstring for the steps).

    Randomness comes from the global `np.random` state, which detectron2 seeds per data-loader worker
    (`seed_all_rng` in `worker_init_reset_seed`), as its own augmentations do.
    """

    def __init__(
        self,
        *,
        short_edge_length: Sequence[int],
        max_size: int,
        sample_style: str = "choice",
        flip_prob: float = 0.0,
        color_ops: Sequence[str] = (),
        color_magnitude: Tuple[float, float] = (0.0, 1.0),
        geometric_ops: Sequence[str] = (),
        translate_fraction: float = 0.1,
        rotate_degrees: float = 30.0,
        shear_degrees: float = 30.0,
        erase_count: Tuple[int, int] = (0, 0),
        erase_size: Tuple[float, float] = (0.0, 0.2),
        erase_squared: bool = True,
    ):
        """
        Args:
            short_edge_length, max_size, sample_style: shortest-edge resize, as detectron2's
                ResizeShortestEdge ("range": [min, max] interval; "choice": list; a length 0 skips
                the resize).
            flip_prob: probability of a horizontal flip.
            color_ops: names from COLOR_OPS; one is applied, chosen uniformly (empty: none).
            color_magnitude: (low, high) range, within [0, 1], of the colour magnitude.
            geometric_ops: names from GEOMETRIC_OPS; one is applied, chosen uniformly (empty: none).
            translate_fraction: translations are uniform in +- this fraction of the image side.
            rotate_degrees, shear_degrees: rotation / each shear angle is uniform in +- this.
            erase_count: inclusive (low, high) number of erased rectangles ((0, 0): no erasing).
            erase_size, erase_squared: see `erase_random_rectangles`.
        """
        unknown = [op for op in color_ops if op not in COLOR_OPS]
        unknown += [op for op in geometric_ops if op not in GEOMETRIC_OPS]
        if unknown:
            raise ValueError(
                f"Unknown augmentation operations {unknown}; colour: {COLOR_OPS}, geometric: {GEOMETRIC_OPS}"
            )
        if not 0.0 <= color_magnitude[0] <= color_magnitude[1] <= 1.0:
            raise ValueError(
                f"color_magnitude must satisfy 0 <= low <= high <= 1, got {color_magnitude}"
            )
        if not 0 <= erase_count[0] <= erase_count[1]:
            raise ValueError(f"erase_count must satisfy 0 <= low <= high, got {erase_count}")
        if not 0.0 <= erase_size[0] <= erase_size[1] <= 1.0:
            raise ValueError(f"erase_size must satisfy 0 <= low <= high <= 1, got {erase_size}")
        # detectron2's sampler of the shortest edge (it also returns NoOpTransform for length 0).
        self.resize = ResizeShortestEdge(short_edge_length, max_size, sample_style)
        self.flip_prob = flip_prob
        self.color_ops = tuple(color_ops)
        self.color_magnitude = tuple(color_magnitude)
        self.geometric_ops = tuple(geometric_ops)
        self.translate_fraction = translate_fraction
        self.rotate_degrees = rotate_degrees
        self.shear_degrees = shear_degrees
        self.erase_count = tuple(erase_count)
        self.erase_size = tuple(erase_size)
        self.erase_squared = erase_squared

    def __repr__(self) -> str:
        return (
            f"ViewAugmentation(resize={self.resize}, flip_prob={self.flip_prob}, "
            f"color_ops={self.color_ops}, color_magnitude={self.color_magnitude}, "
            f"geometric_ops={self.geometric_ops}, translate_fraction={self.translate_fraction}, "
            f"rotate_degrees={self.rotate_degrees}, shear_degrees={self.shear_degrees}, "
            f"erase_count={self.erase_count}, erase_size={self.erase_size}, "
            f"erase_squared={self.erase_squared})"
        )

    def __call__(self, image: np.ndarray) -> View:
        """Draw a view of `image` (HWC uint8 RGB; it is not modified)."""
        matrix = np.eye(3)
        ops: List[str] = []
        height, width = image.shape[:2]
        # Whether `image` is a new array of this view (else it is the caller's, which erasing must
        # not write into: the weak and strong views are drawn from the same decoded image).
        owns_image = False

        resize = self.resize.get_transform(image)
        if not isinstance(resize, NoOpTransform):
            new_height, new_width = resize.new_h, resize.new_w
            if (new_height, new_width) != (height, width):
                image = resize_image(image, (new_height, new_width))
                owns_image = True
            matrix = scale_matrix(new_width / width, new_height / height) @ matrix
            height, width = new_height, new_width
            ops.append("resize")

        # The flip is not applied to the pixels yet: when a geometric operation follows, it is folded
        # into that operation's warp (one interpolation pass); colour operations commute with it.
        pending_flip: Optional[np.ndarray] = None
        if self.flip_prob > 0 and np.random.rand() < self.flip_prob:
            pending_flip = hflip_matrix(width)
            matrix = pending_flip @ matrix
            ops.append("hflip")

        steps = []
        if self.color_ops:
            steps.append(("color", self.color_ops[np.random.randint(len(self.color_ops))]))
        if self.geometric_ops:
            steps.append(
                ("geometric", self.geometric_ops[np.random.randint(len(self.geometric_ops))])
            )
        if len(steps) == 2 and np.random.rand() < 0.5:
            steps.reverse()
        for kind, name in steps:
            if kind == "color":
                magnitude = np.random.uniform(*self.color_magnitude)
                image = apply_color_op(image, name, magnitude)
                owns_image = owns_image or name != "identity"
            else:
                geometric = self._draw_geometric_matrix(name, height, width)
                warp = geometric if pending_flip is None else geometric @ pending_flip
                image = warp_affine(image, warp, (height, width))
                matrix = geometric @ matrix
                pending_flip = None
                owns_image = True
            ops.append(name)
        if pending_flip is not None:
            image = cv2.flip(image, 1)
            owns_image = True

        if self.erase_count[1] > 0:
            if not owns_image:
                image = image.copy()
            if erase_random_rectangles(
                image, self.erase_count, self.erase_size, self.erase_squared
            ):
                ops.append("erase")
        return View(image=image, matrix=matrix, ops=ops)

    def _draw_geometric_matrix(self, name: str, height: int, width: int) -> np.ndarray:
        """Draw the matrix of the geometric operation `name` for an image of this size."""
        center = (width / 2.0, height / 2.0)
        if name == "translate_x":
            return translation_matrix(
                np.random.uniform(-1, 1) * self.translate_fraction * width, 0.0
            )
        if name == "translate_y":
            return translation_matrix(
                0.0, np.random.uniform(-1, 1) * self.translate_fraction * height
            )
        if name == "rotate":
            return rotation_matrix(
                np.random.uniform(-self.rotate_degrees, self.rotate_degrees), center
            )
        if name == "shear":
            shear_x, shear_y = np.random.uniform(-self.shear_degrees, self.shear_degrees, size=2)
            return shear_matrix(shear_x, shear_y, center)
        raise ValueError(f"Unknown geometric operation {name!r}; known: {GEOMETRIC_OPS}")


def strong_geometric_ops(cfg: CfgNode) -> Tuple[str, ...]:
    """INPUT.AUG.GEOMETRIC_OPS, restricted to BOX_EXACT_GEOMETRIC_OPS when INPUT.AUG.BOX_EXACT_GEOMETRY."""
    ops = tuple(cfg.INPUT.AUG.GEOMETRIC_OPS)
    return tuple(op for op in ops if op in BOX_EXACT_GEOMETRIC_OPS) if cfg.INPUT.AUG.BOX_EXACT_GEOMETRY else ops


def build_view_augmentation(cfg: CfgNode, kind: str) -> ViewAugmentation:
    """Build the augmentation of one kind of view from the config.

    Args:
        kind: "labeled" (resize + flip + a colour operation if INPUT.AUG.LABELED_COLOR),
            "weak" (teacher: resize + flip), "strong" (student: resize + flip + colour and geometric
            operations in random order + erasing) or "test" (resize to INPUT.MIN_SIZE_TEST, capped
            by INPUT.MAX_SIZE_TEST).
    """
    aug = cfg.INPUT.AUG
    if kind == "test":
        return ViewAugmentation(
            short_edge_length=cfg.INPUT.MIN_SIZE_TEST,
            max_size=cfg.INPUT.MAX_SIZE_TEST,
            sample_style="choice",
        )
    if kind not in ("labeled", "weak", "strong"):
        raise ValueError(f"Unknown view kind {kind!r}; expected labeled, weak, strong or test")
    strong = kind == "strong"
    with_color = strong or (kind == "labeled" and aug.LABELED_COLOR)
    return ViewAugmentation(
        short_edge_length=cfg.INPUT.MIN_SIZE_TRAIN,
        max_size=cfg.INPUT.MAX_SIZE_TRAIN,
        sample_style=cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
        flip_prob=aug.FLIP_PROB,
        color_ops=aug.COLOR_OPS if with_color else (),
        color_magnitude=aug.COLOR_MAGNITUDE,
        geometric_ops=strong_geometric_ops(cfg) if strong else (),
        translate_fraction=aug.TRANSLATE_FRACTION,
        rotate_degrees=aug.ROTATE_DEGREES,
        shear_degrees=aug.SHEAR_DEGREES,
        erase_count=aug.ERASE_COUNT if strong else (0, 0),
        erase_size=aug.ERASE_SIZE,
        erase_squared=aug.ERASE_SQUARED,
    )
