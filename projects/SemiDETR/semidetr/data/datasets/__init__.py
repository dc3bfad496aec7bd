"""Data sets: registration in detectron2's catalogs (built-in sets, COCO / VOC / image-folder loaders,
percentage splits) and the bad-data policy. Importing this package registers the built-in data sets."""
from . import builtin  # noqa: F401  (imported for its side effect: registers the built-in data sets)
