# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Dataset mappers: a detectron2 dataset dict -> the model's input dict, with the views of
`semidetr.data.transforms` (the geometry: `semidetr.data.geometry`).

* `LabeledDatasetMapper`: labeled images (supervised training and the labeled stream of
  semi-supervised training); with `is_train=False` the test-time mapping (`build_test_mapper`).
* `UnlabeledDatasetMapper`: unlabeled images -> a weak (teacher) and a strong (student) view.

Every view carries "transform_matrix", the (3, 3) float32 affine map from original-image pixel
coordinates (pixel edges: the image spans [0, W] x [0, H]) to view coordinates, and "transforms", the
names of the applied operations; `semidetr.data.geometry.map_boxes` moves boxes between views.
Images are read as RGB (the colour operations need the true channel order) and handed to the model
in INPUT.FORMAT ("RGB" or "BGR").

Bad images. In training, an image that cannot be read or decoded, or whose decoded size differs from
the dataset dict's "height"/"width" (its annotations would not fit it), is skipped: one warning names
the file, a per-process counter is incremented and the mapper returns None, on which detectron2's
MapDataset draws another sample. At test time such an image raises, because skipping it would
silently change what is evaluated.

Skip counters. Mapping runs in data-loader worker processes, whose memory the trainer cannot read, so
every dict a training mapper returns carries its process's cumulative counters under the key
`MAPPER_STATS_KEY` ("mapper_stats"): {"process": a unique id of the process, "skipped_unreadable",
"skipped_size_mismatch", "dropped_gt_boxes": int}. The counters only grow, so the trainer sums, over
processes, the largest value it has seen from each; `MapperStatsAggregator` does exactly that.
`mapper_stats()` reads the current process's counters (num_workers=0, tests).
"""
import logging
import os
import uuid
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import detection_utils
from detectron2.structures import Boxes, BoxMode, Instances

from .geometry import transform_boxes
from .transforms import View, ViewAugmentation, build_view_augmentation

__all__ = [
    "LabeledDatasetMapper",
    "UnlabeledDatasetMapper",
    "build_test_mapper",
    "annotations_to_view_instances",
    "MAPPER_STATS_KEY",
    "mapper_stats",
    "MapperStatsAggregator",
]

logger = logging.getLogger(__name__)

MAPPER_STATS_KEY = "mapper_stats"
_COUNTER_NAMES = ("skipped_unreadable", "skipped_size_mismatch", "dropped_gt_boxes")
_SUPPORTED_FORMATS = ("RGB", "BGR")


# ---------------------------------------------------------------------------------------------------
# Per-process counters.
# ---------------------------------------------------------------------------------------------------
class _ProcessCounters:
    """Counters of the current process. A forked data-loader worker inherits its parent's memory, so
    the counters are reset (with a new process id) the first time they are touched in a new process;
    otherwise every worker would report, and the trainer add up, the parent's counts again."""

    def __init__(self):
        self._pid: Optional[int] = None
        self._process_id = ""
        self._counts: Dict[str, int] = {}

    def _current(self) -> Dict[str, int]:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            # uuid4 draws from os.urandom, untouched by the seeding of the workers' RNGs; the pid
            # alone could be reused by a later worker.
            self._process_id = f"{self._pid}-{uuid.uuid4().hex[:8]}"
            self._counts = dict.fromkeys(_COUNTER_NAMES, 0)
        return self._counts

    def add(self, name: str, count: int = 1) -> None:
        self._current()[name] += count

    def snapshot(self) -> Dict[str, object]:
        counts = self._current()
        return {"process": self._process_id, **counts}


_COUNTERS = _ProcessCounters()


def mapper_stats() -> Dict[str, object]:
    """The cumulative counters of the current process: {"process": id, "skipped_unreadable",
    "skipped_size_mismatch", "dropped_gt_boxes"} (a copy)."""
    return _COUNTERS.snapshot()


class MapperStatsAggregator:
    """Totals of the mapper counters over all data-loader processes, for the trainer.

    Feed it the dicts the loader returns (labeled dicts, or the {"weak", "strong", ...} dicts of
    unlabeled images); `totals()` sums, over processes, the largest count seen from each.
    """

    def __init__(self):
        self._per_process: Dict[str, Dict[str, int]] = {}

    def update(self, mapped_dicts: Iterable[dict]) -> None:
        for mapped in mapped_dicts:
            stats = mapped.get(MAPPER_STATS_KEY)
            if stats is None:  # a loader without this project's mappers: nothing to count
                continue
            seen = self._per_process.setdefault(stats["process"], dict.fromkeys(_COUNTER_NAMES, 0))
            for name in _COUNTER_NAMES:
                seen[name] = max(seen[name], stats[name])

    def totals(self) -> Dict[str, int]:
        """{"skipped_unreadable", "skipped_size_mismatch", "dropped_gt_boxes"} summed over processes."""
        return {
            name: sum(counts[name] for counts in self._per_process.values())
            for name in _COUNTER_NAMES
        }


# ---------------------------------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------------------------------
def _read_image(dataset_dict: dict, skip_bad_images: bool) -> Optional[Tuple[np.ndarray, int, int]]:
    """Read the RGB image of `dataset_dict` and check its size.

    Returns (image, height, width) with the dict's original size (the decoded size where the dict has
    none, e.g. a folder of unlabeled images), or None for a bad image when `skip_bad_images`.
    """
    file_name = dataset_dict["file_name"]
    try:
        image = detection_utils.read_image(file_name, format="RGB")
    # PIL reports unreadable files with many exception types (OSError, SyntaxError, ValueError,
    # DecompressionBombError, ...): whatever the reason, this image cannot be used.
    except Exception as error:
        if not skip_bad_images:
            raise
        _COUNTERS.add("skipped_unreadable")
        logger.warning(
            f"Skipping image {file_name}: it cannot be read ({type(error).__name__}: {error})"
        )
        return None
    decoded_height, decoded_width = image.shape[:2]
    height = dataset_dict.get("height", decoded_height)
    width = dataset_dict.get("width", decoded_width)
    if (height, width) != (decoded_height, decoded_width):
        message = (
            f"image {file_name} decodes to {decoded_width}x{decoded_height} (WxH) but its dataset dict "
            f"says {width}x{height}"
        )
        if not skip_bad_images:
            raise detection_utils.SizeMismatchError(message)
        _COUNTERS.add("skipped_size_mismatch")
        logger.warning(f"Skipping {message}")
        return None
    return image, height, width


def _to_chw_tensor(image_rgb: np.ndarray, image_format: str) -> torch.Tensor:
    """HWC uint8 RGB array -> CHW uint8 tensor in `image_format`, in a single copy."""
    if image_format == "BGR":
        image_rgb = image_rgb[:, :, ::-1]
    return torch.as_tensor(np.ascontiguousarray(image_rgb.transpose(2, 0, 1)))


def annotations_to_view_instances(
    annotations: List[dict], matrix: np.ndarray, view_size: Tuple[int, int], min_box_size: float
) -> Tuple[Instances, int]:
    """Turn detectron2 annotations of the original image into Instances of a view.

    Crowd annotations are dropped (DETR-family training does not use them, as detectron2's DETR
    project). Boxes go through `transform_boxes` (corners -> bounding box -> clip -> drop boxes
    smaller than `min_box_size`).

    Returns:
        Instances of `view_size` with gt_boxes (Boxes, XYXY view pixels) and gt_classes (int64), and
        the number of non-crowd boxes dropped by the mapping.
    """
    annotations = [annotation for annotation in annotations if not annotation.get("iscrowd", 0)]
    boxes = np.array([annotation["bbox"] for annotation in annotations], dtype=np.float64).reshape(
        -1, 4
    )
    modes = np.array([int(annotation["bbox_mode"]) for annotation in annotations], dtype=np.int64)
    # Convert per box mode (usually a single one) rather than per annotation.
    for mode in np.unique(modes):
        if mode != BoxMode.XYXY_ABS:
            selected = modes == mode
            boxes[selected] = BoxMode.convert(boxes[selected], BoxMode(int(mode)), BoxMode.XYXY_ABS)
    classes = torch.tensor(
        [annotation["category_id"] for annotation in annotations], dtype=torch.int64
    )
    mapped, keep = transform_boxes(torch.from_numpy(boxes), matrix, view_size, min_box_size)
    instances = Instances(view_size)
    instances.gt_boxes = Boxes(mapped.to(torch.float32))
    instances.gt_classes = classes[keep]
    return instances, int((~keep).sum())


def _view_dict(dataset_dict: dict, view: View, image_format: str, height: int, width: int) -> dict:
    """The model-input dict of one view (no annotations)."""
    return {
        "image": _to_chw_tensor(view.image, image_format),
        "height": height,
        "width": width,
        "file_name": dataset_dict["file_name"],
        "image_id": dataset_dict["image_id"],
        "transform_matrix": torch.as_tensor(view.matrix, dtype=torch.float32),
        "transforms": view.ops,
    }


def _check_image_format(image_format: str) -> None:
    if image_format not in _SUPPORTED_FORMATS:
        raise ValueError(f"INPUT.FORMAT must be one of {_SUPPORTED_FORMATS}, got {image_format!r}")


# ---------------------------------------------------------------------------------------------------
# Mappers.
# ---------------------------------------------------------------------------------------------------
class LabeledDatasetMapper:
    """Maps a labeled dataset dict to the model input.

    Training (`is_train=True`): the labeled view (resize + flip + optionally a colour operation) and
    the ground truth moved into it. Output keys: "image" (uint8 CHW tensor in INPUT.FORMAT),
    "instances" (Instances with gt_boxes in view pixels and gt_classes), "height", "width" (original
    size, for detector_postprocess), "file_name", "image_id", "transform_matrix" ((3, 3) float32
    original -> view), "transforms" (list of op names) and MAPPER_STATS_KEY. Returns None for a bad
    image (see the module docstring). "annotations" must be present (possibly empty): a dict without
    it is not a labeled image.

    Test (`is_train=False`): the test view (resize to INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST) and no
    annotations, as detectron2's DatasetMapper; bad images raise.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentation: ViewAugmentation,
        image_format: str,
        min_box_size: float,
    ):
        """
        Args:
            is_train: training (labeled view, ground truth, skip bad images) or test mapping.
            augmentation: draws the view (`build_view_augmentation(cfg, "labeled" or "test")`).
            image_format: "RGB" or "BGR", channel order of the output image.
            min_box_size: ground-truth boxes smaller than this in the view are dropped.
        """
        _check_image_format(image_format)
        self.is_train = is_train
        self.augmentation = augmentation
        self.image_format = image_format
        self.min_box_size = min_box_size
        mode = "training" if is_train else "inference"
        logger.info(f"[LabeledDatasetMapper] {mode} view: {augmentation}")

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict:
        return {
            "is_train": is_train,
            "augmentation": build_view_augmentation(cfg, "labeled" if is_train else "test"),
            "image_format": cfg.INPUT.FORMAT,
            "min_box_size": cfg.INPUT.AUG.MIN_BOX_SIZE,
        }

    def __call__(self, dataset_dict: dict) -> Optional[dict]:
        read = _read_image(dataset_dict, skip_bad_images=self.is_train)
        if read is None:
            return None
        image, height, width = read
        view = self.augmentation(image)
        mapped = _view_dict(dataset_dict, view, self.image_format, height, width)
        if self.is_train:
            instances, num_dropped = annotations_to_view_instances(
                dataset_dict["annotations"], view.matrix, view.image.shape[:2], self.min_box_size
            )
            if num_dropped:
                _COUNTERS.add("dropped_gt_boxes", num_dropped)
            mapped["instances"] = instances
            mapped[MAPPER_STATS_KEY] = mapper_stats()
        return mapped


class UnlabeledDatasetMapper:
    """Maps an unlabeled dataset dict to two independently drawn views of the same image:
    {"weak": view dict (teacher), "strong": view dict (student), MAPPER_STATS_KEY: counters}.

    A view dict has "image", "height", "width", "file_name", "image_id", "transform_matrix",
    "transforms" (as LabeledDatasetMapper) and never "instances": "annotations" of the input dict are
    ignored. If the dict carries "monitor_annotations" (loaded only when SEMI.MONITOR_UNLABELED_GT is
    on), each view also gets "monitor_instances", that ground truth mapped into the view; it serves
    pseudo-label precision/recall logging only, never a loss. Returns None for a bad image.
    """

    @configurable
    def __init__(
        self,
        *,
        weak_augmentation: ViewAugmentation,
        strong_augmentation: ViewAugmentation,
        image_format: str,
        min_box_size: float,
    ):
        """
        Args:
            weak_augmentation, strong_augmentation: draw the teacher's / student's view
                (`build_view_augmentation(cfg, "weak" / "strong")`).
            image_format: "RGB" or "BGR", channel order of the output images.
            min_box_size: monitoring boxes smaller than this in a view are dropped.
        """
        _check_image_format(image_format)
        self.weak_augmentation = weak_augmentation
        self.strong_augmentation = strong_augmentation
        self.image_format = image_format
        self.min_box_size = min_box_size
        logger.info(f"[UnlabeledDatasetMapper] weak view: {weak_augmentation}")
        logger.info(f"[UnlabeledDatasetMapper] strong view: {strong_augmentation}")

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        return {
            "weak_augmentation": build_view_augmentation(cfg, "weak"),
            "strong_augmentation": build_view_augmentation(cfg, "strong"),
            "image_format": cfg.INPUT.FORMAT,
            "min_box_size": cfg.INPUT.AUG.MIN_BOX_SIZE,
        }

    def __call__(self, dataset_dict: dict) -> Optional[dict]:
        read = _read_image(dataset_dict, skip_bad_images=True)
        if read is None:
            return None
        image, height, width = read
        mapped = {}
        # Both views start from the same decoded image; the augmentations never write into it.
        for name, augmentation in (
            ("weak", self.weak_augmentation),
            ("strong", self.strong_augmentation),
        ):
            view = augmentation(image)
            view_dict = _view_dict(dataset_dict, view, self.image_format, height, width)
            if "monitor_annotations" in dataset_dict:
                view_dict["monitor_instances"], _ = annotations_to_view_instances(
                    dataset_dict["monitor_annotations"],
                    view.matrix,
                    view.image.shape[:2],
                    self.min_box_size,
                )
            mapped[name] = view_dict
        mapped[MAPPER_STATS_KEY] = mapper_stats()
        return mapped


def build_test_mapper(cfg: CfgNode) -> LabeledDatasetMapper:
    """The test-time mapper: `LabeledDatasetMapper(cfg, is_train=False)`.

    It replaces detectron2's DatasetMapper(cfg, is_train=False) (same resize: INPUT.MIN_SIZE_TEST,
    INPUT.MAX_SIZE_TEST; same output keys, plus "transform_matrix" and "transforms") so that test
    images are resized by the same OpenCV interpolation as training views (detectron2's resize uses
    PIL, which filters differently when shrinking) and read in the same way.
    """
    return LabeledDatasetMapper(cfg, is_train=False)
