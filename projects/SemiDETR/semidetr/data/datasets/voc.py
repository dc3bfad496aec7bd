# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Data sets in Pascal VOC layout: ``ROOT/Annotations/*.xml``, ``ROOT/JPEGImages/``,
``ROOT/ImageSets/Main/{split}.txt``.

Differences from detectron2's ``load_voc_instances`` (whose box convention is kept: VOC coordinates are
1-based inclusive pixel indices, so xmin and ymin are decreased by 1):

* class names may be read from the data: the sorted set of all object names in all XML files of the
  root, so every split of one root (trainval, test) gets the same ids;
* the data is validated (validation.py): missing/unreadable files are skipped, sizes reconciled with
  the image headers, boxes clipped/de-duplicated, problems counted in the metadata;
* "difficult" objects become ``iscrowd=1``: COCOEvaluator then ignores detections matched to them, as
  the VOC protocol does, and the training mappers skip crowd boxes (as mmdetection's VOC pipeline,
  used by SoftTeacher and Semi-DETR, ignores difficult boxes);
* documented errata of a data set (:class:`VocErrata`) can be applied while loading;
* the evaluator is COCO's (``evaluator_type="coco"``, it converts the dicts itself).
"""
import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from detectron2.structures import BoxMode

from .registry import register_dataset
from .validation import (
    DataIssues,
    DatasetError,
    check_image_files,
    is_image_file,
    require_images,
    validate_labeled_dicts,
)

__all__ = [
    "VocErrata",
    "infer_voc_class_names",
    "load_voc_dicts",
    "load_voc_image_list",
    "register_voc",
]

logger = logging.getLogger(__name__)

_BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")


@dataclass(frozen=True)
class VocErrata:
    """Documented corrections of one VOC-layout data set, applied while loading.

    Attributes:
        excluded: (file id, reason) pairs: images whose annotation is unusable (e.g. a whole visible
            class left unannotated); they are skipped and counted as "excluded_image".
        relabeled: (file id, (xmin, ymin, xmax, ymax) as written in the XML, old name, new name):
            boxes whose class is wrong; counted as "relabeled_box". An erratum that matches no box
            (a different version of the data) is reported in a warning and ignored.
    """

    excluded: Tuple[Tuple[str, str], ...] = ()
    relabeled: Tuple[Tuple[str, Tuple[float, float, float, float], str, str], ...] = ()


class _UnreadableAnnotation(Exception):
    """An XML file that cannot be turned into annotations."""


def _annotation_path(root: str, file_id: str) -> str:
    return os.path.join(root, "Annotations", file_id + ".xml")


def _read_split_ids(root: str, split: str, issues: DataIssues) -> List[str]:
    split_file = os.path.join(root, "ImageSets", "Main", split + ".txt")
    if not os.path.isfile(split_file):
        main = os.path.join(root, "ImageSets", "Main")
        available = sorted(f[:-4] for f in os.listdir(main) if f.endswith(".txt")) if os.path.isdir(main) else []
        raise DatasetError(
            f"VOC split file '{split_file}' does not exist (splits found under '{main}': {available}). "
            "Check the root and the split name."
        )
    with open(split_file) as f:
        # The first column is the file id (ImageSets/Main/<class>_<split>.txt files add a label).
        ids = [line.split()[0] for line in f if line.strip()]
    require_images(ids, f"VOC split file '{split_file}'", "The split lists no image id; fill it or pick another split.")
    unique = list(dict.fromkeys(ids))
    if len(unique) < len(ids):
        issues.add("duplicate_image_id", split_file, len(ids) - len(unique))
    return unique


def _image_paths(root: str) -> Dict[str, str]:
    """file id -> image path for every image in ROOT/JPEGImages (any image extension, .jpg first)."""
    image_dir = os.path.join(root, "JPEGImages")
    if not os.path.isdir(image_dir):
        raise DatasetError(f"VOC image folder '{image_dir}' does not exist; check the VOC root.")
    paths: Dict[str, str] = {}
    for file_name in sorted(os.listdir(image_dir), key=lambda f: (not f.lower().endswith(".jpg"), f)):
        if is_image_file(file_name):
            paths.setdefault(os.path.splitext(file_name)[0], os.path.join(image_dir, file_name))
    return paths


def _parse_xml(path: str) -> Tuple[Optional[int], Optional[int], List[Tuple[str, List[float], bool]]]:
    """(height, width, [(class name, raw [xmin, ymin, xmax, ymax], difficult)]) of a VOC XML file."""
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as e:
        raise _UnreadableAnnotation(str(e)) from e

    def size_field(tag: str) -> Optional[int]:
        text = tree.findtext(f"./size/{tag}")
        try:
            value = int(float(text))
        except (TypeError, ValueError):
            return None
        return value if value > 0 else None

    objects = []
    for obj in tree.findall("object"):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not name or box is None:
            raise _UnreadableAnnotation("an <object> without <name> or <bndbox>")
        try:
            coords = [float(box.findtext(key)) for key in _BOX_KEYS]
        except (TypeError, ValueError) as e:
            raise _UnreadableAnnotation(f"non-numeric box of a '{name}' object") from e
        difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "")
        objects.append((name, coords, difficult))
    return size_field("height"), size_field("width"), objects


@lru_cache(maxsize=16)
def _class_names_of_root(root: str, mtime: float) -> Tuple[str, ...]:
    annotation_dir = os.path.join(root, "Annotations")
    names = set()
    for file_name in os.listdir(annotation_dir):
        if not file_name.endswith(".xml"):
            continue
        try:
            names.update(name for name, _, _ in _parse_xml(os.path.join(annotation_dir, file_name))[2])
        except _UnreadableAnnotation:
            continue  # reported by the loader of the split that contains it
    return tuple(sorted(names))


def infer_voc_class_names(root: str) -> List[str]:
    """The sorted object names found in all XML files under ROOT/Annotations.

    Read from the whole root, not from one split, so that all splits of a root share class ids.
    Cached per root and modification time of the Annotations folder.
    """
    annotation_dir = os.path.join(root, "Annotations")
    if not os.path.isdir(annotation_dir):
        raise DatasetError(f"VOC annotation folder '{annotation_dir}' does not exist; check the VOC root.")
    names = _class_names_of_root(root, os.path.getmtime(annotation_dir))
    if not names:
        raise DatasetError(f"No object in any XML file under '{annotation_dir}': cannot infer the classes.")
    return list(names)


def _apply_relabel_errata(
    file_id: str,
    objects: List[Tuple[str, List[float], bool]],
    errata: Sequence[Tuple[str, Tuple[float, float, float, float], str, str]],
    issues: DataIssues,
    xml_path: str,
) -> List[Tuple[str, List[float], bool]]:
    objects = list(objects)
    for erratum_id, box, old_name, new_name in errata:
        if erratum_id != file_id:
            continue
        for index, (name, coords, difficult) in enumerate(objects):
            if name == old_name and tuple(coords) == tuple(float(v) for v in box):
                objects[index] = (new_name, coords, difficult)
                issues.add("relabeled_box", xml_path)
                break
        else:
            logger.warning(f"Erratum for {xml_path} ({old_name} {box} -> {new_name}) matches no box; ignored.")
    return objects


def load_voc_dicts(
    root: str,
    split: str,
    class_names: Optional[Sequence[str]] = None,
    dataset_name: Optional[str] = None,
    difficult_as_crowd: bool = True,
    duplicate_iou_thresh: Optional[float] = 0.9,
    errata: Optional[VocErrata] = None,
) -> List[dict]:
    """Load and validate one split of a VOC-layout folder.

    Args:
        root: contains Annotations/, JPEGImages/, ImageSets/Main/.
        split: name of a file in ImageSets/Main without ".txt".
        class_names: the known label set (its order gives the ids). None: inferred from the data with
            :func:`infer_voc_class_names`.
        dataset_name: where to store the data issues.
        difficult_as_crowd: mark "difficult" objects iscrowd=1 (see module doc).
        duplicate_iou_thresh: see :func:`~semidetr.data.datasets.validation.sanitize_annotations`.
        errata: corrections applied while loading.

    Raises:
        DatasetError: missing split file or folders, an object whose class is not in `class_names`
            (names the XML file), or no usable image.
    """
    issues = DataIssues(dataset_name, source=f"VOC split '{split}' of '{root}'")
    class_names = list(class_names) if class_names is not None else infer_voc_class_names(root)
    class_ids = {name: index for index, name in enumerate(class_names)}
    excluded = dict(errata.excluded) if errata else {}
    relabeled = errata.relabeled if errata else ()
    images = _image_paths(root)

    dataset_dicts = []
    for file_id in _read_split_ids(root, split, issues):
        xml_path = _annotation_path(root, file_id)
        if file_id in excluded:
            issues.add("excluded_image", xml_path)
            continue
        if not os.path.isfile(xml_path):
            issues.add("missing_annotation", xml_path)
            continue
        try:
            height, width, objects = _parse_xml(xml_path)
        except _UnreadableAnnotation:
            issues.add("unreadable_annotation", xml_path)
            continue
        if relabeled:
            objects = _apply_relabel_errata(file_id, objects, relabeled, issues, xml_path)
        annotations = []
        for name, (xmin, ymin, xmax, ymax), difficult in objects:
            if name not in class_ids:
                raise DatasetError(
                    f"Unknown class '{name}' in '{xml_path}' (known classes: {class_names}). Correct the "
                    "annotation, or add the class to the data set's class names (or omit them to infer "
                    "the classes from the data)."
                )
            if xmax <= xmin or ymax <= ymin:
                # A zero-extent drag (or swapped corners) of the annotation tool, judged on the file's
                # coordinates: after the 1-based shift it would pass as a 1-pixel box.
                issues.add("degenerate_box", xml_path)
                continue
            annotations.append(
                {
                    "category_id": class_ids[name],
                    "bbox": [xmin - 1.0, ymin - 1.0, xmax, ymax],
                    "bbox_mode": BoxMode.XYXY_ABS,
                    "iscrowd": int(difficult and difficult_as_crowd),
                }
            )
        dataset_dicts.append(
            {
                "file_name": images.get(file_id, os.path.join(root, "JPEGImages", file_id + ".jpg")),
                "image_id": file_id,
                "height": height,
                "width": width,
                "annotations": annotations,
            }
        )
    return validate_labeled_dicts(
        dataset_dicts, issues, f"VOC split '{split}' of '{root}'", "check the root and its JPEGImages folder.",
        verify_sizes=True, duplicate_iou_thresh=duplicate_iou_thresh)


def load_voc_image_list(root: str, split: str, dataset_name: Optional[str] = None) -> List[dict]:
    """The images of one split of a VOC-layout folder, without annotations (sizes from the headers).

    The XML files are not read: an unlabeled set needs none of them.
    """
    issues = DataIssues(dataset_name, source=f"VOC split '{split}' of '{root}' (images)")
    images = _image_paths(root)
    dataset_dicts = [
        {"file_name": images.get(file_id, os.path.join(root, "JPEGImages", file_id + ".jpg")), "image_id": file_id}
        for file_id in _read_split_ids(root, split, issues)
    ]
    dataset_dicts = check_image_files(dataset_dicts, issues, verify_sizes=True)
    require_images(
        dataset_dicts,
        f"VOC split '{split}' of '{root}'",
        f"All its images were skipped ({issues.as_dict()}); check the root and its JPEGImages folder.",
    )
    issues.report()
    return dataset_dicts


def register_voc(
    name: str,
    root: str,
    split: str,
    class_names: Optional[Sequence[str]] = None,
    unlabeled: bool = False,
    difficult_as_crowd: bool = True,
    duplicate_iou_thresh: Optional[float] = 0.9,
    errata: Optional[VocErrata] = None,
    root_fn: Optional[Callable[[], str]] = None,
) -> bool:
    """Register one split of a VOC-layout folder (idempotent; nothing is read now).

    Args:
        root: the VOC root (absolute, or see ``root_fn``).
        class_names: the known label set, or None to infer it from the data (lazily, on first access
            to ``thing_classes`` or on loading).
        unlabeled: register the images only; their XML annotations remain available as monitoring
            ground truth (:func:`~semidetr.data.datasets.catalog.load_unlabeled_with_monitor_gt`).
        root_fn: optional zero-argument function returning the root when it is needed, for built-in
            sets whose location is resolved at load time; `root` is then only a description.
        Others: see :func:`load_voc_dicts`.

    Returns:
        True if registered by this call, False if it already was with the same arguments.
    """
    get_root = root_fn or (lambda: root)
    names = tuple(class_names) if class_names is not None else None
    signature = ("voc", os.fspath(root), split, names, unlabeled, difficult_as_crowd, duplicate_iou_thresh, errata)

    def thing_classes() -> List[str]:
        return list(names) if names is not None else infer_voc_class_names(get_root())

    def load_labeled(dataset_name: Optional[str]) -> List[dict]:
        return load_voc_dicts(
            get_root(),
            split,
            class_names=thing_classes(),
            dataset_name=dataset_name,
            difficult_as_crowd=difficult_as_crowd,
            duplicate_iou_thresh=duplicate_iou_thresh,
            errata=errata,
        )

    lazy = {"thing_classes": thing_classes, "image_root": lambda: os.path.join(get_root(), "JPEGImages")}
    if unlabeled:
        return register_dataset(
            name,
            lambda: load_voc_image_list(get_root(), split, name),
            signature=signature,
            metadata={"unlabeled": True},
            lazy_metadata=lazy,
            monitor_gt_source=lambda: load_labeled(None),
        )
    return register_dataset(
        name,
        lambda: load_labeled(name),
        signature=signature,
        metadata={"evaluator_type": "coco", "voc_split": split},
        lazy_metadata=lazy,
    )
