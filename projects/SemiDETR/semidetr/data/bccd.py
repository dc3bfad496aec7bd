# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""BCCD (blood cell detection): a small real data set in VOC layout, with its documented errata.

364 images of 640x480, classes RBC, WBC, Platelets (names and ids read from the data: sorted, so
Platelets=0, RBC=1, WBC=2), splits train/val/trainval/test of ImageSets/Main.

Every XML file and image was inspected (box statistics per class, duplicate and overlap search, and
all images drawn with their boxes). Findings and their handling:

* 2 zero-extent boxes (a click without a drag: xmin == xmax, ymin == ymax) in BloodImage_00338 and
  BloodImage_00343: dropped by the generic rule ("degenerate_box").
* 8 duplicated RBC boxes, the same cell boxed twice with a 2-6 px shift (IoU 0.83-0.93), in 00013,
  00020, 00100, 00104, 00251, 00284, 00331, 00403: dropped by the generic duplicate rule with the
  threshold :data:`BCCD_DUPLICATE_IOU` = 0.8. Justification from the data: apart from these pairs, the
  largest IoU between two same-class boxes in BCCD is 0.59, so 0.8 separates them cleanly.
* 3 class errors, found as size outliers and confirmed by eye: a 31x27 platelet labeled WBC in
  00113, and two whole white cells (167x116, 143x135) labeled Platelets in 00133 and 00135:
  relabeled ("relabeled_box").
* 18 images whose annotation leaves a whole visible class out: 15 images with no RBC box at all while
  dozens of red cells are visible (00134, 00147, 00150, 00152, 00224, 00249, 00250, 00258, 00267,
  00268, 00303, 00322, 00327, 00330, 00350; 00327 also misses its WBC), and 3 images annotated
  only for RBC in another project (folder "RBC", path /Users/cosmic/WBC_CLASSIFICATION_ANNO) whose
  visible WBC is not boxed (00171, 00178, 00228). Excluded from the labeled sets
  ("excluded_image"): training on them teaches that cells are background, and evaluating on them
  counts correct detections as false positives. They remain usable as unlabeled images.

Nothing else was found: all 364 images exist, decode, are 640x480 RGB JPEGs matching their XML
<size>; every box lies inside its image (1-based coordinates, xmax <= 640, ymax <= 480); no object
is "difficult"; the splits are consistent (train + val = trainval, trainval and test disjoint, 364
images in all). Partially annotated RBCs (some cells of an image without a box) are common in BCCD and
are not corrected: they cannot be told apart from judgement calls on cut or overlapped cells.

After the errata: train 197 images (of 205), val 82 (87), trainval 279 (292), test 67 (72).
"""
import os
from typing import List, Optional

from .registry import datasets_root
from .validation import DatasetError
from .voc import VocErrata, register_voc

__all__ = ["BCCD_SPLITS", "BCCD_ERRATA", "BCCD_DUPLICATE_IOU", "find_bccd_root", "register_bccd"]

BCCD_SPLITS = ("train", "val", "trainval", "test")

# Same-class boxes of one image with at least this IoU are duplicates (see the module doc).
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
    # projects/SemiDETR/semidetr/data/bccd.py -> the repository root, four levels up.
    return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))


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
