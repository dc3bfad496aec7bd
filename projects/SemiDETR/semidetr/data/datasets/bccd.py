# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""BCCD (blood cell detection): a small real data set in VOC layout, with its documented errata.

364 images of 640x480, classes RBC, WBC, Platelets (names and ids read from the data: sorted, so
Platelets=0, RBC=1, WBC=2), splits train/val/trainval/test of ImageSets/Main. The errata
(BCCD_ERRATA, BCCD_DUPLICATE_IOU), how they were found and why: datasets/README.md, section "BCCD".
"""
import os
from typing import List, Optional

from .registry import datasets_root
from .validation import DatasetError
from .voc import VocErrata, register_voc

__all__ = ["BCCD_SPLITS", "BCCD_ERRATA", "BCCD_DUPLICATE_IOU", "find_bccd_root", "register_bccd"]

BCCD_SPLITS = ("train", "val", "trainval", "test")

# Same-class boxes of one image with at least this IoU are duplicates (datasets/README.md, BCCD).
BCCD_DUPLICATE_IOU = 0.8

_INCOMPLETE_RBC = "RBCs visible but none annotated"
_INCOMPLETE_WBC = "WBC visible but not annotated (RBC-only annotation from another project)"
BCCD_ERRATA = VocErrata(
    excluded=tuple(
        (f"BloodImage_{number}", _INCOMPLETE_RBC)
        for number in (
            "00134", "00147", "00150", "00152", "00224", "00249", "00250", "00258",
            "00267", "00268", "00303", "00322", "00327", "00330", "00350",
        )
    )
    + tuple((f"BloodImage_{number}", _INCOMPLETE_WBC) for number in ("00171", "00178", "00228")),
    relabeled=(
        ("BloodImage_00113", (257, 430, 288, 457), "WBC", "Platelets"),
        ("BloodImage_00133", (135, 1, 302, 117), "Platelets", "WBC"),
        ("BloodImage_00135", (42, 345, 185, 480), "Platelets", "WBC"),
    ),
)


def _repository_root() -> str:
    # projects/SemiDETR/semidetr/data/datasets/bccd.py -> the repository root, five levels up.
    return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", ".."))


def _candidate_roots() -> List[str]:
    base = os.path.join(datasets_root(), "BCCD")
    shared = os.path.join("..", "shared", "datasets", "BCCD", "BCCD")
    return [
        os.path.join(base, "BCCD"),  # the upstream repository's layout (BCCD_Dataset/BCCD/...)
        base,
        os.path.normpath(os.path.join(_repository_root(), shared)),
        os.path.abspath(shared),  # relative to the working directory
    ]


def find_bccd_root() -> str:
    """The BCCD VOC root: $DETECTRON2_DATASETS/BCCD[/BCCD], else the repository's ../shared copy.

    Raises:
        DatasetError: none of the candidates has Annotations/ and JPEGImages/.
    """
    candidates = _candidate_roots()
    for root in candidates:
        if os.path.isdir(os.path.join(root, "Annotations")) and os.path.isdir(os.path.join(root, "JPEGImages")):
            return root
    raise DatasetError(
        f"BCCD not found; looked for Annotations/ and JPEGImages/ in {candidates}. Put the data set at "
        "$DETECTRON2_DATASETS/BCCD (see datasets/README.md)."
    )


def register_bccd(prefix: str = "bccd", root: Optional[str] = None) -> List[str]:
    """Register ``{prefix}_{split}`` for the four BCCD splits (idempotent; nothing is read now).

    Args:
        root: the VOC root; None finds it with :func:`find_bccd_root` when the data is first needed.

    Returns:
        The registered names.
    """
    names = []
    for split in BCCD_SPLITS:
        name = f"{prefix}_{split}"
        register_voc(
            name,
            root or "BCCD (found at load time)",
            split,
            duplicate_iou_thresh=BCCD_DUPLICATE_IOU,
            errata=BCCD_ERRATA,
            root_fn=(lambda: root) if root else find_bccd_root,
        )
        names.append(name)
    return names
