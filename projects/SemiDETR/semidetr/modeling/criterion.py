"""DETR-family losses: the criterion owns the loss dictionary; the matcher only assigns.

Predictions arrive stacked over decoder layers, (L, N, Q, ...), so every loss term is computed for all
layers in one vectorised pass and then reported as:

    loss_{class,bbox,giou}          last decoder layer
    loss_{class,bbox,giou}_aux      sum over the intermediate decoder layers
    loss_{class,bbox,giou}_enc      two-stage encoder proposals
    loss_{class,bbox,giou}_dn       denoising queries, summed over all decoder layers

Each value is already multiplied by its weight (detectron2 sums the dictionary). Normalisation is by the
number of targets averaged over processes (DETR), clamped to at least 1, so images or whole batches
without targets give finite losses.

`assignment="one_to_many"` (Semi-DETR's stage 1, Stage-wise Hybrid Matching) replaces the Hungarian
matching of the decoder layers and encoder proposals by a one-to-many assigner and their losses by
eq. 4-5 (normalised by the sum of the soft targets); the denoising losses are the same in both stages.
"""
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from detectron2.utils import comm
from fvcore.nn import sigmoid_focal_loss
from torch import Tensor, nn

from .denoising import DenoisingQueries, denoising_positive_indices
from .losses import weight_images, weighted_box_losses
from .matcher import Assignment
from .one_to_many import OneToManyAssigner, one_to_many_losses, one_to_many_normalizer
from .tensor_utils import small_tensor

__all__ = ["SetCriterion", "average_count_over_processes", "ENC_CLASS_TARGETS"]

LOSS_TERMS = ("class", "bbox", "giou")
ENC_CLASS_TARGETS = ("class", "first_class")


def average_count_over_processes(count: int, device) -> Tensor:
    """Number of targets averaged over all processes, as a tensor (no host synchronisation), >= 1.

    Every process must call this the same number of times per step (it is a collective under DDP).
    """
    total = small_tensor(float(count), torch.float32, device)
    if comm.get_world_size() > 1:
        dist.all_reduce(total)
    return (total / comm.get_world_size()).clamp(min=1.0)


def flatten_targets(targets: List[Dict[str, Tensor]]):
    """Concatenate the per-image targets (the layout `Assignment.target` indexes)."""
    labels = torch.cat([t["labels"] for t in targets])
    boxes = torch.cat([t["boxes"].reshape(-1, 4) for t in targets])
    return labels, boxes


class SetCriterion(nn.Module):
    """Sigmoid focal classification + L1 + GIoU box losses on matched predictions (Deformable DETR/DINO)."""

    def __init__(self, num_classes: int, matcher: nn.Module, *, class_weight: float = 1.0,
                 bbox_weight: float = 5.0, giou_weight: float = 2.0, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, one_to_many_assigner: Optional[OneToManyAssigner] = None,
                 one_to_many_gamma: float = 2.0, enc_class_target: str = "class"):
        """one_to_many_assigner / one_to_many_gamma: Semi-DETR's stage-1 assignment and the gamma of its
        classification loss (eq. 4); None = one-to-one only.
        enc_class_target: what the encoder proposals' classification loss (and their matching) takes as a
        target's class: "class" (DINO: its own class) or "first_class" (the official Semi-DETR code, after
        mmdet's two-stage heads: every target is class 0, so only the first logit learns objectness)."""
        super().__init__()
        if enc_class_target not in ENC_CLASS_TARGETS:
            raise ValueError(f"MODEL.DETR.ENC_CLASS_TARGET must be one of {ENC_CLASS_TARGETS}, got {enc_class_target!r}")
        self.enc_class_target = enc_class_target
        self.num_classes = num_classes
        self.matcher = matcher
        self.one_to_many_assigner = one_to_many_assigner
        self.one_to_many_gamma = one_to_many_gamma
        self.weights = {"class": class_weight, "bbox": bbox_weight, "giou": giou_weight}
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def forward(self, outputs: Dict[str, Tensor], targets: List[Dict[str, Tensor]],
                denoising: Optional[DenoisingQueries] = None,
                dn_targets: Optional[List[Dict[str, Tensor]]] = None,
                assignment: str = "one_to_one", image_weights: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """outputs: "pred_logits" (L, N, Q, K), "pred_boxes" (L, N, Q, 4) normalised cxcywh; optional
        "enc_logits"/"enc_boxes" (N, Qe, Ke) / (N, Qe, 4) (Ke == 1: class-agnostic proposals as in
        Deformable DETR) and "dn_logits"/"dn_boxes" (L, N, P, K) / (L, N, P, 4) of the `denoising`
        queries, which were built from `dn_targets` (default: `targets`). image_weights (N,): a factor on each
        image's classification loss (0 for an unlabeled image without pseudo labels whose queries should not
        be trained as background, SEMI.IMAGES_WITHOUT_PSEUDO_LABELS "ignore"); None = 1 everywhere."""
        device = outputs["pred_logits"].device
        labels, boxes = flatten_targets(targets)
        num_targets = average_count_over_processes(len(labels), device)
        losses: Dict[str, Tensor] = {}

        if assignment not in ("one_to_one", "one_to_many"):
            raise ValueError(f"Unknown assignment {assignment!r}: 'one_to_one' or 'one_to_many'")
        if assignment == "one_to_many" and self.one_to_many_assigner is None:
            raise ValueError("One-to-many assignment requested but the criterion has no one-to-many assigner "
                             "(SEMIDETR.SHM.ENABLED is False)")
        set_losses = self.one_to_many_set_losses if assignment == "one_to_many" else self.one_to_one_set_losses
        per_layer = set_losses(outputs["pred_logits"], outputs["pred_boxes"], targets, labels, boxes, num_targets,
                               image_weights)
        for term, values in per_layer.items():
            losses[f"loss_{term}"] = values[-1]
            losses[f"loss_{term}_aux"] = values[:-1].sum()

        if "enc_logits" in outputs:
            enc_logits, enc_boxes = outputs["enc_logits"][None], outputs["enc_boxes"][None]
            enc_targets = targets
            enc_labels = labels
            # Class-agnostic proposals (one logit) or the official rule: every target is class 0 ("object").
            if enc_logits.shape[-1] == 1 or self.enc_class_target == "first_class":
                enc_targets = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
                enc_labels = torch.zeros_like(labels)
            for term, values in set_losses(enc_logits, enc_boxes, enc_targets, enc_labels, boxes, num_targets,
                                           image_weights).items():
                losses[f"loss_{term}_enc"] = values.sum()

        if "dn_logits" in outputs:
            losses.update(self.denoising_losses(outputs, targets if dn_targets is None else dn_targets, denoising,
                                                image_weights))
        return {name: value * self.weights[name.split("_")[1]] for name, value in losses.items()}

    def denoising_losses(self, outputs, dn_targets, denoising: Optional[DenoisingQueries],
                         image_weights: Optional[Tensor] = None):
        """Reconstruction losses of the positive denoising queries (negatives and padded slots are
        background for the classification loss), normalised by denoised targets x groups (DINO)."""
        dn_logits, dn_boxes = outputs["dn_logits"], outputs["dn_boxes"]
        labels, boxes = flatten_targets(dn_targets)
        # Collective: called on every process whether or not it has denoising queries.
        num_targets = average_count_over_processes(len(labels), dn_logits.device)
        if denoising is None or len(labels) == 0:
            # Nothing was denoised for these images (their slots are padding): no loss.
            # Keep the dictionary's keys stable for logging; the zero depends on the outputs so the
            # graph (and DDP's view of used parameters) is the same in every step.
            zero = dn_logits.sum() * 0.0
            return {f"loss_{term}_dn": zero for term in LOSS_TERMS}
        num_layers = dn_logits.shape[0]
        image, query, target = denoising_positive_indices(dn_targets, denoising)
        num_pairs = image.shape[0]
        assignment = Assignment(
            layer=torch.arange(num_layers, device=image.device).repeat_interleave(num_pairs),
            image=image.repeat(num_layers), query=query.repeat(num_layers), target=target.repeat(num_layers),
            weight=torch.ones(num_layers * num_pairs, device=image.device),
        )
        per_layer = self.set_losses(dn_logits, dn_boxes, labels, boxes, assignment, num_targets * denoising.num_groups,
                                    image_weights)
        return {f"loss_{term}_dn": values.sum() for term, values in per_layer.items()}

    def one_to_one_set_losses(self, logits, pred_boxes, targets, labels, boxes, num_targets,
                              image_weights=None) -> Dict[str, Tensor]:
        assignment = self.matcher(logits, pred_boxes, targets)
        return self.set_losses(logits, pred_boxes, labels, boxes, assignment, num_targets, image_weights)

    def one_to_many_set_losses(self, logits, pred_boxes, targets, labels, boxes, num_targets,
                               image_weights=None) -> Dict[str, Tensor]:
        assignment = self.one_to_many_assigner(logits, pred_boxes, targets)
        # Eq. 4-5 are normalised by the sum of the soft targets (a collective, as num_targets).
        normalizer = one_to_many_normalizer(assignment, logits.shape[0])
        return one_to_many_losses(logits, pred_boxes, labels, boxes, assignment, normalizer, self.one_to_many_gamma,
                                  image_weights)

    def set_losses(self, logits: Tensor, pred_boxes: Tensor, labels: Tensor, boxes: Tensor,
                   assignment: Assignment, normalizer: Tensor, image_weights: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Per-layer losses, each of shape (L,), for predictions (L, N, Q, K) / (L, N, Q, 4)."""
        a = assignment
        logits = logits.float()
        class_targets = torch.zeros_like(logits)
        class_targets[a.layer, a.image, a.query, labels[a.target]] = a.weight
        focal = sigmoid_focal_loss(logits, class_targets, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="none")
        loss_class = weight_images(focal, image_weights).flatten(1).sum(1) / normalizer
        return {"class": loss_class, **weighted_box_losses(pred_boxes, boxes, assignment, normalizer)}
