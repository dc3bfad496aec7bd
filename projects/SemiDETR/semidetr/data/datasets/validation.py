# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Data validation shared by every loader of this package (the "bad-data policy").

Every problem found in a data set is either

* a :class:`DatasetError` raised at start-up, naming the file and the fix (problems that make the data
  set unusable or ambiguous: an empty split, an unknown class, a wrong image root), or
* skipped or repaired, counted in a :class:`DataIssues` and reported with ONE warning per kind (count
  and a few example files). The counts are stored in ``MetadataCatalog.get(name).data_issues`` so that
  the trainer can put them into its metrics.

The skip/repair kinds (datasets/README.md has the full table, errors included):

======================  ========================================================================
kind                    handling
======================  ========================================================================
missing_image           image file absent: image skipped
unreadable_image        image header cannot be read: image skipped
non_image_file          a file without an image extension in an unlabeled folder: skipped
missing_annotation      VOC: an id of the split has no XML file: image skipped
unreadable_annotation   VOC: XML that does not parse or has a non-numeric box: image skipped
duplicate_image_id      VOC: an id listed twice in a split file: listed once
size_mismatch           annotated size != image header size with a different aspect ratio:
                        image skipped (the boxes belong to some other version of the image)
size_rescaled           annotated size != header size, same aspect ratio (the image was resized
                        after annotation): boxes rescaled to the image, image kept
missing_size            VOC: no usable <size>: header size used
degenerate_box          box with zero or negative width/height: dropped
clipped_box             box partly outside the image (by more than CLIP_TOLERANCE px): clipped
outside_box             box entirely outside the image (empty after clipping): dropped
duplicate_box           same class, IoU >= the data set's duplicate threshold with an earlier box
                        of the same image: dropped (one-to-one matching would otherwise learn to
                        predict duplicates, and the evaluation would count a missed box)
no_annotations          labeled image without (remaining) boxes: kept as a negative image
relabeled_box           a documented erratum of the data set corrected a class
excluded_image          a documented erratum of the data set excluded the image (incomplete
                        annotation)
======================  ========================================================================

Corrupt images whose header reads fine but whose decoding fails are handled later by the mapper.
"""
import logging
import os
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

__all__ = [
    "DatasetError",
    "NoGroundTruthError",
    "DataIssues",
    "IMAGE_EXTENSIONS",
    "CLIP_TOLERANCE",
    "is_image_file",
    "read_image_size",
    "check_image_files",
    "sanitize_annotations",
    "require_images",
    "validate_labeled_dicts",
    "store_data_issues",
]

logger = logging.getLogger(__name__)

# Extensions of the files treated as images (lower case). Everything PIL and OpenCV both decode.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# Boxes sticking out of the image by at most this many pixels are clipped silently: annotation tools
# routinely write the last pixel index or a rounded float there, which is not an annotation error.
CLIP_TOLERANCE = 1.0

# EXIF orientations that swap width and height (detectron2's read_image applies them on decoding,
# so the dataset dict must carry the size after the rotation).
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)

# Annotated and header sizes with scale factors within this relative tolerance of each other are
# the same picture resized after annotation (integer rounding of the sizes allows ~0.5 px per side).
_SAME_ASPECT_TOLERANCE = 0.01

# Number of example file names given in a warning.
_NUM_EXAMPLES = 3

# (data set, counts) pairs already reported in this process.
_REPORTED = set()


class DatasetError(ValueError):
    """A data set cannot be used as given; the message names the file and the fix."""


class NoGroundTruthError(DatasetError):
    """An unlabeled data set has no ground truth to monitor its pseudo labels with (a plain folder, an
    image-info json). Training monitors the other sets and warns (SEMI.MONITOR_UNLABELED_GT)."""


class DataIssues:
    """Counts problems of one data set by kind, with a few example files per kind.

    Args:
        dataset_name: the registered name, used in the warnings and to store the counts in
            ``MetadataCatalog.get(dataset_name).data_issues``; None for an anonymous load.
        source: what was loaded (a file or folder), named in the warnings of an anonymous load.
    """

    def __init__(self, dataset_name: Optional[str] = None, source: str = ""):
        self.dataset_name = dataset_name
        self.source = source
        self.counts: Counter = Counter()
        self.examples: Dict[str, List[str]] = {}

    def add(self, kind: str, file_name: str, count: int = 1) -> None:
        """Record `count` occurrences of problem `kind` in `file_name`."""
        if count <= 0:
            return
        self.counts[kind] += count
        examples = self.examples.setdefault(kind, [])
        if len(examples) < _NUM_EXAMPLES and file_name not in examples:
            examples.append(file_name)

    def as_dict(self) -> Dict[str, int]:
        """The counts as a plain, sorted dict (kind -> count)."""
        return {kind: int(self.counts[kind]) for kind in sorted(self.counts)}

    def report(self) -> Dict[str, int]:
        """Log one warning per kind and store the counts in the data set's metadata.

        The counts replace those of an earlier load of the same data set, so that loading a data set
        twice in one process (evaluation, a split and its base) does not double them; the warnings of
        a reload that finds the same problems are not repeated.
        """
        where = f"data set '{self.dataset_name}'" if self.dataset_name else (self.source or "data set")
        counts = self.as_dict()
        report_key = (where, tuple(counts.items()))
        if report_key in _REPORTED:
            kinds = []
        else:
            _REPORTED.add(report_key)
            kinds = sorted(self.counts)
        for kind in kinds:
            examples = ", ".join(self.examples.get(kind, []))
            logger.warning(f"{where}: {kind} x{self.counts[kind]} (e.g. {examples}); see the policy "
                           "in semidetr/data/datasets/validation.py and datasets/README.md")
        if self.dataset_name:
            store_data_issues(self.dataset_name, counts)
        return counts


def store_data_issues(dataset_name: str, counts: Dict[str, int]) -> None:
    """Set ``MetadataCatalog.get(dataset_name).data_issues`` to `counts`, replacing older counts.

    detectron2's Metadata refuses to re-assign an attribute to a different value, so the dict is
    created once and then updated in place.
    """
    meta = MetadataCatalog.get(dataset_name)
    stored = meta.__dict__.get("data_issues")
    if stored is None:
        meta.data_issues = dict(counts)
    else:
        stored.clear()
        stored.update(counts)


def is_image_file(path: str) -> bool:
    """Whether `path` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def read_image_size(path: str) -> Optional[Tuple[int, int]]:
    """(height, width) of an image as detectron2 will decode it, from its header only.

    Cheap: PIL reads the header (and the EXIF block, which JPEG keeps in the header) without decoding
    pixels. EXIF orientations 5-8 swap width and height, as detectron2's ``read_image`` does.

    Returns:
        None when the file is missing or its header cannot be read.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION_TAG)
    except (OSError, SyntaxError, ValueError):
        # PIL raises OSError (UnidentifiedImageError) for unknown formats, SyntaxError/ValueError
        # for some malformed headers.
        return None
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return int(height), int(width)


def require_images(dataset_dicts: Sequence[dict], source: str, fix: str) -> None:
    """Raise a :class:`DatasetError` if a data set ended up with no images.

    Args:
        source: the file or folder the images were listed in (named in the message).
        fix: what the user should check (named in the message).
    """
    if len(dataset_dicts) == 0:
        raise DatasetError(f"No usable image in {source}. {fix}")


def check_image_files(
    dataset_dicts: List[dict], issues: DataIssues, verify_sizes: bool = True
) -> List[dict]:
    """Drop the dicts whose image is missing or unreadable; reconcile annotated and header sizes.

    Args:
        dataset_dicts: dicts with "file_name", optionally "annotations" and "height"/"width". Sizes that
            are absent are taken from the image header; sizes present but None or 0 too, counted as
            missing_size.
        verify_sizes: read every image header and compare it with the annotated size; when False only
            the existence of the files is checked (for very large json data sets whose sizes come from
            the json, see ``semidetr.data.datasets.coco.MAX_IMAGES_TO_VERIFY``).

    Returns:
        The kept dicts, in their order. An image whose annotated size differs from its header with the
        same aspect ratio (resized after annotation) keeps its image size and gets its boxes rescaled;
        with a different aspect ratio it is skipped (see the policy table).
    """
    kept = []
    for record in dataset_dicts:
        path = record["file_name"]
        annotated = (record.get("height"), record.get("width"))
        has_size = bool(annotated[0]) and bool(annotated[1])
        if not verify_sizes and has_size:
            if os.path.isfile(path):
                kept.append(record)
            else:
                issues.add("missing_image", path)
            continue
        header = read_image_size(path)
        if header is None:
            issues.add("unreadable_image" if os.path.isfile(path) else "missing_image", path)
            continue
        if not has_size:
            # Image lists (folders, unlabeled sets) have no size keys by design: nothing to report.
            if "height" in record or "width" in record:
                issues.add("missing_size", path)
        elif tuple(annotated) != header:
            scale_y, scale_x = header[0] / annotated[0], header[1] / annotated[1]
            if abs(scale_x - scale_y) > _SAME_ASPECT_TOLERANCE * max(scale_x, scale_y):
                issues.add("size_mismatch", path)
                continue
            issues.add("size_rescaled", path)
            for anno in record.get("annotations", []):
                x0, y0, x1, y1 = anno["bbox"][:4]
                anno["bbox"] = [x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y]
        record["height"], record["width"] = header
        kept.append(record)
    return kept


def _boxes_as_xyxy(boxes: np.ndarray, modes: np.ndarray) -> np.ndarray:
    """Convert an (N, 4) array whose rows are in XYXY_ABS or XYWH_ABS to XYXY_ABS."""
    xyxy = boxes.copy()
    is_xywh = modes == int(BoxMode.XYWH_ABS)
    xyxy[is_xywh, 2:] += xyxy[is_xywh, :2]
    return xyxy


def _duplicate_pairs(keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """All index pairs (i, j), i < j in original order, of equal `keys` (all pairs per group).

    Vectorised: the annotations are stably sorted by key, and for every group size k the k*(k-1)/2
    pairs of all groups of that size are produced at once from `np.triu_indices(k)`.
    """
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    first, second = [], []
    for size in np.unique(sizes[sizes > 1]):
        group_starts = starts[sizes == size]
        i, j = np.triu_indices(int(size), k=1)
        first.append(order[(group_starts[:, None] + i[None, :]).ravel()])
        second.append(order[(group_starts[:, None] + j[None, :]).ravel()])
    if not first:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    return np.concatenate(first), np.concatenate(second)


def _pairwise_iou(boxes: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """IoU of the XYXY boxes `boxes[first]` and `boxes[second]`, element-wise."""
    a, b = boxes[first], boxes[second]
    inter_w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    inter_h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = inter_w * inter_h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def sanitize_annotations(
    dataset_dicts: List[dict],
    issues: DataIssues,
    duplicate_iou_thresh: Optional[float] = 0.9,
) -> None:
    """Clip, drop and de-duplicate the boxes of labeled dataset dicts, in place.

    Applies the box rows of the policy table: degenerate boxes are dropped, boxes partly outside the
    image are clipped (counted when they stick out by more than :data:`CLIP_TOLERANCE` px), boxes
    empty after clipping are dropped, same-class non-crowd boxes with IoU >= `duplicate_iou_thresh`
    to an earlier box of the image are dropped, and images left without boxes are counted as
    negatives. Boxes keep their bbox_mode. All geometry is computed on one array of all boxes.

    Args:
        dataset_dicts: dicts with "height", "width" and "annotations".
        issues: receives the counts.
        duplicate_iou_thresh: None disables the duplicate check.
    """
    num_per_image = np.array([len(d["annotations"]) for d in dataset_dicts], dtype=np.int64)
    for record, num in zip(dataset_dicts, num_per_image):
        if num == 0:
            issues.add("no_annotations", record["file_name"])
    if num_per_image.sum() == 0:
        return
    annotations = [anno for record in dataset_dicts for anno in record["annotations"]]
    image_index = np.repeat(np.arange(len(dataset_dicts)), num_per_image)
    boxes = np.array([anno["bbox"][:4] for anno in annotations], dtype=np.float64).reshape(-1, 4)
    modes = np.array([int(anno["bbox_mode"]) for anno in annotations])
    unsupported = ~np.isin(modes, [int(BoxMode.XYXY_ABS), int(BoxMode.XYWH_ABS)])
    if unsupported.any():
        bad = dataset_dicts[int(image_index[np.argmax(unsupported)])]["file_name"]
        raise DatasetError(
            f"Unsupported bbox_mode {BoxMode(int(modes[np.argmax(unsupported)]))} in the annotations of "
            f"{bad}: only XYXY_ABS and XYWH_ABS are supported; convert the boxes when loading."
        )
    widths = np.array([d["width"] for d in dataset_dicts], dtype=np.float64)[image_index]
    heights = np.array([d["height"] for d in dataset_dicts], dtype=np.float64)[image_index]

    xyxy = _boxes_as_xyxy(boxes, modes)
    degenerate = ~np.isfinite(xyxy).all(axis=1) | (xyxy[:, 2] <= xyxy[:, 0]) | (xyxy[:, 3] <= xyxy[:, 1])
    clipped = np.stack(
        [
            np.clip(xyxy[:, 0], 0, widths),
            np.clip(xyxy[:, 1], 0, heights),
            np.clip(xyxy[:, 2], 0, widths),
            np.clip(xyxy[:, 3], 0, heights),
        ],
        axis=1,
    )
    moved = np.abs(clipped - xyxy).max(axis=1) > CLIP_TOLERANCE
    outside = ~degenerate & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
    keep = ~degenerate & ~outside

    duplicate = np.zeros(len(annotations), dtype=bool)
    if duplicate_iou_thresh is not None:
        crowd = np.array([bool(anno.get("iscrowd", 0)) for anno in annotations])
        classes = np.array([int(anno["category_id"]) for anno in annotations], dtype=np.int64)
        candidates = np.flatnonzero(keep & ~crowd)
        group_key = image_index[candidates] * (int(classes.max()) + 1) + classes[candidates]
        first, second = _duplicate_pairs(group_key)
        first, second = candidates[first], candidates[second]
        hits = _pairwise_iou(clipped, first, second) >= duplicate_iou_thresh
        # Greedy in file order: a box is dropped when it duplicates an earlier box that is kept.
        # Pairs sorted by their later box are resolved in order, so the earlier box's fate is final.
        for a, b in sorted(zip(first[hits].tolist(), second[hits].tolist()), key=lambda p: (p[1], p[0])):
            if not duplicate[a]:
                duplicate[b] = True
    keep &= ~duplicate

    for kind, mask in (
        ("degenerate_box", degenerate),
        ("outside_box", outside),
        ("clipped_box", keep & moved),
        ("duplicate_box", duplicate),
    ):
        for index in np.flatnonzero(mask):
            issues.add(kind, dataset_dicts[int(image_index[index])]["file_name"])

    # Write the clipped boxes back in their own mode and drop the rejected ones.
    new_boxes = clipped.copy()
    is_xywh = modes == int(BoxMode.XYWH_ABS)
    new_boxes[is_xywh, 2:] -= new_boxes[is_xywh, :2]
    cursor = 0
    for record, num in zip(dataset_dicts, num_per_image):
        kept = []
        for offset, anno in enumerate(record["annotations"]):
            index = cursor + offset
            if keep[index]:
                if (clipped[index] != xyxy[index]).any():
                    anno["bbox"] = [float(v) for v in new_boxes[index]]
                kept.append(anno)
        cursor += int(num)
        if num > 0 and not kept:
            issues.add("no_annotations", record["file_name"])
        record["annotations"] = kept


def validate_labeled_dicts(dataset_dicts: List[dict], issues: "DataIssues", source: str, fix: str, *,
                           verify_sizes: bool, duplicate_iou_thresh: float) -> List[dict]:
    """The checks every labeled loader ends with: image files (and sizes), at least one image left
    (else an error naming `source` and `fix`), box sanitising, and one report of what was skipped."""
    dataset_dicts = check_image_files(dataset_dicts, issues, verify_sizes=verify_sizes)
    require_images(dataset_dicts, source, f"All its images were skipped ({issues.as_dict()}); {fix}")
    sanitize_annotations(dataset_dicts, issues, duplicate_iou_thresh)
    issues.report()
    return dataset_dicts
