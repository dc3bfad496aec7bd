"""The DETR-family detectors (DINO, Deformable DETR) and their losses.

Importing this package registers the meta-architectures "DINO" and "DeformableDETR" in detectron2's
META_ARCH_REGISTRY.
"""
from .criterion import SetCriterion
from .denoising import build_self_attention_mask, prepare_contrastive_denoising
from .detector import DINO, DeformableDETR, DetectorOutputs, resolve_num_classes
from .matcher import Assignment, HungarianMatcher
from .transformer import DeformableTransformer

__all__ = [
    "DINO",
    "DeformableDETR",
    "DetectorOutputs",
    "DeformableTransformer",
    "HungarianMatcher",
    "Assignment",
    "SetCriterion",
    "build_self_attention_mask",
    "prepare_contrastive_denoising",
    "resolve_num_classes",
]
