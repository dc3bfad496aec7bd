"""Contrastive denoising (DINO, Zhang et al. 2022, Sec. 3.3) as free functions.

Decoder query layout used throughout this project (one self-attention over all of them):

    [ denoising queries (pad_size) | matching queries (num_queries) | cross-view queries (num_cross) ]

Denoising queries come in `num_groups` groups; each group holds, for every image, `max_targets` positive
slots followed by `max_targets` negative slots (images with fewer targets leave unused padded slots).
Cross-view queries (Semi-DETR CQC) are appended after the matching queries.

`build_self_attention_mask` states who may attend to whom (True = blocked):
  * matching queries see only matching queries (no leakage of the ground truth in denoising queries,
    and cross-view queries never change the detector's own predictions);
  * a denoising group sees itself and the matching queries, not other groups or cross-view queries;
  * a cross-view query sees the matching queries and itself only.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from .box_ops import inverse_sigmoid
from .tensor_utils import small_tensor

__all__ = [
    "DenoisingQueries",
    "prepare_contrastive_denoising",
    "build_self_attention_mask",
    "denoising_positive_indices",
]


@dataclass
class DenoisingQueries:
    """Noised ground truth turned into decoder queries.

    content:   (N, pad_size, C) label embeddings of the (possibly flipped) labels.
    reference: (N, pad_size, 4) noised boxes, unsigmoided (cx, cy, w, h).
    num_groups: number of denoising groups.
    max_targets: targets of the image with most targets (slots per polarity per group).
    """

    content: Tensor
    reference: Tensor
    num_groups: int
    max_targets: int

    @property
    def pad_size(self) -> int:
        return 2 * self.max_targets * self.num_groups


def prepare_contrastive_denoising(
    targets: List[Dict[str, Tensor]],
    *,
    dn_number: int,
    label_noise_ratio: float,
    box_noise_scale: float,
    num_classes: int,
    label_embedding: nn.Embedding,
) -> Optional[DenoisingQueries]:
    """Build DINO's contrastive denoising queries from the targets of a batch.

    Args:
        targets: per image {"labels": (n,) int64, "boxes": (n, 4) normalised cxcywh}.
        dn_number: denoising budget; groups = dn_number // max targets per image (at least 1).
        label_noise_ratio: a label is replaced by a uniformly random class with probability
            label_noise_ratio / 2.
        box_noise_scale: lambda; positive boxes move their corners by less than lambda * (w/2, h/2),
            negative boxes by between lambda and 2 lambda of it.
        num_classes: size of the label book (the data set's classes; no fixed constant).
        label_embedding: embedding of the (noised) class labels into query content.

    Returns None when no image of the batch has a target (then there is nothing to denoise).
    """
    counts = [len(t["labels"]) for t in targets]
    max_targets = max(counts, default=0)
    if dn_number <= 0 or max_targets == 0:
        return None
    num_groups = max(dn_number // max_targets, 1)
    device = label_embedding.weight.device
    batch_size = len(targets)

    labels = torch.cat([t["labels"] for t in targets])
    boxes = torch.cat([t["boxes"] for t in targets])
    image_index = torch.cat([torch.full((n,), i, dtype=torch.long, device=device) for i, n in enumerate(counts)])
    slot_in_image = torch.cat([torch.arange(n, device=device) for n in counts])
    num_known = labels.shape[0]

    # Copy c (c = 0 .. 2 * num_groups - 1) is positive for even c and negative for odd c, i.e.
    # group g = c // 2 holds positives in its first max_targets slots, negatives in the next.
    num_copies = 2 * num_groups
    copy_index = torch.arange(num_copies, device=device).repeat_interleave(num_known)
    is_negative = (copy_index % 2 == 1)
    noised_labels = labels.repeat(num_copies)
    noised_boxes = boxes.repeat(num_copies, 1)

    if label_noise_ratio > 0:
        flip = torch.rand(noised_labels.shape, device=device) < label_noise_ratio * 0.5
        random_labels = torch.randint_like(noised_labels, 0, num_classes)
        noised_labels = torch.where(flip, random_labels, noised_labels)

    if box_noise_scale > 0:
        xyxy = torch.cat([noised_boxes[:, :2] - noised_boxes[:, 2:] / 2, noised_boxes[:, :2] + noised_boxes[:, 2:] / 2], 1)
        half_wh = (noised_boxes[:, 2:] / 2).repeat(1, 2)
        sign = torch.randint(0, 2, noised_boxes.shape, device=device, dtype=noised_boxes.dtype) * 2.0 - 1.0
        magnitude = torch.rand_like(noised_boxes) + is_negative[:, None].to(noised_boxes.dtype)
        xyxy = (xyxy + sign * magnitude * half_wh * box_noise_scale).clamp(0.0, 1.0)
        noised_boxes = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)

    pad_size = 2 * max_targets * num_groups
    hidden_dim = label_embedding.embedding_dim
    content = torch.zeros(batch_size, pad_size, hidden_dim, device=device)
    reference = torch.zeros(batch_size, pad_size, 4, device=device)
    slot = copy_index * max_targets + slot_in_image.repeat(num_copies)
    rows = image_index.repeat(num_copies)
    content = content.index_put((rows, slot), label_embedding(noised_labels))
    reference = reference.index_put((rows, slot), inverse_sigmoid(noised_boxes))
    return DenoisingQueries(content=content, reference=reference, num_groups=num_groups, max_targets=max_targets)


def build_self_attention_mask(
    num_groups: int, max_targets: int, num_queries: int, num_cross: int, device: torch.device
) -> Optional[Tensor]:
    """Boolean (T, T) self-attention mask of the decoder queries (True = may not attend), or None when
    there are only matching queries. Layout and rules: see the module docstring."""
    pad_size = 2 * max_targets * num_groups
    total = pad_size + num_queries + num_cross
    if total == num_queries:
        return None
    # Role of each position: group id >= 0 for denoising, -1 for matching, -2 for cross-view.
    role = torch.full((total,), -1, dtype=torch.long, device=device)
    role[:pad_size] = torch.arange(pad_size, device=device) // (2 * max_targets)
    role[pad_size + num_queries:] = -2
    query_role, key_role = role[:, None], role[None, :]
    key_is_denoising = key_role >= 0
    blocked = key_is_denoising & (query_role != key_role)
    position = torch.arange(total, device=device)
    blocked |= (key_role == -2) & (position[:, None] != position[None, :])
    return blocked


def denoising_positive_indices(targets: List[Dict[str, Tensor]], dn: DenoisingQueries):
    """Indices of the positive denoising queries and of their targets.

    Returns (batch_index, query_index, target_index) where target_index indexes the concatenation of all
    images' targets (the layout of the criterion's flat targets).
    """
    device = dn.content.device
    counts = [len(t["labels"]) for t in targets]
    offsets = small_tensor([0] + counts[:-1], torch.long, device).cumsum(0)
    batch_index = torch.cat([torch.full((n,), i, dtype=torch.long, device=device) for i, n in enumerate(counts)])
    slot_in_image = torch.cat([torch.arange(n, device=device) for n in counts])
    group_start = torch.arange(dn.num_groups, device=device) * (2 * dn.max_targets)
    query_index = (group_start[:, None] + slot_in_image[None, :]).flatten()
    target_index = (offsets[batch_index] + slot_in_image).repeat(dn.num_groups)
    return batch_index.repeat(dn.num_groups), query_index, target_index
