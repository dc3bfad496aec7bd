# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""The data-set catalog of SemiDETR-D2: what the engine and the loaders call.

Importing this module registers the built-in data sets (semidetr/data/datasets/builtin.py). Then:

* :func:`register_from_spec` / :func:`register_datasets_from_config`: DATASETS.REGISTER entries;
* :func:`ensure_registered`: resolves a name, registering splits ``X.{fold}@{pct}[-unlabeled]`` on
  demand, or fails with the close registered names;
* :func:`get_unlabeled_dicts`: the dicts of a set used as unlabeled data (never with "annotations");
* :func:`load_unlabeled_with_monitor_gt`: the same with the ground truth under
  "monitor_annotations", for SEMI.MONITOR_UNLABELED_GT only.
"""
import copy
import functools
import logging
from typing import List

from detectron2.data import DatasetCatalog, MetadataCatalog

from . import builtin  # noqa: F401  (imported for its side effect: registers the built-in data sets)
from .registry import get_monitor_gt_source, is_unlabeled, register_dataset, unregister_dataset
from .splits import (
    UnknownDatasetError,
    ensure_registered,
    register_datasets_from_config,
    register_from_spec,
    register_semi_split,
)
from .validation import DatasetError, NoGroundTruthError

__all__ = [
    "DatasetError",
    "UnknownDatasetError",
    "ensure_registered",
    "get_unlabeled_dicts",
    "is_unlabeled",
    "load_unlabeled_with_monitor_gt",
    "register_dataset",
    "register_datasets_from_config",
    "register_from_spec",
    "register_semi_split",
    "unregister_dataset",
]

logger = logging.getLogger(__name__)


def _strip_annotations(dataset_dicts: List[dict]) -> List[dict]:
    """Shallow copies of the dicts without "annotations" (the inputs are left untouched)."""
    return [{k: v for k, v in record.items() if k != "annotations"} for record in dataset_dicts]


def get_unlabeled_dicts(name: str) -> List[dict]:
    """The dicts of `name` for use as unlabeled data: never with "annotations".

    Works for unlabeled sets and for labeled sets used as unlabeled data (e.g. a VOC split), whose
    annotations are removed here.
    """
    ensure_registered(name)
    return _strip_annotations(DatasetCatalog.get(name))


def load_unlabeled_with_monitor_gt(name: str) -> List[dict]:
    """The dicts of unlabeled set `name`, each with its ground truth under "monitor_annotations".

    For monitoring only (pseudo-label precision/recall, SEMI.MONITOR_UNLABELED_GT): the ground truth is
    under a key no loss reads, and loading it is logged as a warning. The dicts never have
    "annotations". Images of the unlabeled set that the ground-truth source lacks (e.g. skipped there
    for a bad annotation) get an empty list.

    Raises:
        NoGroundTruthError: `name` has no ground-truth source (a folder of images, an image-info json).
    """
    ensure_registered(name)
    source = get_monitor_gt_source(name)
    if source is None and not is_unlabeled(name):
        # A labeled set used as unlabeled data is its own ground truth.
        source = functools.partial(DatasetCatalog.get, name)
    if source is None:
        description = MetadataCatalog.get(name).get("source_description", "a set of images without annotations")
        raise NoGroundTruthError(
            f"Unlabeled data set '{name}' has no ground-truth source (it is {description}); its pseudo "
            "labels cannot be monitored. Set SEMI.MONITOR_UNLABELED_GT False, or use an unlabeled split "
            "of a labeled set (e.g. 'X.1@10-unlabeled')."
        )
    logger.warning(
        f"Loading the ground truth of unlabeled data set '{name}' for MONITORING ONLY "
        "(key 'monitor_annotations'; no loss may read it)."
    )
    truth = {record["file_name"]: record.get("annotations", []) for record in source()}
    unlabeled = _strip_annotations(DatasetCatalog.get(name))
    for record in unlabeled:
        record["monitor_annotations"] = copy.deepcopy(truth.get(record["file_name"], []))
    return unlabeled
