# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Data sets in COCO json format: labeled instance files and unlabeled image lists.

Labeled sets are read with detectron2's ``load_coco_json`` and then validated (see validation.py).
Their metadata carries ``json_file``, so detectron2's COCOEvaluator scores against the json itself.
Class names and ids come from the json's "categories" (sorted by id, mapped to 0..K-1).
"""
import json
import logging
import os
from functools import lru_cache
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from detectron2.data.datasets import load_coco_json

from .registry import register_dataset
from .validation import (
    DataIssues,
    DatasetError,
    NoGroundTruthError,
    check_image_files,
    require_images,
    validate_labeled_dicts,
)

__all__ = [
    "MAX_IMAGES_TO_VERIFY",
    "coco_categories",
    "load_coco_dicts",
    "load_coco_image_list",
    "register_coco_json",
    "register_coco_paths",
]

logger = logging.getLogger(__name__)

# Json data sets with at most this many images get every image header read and compared with the
# json's size. Larger ones (COCO train2017: 118k images; every DDP process loads the data) only get
# the existence of their files checked: the sizes in such jsons are machine-written.
MAX_IMAGES_TO_VERIFY = 20000

# The default IoU from which two same-class boxes of one image count as a duplicate annotation.
DEFAULT_DUPLICATE_IOU = 0.9

PathsFn = Callable[[], Tuple[str, str]]


def _require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise DatasetError(
            f"{what} '{path}' does not exist. Check the path (relative paths are resolved against "
            "$DETECTRON2_DATASETS, default ./datasets) or see datasets/README.md for the layout."
        )


@lru_cache(maxsize=32)
def _read_json_summary(json_file: str, mtime: float) -> Tuple[Tuple[str, ...], Tuple[Tuple[int, int], ...], bool]:
    """(names sorted by id, (id, contiguous id) pairs, whether it has "annotations") of a json."""
    with open(json_file) as f:
        content = json.load(f)
    categories = sorted(content.get("categories") or [], key=lambda c: c["id"])
    names = tuple(c["name"] for c in categories)
    id_map = tuple((int(c["id"]), index) for index, c in enumerate(categories))
    return names, id_map, "annotations" in content


def _json_summary(json_file: str) -> Tuple[Tuple[str, ...], Tuple[Tuple[int, int], ...], bool]:
    _require_file(json_file, "COCO json file")
    return _read_json_summary(json_file, os.path.getmtime(json_file))


def coco_categories(json_file: str) -> Tuple[List[str], Dict[int, int]]:
    """(class names sorted by category id, {category id: contiguous id}) of a COCO json.

    Same rule as detectron2's ``load_coco_json``. Cached per file and modification time.
    """
    names, id_map, _ = _json_summary(json_file)
    if not names:
        raise DatasetError(
            f"COCO json file '{json_file}' has no 'categories'. A labeled json needs them; register an "
            "image list without annotations as an unlabeled set (spec kind 'coco_unlabeled')."
        )
    return list(names), dict(id_map)


def load_coco_dicts(
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    duplicate_iou_thresh: Optional[float] = DEFAULT_DUPLICATE_IOU,
    verify_sizes: Optional[bool] = None,
) -> List[dict]:
    """Load and validate a labeled COCO instances json.

    Args:
        dataset_name: when given, detectron2 stores thing_classes and the id map in its metadata, and
            the data issues are stored there too.
        duplicate_iou_thresh: see :func:`~semidetr.data.datasets.validation.sanitize_annotations`.
        verify_sizes: compare every image header with the json's size; None: only for sets of at most
            :data:`MAX_IMAGES_TO_VERIFY` images.

    Raises:
        DatasetError: missing json, no categories, an annotation with an unknown category id,
            duplicated annotation ids, or no usable image.
    """
    _require_file(json_file, "COCO json file")
    if dataset_name is None:
        # Without a name load_coco_json leaves the json's category ids as they are; map them here.
        names, id_map = coco_categories(json_file)
    try:
        dataset_dicts = load_coco_json(json_file, image_root, dataset_name)
    except (KeyError, ValueError) as e:
        message = str(e.args[0]) if e.args else repr(e)
        if "category_id" in message:
            raise DatasetError(
                f"COCO json file '{json_file}': {message}. Add the category to 'categories' or correct the "
                "annotation."
            ) from e
        # Also what an image list without "categories"/"annotations" gives (KeyError, or min() of no ids).
        raise DatasetError(
            f"COCO json file '{json_file}' is not a valid labeled instances file ({type(e).__name__}: "
            f"{message}): it needs 'images', 'annotations' and 'categories'. Register an image list as "
            "unlabeled data."
        ) from e
    except AssertionError as e:
        raise DatasetError(f"COCO json file '{json_file}' is invalid: {e}") from e
    if dataset_name is None:
        for record in dataset_dicts:
            for anno in record["annotations"]:
                if anno["category_id"] not in id_map:
                    raise DatasetError(
                        f"COCO json file '{json_file}': annotation of image {record['image_id']} has "
                        f"category_id={anno['category_id']}, which is not in 'categories' {sorted(id_map)}. "
                        "Add the category or correct the annotation."
                    )
                anno["category_id"] = id_map[anno["category_id"]]
    require_images(dataset_dicts, f"COCO json file '{json_file}'", "The json lists no image.")
    issues = DataIssues(dataset_name, source=f"COCO json file '{json_file}'")
    if verify_sizes is None:
        verify_sizes = len(dataset_dicts) <= MAX_IMAGES_TO_VERIFY
    return validate_labeled_dicts(
        dataset_dicts, issues, f"COCO json file '{json_file}' (images under '{image_root}')",
        "check the image root.", verify_sizes=verify_sizes, duplicate_iou_thresh=duplicate_iou_thresh)


def load_coco_image_list(json_file: str, image_root: str, dataset_name: Optional[str] = None) -> List[dict]:
    """Load the images of a COCO json (an image-info file or an instances file) without annotations.

    Only the existence of the files is checked when the json gives sizes (an unlabeled json such as
    COCO's image_info_unlabeled2017.json lists 123k images).
    """
    _require_file(json_file, "COCO json file")
    with open(json_file) as f:
        images = json.load(f).get("images") or []
    dataset_dicts = [
        {
            "file_name": os.path.join(image_root, image["file_name"]),
            "height": image.get("height"),
            "width": image.get("width"),
            "image_id": image["id"],
        }
        for image in sorted(images, key=lambda image: image["id"])
    ]
    require_images(dataset_dicts, f"COCO json file '{json_file}'", "The json lists no image.")
    issues = DataIssues(dataset_name, source=f"COCO json file '{json_file}' (images)")
    dataset_dicts = check_image_files(dataset_dicts, issues, verify_sizes=False)
    require_images(
        dataset_dicts,
        f"COCO json file '{json_file}' (images under '{image_root}')",
        f"All its images were skipped ({issues.as_dict()}); check the image root.",
    )
    issues.report()
    return dataset_dicts


def register_coco_paths(
    name: str,
    paths: PathsFn,
    signature: Tuple,
    unlabeled: bool = False,
    metadata: Optional[Mapping[str, Any]] = None,
    duplicate_iou_thresh: Optional[float] = DEFAULT_DUPLICATE_IOU,
    monitor_gt_available: bool = True,
) -> bool:
    """Register a COCO json set whose (json_file, image_root) are computed when first needed.

    The building block of :func:`register_coco_json` and of the built-in sets, whose paths depend on
    $DETECTRON2_DATASETS at load time (or on a generated cache). `paths` is called lazily.
    `monitor_gt_available=False` declares an unlabeled set without ground truth (an image-info json).
    """
    def category_field(index: int) -> Callable[[], Any]:
        return lambda: coco_categories(paths()[0])[index]

    if unlabeled:
        def monitor_gt() -> List[dict]:
            json_file, image_root = paths()
            if not _json_summary(json_file)[2]:
                raise NoGroundTruthError(
                    f"Unlabeled data set '{name}' has no ground-truth source: '{json_file}' has no "
                    "annotations. Set SEMI.MONITOR_UNLABELED_GT False."
                )
            return load_coco_dicts(json_file, image_root, duplicate_iou_thresh=duplicate_iou_thresh, verify_sizes=False)

        return register_dataset(
            name,
            lambda: load_coco_image_list(*paths(), dataset_name=name),
            signature=signature,
            metadata={"unlabeled": True, **(metadata or {})},
            lazy_metadata={"image_root": lambda: paths()[1]},
            monitor_gt_source=monitor_gt if monitor_gt_available else None,
        )
    return register_dataset(
        name,
        lambda: load_coco_dicts(*paths(), dataset_name=name, duplicate_iou_thresh=duplicate_iou_thresh),
        signature=signature,
        metadata={"evaluator_type": "coco", **(metadata or {})},
        lazy_metadata={
            "json_file": lambda: paths()[0],
            "image_root": lambda: paths()[1],
            "thing_classes": category_field(0),
            "thing_dataset_id_to_contiguous_id": category_field(1),
        },
    )


def register_coco_json(
    name: str,
    json_file: str,
    image_root: str,
    unlabeled: bool = False,
    metadata: Optional[Mapping[str, Any]] = None,
    duplicate_iou_thresh: Optional[float] = DEFAULT_DUPLICATE_IOU,
) -> bool:
    """Register a COCO json data set (idempotent; nothing is read now).

    Args:
        json_file, image_root: paths; the json's "file_name" entries are relative to `image_root`.
        unlabeled: register the images only (dicts without "annotations"). If the json has
            annotations they serve as monitoring ground truth
            (:func:`~semidetr.data.datasets.catalog.load_unlabeled_with_monitor_gt`); an image-info json (no
            annotations) has none and yields empty monitoring lists.
        metadata: extra metadata fields.
        duplicate_iou_thresh: see :func:`~semidetr.data.datasets.validation.sanitize_annotations`.

    Returns:
        True if registered by this call, False if it already was with the same arguments.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    signature = ("coco", json_file, image_root, unlabeled, duplicate_iou_thresh)
    return register_coco_paths(
        name,
        lambda: (json_file, image_root),
        signature,
        unlabeled=unlabeled,
        metadata=metadata,
        duplicate_iou_thresh=duplicate_iou_thresh,
    )
