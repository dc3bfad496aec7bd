# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Views and box geometry (semidetr.data.transforms, semidetr.data.geometry): matrices agree with the warped pixels, boxes move
between views exactly, colour operations match PIL, and the views are drawn as configured."""
import math

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.utils.env import seed_all_rng
from PIL import Image, ImageEnhance, ImageOps

from semidetr.config import add_semidetr_config
from semidetr.data.geometry import (
    hflip_matrix,
    map_boxes,
    rotation_matrix,
    scale_matrix,
    shear_matrix,
    transform_boxes,
    translation_matrix,
)
from semidetr.data.transforms import (
    COLOR_OPS,
    FILL_VALUE,
    GEOMETRIC_OPS,
    ViewAugmentation,
    apply_color_op,
    build_view_augmentation,
    erase_random_rectangles,
    resize_image,
    warp_affine,
)

HEIGHT, WIDTH = 60, 80
CENTER = (WIDTH / 2, HEIGHT / 2)


def _apply_to_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def _box_corners(box) -> np.ndarray:
    x1, y1, x2, y2 = box
    return np.array([[x1, y1], [x2, y1], [x1, y2], [x2, y2]], dtype=np.float64)


def _bright_extent(image: np.ndarray, threshold: int = 127) -> np.ndarray:
    """XYXY pixel-edge extent of the pixels brighter than `threshold` (any channel)."""
    rows, cols = np.nonzero(image.max(axis=2) > threshold)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float64)


def _centroid(image: np.ndarray) -> np.ndarray:
    """Intensity-weighted centroid (x, y) of channel 0, in pixel-edge coordinates (centres at +0.5)."""
    weights = image[:, :, 0].astype(np.float64)
    rows, cols = np.mgrid[: image.shape[0], : image.shape[1]]
    return (
        np.array([(weights * (cols + 0.5)).sum(), (weights * (rows + 0.5)).sum()]) / weights.sum()
    )


def _rectangle_image(box, height=HEIGHT, width=WIDTH) -> np.ndarray:
    image = np.zeros((height, width, 3), dtype=np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = 255
    return image


# Geometric maps of a WIDTH x HEIGHT image onto a same-size canvas, as the strong view uses them.
WARPS = {
    "hflip": hflip_matrix(WIDTH),
    "translate_x": translation_matrix(7.3, 0.0),
    "translate_y": translation_matrix(0.0, -5.6),
    "rotate": rotation_matrix(23.0, CENTER),
    "rotate_negative": rotation_matrix(-30.0, CENTER),
    "shear": shear_matrix(20.0, -15.0, CENTER),
    "hflip_then_rotate": rotation_matrix(12.0, CENTER) @ hflip_matrix(WIDTH),
}


# ---------------------------------------------------------------------------------------------------
# Matrices.
# ---------------------------------------------------------------------------------------------------
def test_elementary_matrices():
    np.testing.assert_allclose(
        _apply_to_points(hflip_matrix(80), np.array([[0.0, 5.0], [80.0, 7.0]])), [[80, 5], [0, 7]]
    )
    np.testing.assert_allclose(
        _apply_to_points(scale_matrix(2.0, 0.5), np.array([[3.0, 4.0]])), [[6, 2]]
    )
    # Rotation and shear keep their centre; a 90 degree rotation turns the x axis into -y (y down).
    for matrix in (rotation_matrix(37.0, (10.0, 20.0)), shear_matrix(25.0, -10.0, (10.0, 20.0))):
        np.testing.assert_allclose(
            _apply_to_points(matrix, np.array([[10.0, 20.0]])), [[10, 20]], atol=1e-12
        )
    np.testing.assert_allclose(
        _apply_to_points(rotation_matrix(90.0, (0.0, 0.0)), np.array([[1.0, 0.0]])),
        [[0, -1]],
        atol=1e-12,
    )
    # Shear in x then in y.
    shear = shear_matrix(45.0, 45.0, (0.0, 0.0))
    np.testing.assert_allclose(
        _apply_to_points(shear, np.array([[0.0, 1.0]])), [[1, 2]], atol=1e-12
    )


# ---------------------------------------------------------------------------------------------------
# Pixels follow the matrices.
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(WARPS))
def test_warped_rectangle_lands_where_the_matrix_puts_its_corners(name):
    box = (20, 15, 44, 35)
    warped = warp_affine(_rectangle_image(box), WARPS[name], (HEIGHT, WIDTH), fill=0)
    corners = _apply_to_points(WARPS[name], _box_corners(box))
    expected = np.concatenate([corners.min(axis=0), corners.max(axis=0)])
    np.testing.assert_allclose(_bright_extent(warped), expected, atol=1.0)


@pytest.mark.parametrize("name", sorted(WARPS))
def test_warp_moves_a_blob_centroid_exactly_as_the_matrix(name):
    # A half-pixel convention error shifts the centroid by 0.5 px or more (1 px for a flip).
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[22:25, 31:34] = 200
    warped = warp_affine(image, WARPS[name], (HEIGHT, WIDTH), fill=0)
    expected = _apply_to_points(WARPS[name], _centroid(image)[None])[0]
    np.testing.assert_allclose(_centroid(warped), expected, atol=0.1)


@pytest.mark.parametrize("size", [(90, 120), (45, 60), (61, 97)])
def test_resize_agrees_with_scale_matrix(size):
    box = (20, 15, 44, 35)
    image = _rectangle_image(box)
    resized = resize_image(image, size)
    assert resized.shape == (*size, 3)
    matrix = scale_matrix(size[1] / WIDTH, size[0] / HEIGHT)
    corners = _apply_to_points(matrix, _box_corners(box))
    np.testing.assert_allclose(
        _bright_extent(resized), np.concatenate([corners.min(0), corners.max(0)]), atol=1.0
    )
    expected_centroid = _apply_to_points(matrix, _centroid(image)[None])[0]
    np.testing.assert_allclose(_centroid(resized), expected_centroid, atol=0.1)


def test_warp_fills_outside_with_fill_value():
    image = np.full((HEIGHT, WIDTH, 3), 10, dtype=np.uint8)
    warped = warp_affine(image, translation_matrix(20.0, 0.0), (HEIGHT, WIDTH))
    assert (warped[:, :19] == FILL_VALUE).all() and (warped[:, 21:] == 10).all()


# ---------------------------------------------------------------------------------------------------
# Boxes.
# ---------------------------------------------------------------------------------------------------
def test_transform_boxes_rotation_takes_corner_bounding_box():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [40.0, 40.0, 60.0, 60.0]])
    mapped, keep = transform_boxes(boxes[:1], rotation_matrix(90.0, (50.0, 50.0)), (100, 100))
    # 90 degrees counter-clockwise about (50, 50): (x, y) -> (y, 100 - x).
    torch.testing.assert_close(mapped, torch.tensor([[20.0, 70.0, 60.0, 90.0]]))
    mapped, keep = transform_boxes(boxes[1:], rotation_matrix(45.0, (50.0, 50.0)), (100, 100))
    half = 10.0 * math.sqrt(2.0)
    torch.testing.assert_close(mapped, torch.tensor([[50 - half, 50 - half, 50 + half, 50 + half]]))
    assert keep.tolist() == [True]


def test_transform_boxes_clips_and_drops_degenerate_boxes():
    boxes = torch.tensor(
        [
            [10.0, 10.0, 30.0, 30.0],  # inside
            [70.0, 10.0, 90.0, 30.0],  # partly right of the image: clipped to x2 = 80
            [85.0, 10.0, 95.0, 30.0],  # entirely outside: zero width after clipping
            [10.0, 10.0, 10.5, 30.0],  # narrower than min_size
            [10.0, 10.0, 30.0, 10.0],  # zero height
            [float("nan"), 1.0, 2.0, 3.0],  # not finite
        ]
    )
    mapped, keep = transform_boxes(boxes, np.eye(3), (HEIGHT, WIDTH), min_size=1.0)
    assert keep.tolist() == [True, True, False, False, False, False]
    torch.testing.assert_close(
        mapped, torch.tensor([[10.0, 10.0, 30.0, 30.0], [70.0, 10.0, 80.0, 30.0]])
    )
    assert int((~keep).sum()) == 4
    # min_size 0 still drops zero-area boxes.
    _, keep = transform_boxes(boxes, np.eye(3), (HEIGHT, WIDTH), min_size=0.0)
    assert keep.tolist() == [True, True, False, True, False, False]


def test_transform_boxes_handles_no_boxes_and_follows_dtype():
    mapped, keep = transform_boxes(
        torch.zeros((0, 4)), rotation_matrix(10.0, CENTER), (HEIGHT, WIDTH)
    )
    assert mapped.shape == (0, 4) and keep.shape == (0,)
    boxes = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    mapped, _ = map_boxes(boxes, torch.eye(3), torch.eye(3, dtype=torch.float32), (HEIGHT, WIDTH))
    assert mapped.dtype == torch.float64 and mapped.device == boxes.device


@pytest.mark.parametrize("geometric_op", GEOMETRIC_OPS)
def test_boxes_mapped_weak_to_strong_equal_boxes_mapped_directly(geometric_op):
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    common = dict(short_edge_length=(40, 90), max_size=150, sample_style="range", flip_prob=0.5)
    weak_augmentation = ViewAugmentation(**common)
    strong_augmentation = ViewAugmentation(
        **common, color_ops=("identity",), geometric_ops=(geometric_op,), erase_count=(1, 3)
    )
    boxes = torch.tensor([[5.0, 6.0, 30.0, 40.0], [50.0, 10.0, 79.0, 58.0], [0.0, 0.0, 80.0, 60.0]])
    checked_ops = set()
    for seed in range(12):
        seed_all_rng(seed)
        weak, strong = weak_augmentation(image), strong_augmentation(image)
        checked_ops.update(strong.ops)
        strong_size = strong.image.shape[:2]
        weak_boxes, weak_keep = transform_boxes(boxes, weak.matrix, weak.image.shape[:2])
        assert weak_keep.all()
        matrix = torch.as_tensor(strong.matrix, dtype=torch.float32)  # as the mappers store it
        via_weak, keep_via_weak = map_boxes(
            weak_boxes,
            torch.as_tensor(weak.matrix, dtype=torch.float32),
            matrix,
            strong_size,
            min_size=1.0,
        )
        direct, keep_direct = transform_boxes(boxes, strong.matrix, strong_size, min_size=1.0)
        assert torch.equal(keep_via_weak, keep_direct)
        torch.testing.assert_close(via_weak, direct, atol=2e-3, rtol=0)
        # Clipped to the strong image.
        assert (direct[:, 2] <= strong_size[1]).all() and (direct[:, 3] <= strong_size[0]).all()
        assert (direct >= 0).all()
    assert {"hflip", geometric_op} <= checked_ops


@pytest.mark.parametrize("color_ops", [(), ("posterize",)])
def test_weak_and_labeled_view_pixels_follow_their_matrix(color_ops):
    box = (5, 15, 30, 35)  # off-centre, so that a missing flip is seen
    image = _rectangle_image(box)
    augmentation = ViewAugmentation(
        short_edge_length=(50, 100),
        max_size=200,
        sample_style="range",
        flip_prob=0.5,
        color_ops=color_ops,
    )
    flips = set()
    for seed in range(8):
        seed_all_rng(seed)
        view = augmentation(image)
        flips.add("hflip" in view.ops)
        corners = _apply_to_points(view.matrix, _box_corners(box))
        expected = np.concatenate([corners.min(0), corners.max(0)])
        np.testing.assert_allclose(
            _bright_extent(view.image), expected, atol=1.0, err_msg=str(view.ops)
        )
    assert flips == {True, False}


def test_strong_view_pixels_follow_its_matrix():
    box = (20, 15, 44, 35)
    image = _rectangle_image(box)
    augmentation = ViewAugmentation(
        short_edge_length=(50, 100),
        max_size=200,
        sample_style="range",
        flip_prob=0.5,
        color_ops=("identity",),
        geometric_ops=GEOMETRIC_OPS,
        rotate_degrees=30.0,
        shear_degrees=30.0,
    )
    for seed in range(16):
        seed_all_rng(seed)
        view = augmentation(image)
        corners = _apply_to_points(view.matrix, _box_corners(box))
        expected = np.concatenate([corners.min(0), corners.max(0)])
        np.testing.assert_allclose(
            _bright_extent(view.image), expected, atol=1.0, err_msg=str(view.ops)
        )


# ---------------------------------------------------------------------------------------------------
# Colour operations and erasing.
# ---------------------------------------------------------------------------------------------------
def _pil_reference(image: np.ndarray, name: str, magnitude: float, sign: float) -> np.ndarray:
    pil_image = Image.fromarray(image)
    if name == "autocontrast":
        return np.asarray(ImageOps.autocontrast(pil_image))
    if name == "equalize":
        return np.asarray(ImageOps.equalize(pil_image))
    if name == "solarize":
        return np.asarray(ImageOps.solarize(pil_image, 256 - round(256 * magnitude)))
    if name == "posterize":
        return np.asarray(ImageOps.posterize(pil_image, 8 - round(4 * magnitude)))
    enhancer = {
        "color": ImageEnhance.Color,
        "contrast": ImageEnhance.Contrast,
        "brightness": ImageEnhance.Brightness,
        "sharpness": ImageEnhance.Sharpness,
    }[name]
    return np.asarray(enhancer(pil_image).enhance(1.0 + sign * 0.9 * magnitude))


def _test_image(seed: int = 0) -> np.ndarray:
    rng = np.random.RandomState(seed)
    smooth = np.kron(rng.randint(30, 220, size=(6, 8, 3)), np.ones((10, 10, 1)))
    return np.clip(smooth + rng.randint(-20, 21, size=smooth.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", [op for op in COLOR_OPS if op != "identity"])
@pytest.mark.parametrize("magnitude", [0.25, 1.0])
def test_color_ops_match_pil(name, magnitude):
    image = _test_image()
    for seed in (0, 3):  # seed 0 draws a stronger, seed 3 a weaker enhancement
        np.random.seed(seed)
        sign = 1.0 if np.random.rand() < 0.5 else -1.0
        np.random.seed(seed)
        result = apply_color_op(image, name, magnitude)
        assert result.dtype == np.uint8 and result.shape == image.shape
        difference = np.abs(result.astype(np.int64) - _pil_reference(image, name, magnitude, sign))
        # PIL truncates where OpenCV rounds, and the grey conversions round differently.
        assert difference.max() <= 2 and difference.mean() < 0.6, (name, sign)
        assert not np.array_equal(result, image)


@pytest.mark.parametrize("name", COLOR_OPS)
def test_color_ops_commute_with_horizontal_flip(name):
    # ViewAugmentation defers the flip past a colour operation; this must not change the result.
    image = _test_image(1)
    np.random.seed(0)
    flipped_after = apply_color_op(image, name, 0.8)[:, ::-1]
    np.random.seed(0)
    flipped_before = apply_color_op(np.ascontiguousarray(image[:, ::-1]), name, 0.8)
    np.testing.assert_array_equal(flipped_after, flipped_before)


def test_zero_magnitude_leaves_image_unchanged():
    image = _test_image()
    for name in (
        "solarize",
        "posterize",
        "color",
        "contrast",
        "brightness",
        "sharpness",
        "identity",
    ):
        np.testing.assert_array_equal(apply_color_op(image, name, 0.0), image, err_msg=name)


def test_erasing_writes_rectangles_inside_the_image():
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    counts = []
    for seed in range(40):
        np.random.seed(seed)
        image[:] = 0
        count = erase_random_rectangles(image, (1, 5), (0.1, 0.2), squared=True)
        counts.append(count)
        erased = image[:, :, 0] == FILL_VALUE
        assert erased.any() and (image[erased] == FILL_VALUE).all()
        # No rectangle side exceeds 0.2 of the image side.
        assert erased.sum() <= count * (0.2 * HEIGHT) * (0.2 * WIDTH)
    assert set(counts) == {1, 2, 3, 4, 5}


# ---------------------------------------------------------------------------------------------------
# Views.
# ---------------------------------------------------------------------------------------------------
def _config():
    cfg = get_cfg()
    add_semidetr_config(cfg)
    cfg.INPUT.MIN_SIZE_TRAIN = (40, 120)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "range"
    cfg.INPUT.MAX_SIZE_TRAIN = 150
    return cfg


def test_views_from_config_apply_the_configured_operations():
    cfg = _config()
    image = _test_image()
    weak, strong, labeled = (
        build_view_augmentation(cfg, kind) for kind in ("weak", "strong", "labeled")
    )
    strong_orders = set()
    for seed in range(60):
        seed_all_rng(seed)
        weak_ops = weak(image).ops
        assert weak_ops in (["resize"], ["resize", "hflip"])
        labeled_ops = labeled(image).ops
        assert labeled_ops[: len(labeled_ops) - 1] in (["resize"], ["resize", "hflip"])
        assert labeled_ops[-1] in COLOR_OPS
        view = strong(image)
        assert view.ops[-1] == "erase"
        middle = [op for op in view.ops if op not in ("resize", "hflip", "erase")]
        assert len(middle) == 2 and {middle[0] in COLOR_OPS, middle[1] in COLOR_OPS} == {
            True,
            False,
        }
        strong_orders.add("color_first" if middle[0] in COLOR_OPS else "geometric_first")
        # Shortest edge in the configured range, longest capped.
        short_edge, long_edge = sorted(view.image.shape[:2])
        assert long_edge <= 150 and (40 <= short_edge <= 120 or long_edge == 150)
    assert strong_orders == {"color_first", "geometric_first"}


def test_views_are_deterministic_under_seeding_and_do_not_touch_the_input():
    cfg = _config()
    strong = build_view_augmentation(cfg, "strong")
    image = _test_image()
    original = image.copy()
    seed_all_rng(123)
    first = [strong(image) for _ in range(3)]
    seed_all_rng(123)
    second = [strong(image) for _ in range(3)]
    for a, b in zip(first, second):
        assert a.ops == b.ops
        np.testing.assert_array_equal(a.matrix, b.matrix)
        np.testing.assert_array_equal(a.image, b.image)
    assert any(not np.array_equal(first[0].matrix, view.matrix) for view in first[1:])
    np.testing.assert_array_equal(image, original)


def test_erasing_alone_does_not_write_into_the_input():
    image = _test_image()
    original = image.copy()
    augmentation = ViewAugmentation(
        short_edge_length=(0,),
        max_size=1000,
        sample_style="choice",
        erase_count=(3, 3),
        erase_size=(0.3, 0.3),
    )
    view = augmentation(image)
    assert view.ops == ["erase"] and (view.image == FILL_VALUE).any()
    np.testing.assert_array_equal(image, original)


def test_test_view_is_a_deterministic_resize():
    cfg = _config()
    cfg.INPUT.MIN_SIZE_TEST = 30
    cfg.INPUT.MAX_SIZE_TEST = 1000
    view = build_view_augmentation(cfg, "test")(_test_image())
    assert view.ops == ["resize"] and view.image.shape == (30, 40, 3)
    np.testing.assert_allclose(view.matrix, scale_matrix(0.5, 0.5))


def test_unknown_operations_are_rejected():
    with pytest.raises(ValueError, match="rotate90"):
        ViewAugmentation(short_edge_length=(10,), max_size=20, geometric_ops=("rotate90",))
    with pytest.raises(ValueError, match="color_magnitude"):
        ViewAugmentation(short_edge_length=(10,), max_size=20, color_magnitude=(0.5, 1.5))
