# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Unlabeled data from a plain folder of images (no json, no annotations).

The folder is searched recursively by default (sub-folders per camera or per day are common); hidden
files and folders (name starting with ".") are ignored; symbolic links to folders are not followed
(they could loop). Files are sorted by relative path, so the order, and the ``image_id`` (the relative
path), are the same in every process. Image sizes are read from the headers only.
"""
import logging
import os
from typing import List, Optional

from .registry import register_dataset
from .validation import DataIssues, DatasetError, check_image_files, is_image_file, require_images

__all__ = ["list_image_files", "load_image_folder", "register_image_folder"]

logger = logging.getLogger(__name__)


def list_image_files(image_dir: str, recursive: bool = True, issues: Optional[DataIssues] = None) -> List[str]:
    """Sorted relative paths of the image files under `image_dir`.

    Non-hidden files without an image extension are counted as "non_image_file" in `issues`.
    """
    if not os.path.isdir(image_dir):
        raise DatasetError(
            f"Image folder '{image_dir}' does not exist. Check the path (relative paths are resolved "
            "against $DETECTRON2_DATASETS, default ./datasets)."
        )
    relative_paths = []
    for directory, sub_dirs, files in os.walk(image_dir):
        sub_dirs[:] = sorted(d for d in sub_dirs if not d.startswith(".")) if recursive else []
        for file_name in files:
            if file_name.startswith("."):
                continue
            path = os.path.relpath(os.path.join(directory, file_name), image_dir)
            if is_image_file(file_name):
                relative_paths.append(path)
            elif issues is not None:
                issues.add("non_image_file", os.path.join(image_dir, path))
    return sorted(relative_paths)


def load_image_folder(image_dir: str, recursive: bool = True, dataset_name: Optional[str] = None) -> List[dict]:
    """Dicts ("file_name", "height", "width", "image_id") of the images in a folder.

    Raises:
        DatasetError: the folder does not exist or holds no readable image.
    """
    issues = DataIssues(dataset_name, source=f"image folder '{image_dir}'")
    relative_paths = list_image_files(image_dir, recursive, issues)
    dataset_dicts = [{"file_name": os.path.join(image_dir, path), "image_id": path} for path in relative_paths]
    dataset_dicts = check_image_files(dataset_dicts, issues, verify_sizes=True)
    mode = "recursively" if recursive else "non-recursively"
    require_images(
        dataset_dicts,
        f"image folder '{image_dir}' (searched {mode}, extensions .jpg .jpeg .png .bmp .tif .tiff .webp)",
        f"Put the unlabeled images there or fix the path ({issues.as_dict() or 'the folder is empty'}).",
    )
    issues.report()
    return dataset_dicts


def register_image_folder(name: str, image_dir: str, recursive: bool = True) -> bool:
    """Register a folder of unlabeled images (idempotent; nothing is read now).

    The set has no ground truth: :func:`~semidetr.data.datasets.catalog.load_unlabeled_with_monitor_gt` raises
    NoGroundTruthError for it, and training with SEMI.MONITOR_UNLABELED_GT warns and does not monitor it.

    Returns:
        True if registered by this call, False if it already was with the same arguments.
    """
    image_dir = os.fspath(image_dir)
    return register_dataset(
        name,
        lambda: load_image_folder(image_dir, recursive, name),
        signature=("folder", image_dir, recursive),
        metadata={
            "unlabeled": True,
            "image_root": image_dir,
            "source_description": f"the image folder '{image_dir}'",
        },
    )
