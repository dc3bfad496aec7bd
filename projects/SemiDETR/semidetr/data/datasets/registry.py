# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Idempotent, lazy registration in detectron2's DatasetCatalog / MetadataCatalog (the primitives
under :mod:`semidetr.data.datasets.catalog`).

Three things detectron2's catalogs do not provide and this project needs:

* **Idempotence.** Every DDP worker (and every test) registers the same names; registering a name
  again with the same definition is a no-op, with a different definition a clear error.
* **Lazy metadata.** Class names read from the data (a VOC folder, a json file, a generated data set)
  are known only after reading it, but nothing may be read at import. :class:`LazyMetadata` computes
  such fields on first access (``MetadataCatalog.get(name).thing_classes``) and caches them.
* **Unlabeled sets and their monitoring ground truth.** Unlabeled sets never carry "annotations"; the
  ground truth of their images, when one exists, is registered here as a separate source, reachable
  only through :func:`semidetr.data.datasets.catalog.load_unlabeled_with_monitor_gt`.
"""
import os
import types
from typing import Any, Callable, Dict, Hashable, List, Mapping, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata

from .validation import DatasetError

__all__ = [
    "LazyMetadata",
    "datasets_root",
    "resolve_dataset_path",
    "register_dataset",
    "unregister_dataset",
    "is_unlabeled",
    "get_monitor_gt_source",
]


# name -> {metadata key -> zero-argument function computing it}. Kept outside the Metadata objects so
# that those stay plain, picklable namespaces.
_LAZY_FIELDS: Dict[str, Dict[str, Callable[[], Any]]] = {}
# name -> the definition it was registered with (for idempotence).
_SIGNATURES: Dict[str, Hashable] = {}
# unlabeled name -> zero-argument function returning labeled dicts of (a superset of) its images.
_MONITOR_GT_SOURCES: Dict[str, Callable[[], List[dict]]] = {}


class LazyMetadata(Metadata):
    """detectron2 Metadata whose missing fields may be computed on first access.

    The functions are looked up by data-set name in a module-level table; a function raising
    AttributeError means "this data set has no such field" (so ``hasattr`` answers False, as
    detectron2's evaluators expect). A computed value is stored like any other attribute.
    """

    def __getattr__(self, key):
        provider = _LAZY_FIELDS.get(self.__dict__.get("name", ""), {}).get(key)
        if provider is None:
            return super().__getattr__(key)
        value = provider()
        types.SimpleNamespace.__setattr__(self, key, value)
        return value

    def __setattr__(self, key, val):
        # Setting a lazy field that was never computed must not compute it first (detectron2's
        # Metadata reads the old value to check consistency): load_coco_json sets thing_classes while
        # loading, and computing it from the same json beforehand would parse the file twice.
        if key not in self.__dict__ and key in _LAZY_FIELDS.get(self.__dict__.get("name", ""), {}):
            types.SimpleNamespace.__setattr__(self, key, val)
        else:
            super().__setattr__(key, val)


def datasets_root() -> str:
    """The absolute data-set root: $DETECTRON2_DATASETS, default ./datasets (detectron2's rule)."""
    return os.path.abspath(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))


def resolve_dataset_path(path: str) -> str:
    """An absolute path: `path` itself when absolute, else relative to :func:`datasets_root`."""
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(datasets_root(), path)


def register_dataset(
    name: str,
    loader: Callable[[], List[dict]],
    signature: Hashable,
    metadata: Optional[Mapping[str, Any]] = None,
    lazy_metadata: Optional[Mapping[str, Callable[[], Any]]] = None,
    monitor_gt_source: Optional[Callable[[], List[dict]]] = None,
) -> bool:
    """Register `name` once; safe to call from every process and more than once.

    Args:
        loader: returns the dataset dicts (called by ``DatasetCatalog.get``).
        signature: a hashable description of the definition (kind, paths, options). Registering the
            same name with an equal signature is a no-op.
        metadata: fields set now.
        lazy_metadata: fields computed on first access (see :class:`LazyMetadata`).
        monitor_gt_source: unlabeled sets only: returns labeled dicts of the same images, used only by
            :func:`semidetr.data.datasets.catalog.load_unlabeled_with_monitor_gt`.

    Returns:
        True when the name was registered by this call, False when it already was (same signature).

    Raises:
        DatasetError: the name is registered with another definition (by this package or by other
            code, e.g. detectron2's built-in data sets).
    """
    if name in DatasetCatalog:
        if _SIGNATURES.get(name) == signature:
            return False
        existing = _SIGNATURES.get(name, "a definition made outside semidetr (e.g. detectron2's builtin)")
        raise DatasetError(
            f"Data set '{name}' is already registered as {existing}; cannot register it again as "
            f"{signature}. Choose another name (or DatasetCatalog.remove('{name}') first)."
        )
    DatasetCatalog.register(name, loader)
    _SIGNATURES[name] = signature
    if lazy_metadata:
        _LAZY_FIELDS[name] = dict(lazy_metadata)
    old = MetadataCatalog.get(name)
    if not isinstance(old, LazyMetadata):
        # Replace a plain Metadata (possibly created by an earlier MetadataCatalog.get) by a lazy one
        # with the same content.
        fields = {k: v for k, v in old.__dict__.items() if k != "name"}
        MetadataCatalog.pop(name)
        MetadataCatalog[name] = LazyMetadata(name=name, **fields)
    if metadata:
        MetadataCatalog.get(name).set(**metadata)
    if monitor_gt_source is not None:
        _MONITOR_GT_SOURCES[name] = monitor_gt_source
    return True


def unregister_dataset(name: str) -> None:
    """Remove `name` from both catalogs and this module's tables (tests, interactive use)."""
    for table in (DatasetCatalog, MetadataCatalog, _LAZY_FIELDS, _SIGNATURES, _MONITOR_GT_SOURCES):
        table.pop(name, None)


def is_unlabeled(name: str) -> bool:
    """Whether `name` was registered as an unlabeled set (its dicts have no "annotations")."""
    return bool(MetadataCatalog.get(name).get("unlabeled", False))


def get_monitor_gt_source(name: str) -> Optional[Callable[[], List[dict]]]:
    """The monitoring ground-truth source registered for unlabeled set `name`, if any."""
    return _MONITOR_GT_SOURCES.get(name)
