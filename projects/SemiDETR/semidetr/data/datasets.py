# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""The public data-set API of SemiDETR-D2 in one place (importing it registers the built-in sets).

Modules behind it:

* :mod:`~semidetr.data.catalog`: name resolution, DATASETS.REGISTER, unlabeled dicts, monitoring
  ground truth, data-issue counts (what the engine calls);
* :mod:`~semidetr.data.registry`: idempotent lazy registration primitives;
* :mod:`~semidetr.data.coco`, :mod:`~semidetr.data.voc`, :mod:`~semidetr.data.folder`: loaders and
  registration of COCO json, Pascal-VOC layout and plain image folders;
* :mod:`~semidetr.data.splits`: ``X.{fold}@{pct}[-unlabeled]`` splits, name resolution,
  DATASETS.REGISTER specs;
* :mod:`~semidetr.data.validation`: the bad-data policy;
* :mod:`~semidetr.data.synthetic`, :mod:`~semidetr.data.bccd`, :mod:`~semidetr.data.builtin`: the
  built-in data sets.

Typical use at start-up, in every process::

    from semidetr.data.catalog import register_datasets_from_config, get_unlabeled_dicts
    register_datasets_from_config(cfg)   # DATASETS.REGISTER, then resolves TRAIN/TRAIN_UNLABELED/TEST
    unlabeled = get_unlabeled_dicts("shapes_train.1@10-unlabeled")
"""
from .bccd import find_bccd_root, register_bccd
from .catalog import (
    data_issue_counts,
    ensure_registered,
    get_unlabeled_dicts,
    load_unlabeled_with_monitor_gt,
    register_datasets_from_config,
    register_from_spec,
)
from .registry import (
    datasets_root,
    is_unlabeled,
    register_dataset,
    resolve_dataset_path,
    unregister_dataset,
)
from .coco import load_coco_dicts, load_coco_image_list, register_coco_json
from .folder import load_image_folder, register_image_folder
from .splits import (
    UnknownDatasetError,
    parse_split_name,
    register_semi_split,
    select_labeled_indices,
    semi_split_names,
)
from .synthetic import ShapesConfig, prepare_shapes_split, register_shapes
from .validation import DataIssues, DatasetError
from .voc import VocErrata, infer_voc_class_names, load_voc_dicts, load_voc_image_list, register_voc

__all__ = [
    "DataIssues",
    "DatasetError",
    "ShapesConfig",
    "UnknownDatasetError",
    "VocErrata",
    "data_issue_counts",
    "datasets_root",
    "ensure_registered",
    "find_bccd_root",
    "get_unlabeled_dicts",
    "infer_voc_class_names",
    "is_unlabeled",
    "load_coco_dicts",
    "load_coco_image_list",
    "load_image_folder",
    "load_unlabeled_with_monitor_gt",
    "load_voc_dicts",
    "load_voc_image_list",
    "parse_split_name",
    "prepare_shapes_split",
    "register_bccd",
    "register_coco_json",
    "register_dataset",
    "register_datasets_from_config",
    "register_from_spec",
    "register_image_folder",
    "register_semi_split",
    "register_shapes",
    "register_voc",
    "resolve_dataset_path",
    "select_labeled_indices",
    "semi_split_names",
    "unregister_dataset",
]
