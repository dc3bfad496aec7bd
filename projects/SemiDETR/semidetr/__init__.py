"""SemiDETR-D2: Semi-DETR (CVPR 2023) for Detectron2.

Importing the package registers its meta-architectures (DINO, DeformableDETR) and its built-in data sets
in detectron2's registries, in every process that imports it (DDP workers included).
"""
from .compat import check_detectron2

check_detectron2()

from . import modeling  # noqa: E402  (registers DINO, DeformableDETR)
from .config import add_semidetr_config  # noqa: E402
from .data import datasets  # noqa: E402,F401  (registers the built-in data sets)

__all__ = ["add_semidetr_config", "modeling"]
