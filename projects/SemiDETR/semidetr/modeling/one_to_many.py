"""One-to-many assignment and the stage-1 losses of Stage-wise Hybrid Matching (Semi-DETR, Sec. 3.3).

During the first T1 iterations Semi-DETR replaces DETR's Hungarian matching (one query per target) by a
one-to-many assignment (several queries per target) and trains with quality-aware losses. As in DETR, the
assignment and the losses are separate: an assigner runs without gradient and returns an `Assignment`
(matcher.py) whose `weight` is the soft target m_hat of every positive (layer, image, query) -> target
pair; `one_to_many_losses` turns it into per-layer losses. Unassigned queries are negatives.

Assigners (all vectorised over decoder layers, images, queries and targets; images are padded to the
largest number of targets with `pad_targets`, padded targets never take part):

* `TaskAlignedOneToManyAssigner` (the paper's, eq. 3; TOOD's task-aligned assigner),
* `MaxIoUOneToManyAssigner`, `ATSSOneToManyAssigner`, `SimOTAOneToManyAssigner` (the alternatives of
  the paper's Table 6).

They differ only in which (query, target) pairs are positive. Every one of them then

1. gives a query claimed by several targets to one of them (highest IoU; SimOTA: lowest cost), and
2. sets the soft target of every positive pair from the alignment metric of eq. 3,

       m = s^alpha * u^beta        (s: sigmoid score of the target's class, u: IoU of the boxes)

   normalised per target as in TOOD (Feng et al. 2021) and the official Semi-DETR code:

       m_hat = m / (max_{positives of t} m + eps) * max_{positives of t} u,    eps = 1e-7

   so the best-aligned query of each target is trained towards the target's best IoU instead of 1.
   The eps (TOOD's `10e-8`) only matters when all positives of a target have m ~ 0 (possible for the
   alternative assigners, whose positives need not have m > 0); their soft targets are then ~ 0.

Stage-1 losses (eq. 4 and 5), for sigmoid scores s and soft class targets t (t = m_hat at the assigned
target's class of a positive query, 0 for every other (query, class)):

    L_cls = sum_{queries, classes} |t - s|^gamma * BCE(s, t)
          = sum_pos |m_hat - s|^gamma BCE(s, m_hat) + sum_neg s^gamma BCE(s, 0)
    L_reg = sum_pos m_hat * (1 - GIoU(b, b_hat)) + sum_pos m_hat * |b - b_hat|_1

each divided by the normaliser of `one_to_many_normalizer` (sum of m_hat of one decoder layer, averaged
over processes, >= 1), computed for every decoder layer at once.

Predictions are normalised cxcywh boxes, as everywhere in this project; all geometric thresholds below
are therefore in normalised image coordinates.
"""
import abc
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.utils import comm
from torch import Tensor, nn
from torch.profiler import record_function

from .box_ops import batched_box_iou, cxcywh_to_xyxy
from .losses import weight_images, weighted_box_losses
from .matcher import Assignment, pad_targets
from .tensor_utils import small_tensor

__all__ = [
    "PairwiseQuality",
    "OneToManyAssigner",
    "TaskAlignedOneToManyAssigner",
    "MaxIoUOneToManyAssigner",
    "ATSSOneToManyAssigner",
    "SimOTAOneToManyAssigner",
    "ONE_TO_MANY_ASSIGNERS",
    "build_one_to_many_assigner",
    "one_to_many_normalizer",
    "one_to_many_losses",
]

# TOOD's guard in the soft-target normalisation (mmdet's TOODHead uses `10e-8`).
SOFT_TARGET_EPS = 1e-7


@dataclass
class PairwiseQuality:
    """What the assigners look at, for every (layer, image, query, target), detached and float32.

    logits (L, N, Q, K) and pred_boxes (L, N, Q, 4) normalised cxcywh: the predictions;
    labels (N, T), target_boxes (N, T, 4) normalised cxcywh and valid (N, T): padded targets;
    score (L, N, Q, T): sigmoid score of the target's class; iou (L, N, Q, T): IoU of the predicted and
    target boxes (0 for padded targets).
    """

    logits: Tensor
    pred_boxes: Tensor
    labels: Tensor
    target_boxes: Tensor
    valid: Tensor
    score: Tensor
    iou: Tensor

    @property
    def pred_centres(self) -> Tensor:
        return self.pred_boxes[..., :2]

    @property
    def target_class_logits(self) -> Tensor:
        """(L, N, Q, T) logit of each target's class."""
        return gather_target_class_logits(self.logits, self.labels)


def gather_target_class_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Gather logits (L, N, Q, K) at the padded target classes (N, T) -> (L, N, Q, T)."""
    num_layers, batch_size, num_queries, _ = logits.shape
    index = labels[None, :, None, :].expand(num_layers, batch_size, num_queries, labels.shape[1])
    return logits.gather(-1, index)


def pairwise_quality(pred_logits: Tensor, pred_boxes: Tensor, labels: Tensor, target_boxes: Tensor,
                     valid: Tensor) -> PairwiseQuality:
    """Detached float32 scores and IoUs of every (layer, image, query, target)."""
    logits = pred_logits.detach().float()
    boxes = pred_boxes.detach().float()
    target_boxes = target_boxes.float()
    score = gather_target_class_logits(logits, labels).sigmoid()
    # Padded targets are zero boxes, so their IoU with every prediction is 0 and they never qualify; the
    # assignment also masks them explicitly. Non-finite predictions give NaN scores / IoUs, which fail
    # every comparison and so are never positive: the assignment does not crash, the losses computed from
    # them stay non-finite and the trainer skips that step.
    iou = batched_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(target_boxes))
    return PairwiseQuality(logits, boxes, labels, target_boxes, valid, score, iou)


def alignment_metric(score: Tensor, iou: Tensor, alpha: float, beta: float) -> Tensor:
    """Eq. 3: m = s^alpha * u^beta."""
    return score.pow(alpha) * iou.pow(beta)


def centres_inside(centres: Tensor, boxes_xyxy: Tensor) -> Tensor:
    """(L, N, Q, T): does query q's centre (L, N, Q, 2) lie strictly inside box t (N, T, 4) xyxy?"""
    # Coordinate by coordinate: broadcasting (L, N, Q, 1) against (N, 1, T) is several times faster on
    # CPU than broadcasting stacked (..., 2) coordinates.
    x, y = centres[..., 0, None], centres[..., 1, None]
    x0, y0, x1, y1 = (coordinate[..., None, :] for coordinate in boxes_xyxy.unbind(-1))
    return (x > x0) & (x < x1) & (y > y0) & (y < y1)


def squared_centre_distance(centres: Tensor, target_centres: Tensor) -> Tensor:
    """(L, N, Q, T) squared L2 distance between query centres (L, N, Q, 2) and target centres (N, T, 2)."""
    dx = centres[..., 0, None] - target_centres[..., None, :, 0]
    dy = centres[..., 1, None] - target_centres[..., None, :, 1]
    return dx * dx + dy * dy


def top_k_queries_per_target(values: Tensor, k: int, largest: bool = True) -> Tuple[Tensor, Tensor]:
    """Indices (L, N, k', T) of each target's k' = min(k, Q) best queries, and the (L, N, Q, T) mask of
    them, for values (L, N, Q, T)."""
    k = min(k, values.shape[2])
    indices = values.topk(k, dim=2, largest=largest).indices
    mask = torch.zeros_like(values, dtype=torch.bool).scatter_(2, indices, True)
    return indices, mask


def resolve_and_normalise(pairs: PairwiseQuality, candidates: Tensor, preference: Tensor,
                          counts: List[int], alpha: float, beta: float) -> Assignment:
    """Turn candidate pairs into an `Assignment` with TOOD-normalised soft targets.

    candidates (L, N, Q, T) bool: the pairs an assigner accepts; preference (L, N, Q, T): a query
    accepted by several targets goes to the one with the largest preference.
    """
    num_layers, batch_size, _, max_targets = candidates.shape
    candidates = candidates & pairs.valid[None, :, None, :]
    is_positive = candidates.any(-1)  # (L, N, Q)
    assigned_target = torch.where(candidates, preference, float("-inf")).argmax(-1)  # (L, N, Q)

    layer, image, query = is_positive.nonzero(as_tuple=True)
    target = assigned_target[layer, image, query]
    # The soft targets need m only at the positives (the alternative assigners never need it densely).
    iou = pairs.iou[layer, image, query, target]
    metric = alignment_metric(pairs.score[layer, image, query, target], iou, alpha, beta)
    # Maxima over each target's positives, on the (few) positives only: scatter into (L * N * T) slots.
    slot = (layer * batch_size + image) * max_targets + target
    slots = metric.new_zeros(num_layers * batch_size * max_targets)
    max_metric = slots.scatter_reduce(0, slot, metric, "amax")
    max_iou = slots.scatter_reduce(0, slot, iou, "amax")
    weight = metric / (max_metric[slot] + SOFT_TARGET_EPS) * max_iou[slot]

    first_target_of_image = small_tensor([0] + counts[:-1], torch.long, target.device).cumsum(0)
    return Assignment(layer, image, query, target + first_target_of_image[image], weight)


class OneToManyAssigner(nn.Module, abc.ABC):
    """Common driver: pad the targets, compute the pairwise quality, let the subclass choose candidate
    pairs (`select_candidates`), resolve conflicts and normalise the soft targets.

    Call with pred_logits (L, N, Q, K) and pred_boxes (L, N, Q, 4) normalised cxcywh (or without the
    leading L) and targets per image {"labels": (n,), "boxes": (n, 4) normalised cxcywh}. Returns an
    `Assignment` whose `target` indexes the concatenation of all images' targets and whose `weight` is
    m_hat; a batch without targets gives an empty one.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 6.0):
        super().__init__()
        self.alpha = alpha
        self.beta = beta

    @abc.abstractmethod
    def select_candidates(self, pairs: PairwiseQuality) -> Tuple[Tensor, Tensor]:
        """(candidates (L, N, Q, T) bool, preference (L, N, Q, T)); padded targets are masked later."""

    @torch.no_grad()
    @record_function("matching/one_to_many")
    def forward(self, pred_logits: Tensor, pred_boxes: Tensor, targets: List[Dict[str, Tensor]]) -> Assignment:
        if pred_logits.dim() == 3:
            pred_logits, pred_boxes = pred_logits[None], pred_boxes[None]
        counts = [len(t["labels"]) for t in targets]
        if sum(counts) == 0:
            return Assignment.empty(pred_logits.device)
        labels, target_boxes, valid = pad_targets(targets, pred_logits.device)
        pairs = pairwise_quality(pred_logits, pred_boxes, labels, target_boxes, valid)
        candidates, preference = self.select_candidates(pairs)
        return resolve_and_normalise(pairs, candidates, preference, counts, self.alpha, self.beta)


class TaskAlignedOneToManyAssigner(OneToManyAssigner):
    """Semi-DETR's one-to-many assignment (eq. 3), TOOD's task-aligned assigner applied to queries.

    For every target t and query q, m = s^alpha * u^beta. Each target's candidates are its `topk`
    queries by m (all queries when Q < topk); a candidate is positive only if m > 0; a query that is
    positive for several targets goes to the target with the highest IoU.

    Adaptation: TOOD additionally requires the anchor point to lie inside the target box. Queries have no
    anchor points and the paper states no such condition (positives are "the M proposals with the largest
    m"), so only m > 0 is required.
    """

    def __init__(self, topk: int = 13, alpha: float = 1.0, beta: float = 6.0):
        super().__init__(alpha, beta)
        if topk < 1:
            raise ValueError(f"TaskAlignedOneToManyAssigner: topk must be >= 1, got {topk}")
        self.topk = topk

    def select_candidates(self, pairs: PairwiseQuality) -> Tuple[Tensor, Tensor]:
        metric = alignment_metric(pairs.score, pairs.iou, self.alpha, self.beta)
        _, in_top_k = top_k_queries_per_target(metric, self.topk)
        return in_top_k & (metric > 0), pairs.iou


class MaxIoUOneToManyAssigner(OneToManyAssigner):
    """RetinaNet's Max-IoU assignment with the predicted query boxes as anchors (Table 6, "Max-IoU").

    A (query, target) pair is positive if IoU >= `pos_iou`; in addition each target's best query (highest
    IoU) is positive if it overlaps the target at all, so every overlapped target gets a positive
    (RetinaNet's low-quality matches). A query positive for several targets goes to the highest IoU.

    Adaptations: RetinaNet ignores anchors with neg_iou <= IoU < pos_iou; an `Assignment` has no ignored
    state, so those queries are negatives. RetinaNet's low-quality match uses min_pos_iou 0, which would
    make a target that overlaps nothing claim every query; here the best query must have IoU > 0. Unlike
    mmdet, a low-quality match does not override a query's higher-IoU assignment to another target.
    """

    def __init__(self, pos_iou: float = 0.5, alpha: float = 1.0, beta: float = 6.0):
        super().__init__(alpha, beta)
        self.pos_iou = pos_iou

    def select_candidates(self, pairs: PairwiseQuality) -> Tuple[Tensor, Tensor]:
        iou = pairs.iou
        _, is_best_query = top_k_queries_per_target(iou, 1)
        return (iou >= self.pos_iou) | (is_best_query & (iou > 0)), iou


class ATSSOneToManyAssigner(OneToManyAssigner):
    """ATSS (Zhang et al. 2020) with the predicted query boxes as anchors (Table 6, "ATSS").

    Per target, the `topk` queries whose predicted box centres are closest (L2, normalised coordinates)
    to the target centre are candidates; the IoU threshold is the mean plus the standard deviation
    (unbiased, as torch.std and mmdet) of the candidates' IoUs; a candidate is positive if its IoU >= the
    threshold and its centre lies strictly inside the target box. Conflicts go to the highest IoU.

    Adaptations: ATSS takes `topk` anchors per FPN level; queries have no level, so the `topk` closest
    queries are taken over all queries. Distances are measured from the predicted box centres (queries
    have no fixed anchor points). With a single candidate (Q == 1 or topk == 1) the standard deviation
    is taken as 0.
    """

    def __init__(self, topk: int = 9, alpha: float = 1.0, beta: float = 6.0):
        super().__init__(alpha, beta)
        if topk < 1:
            raise ValueError(f"ATSSOneToManyAssigner: topk must be >= 1, got {topk}")
        self.topk = topk

    def select_candidates(self, pairs: PairwiseQuality) -> Tuple[Tensor, Tensor]:
        iou = pairs.iou
        # Squared distances rank the queries as the distances do.
        squared_distance = squared_centre_distance(pairs.pred_centres, pairs.target_boxes[..., :2])
        closest, is_candidate = top_k_queries_per_target(squared_distance, self.topk, largest=False)
        candidate_iou = iou.gather(2, closest)  # (L, N, k, T)
        threshold = candidate_iou.mean(2, keepdim=True)
        if candidate_iou.shape[2] > 1:
            threshold = threshold + candidate_iou.std(2, keepdim=True)
        inside = centres_inside(pairs.pred_centres, cxcywh_to_xyxy(pairs.target_boxes))
        return is_candidate & (iou >= threshold) & inside, iou


class SimOTAOneToManyAssigner(OneToManyAssigner):
    """YOLOX's SimOTA with the predicted query box centres as anchor points (Table 6, "SimOTA").

    * Candidate queries (YOLOX's `is_in_boxes_or_center`, the union over the image's targets): the query's
      centre lies inside some target box or inside some target's centre region, the square of half-side
      `center_radius` around the target centre.
    * Cost of (q, t): class_weight * sum_k BCE(s_qk, onehot(c_t)_k) + iou_weight * (-log(IoU + 1e-8)),
      plus 1e5 unless q's centre is inside both t's box and t's centre region.
    * Dynamic k: k_t = max(1, floor(sum of the `candidate_topk` largest IoUs of t over the candidates));
      each target takes its k_t cheapest candidates; a query taken by several targets goes to the one
      with the lowest cost.

    Adaptations: YOLOX's centre region has half-side 2.5 strides around the target centre; queries have
    no stride, so `center_radius` is in normalised image coordinates, default 0.025 (2.5 strides of 8
    pixels on an 800-pixel image). YOLOX scores are sqrt(class * objectness); DETR has no objectness, so
    s is the class sigmoid and the BCE sum is computed from the logits (sum_k softplus(x_k) - x_c, exact
    and stable). YOLOX re-assigns a conflicting query to its cheapest target among all targets; here only
    the targets that selected it compete (as in the other assigners).
    """

    # YOLOX's penalty for pairs outside the target's box-and-centre region: large but finite, so such
    # pairs are still chosen when a target has fewer than k_t better candidates.
    OUTSIDE_CENTRE_PENALTY = 1e5

    def __init__(self, center_radius: float = 0.025, candidate_topk: int = 10, class_weight: float = 1.0,
                 iou_weight: float = 3.0, alpha: float = 1.0, beta: float = 6.0):
        super().__init__(alpha, beta)
        if candidate_topk < 1:
            raise ValueError(f"SimOTAOneToManyAssigner: candidate_topk must be >= 1, got {candidate_topk}")
        self.center_radius = center_radius
        self.candidate_topk = candidate_topk
        self.class_weight = class_weight
        self.iou_weight = iou_weight

    def select_candidates(self, pairs: PairwiseQuality) -> Tuple[Tensor, Tensor]:
        valid = pairs.valid[None, :, None, :]
        target_centres = pairs.target_boxes[..., :2]
        centre_regions = torch.cat([target_centres - self.center_radius, target_centres + self.center_radius], -1)
        in_box = centres_inside(pairs.pred_centres, cxcywh_to_xyxy(pairs.target_boxes)) & valid
        in_centre_region = centres_inside(pairs.pred_centres, centre_regions) & valid
        is_candidate_query = (in_box | in_centre_region).any(-1, keepdim=True)  # (L, N, Q, 1)

        # sum_k BCE(s_k, onehot_k) = sum_k -log(1 - s_k) - log(s_c) + log(1 - s_c) = sum_k softplus(x_k) - x_c
        class_cost = F.softplus(pairs.logits).sum(-1, keepdim=True) - pairs.target_class_logits
        iou_cost = -torch.log(pairs.iou + 1e-8)
        cost = self.class_weight * class_cost + self.iou_weight * iou_cost
        cost = cost + self.OUTSIDE_CENTRE_PENALTY * ~(in_box & in_centre_region)
        cost = cost.masked_fill(~is_candidate_query, float("inf"))

        # k_t <= candidate_topk (every IoU <= 1), so the candidate_topk cheapest queries contain all picks.
        candidate_iou = pairs.iou * is_candidate_query
        top_ious = candidate_iou.topk(min(self.candidate_topk, candidate_iou.shape[2]), dim=2).values
        dynamic_k = top_ious.sum(2, keepdim=True).floor().clamp(min=1)  # (L, N, 1, T)
        cheapest, _ = top_k_queries_per_target(cost, self.candidate_topk, largest=False)
        rank = torch.arange(cheapest.shape[2], device=cost.device)[:, None]
        within_k = rank < dynamic_k  # (L, N, k, T)
        selected = torch.zeros_like(cost, dtype=torch.bool).scatter_(2, cheapest, within_k)
        # A target with fewer than k_t candidate queries would otherwise pick non-candidates (cost inf).
        return selected & is_candidate_query, -cost


ONE_TO_MANY_ASSIGNERS = {
    "task_aligned": TaskAlignedOneToManyAssigner,
    "max_iou": MaxIoUOneToManyAssigner,
    "atss": ATSSOneToManyAssigner,
    "simota": SimOTAOneToManyAssigner,
}


def build_one_to_many_assigner(name: str = "task_aligned", **kwargs) -> OneToManyAssigner:
    """The one-to-many assigner `name` (SEMIDETR.SHM.ASSIGNER), built with `kwargs`."""
    if name not in ONE_TO_MANY_ASSIGNERS:
        raise ValueError(f"build_one_to_many_assigner: unknown one-to-many assigner {name!r}; "
                         f"valid names: {', '.join(ONE_TO_MANY_ASSIGNERS)}")
    return ONE_TO_MANY_ASSIGNERS[name](**kwargs)


def one_to_many_normalizer(assignment: Assignment, num_layers: int) -> Tensor:
    """Per-layer normaliser (L,) of the stage-1 losses: the sum of m_hat over the positives of each layer,
    averaged over processes and clamped to >= 1 (TOOD; like DETR's num_boxes, so batches without
    targets give finite losses).

    Collective: under DDP every process must call this the same number of times per step, including
    processes whose assignment is empty. One all_reduce of L values, no host synchronisation.
    """
    per_layer = assignment.weight.new_zeros(num_layers, dtype=torch.float32)
    per_layer = per_layer.index_add(0, assignment.layer, assignment.weight.float())
    if comm.get_world_size() > 1:
        dist.all_reduce(per_layer)
    return (per_layer / comm.get_world_size()).clamp(min=1.0)


def one_to_many_losses(logits: Tensor, pred_boxes: Tensor, labels: Tensor, boxes: Tensor,
                       assignment: Assignment, normalizer: Tensor, gamma: float = 2.0,
                       image_weights: Optional[Tensor] = None) -> Dict[str, Tensor]:
    """Stage-1 losses (eq. 4 and 5) per decoder layer: {"class", "bbox", "giou"}, each of shape (L,).

    logits (L, N, Q, K) and pred_boxes (L, N, Q, 4) normalised cxcywh; labels (T,) and boxes (T, 4) the
    concatenated targets that `assignment.target` indexes; normalizer a scalar or (L,) tensor (see
    `one_to_many_normalizer`); image_weights (N,) an optional factor on each image's classification loss.
    Unweighted: the caller applies the loss weights.
    """
    a = assignment
    logits = logits.float()
    soft_targets = torch.zeros_like(logits)
    soft_targets[a.layer, a.image, a.query, labels[a.target]] = a.weight.float()
    # |t - s|^gamma * BCE(s, t): GFL's quality focal loss; the modulating factor keeps its gradient
    # (as in GFL/TOOD). BCE from the logits is stable for saturated scores.
    modulating_factor = (soft_targets - logits.sigmoid()).abs().pow(gamma)
    bce = F.binary_cross_entropy_with_logits(logits, soft_targets, reduction="none")
    loss_class = weight_images(modulating_factor * bce, image_weights).flatten(1).sum(1) / normalizer

    return {"class": loss_class, **weighted_box_losses(pred_boxes, boxes, assignment, normalizer)}
