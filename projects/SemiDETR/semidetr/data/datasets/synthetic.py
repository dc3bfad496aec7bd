# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""The embedded synthetic detection data set "shapes": cheap to train on a CPU, not trivial to solve.

Six classes (:data:`SHAPE_CLASSES`): circle, square, triangle, star, cross, ring. Every image has

* a size drawn per side in ``image_size`` (default 192-320 px);
* a background made of a two-colour linear gradient, low-frequency blotches and pixel noise;
* unannotated clutter: lines, open arcs (look like partial rings), irregular blobs, thin bars, dots
  smaller than the smallest object, and a few thin lines drawn over the objects;
* ``objects_per_image`` objects (some images have none) with log-uniform sizes from
  ``object_size[0]`` px to ``object_size[1]`` of the shorter image side, random rotation, aspect and
  vertex jitter, a colour independent of the class (solid, gradient or speckled fill; at least
  ``min_contrast`` away from the background under it), overlapping each other and the image border;
  each object keeps at least ``min_visible`` of its area visible (placements that would hide more of
  it, or of an earlier object, are re-drawn);
* a final Gaussian blur of random radius up to ``max_blur`` and JPEG compression.

The boxes are the tight boxes of the *visible* pixels (as COCO boxes are of the visible extent).
Difficulty is tuned with the fields of :class:`ShapesConfig`.

Generation is deterministic: image i of a split is drawn from ``numpy.random.default_rng([seed, i])``,
so the same (config, split size, seed) gives the same bytes in the same environment. A split is
generated once into ``$DETECTRON2_DATASETS/shapes/{split}-v{GENERATOR_VERSION}-{hash}/`` (the hash
covers the config, size and seed; changing any of them, or the generator version, makes a new cache)
with ``images/*.jpg`` and a COCO json ``annotations.json``. Several processes (DDP workers) may ask for
a split at once: one generates it under a file lock into a temporary folder and renames it into place
atomically; the others wait and reuse it.
"""
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from iopath.common.file_io import file_lock
from PIL import Image, ImageDraw

from .coco import register_coco_paths
from .registry import datasets_root

__all__ = [
    "SHAPE_CLASSES",
    "GENERATOR_VERSION",
    "DEFAULT_SPLITS",
    "LITE_CONFIG",
    "LITE_SPLITS",
    "ShapesConfig",
    "render_shapes_image",
    "generate_shapes_split",
    "prepare_shapes_split",
    "register_shapes",
]

logger = logging.getLogger(__name__)

SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")

# Bump when the rendering changes: the cache folder name contains it, so stale caches are not reused.
GENERATOR_VERSION = 1

# split -> (number of images, seed) of the built-in sets shapes_train / shapes_val.
DEFAULT_SPLITS: Dict[str, Tuple[int, int]] = {"train": (2000, 1), "val": (300, 2)}

# (x0, y0, x1, y1) in pixels, x1 and y1 exclusive.
Box = Tuple[int, int, int, int]

ANNOTATION_FILE = "annotations.json"
IMAGE_DIR = "images"

# Pixel noise comes from crops of one fixed tile (image sides are at most 512 px with the defaults).
_NOISE_TILE_SIZE = 512
_NOISE_TILE_SEED = 20230615

# Vertices of the polygons approximating circles (enough for a 160 px circle to look round).
_CIRCLE_VERTICES = 48


@dataclass(frozen=True)
class ShapesConfig:
    """Generator parameters; every field changes the difficulty (and the cache key).

    Attributes:
        classes: the object classes used (any subset of :data:`SHAPE_CLASSES`, in id order).
        image_size: (min, max) side length in px (at most 512); width and height are drawn
            independently.
        objects_per_image: (min, max) number of objects of a non-negative image.
        negative_fraction: fraction of images without objects.
        object_size: (smallest side in px, largest side as a fraction of the shorter image side);
            sizes are log-uniform in between, so small objects are common.
        min_visible: fraction of each object's area that stays visible (occlusion and truncation).
        shape_jitter: aspect-ratio and vertex distortion of the shapes (0: perfect shapes).
        distractors: (min, max) number of clutter items per image drawn under the objects; up to two
            thin lines are drawn over them unless the max is 0.
        noise_std: standard deviation of the pixel noise (scaled per image by 0.5-1.5).
        min_contrast: minimum RGB distance between an object's colour and the background under it.
        max_blur: largest Gaussian-blur radius in px.
        jpeg_quality: JPEG quality of the written images.
    """

    classes: Tuple[str, ...] = SHAPE_CLASSES
    image_size: Tuple[int, int] = (192, 320)
    objects_per_image: Tuple[int, int] = (1, 10)
    negative_fraction: float = 0.03
    object_size: Tuple[float, float] = (8.0, 0.5)
    min_visible: float = 0.6
    shape_jitter: float = 0.15
    distractors: Tuple[int, int] = (4, 14)
    noise_std: float = 8.0
    min_contrast: float = 48.0
    max_blur: float = 1.0
    jpeg_quality: int = 90

    def __post_init__(self):
        unknown = set(self.classes) - set(SHAPE_CLASSES)
        if unknown or not self.classes:
            raise ValueError(f"ShapesConfig.classes must be a non-empty subset of {SHAPE_CLASSES}, got {self.classes}")
        if not 16 <= self.image_size[0] <= self.image_size[1] <= _NOISE_TILE_SIZE:
            raise ValueError(
                f"ShapesConfig.image_size must satisfy 16 <= min <= max <= {_NOISE_TILE_SIZE}, got {self.image_size}"
            )
        if not 0 <= self.objects_per_image[0] <= self.objects_per_image[1]:
            raise ValueError(f"ShapesConfig.objects_per_image must be a (min, max) range, got {self.objects_per_image}")
        if not (2 <= self.object_size[0] and 0 < self.object_size[1] <= 1):
            raise ValueError(
                f"ShapesConfig.object_size must be (min px >= 2, max fraction in (0, 1]), got {self.object_size}"
            )
        if not 0 < self.min_visible <= 1:
            raise ValueError(f"ShapesConfig.min_visible must be in (0, 1], got {self.min_visible}")


# "shapes_lite": the evidence setting of BENCHMARKS.md ("Evidence: shapes_lite"). Small images with a few
# larger objects and less clutter, so that the CPU detector learns it within a few thousand iterations and
# is limited by the labels rather than by the schedule (the default "shapes" data is still being learned at
# 3000 iterations with all its labels, BENCHMARKS section 1). The same generator, seeds of its own.
LITE_CONFIG = ShapesConfig(
    image_size=(112, 144),
    objects_per_image=(1, 5),
    object_size=(12.0, 0.5),
    distractors=(1, 5),
    noise_std=6.0,
)
# split -> (number of images, seed) of shapes_lite_train / shapes_lite_val.
LITE_SPLITS: Dict[str, Tuple[int, int]] = {"lite_train": (2000, 11), "lite_val": (300, 12)}


# --------------------------------------------------------------------------------------------------
# Geometry: outlines in a unit frame (radius ~1), then jitter, rotation, scaling.
# --------------------------------------------------------------------------------------------------
def _unit_circle(n: int = _CIRCLE_VERTICES) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _unit_outlines(shape: str, rng: np.random.Generator) -> List[Tuple[np.ndarray, int]]:
    """(polygon, fill value) pairs in a unit frame; a fill of 0 cuts a hole (the ring)."""
    if shape == "circle":
        return [(_unit_circle(), 255)]
    if shape == "ring":
        return [(_unit_circle(), 255), (_unit_circle() * rng.uniform(0.45, 0.7), 0)]
    if shape == "square":
        return [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) / math.sqrt(2), 255)]
    if shape == "triangle":
        angles = np.deg2rad(-90 + np.arange(3) * 120.0)
        return [(np.stack([np.cos(angles), np.sin(angles)], axis=1), 255)]
    if shape == "star":
        inner = rng.uniform(0.38, 0.5)
        angles = np.deg2rad(-90 + np.arange(10) * 36.0)
        radii = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return [(np.stack([np.cos(angles) * radii, np.sin(angles) * radii], axis=1), 255)]
    if shape == "cross":
        w = rng.uniform(0.22, 0.34)
        return [(np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1],
                           [-w, w], [-1, w], [-1, -w], [-w, -w]], dtype=np.float64), 255)]
    raise ValueError(f"Unknown shape '{shape}'")


def _place_outlines(
    outlines: List[Tuple[np.ndarray, int]], size: float, jitter: float, rng: np.random.Generator
) -> List[Tuple[np.ndarray, int]]:
    """Distort, rotate and scale unit outlines to a shape of diameter ~`size` centred at 0."""
    aspect = 1.0 + rng.uniform(-jitter, jitter)
    angle = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    placed = []
    for points, fill in outlines:
        radial = 1.0 + rng.uniform(-jitter / 3, jitter / 3, size=(len(points), 1)) if len(points) < 20 else 1.0
        scaled = points * radial * np.array([aspect, 1.0 / aspect])
        placed.append(((scaled @ rotation.T) * (size / 2.0), fill))
    return placed


def _rasterize(outlines: List[Tuple[np.ndarray, int]], center: Tuple[float, float]) -> Tuple[np.ndarray, int, int]:
    """(boolean mask, x0, y0): the shape's mask on its own patch, whose top-left pixel is (x0, y0)."""
    all_points = np.concatenate([points for points, _ in outlines]) + np.asarray(center)
    x0, y0 = np.floor(all_points.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(all_points.max(axis=0)).astype(int) + 1
    patch = Image.new("L", (int(x1 - x0), int(y1 - y0)), 0)
    draw = ImageDraw.Draw(patch)
    for points, fill in outlines:
        local = points + np.asarray(center) - np.array([x0, y0])
        draw.polygon([tuple(p) for p in local.tolist()], fill=fill)
    return np.asarray(patch) > 0, int(x0), int(y0)


def _clip_region(x0: int, y0: int, mask: np.ndarray, width: int, height: int):
    """The part of a patch inside the image: (image slices, patch slices), or None if none is."""
    h, w = mask.shape
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + w, width), min(y0 + h, height)
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    image_slices = (slice(iy0, iy1), slice(ix0, ix1))
    patch_slices = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
    return image_slices, patch_slices


# --------------------------------------------------------------------------------------------------
# Appearance.
# --------------------------------------------------------------------------------------------------
def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """float32 (H, W, 3): a two-colour linear gradient with low-frequency blotches."""
    start, end = _random_colour(rng), _random_colour(rng)
    # Pull the two colours together sometimes: flat backgrounds make low-contrast scenes.
    end = start + (end - start) * rng.uniform(0.2, 1.0)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.arange(width, dtype=np.float32)[None, :] * np.float32(np.cos(angle))
         + np.arange(height, dtype=np.float32)[:, None] * np.float32(np.sin(angle)))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    image = start.astype(np.float32) + t[..., None] * (end - start).astype(np.float32)
    cells = rng.integers(3, 9, size=2)
    blotches = rng.uniform(-1, 1, size=(int(cells[0]), int(cells[1]), 3)).astype(np.float32)
    amplitude = rng.uniform(10, 40)
    upsampled = np.stack(
        [np.asarray(Image.fromarray(blotches[..., c]).resize((width, height), Image.BICUBIC)) for c in range(3)],
        axis=-1,
    )
    image += np.float32(amplitude) * upsampled
    return image


def _draw_clutter(
    image: Image.Image, count: int, rng: np.random.Generator, max_extent: float, thin_only: bool = False
) -> None:
    """Unannotated distractors drawn with PIL (lines, arcs, blobs, bars, dots)."""
    draw = ImageDraw.Draw(image)
    width, height = image.size
    kinds = ("line",) if thin_only else ("line", "polyline", "arc", "blob", "bar", "dot")
    for _ in range(count):
        kind = kinds[int(rng.integers(len(kinds)))]
        colour = tuple(int(c) for c in _random_colour(rng))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        extent = float(np.exp(rng.uniform(np.log(6), np.log(max_extent))))
        if kind == "line":
            angle = rng.uniform(0, np.pi)
            dx, dy = np.cos(angle) * extent, np.sin(angle) * extent
            line_width = 1 if thin_only else int(rng.integers(1, 4))
            draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=colour, width=line_width)
        elif kind == "polyline":
            points = np.cumsum(rng.normal(0, extent / 3, size=(int(rng.integers(3, 6)), 2)), axis=0) + [cx, cy]
            draw.line([tuple(p) for p in points.tolist()], fill=colour, width=int(rng.integers(1, 4)))
        elif kind == "arc":
            start = rng.uniform(0, 360)
            box = [cx - extent / 2, cy - extent / 2, cx + extent / 2, cy + extent / 2]
            draw.arc(box, start, start + rng.uniform(60, 270), fill=colour, width=int(rng.integers(1, 5)))
        elif kind == "blob":
            n = int(rng.integers(7, 13))
            angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
            radii = extent / 2 * rng.uniform(0.35, 1.0, size=n)
            points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
            draw.polygon([tuple(p) for p in points.tolist()], fill=colour)
        elif kind == "bar":
            angle = rng.uniform(0, np.pi)
            half_length, half_width = extent / 2, extent / 2 / rng.uniform(4, 10)
            u = np.array([np.cos(angle), np.sin(angle)])
            v = np.array([-u[1], u[0]])
            corners = [
                np.array([cx, cy]) + a * half_length * u + b * half_width * v
                for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))
            ]
            draw.polygon([tuple(c) for c in corners], fill=colour)
        else:  # dot: smaller than the smallest object
            r = rng.uniform(1.0, 2.0)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)


@lru_cache(maxsize=1)
def _noise_tile() -> np.ndarray:
    """A fixed (512, 512, 3) tile of standard normal noise (drawing fresh noise per image costs more
    than rendering it); images use random crops of it with random signs."""
    shape = (_NOISE_TILE_SIZE, _NOISE_TILE_SIZE, 3)
    return np.random.default_rng(_NOISE_TILE_SEED).standard_normal(shape, dtype=np.float32)


def _noise_crop(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    tile = _noise_tile()
    top = int(rng.integers(0, _NOISE_TILE_SIZE - height + 1))
    left = int(rng.integers(0, _NOISE_TILE_SIZE - width + 1))
    sign = np.float32(1.0 if rng.random() < 0.5 else -1.0)
    return sign * tile[top:top + height, left:left + width]


def _fill_texture(mask_shape: Tuple[int, int], colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float32 (h, w, 3) fill of an object: solid, linear gradient or speckled."""
    h, w = mask_shape
    style = rng.choice(3, p=[0.55, 0.3, 0.15])
    fill = np.broadcast_to(colour.astype(np.float32), (h, w, 3)).copy()
    if style == 1:
        other = np.clip(colour + rng.normal(0, 45, size=3), 0, 255)
        horizontal = rng.random() < 0.5
        ramp = np.linspace(0, 1, w if horizontal else h, dtype=np.float32)
        ramp = ramp[None, :, None] if horizontal else ramp[:, None, None]
        fill = fill + ramp * (other - colour).astype(np.float32)
    elif style == 2:
        fill = fill + rng.normal(0, 25, size=(h, w, 1)).astype(np.float32)
    return fill


# --------------------------------------------------------------------------------------------------
# One image.
# --------------------------------------------------------------------------------------------------
def render_shapes_image(
    rng: np.random.Generator, config: ShapesConfig = ShapesConfig()
) -> Tuple[np.ndarray, List[Tuple[int, Box]]]:
    """Draw one image.

    Returns:
        (uint8 RGB array of shape (H, W, 3), [(class index in config.classes, (x0, y0, x1, y1))]) with
        the boxes tight around the visible pixels (x1, y1 exclusive).
    """
    height, width = (int(v) for v in rng.integers(config.image_size[0], config.image_size[1] + 1, size=2))
    short_side = min(height, width)
    max_size = max(config.object_size[0] + 1, config.object_size[1] * short_side)

    background = Image.fromarray(np.clip(_background(height, width, rng), 0, 255).astype(np.uint8))
    _draw_clutter(background, int(rng.integers(config.distractors[0], config.distractors[1] + 1)), rng, max_size * 0.8)
    image = np.asarray(background).astype(np.float32)

    num_objects = 0 if rng.random() < config.negative_fraction else int(
        rng.integers(config.objects_per_image[0], config.objects_per_image[1] + 1)
    )
    owner = np.full((height, width), -1, dtype=np.int32)
    full_areas: List[int] = []
    visible_areas: List[int] = []
    classes: List[int] = []
    regions: List[Tuple[slice, slice]] = []
    for _ in range(num_objects):
        for _attempt in range(10):
            class_index = int(rng.integers(len(config.classes)))
            size = float(np.exp(rng.uniform(np.log(config.object_size[0]), np.log(max_size))))
            outlines = _place_outlines(_unit_outlines(config.classes[class_index], rng), size, config.shape_jitter, rng)
            mask, x0, y0 = _rasterize(outlines, (rng.uniform(0, width), rng.uniform(0, height)))
            full_area = int(mask.sum())
            region = _clip_region(x0, y0, mask, width, height)
            if full_area == 0 or region is None:
                continue
            image_slices, patch_slices = region
            visible = mask[patch_slices]
            if visible.sum() < config.min_visible * full_area:
                continue  # too truncated by the border
            covered = owner[image_slices][visible]
            hidden = np.bincount(covered[covered >= 0], minlength=len(full_areas))
            remaining = np.asarray(visible_areas, dtype=np.int64) - hidden
            if (remaining < config.min_visible * np.asarray(full_areas)).any():
                continue  # would hide too much of an earlier object
            target = image[image_slices]
            under = target[visible].mean(axis=0)
            colour = _random_colour(rng)
            for _retry in range(10):
                if np.linalg.norm(colour - under) >= config.min_contrast:
                    break
                colour = _random_colour(rng)
            target[visible] = _fill_texture(visible.shape, colour, rng)[visible]
            owner[image_slices][visible] = len(full_areas)
            regions.append(image_slices)
            visible_areas[:] = remaining.tolist()
            full_areas.append(full_area)
            visible_areas.append(int(visible.sum()))
            classes.append(class_index)
            break

    overlay = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    if config.distractors[1] > 0:
        _draw_clutter(overlay, int(rng.integers(0, 3)), rng, max_size, thin_only=True)
    image = np.asarray(overlay).astype(np.float32)
    image += np.float32(config.noise_std * rng.uniform(0.5, 1.5)) * _noise_crop(height, width, rng)
    result = np.clip(image, 0, 255).astype(np.uint8)
    blur = rng.uniform(0, config.max_blur)
    if blur > 0.2:
        result = cv2.GaussianBlur(result, (0, 0), sigmaX=blur)

    boxes = []
    for index, (class_index, (rows, cols)) in enumerate(zip(classes, regions)):
        ys, xs = np.nonzero(owner[rows, cols] == index)
        x0, y0 = cols.start + int(xs.min()), rows.start + int(ys.min())
        boxes.append((class_index, (x0, y0, cols.start + int(xs.max()) + 1, rows.start + int(ys.max()) + 1)))
    return result, boxes


# --------------------------------------------------------------------------------------------------
# A split on disk, and its cache.
# --------------------------------------------------------------------------------------------------
def _render_and_save(task: Tuple[str, int, int, ShapesConfig]) -> Tuple[dict, List[Tuple[int, Box]]]:
    """Render image `index` of a split, write it under `out_dir`; returns (image entry, boxes)."""
    out_dir, seed, index, config = task
    pixels, boxes = render_shapes_image(np.random.default_rng([seed, index]), config)
    file_name = f"{IMAGE_DIR}/{index:06d}.jpg"
    Image.fromarray(pixels).save(os.path.join(out_dir, file_name), quality=config.jpeg_quality)
    return {"id": index + 1, "file_name": file_name, "height": pixels.shape[0], "width": pixels.shape[1]}, boxes


def generate_shapes_split(
    out_dir: str,
    num_images: int,
    seed: int,
    config: ShapesConfig = ShapesConfig(),
    num_workers: Optional[int] = None,
) -> str:
    """Write ``num_images`` images and their COCO json into `out_dir`; returns the json path.

    Deterministic in (num_images, seed, config), whatever `num_workers`: each image has its own random
    generator. The json's categories are ``config.classes`` with ids 1..K; boxes are XYWH with integer
    coordinates; "area" is the box area.

    Args:
        num_workers: processes rendering in parallel (default: up to 2, the CPU budget of the project's
            machines); 0 or 1 renders in this process. Workers are forked (they need nothing but numpy
            and PIL), so this is sequential where fork is unavailable.
    """
    os.makedirs(os.path.join(out_dir, IMAGE_DIR), exist_ok=True)
    tasks = [(out_dir, seed, index, config) for index in range(num_images)]
    if num_workers is None:
        num_workers = min(2, os.cpu_count() or 1)
    if num_workers > 1 and num_images > 8 and "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(num_workers) as pool:
            results = pool.map(_render_and_save, tasks, chunksize=16)
    else:
        results = [_render_and_save(task) for task in tasks]

    images, annotations = [], []
    for image, boxes in results:
        images.append(image)
        for class_index, (x0, y0, x1, y1) in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": class_index + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    content = {
        "info": {
            "description": "SemiDETR-D2 synthetic shapes",
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "config": asdict(config),
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(config.classes)],
    }
    json_file = os.path.join(out_dir, ANNOTATION_FILE)
    with open(json_file, "w") as f:
        json.dump(content, f, sort_keys=True)
    return json_file


def _cache_key(split: str, num_images: int, seed: int, config: ShapesConfig) -> str:
    description = json.dumps({"num_images": num_images, "seed": seed, "config": asdict(config)}, sort_keys=True)
    digest = hashlib.sha1(description.encode()).hexdigest()[:10]
    return f"{split}-v{GENERATOR_VERSION}-{digest}"


def prepare_shapes_split(
    split: str,
    num_images: Optional[int] = None,
    seed: Optional[int] = None,
    config: ShapesConfig = ShapesConfig(),
    root: Optional[str] = None,
) -> Tuple[str, str]:
    """Generate a split once (cached, concurrency-safe); returns (json_file, image_root).

    Args:
        split: a name ("train", "val", or any other); `num_images` and `seed` default to
            :data:`DEFAULT_SPLITS` for "train" and "val".
        root: the cache root; default ``$DETECTRON2_DATASETS/shapes``.
    """
    default_size, default_seed = DEFAULT_SPLITS.get(split, (None, None))
    num_images = default_size if num_images is None else num_images
    seed = default_seed if seed is None else seed
    if num_images is None or seed is None:
        raise ValueError(f"Shapes split '{split}' has no default size/seed: pass num_images and seed.")
    root = root or os.path.join(datasets_root(), "shapes")
    final_dir = os.path.join(root, _cache_key(split, num_images, seed, config))
    json_file = os.path.join(final_dir, ANNOTATION_FILE)
    if os.path.isfile(json_file):
        return json_file, final_dir
    os.makedirs(root, exist_ok=True)
    # The lock serialises generators of the same split; the rename keeps a killed process from
    # leaving a half-written cache behind (and protects file systems without working locks).
    with file_lock(final_dir):
        if not os.path.isfile(json_file):
            if os.path.isdir(final_dir):
                # A folder without its json is not a cache (copied half-way, or written by hand).
                shutil.rmtree(final_dir)
            start = time.perf_counter()
            temporary = tempfile.mkdtemp(prefix=f".{os.path.basename(final_dir)}.", dir=root)
            try:
                generate_shapes_split(temporary, num_images, seed, config)
                try:
                    os.rename(temporary, final_dir)
                except OSError:
                    if not os.path.isfile(json_file):  # not a concurrent winner: a real error
                        raise
            finally:
                shutil.rmtree(temporary, ignore_errors=True)
            logger.info(f"Generated {num_images} synthetic shapes images in {final_dir} "
                        f"({time.perf_counter() - start:.1f} s)")
    return json_file, final_dir


def register_shapes(
    name: str,
    split: str,
    num_images: Optional[int] = None,
    seed: Optional[int] = None,
    config: ShapesConfig = ShapesConfig(),
    root: Optional[str] = None,
) -> bool:
    """Register a shapes split as a COCO json data set, generated on first use (idempotent).

    The class names are known without generating anything; ``json_file`` and ``image_root`` (and the
    images) are produced on first access. `root` None means ``$DETECTRON2_DATASETS/shapes`` at that time.
    """
    signature = ("shapes", split, num_images, seed, config, root)
    return register_coco_paths(
        name,
        lambda: prepare_shapes_split(split, num_images, seed, config, root),
        signature,
        metadata={
            "thing_classes": list(config.classes),
            "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(config.classes))},
        },
    )
