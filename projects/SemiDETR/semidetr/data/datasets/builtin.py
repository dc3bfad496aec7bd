# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Built-in data sets of SemiDETR-D2, registered on import (nothing is read or generated here).

=====================================  ===========================================================
name                                   data (paths under $DETECTRON2_DATASETS, default ./datasets)
=====================================  ===========================================================
shapes_train, shapes_val               synthetic shapes, 2000 / 300 images, generated on first use
                                       into shapes/ (see synthetic.py)
shapes_lite_train, shapes_lite_val     the lighter variant (synthetic.LITE_CONFIG), 2000 / 300 images
bccd_train, bccd_val, bccd_trainval,   BCCD in VOC layout, at BCCD/ or the repository's
bccd_test                              ../shared/datasets/BCCD/BCCD (see bccd.py)
coco_2017_train.{fold}@{pct}[-unl..]   COCO-Partial split files (SoftTeacher naming) at
                                       coco/annotations/semi_supervised/
                                       instances_train2017.{fold}@{pct}[-unlabeled].json,
                                       images coco/train2017 (registered when present)
coco_2017_unlabeled                    COCO-Full unlabeled: coco/annotations/
                                       image_info_unlabeled2017.json, images coco/unlabeled2017
voc07_trainval, voc07_test             VOC2007 (labeled; the 20 VOC classes)
voc12_trainval, voc12_trainval-unl..   VOC2012 trainval, labeled / unlabeled
=====================================  ===========================================================

Every labeled set uses ``evaluator_type="coco"``. detectron2's own built-in names (coco_2017_train,
coco_2017_val, voc_2007_* with the pascal_voc evaluator, ...) are left as they are; the names above
do not clash with them. Splits ``X.{fold}@{pct}[-unlabeled]`` of any registered labeled set X (e.g.
``shapes_train.1@10``) are registered on demand by :func:`~semidetr.data.datasets.splits.ensure_registered`.
"""
import os
import re

from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASS_NAMES

from .bccd import register_bccd
from .coco import register_coco_json, register_coco_paths
from .registry import datasets_root, resolve_dataset_path
from .splits import add_name_resolver
from .synthetic import DEFAULT_SPLITS, LITE_CONFIG, LITE_SPLITS, register_shapes
from .voc import register_voc

__all__ = ["register_all_builtin", "COCO_PARTIAL_DIR"]

COCO_PARTIAL_DIR = os.path.join("coco", "annotations", "semi_supervised")
_COCO_PARTIAL_FILE = re.compile(
    r"^instances_train2017\.(?P<fold>\d+)@(?P<percent>[0-9.]+)(?P<unlabeled>-unlabeled)?\.json$"
)
_COCO_PARTIAL_NAME = re.compile(r"^coco_2017_train\.(?P<fold>\d+)@(?P<percent>[0-9.]+)(?P<unlabeled>-unlabeled)?$")


def register_shapes_sets() -> None:
    """shapes_train / shapes_val (the default generator) and shapes_lite_train / shapes_lite_val."""
    for split in DEFAULT_SPLITS:
        register_shapes(f"shapes_{split}", split)
    for split, (num_images, seed) in LITE_SPLITS.items():
        register_shapes(f"shapes_{split}", split, num_images, seed, LITE_CONFIG)


def _register_coco_partial_file(name: str, json_file: str, unlabeled: bool) -> None:
    register_coco_json(name, json_file, os.path.join(datasets_root(), "coco", "train2017"), unlabeled=unlabeled)


def register_coco_partial_sets() -> None:
    """The COCO-Partial split files present under $DETECTRON2_DATASETS (a directory listing only)."""
    directory = os.path.join(datasets_root(), COCO_PARTIAL_DIR)
    if not os.path.isdir(directory):
        return
    for file_name in sorted(os.listdir(directory)):
        match = _COCO_PARTIAL_FILE.match(file_name)
        if match:
            suffix = "-unlabeled" if match["unlabeled"] else ""
            name = f"coco_2017_train.{match['fold']}@{match['percent']}{suffix}"
            _register_coco_partial_file(name, os.path.join(directory, file_name), bool(match["unlabeled"]))


def _resolve_coco_partial(name: str) -> bool:
    """Name resolver: a COCO-Partial name whose split file appeared after import."""
    match = _COCO_PARTIAL_NAME.match(name)
    if match is None:
        return False
    suffix = "-unlabeled" if match["unlabeled"] else ""
    json_file = os.path.join(
        datasets_root(), COCO_PARTIAL_DIR, f"instances_train2017.{match['fold']}@{match['percent']}{suffix}.json"
    )
    if not os.path.isfile(json_file):
        return False  # the generic rule then splits coco_2017_train in memory
    _register_coco_partial_file(name, json_file, bool(match["unlabeled"]))
    return True


def register_coco_unlabeled_set() -> None:
    """coco_2017_unlabeled: COCO's unlabeled2017 images (no ground truth)."""
    register_coco_paths(
        "coco_2017_unlabeled",
        lambda: (
            resolve_dataset_path(os.path.join("coco", "annotations", "image_info_unlabeled2017.json")),
            resolve_dataset_path(os.path.join("coco", "unlabeled2017")),
        ),
        signature=("builtin", "coco_2017_unlabeled"),
        unlabeled=True,
        metadata={"source_description": "COCO's image_info_unlabeled2017.json, which has no annotations"},
        monitor_gt_available=False,
    )


def register_voc_sets() -> None:
    """Pascal VOC for semi-supervised detection: VOC07 trainval labeled, VOC12 trainval unlabeled,
    VOC07 test; with the 20 VOC class names as the known label set."""
    for name, folder, split, unlabeled in (
        ("voc07_trainval", "VOC2007", "trainval", False),
        ("voc07_test", "VOC2007", "test", False),
        ("voc12_trainval", "VOC2012", "trainval", False),
        ("voc12_trainval-unlabeled", "VOC2012", "trainval", True),
    ):
        register_voc(
            name,
            f"$DETECTRON2_DATASETS/{folder}",
            split,
            class_names=VOC_CLASS_NAMES,
            unlabeled=unlabeled,
            root_fn=lambda folder=folder: resolve_dataset_path(folder),
        )


def register_all_builtin() -> None:
    """Register every built-in set (idempotent) and the COCO-Partial name resolver."""
    register_shapes_sets()
    register_bccd()
    register_coco_partial_sets()
    register_coco_unlabeled_set()
    register_voc_sets()
    add_name_resolver(_resolve_coco_partial)


register_all_builtin()
