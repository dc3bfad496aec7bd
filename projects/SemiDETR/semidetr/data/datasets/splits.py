# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Percentage splits ``{BASE}.{fold}@{percent}`` / ``{BASE}.{fold}@{percent}-unlabeled``, name
resolution and registration from config strings.

Split semantics (SoftTeacher's ``tools/dataset/prepare_coco_data.py``, also used by Semi-DETR):
the labeled part is ``int(percent / 100 * N)`` images drawn uniformly without replacement from all N
images of the base set by ``numpy.random.RandomState(seed).choice(N, size, replace=False)`` with
``seed = fold``; the unlabeled part is all other images; both keep the base order. numpy's legacy
RandomState stream is frozen across numpy versions, so a split is the same everywhere. Given the same
image order (the order of "images" in the json, see tools/make_semi_splits.py), fold k reproduces
SoftTeacher's ``--seed k`` files. The in-memory splits select from the images the base loader
returns, in its order (after skipping invalid images).
"""
import difflib
import logging
import re
from typing import Callable, List, NamedTuple, Optional, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from .coco import register_coco_json
from .folder import register_image_folder
from .registry import register_dataset, resolve_dataset_path
from .validation import DatasetError, store_data_issues
from .voc import register_voc

__all__ = [
    "SplitName",
    "select_labeled_indices",
    "format_percent",
    "semi_split_names",
    "parse_split_name",
    "register_semi_split",
    "add_name_resolver",
    "ensure_registered",
    "UnknownDatasetError",
    "register_from_spec",
    "register_datasets_from_config",
]

logger = logging.getLogger(__name__)

UNLABELED_SUFFIX = "-unlabeled"
# BASE.FOLD@PERCENT[-unlabeled]; PERCENT in canonical form (no trailing zeros: "10", "0.5").
_SPLIT_PATTERN = re.compile(r"^(?P<base>.+)\.(?P<fold>\d+)@(?P<percent>\d+(?:\.\d*[1-9])?)(?P<unlabeled>-unlabeled)?$")
_LOOSE_SPLIT_PATTERN = re.compile(r"^(?P<base>.+)\.(?P<fold>\d+)@(?P<percent>[0-9.]+)(?P<unlabeled>-unlabeled)?$")

# Functions name -> bool tried by ensure_registered before the generic split rule; they register the
# name if they know it (e.g. COCO-Partial split files on disk) and say whether they did.
_NAME_RESOLVERS: List[Callable[[str], bool]] = []


class SplitName(NamedTuple):
    """The parts of a split name."""

    base: str
    fold: int
    percent: float
    unlabeled: bool


class UnknownDatasetError(KeyError):
    """A data-set name that is neither registered nor resolvable (message lists close names)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


def select_labeled_indices(num_images: int, percent: float, fold: int) -> np.ndarray:
    """Sorted indices of the labeled images of fold `fold` at `percent` % of `num_images` images.

    ``int(percent / 100 * num_images)`` indices drawn with ``RandomState(fold).choice(num_images, size,
    replace=False)`` (SoftTeacher's rule; fold k uses seed k). Deterministic.

    Raises:
        DatasetError: the fraction gives no labeled image, or percent is not in (0, 100].
    """
    if not 0 < percent <= 100:
        raise DatasetError(f"Split percentage must be in (0, 100], got {percent}.")
    num_labeled = int(percent / 100.0 * num_images)
    if num_labeled == 0:
        raise DatasetError(
            f"{percent}% of {num_images} images is less than one image: the labeled split would be empty. "
            "Use a larger percentage."
        )
    chosen = np.random.RandomState(fold).choice(num_images, size=num_labeled, replace=False)
    return np.sort(chosen)


def format_percent(percent: float) -> str:
    """Canonical text of a percentage in split names: 10 -> "10", 0.5 -> "0.5"."""
    return format(float(percent), "g")


def semi_split_names(base: str, fold: int, percent: float) -> Tuple[str, str]:
    """(labeled name, unlabeled name) of a split: ``BASE.FOLD@PCT`` and ``BASE.FOLD@PCT-unlabeled``."""
    labeled = f"{base}.{int(fold)}@{format_percent(percent)}"
    return labeled, labeled + UNLABELED_SUFFIX


def parse_split_name(name: str) -> Optional[SplitName]:
    """The parts of ``BASE.FOLD@PCT[-unlabeled]``, or None if `name` is not a split name."""
    match = _SPLIT_PATTERN.match(name)
    if match is None:
        return None
    return SplitName(match["base"], int(match["fold"]), float(match["percent"]), bool(match["unlabeled"]))


def _copy_metadata_from(base: str, key: str) -> Callable[[], object]:
    # Raises AttributeError when the base has no such field, so hasattr() on the split says False.
    return lambda: getattr(MetadataCatalog.get(base), key)


def register_semi_split(base: str, fold: int, percent: float) -> Tuple[str, str]:
    """Register the labeled and unlabeled parts of a percentage split of the labeled set `base`.

    Idempotent; nothing is read now. The labeled part carries the base's annotations; the unlabeled
    part has no "annotations" and keeps the base as its monitoring ground truth. Both copy the base's
    class metadata (lazily) and its data-issue counts (when loaded); neither has ``json_file`` (the
    COCO evaluator converts the split's own dicts).

    Returns:
        (labeled name, unlabeled name).
    """
    labeled_name, unlabeled_name = semi_split_names(base, fold, percent)

    def load(labeled: bool, name: str) -> List[dict]:
        dataset_dicts = DatasetCatalog.get(base)
        if dataset_dicts and "annotations" not in dataset_dicts[0]:
            raise DatasetError(
                f"Cannot split '{base}' into '{labeled_name}': it has no annotations (an unlabeled set)."
            )
        is_labeled = np.zeros(len(dataset_dicts), dtype=bool)
        is_labeled[select_labeled_indices(len(dataset_dicts), percent, fold)] = True
        store_data_issues(name, MetadataCatalog.get(base).get("data_issues", {}))
        if labeled:
            return [record for record, keep in zip(dataset_dicts, is_labeled) if keep]
        return [
            {k: v for k, v in record.items() if k != "annotations"}
            for record, keep in zip(dataset_dicts, is_labeled)
            if not keep
        ]

    signature = ("split", base, int(fold), float(percent))
    copied_keys = ("thing_classes", "thing_dataset_id_to_contiguous_id", "image_root")
    lazy = {key: _copy_metadata_from(base, key) for key in copied_keys}
    register_dataset(
        labeled_name,
        lambda: load(True, labeled_name),
        signature=signature + (False,),
        metadata={"evaluator_type": "coco", "base_dataset": base},
        lazy_metadata=lazy,
    )
    register_dataset(
        unlabeled_name,
        lambda: load(False, unlabeled_name),
        signature=signature + (True,),
        metadata={"unlabeled": True, "base_dataset": base},
        lazy_metadata=lazy,
        monitor_gt_source=lambda: DatasetCatalog.get(base),
    )
    return labeled_name, unlabeled_name


def add_name_resolver(resolver: Callable[[str], bool]) -> None:
    """Add a function tried by :func:`ensure_registered` for unregistered names (idempotent)."""
    if resolver not in _NAME_RESOLVERS:
        _NAME_RESOLVERS.append(resolver)


def ensure_registered(name: str) -> str:
    """Make sure `name` is registered, registering split names on demand; returns `name`.

    Order: already registered; a resolver of :func:`add_name_resolver` (e.g. COCO-Partial split files
    on disk); a split ``BASE.FOLD@PCT[-unlabeled]`` of a registered (or resolvable) BASE.

    Raises:
        UnknownDatasetError: the name cannot be resolved; the message lists close registered names.
    """
    if name in DatasetCatalog:
        return name
    for resolver in _NAME_RESOLVERS:
        if resolver(name) and name in DatasetCatalog:
            return name
    split = parse_split_name(name)
    if split is not None:
        try:
            ensure_registered(split.base)
        except UnknownDatasetError as e:
            raise UnknownDatasetError(f"Cannot resolve split '{name}': {e}") from None
        register_semi_split(split.base, split.fold, split.percent)
        return name
    hint = ""
    loose = _LOOSE_SPLIT_PATTERN.match(name)
    if loose is not None:
        try:
            canonical = semi_split_names(loose["base"], int(loose["fold"]), float(loose["percent"]))
            hint = f" Did you mean '{canonical[1] if loose['unlabeled'] else canonical[0]}' (canonical percentage)?"
        except ValueError:
            pass
    close = difflib.get_close_matches(name, DatasetCatalog.list(), n=5, cutoff=0.6)
    raise UnknownDatasetError(
        f"Data set '{name}' is not registered and is not a split 'BASE.FOLD@PERCENT[-unlabeled]' of a "
        f"registered data set.{hint} Close registered names: {close or 'none'}. Register it with "
        "DATASETS.REGISTER (see datasets/README.md)."
    )


_SPEC_FORMATS = "'NAME=coco:JSON_FILE:IMAGE_ROOT', 'NAME=coco_unlabeled:JSON_FILE:IMAGE_ROOT', " \
    "'NAME=voc:ROOT:SPLIT[:CLASS1,CLASS2,...]' or 'NAME=folder:IMAGE_DIR'"


def register_from_spec(spec: str) -> str:
    """Register a data set described by a DATASETS.REGISTER entry; returns its name.

    Formats (relative paths are resolved against $DETECTRON2_DATASETS, default ./datasets):

    * ``NAME=coco:JSON_FILE:IMAGE_ROOT``: labeled COCO instances json;
    * ``NAME=coco_unlabeled:JSON_FILE:IMAGE_ROOT``: the images of a COCO json as unlabeled data;
    * ``NAME=voc:ROOT:SPLIT[:CLASS1,CLASS2,...]``: a VOC-layout split, classes inferred from the data
      unless listed;
    * ``NAME=folder:IMAGE_DIR``: a folder of unlabeled images, searched recursively.

    Idempotent: the same spec twice is fine; another definition under a registered name is an error.
    """
    name, sep, definition = spec.partition("=")
    name, definition = name.strip(), definition.strip()
    kind, _, arguments = definition.partition(":")
    parts = arguments.split(":") if arguments else []
    expected = {"coco": (2,), "coco_unlabeled": (2,), "voc": (2, 3), "folder": (1,)}
    if not sep or not name or kind not in expected or len(parts) not in expected[kind] or not all(parts[:2]):
        raise DatasetError(f"Invalid DATASETS.REGISTER entry '{spec}': expected {_SPEC_FORMATS}.")
    if kind in ("coco", "coco_unlabeled"):
        register_coco_json(
            name, resolve_dataset_path(parts[0]), resolve_dataset_path(parts[1]), unlabeled=kind == "coco_unlabeled"
        )
    elif kind == "voc":
        class_names = [c.strip() for c in parts[2].split(",") if c.strip()] if len(parts) == 3 else None
        register_voc(name, resolve_dataset_path(parts[0]), parts[1], class_names=class_names or None)
    else:
        register_image_folder(name, resolve_dataset_path(parts[0]))
    return name


def register_datasets_from_config(cfg) -> None:
    """Register DATASETS.REGISTER and resolve every name in DATASETS.TRAIN, TRAIN_UNLABELED and TEST.

    Call it at start-up in every process (it is idempotent); unknown names fail here, with close
    matches, instead of deep inside the data loader.
    """
    for spec in cfg.DATASETS.REGISTER:
        register_from_spec(spec)
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.get("TRAIN_UNLABELED", ())) + list(cfg.DATASETS.TEST):
        ensure_registered(name)
