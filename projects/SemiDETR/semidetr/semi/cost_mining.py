"""Cost-based Pseudo Label Mining (CPM, Semi-DETR Sec. 3.5, Fig. 5) and the Table 5 alternatives.

CPM chooses which teacher boxes feed the cross-view query consistency loss:

  1. initial candidates per image: teacher detections with score >= mean + std of that image's scores
     (`mean_std_candidates`);
  2. the matching cost of every candidate (eq. 12): one Hungarian matching per image of the candidates
     against the student's predictions on the same view, cost 2 * focal class + 2 * GIoU + 5 * L1 (the
     DETR matcher's cost, `pairwise_matching_cost`); a candidate's cost is the cost of its matched pair
     (`candidate_matching_costs`);
  3. a two-component Gaussian mixture fitted on the costs of the whole batch, gathered from all
     processes every iteration; the threshold is the mean of the low-cost (reliable) component and the
     candidates at or below it are kept (`gmm_cost_threshold`).

`PseudoLabelMiner` runs one of the four Table 5 rules ("fixed", "topk", "mean_std", "gmm") in the two
steps of the trainer: `candidates` on the teacher's scores (before the student's forward), `select` among
them (after it, against the student's predictions). It returns masks; what they are worth against the
ground truth (Table 5's precision and recall) is measured by semi/monitoring.py.

Boxes are normalised cxcywh in the student view's frame throughout (the frame of the student's
predictions); IoU is invariant to the per-axis normalisation, so precision/recall are the pixel values.
"""
import warnings
from typing import Dict, List, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from detectron2.utils import comm
from scipy.optimize import linear_sum_assignment
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from torch import Tensor
from torch.profiler import record_function

from ..modeling.matcher import pad_targets, pairwise_matching_cost

__all__ = [
    "MINING_METHODS",
    "MinedSelection",
    "PseudoLabelMiner",
    "candidate_matching_costs",
    "gmm_cost_threshold",
    "mean_std_candidates",
]

MINING_METHODS = ("fixed", "topk", "mean_std", "gmm")

# Absolute slack of the mean + std comparison: scores live in [0, 1], and without it the rounding of
# the mean could put the threshold a few ulps above a set of identical scores and select none of them.
_SCORE_TOLERANCE = 1e-6


def mean_std_candidates(scores: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """Mask of the detections whose score is >= mean + std of their image's scores.

    scores: (m,) one image, or (N, M) a padded batch with `valid` (N, M) marking the real entries.
    Returns a bool tensor of the same shape (False on padding), on the scores' device, without a host sync.

    std is the population standard deviation (unbiased=False): with the sample std two detections
    could never pass (mean + std = max + 0.21 * gap) and one detection would give NaN. Consequences:
    0 detections -> empty mask; 1 detection -> kept (std 0); identical scores -> all kept; and, as in
    the paper's definition, an image can keep nothing (e.g. scores 0, 1, 1, 1: mean + std = 1.18).
    A tolerance of 1e-6 absorbs the rounding of the mean.
    """
    single = scores.dim() == 1
    if single:
        scores = scores[None]
        valid = torch.ones_like(scores, dtype=torch.bool) if valid is None else valid[None]
    elif valid is None:
        valid = torch.ones_like(scores, dtype=torch.bool)
    weight = valid.to(scores.dtype)
    count = weight.sum(1, keepdim=True).clamp(min=1)
    mean = (scores * weight).sum(1, keepdim=True) / count
    std = (((scores - mean) * weight).pow(2).sum(1, keepdim=True) / count).sqrt()
    keep = (scores >= mean + std - _SCORE_TOLERANCE) & valid
    return keep[0] if single else keep


def _matched_costs(pred_logits: Tensor, pred_boxes: Tensor, labels: Tensor, boxes: Tensor, counts: List[int], *,
                   cost_class: float, cost_giou: float, cost_bbox: float, focal_alpha: float,
                   focal_gamma: float) -> List[np.ndarray]:
    """Per-image matched cost of padded targets labels (N, T), boxes (N, T, 4) whose first counts[i]
    entries are real. Returns N float64 arrays (counts[i],), +inf for targets left unmatched (T > Q)."""
    # float32 with autocast off under mixed precision (SOLVER.AMP): the GMM separates costs that differ
    # by less than bfloat16's resolution at their magnitude (~0.03 at a cost of 8).
    with torch.autocast(pred_logits.device.type, enabled=False):
        cost = pairwise_matching_cost(
            pred_logits.detach().float(), pred_boxes.detach().float(), labels, boxes.float(),
            cost_class=cost_class, cost_bbox=cost_bbox, cost_giou=cost_giou,
            focal_alpha=focal_alpha, focal_gamma=focal_gamma,
        )
    cost_cpu = cost.cpu().numpy().astype(np.float64)  # the single device->host copy
    # The solver must not see NaN/inf (it raises); the reported cost keeps the raw value, so such a
    # candidate is ignored by the GMM and never selected.
    solvable = np.nan_to_num(cost_cpu, nan=1e8, posinf=1e8, neginf=-1e8)
    result = []
    for image, n in enumerate(counts):
        matched = np.full(n, np.inf)
        if n:
            rows, cols = linear_sum_assignment(solvable[image, :, :n])
            matched[cols] = cost_cpu[image, rows, cols]
        result.append(matched)
    return result


@torch.no_grad()
def candidate_matching_costs(pred_logits: Tensor, pred_boxes: Tensor, candidates: Sequence[Dict[str, Tensor]], *,
                             cost_class: float = 2.0, cost_giou: float = 2.0, cost_bbox: float = 5.0,
                             focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> List[Tensor]:
    """Matching cost (eq. 12) of every candidate pseudo box against the student's predictions.

    pred_logits (N, Q, K) and pred_boxes (N, Q, 4, normalised cxcywh): the student's matching-query
    predictions on the N images (no denoising queries). candidates: per image {"labels": (n_i,),
    "boxes": (n_i, 4) normalised cxcywh} in the same frame. The costs of all images are computed as one
    padded tensor, copied to the host once, and one Hungarian matching per image assigns each candidate a
    distinct prediction; a candidate's cost is the cost of its matched pair. If n_i > Q the Q best-matched
    candidates get their cost and the others +inf (no prediction left for them: least reliable).
    Returns N float64 CPU tensors (n_i,) - CPU because they feed the (CPU) Gaussian mixture.
    """
    counts = [len(c["labels"]) for c in candidates]
    if sum(counts) == 0:
        return [torch.zeros(n, dtype=torch.float64) for n in counts]
    labels, boxes, _ = pad_targets(list(candidates), pred_logits.device)
    costs = _matched_costs(pred_logits, pred_boxes, labels, boxes.float(), counts, cost_class=cost_class,
                           cost_giou=cost_giou, cost_bbox=cost_bbox, focal_alpha=focal_alpha,
                           focal_gamma=focal_gamma)
    return [torch.from_numpy(c) for c in costs]


def gmm_cost_threshold(costs: Union[Tensor, np.ndarray, Sequence[float]], *, random_state: int = 0,
                       reg_covar: float = 1e-3, max_iter: int = 100) -> float:
    """Cost threshold of CPM: the mean of the low-cost component of a 2-component Gaussian mixture.

    costs: 1-D, any order (the batch's costs gathered from all processes). NaN/inf costs are ignored.
    Keep a candidate iff cost <= threshold. The returned threshold is snapped to the largest observed cost
    <= the low component's mean, so the inclusive comparison is exact on the fitted costs (a component
    collapsed on one value keeps that value instead of losing it to rounding) and the candidate with the
    lowest cost is always kept. Deterministic and order independent: the costs are sorted and the fit is
    fully initialised (means at the min and max cost, equal weights, unit precision in standardised units),
    so every process fitting the same gathered costs gets the same threshold without a broadcast.

    Degenerate inputs, never raising nor returning NaN:
      no finite cost -> -inf (nothing selected);
      one cost, or all costs identical (no second mode to separate) -> that cost (all kept);
      two distinct values -> one component per value -> the lower value (the lower ones kept).
    The fit runs on standardised costs, so `reg_covar` (added to the variances) is relative to the batch's
    spread and a component sitting on identical costs cannot make the covariance singular.
    """
    if isinstance(costs, Tensor):
        costs = costs.detach().cpu().numpy()
    x = np.asarray(costs, dtype=np.float64).ravel()
    x = np.sort(x[np.isfinite(x)])
    if x.size == 0:
        return float("-inf")
    if x[0] == x[-1]:
        return float(x[0])
    centre, scale = x.mean(), x.std()
    z = ((x - centre) / scale)[:, None]
    gmm = GaussianMixture(
        n_components=2, covariance_type="full", reg_covar=reg_covar, max_iter=max_iter, n_init=1,
        weights_init=[0.5, 0.5], means_init=[[z[0, 0]], [z[-1, 0]]], precisions_init=[[[1.0]], [[1.0]]],
        # Every parameter is initialised above; this only fixes the (unused) initial responsibilities.
        init_params="random_from_data", random_state=random_state,
    )
    with warnings.catch_warnings():
        # A fit stopped at max_iter still has usable means; the warning would flood the log.
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(z)
    low_mean = float(gmm.means_.min()) * scale + centre
    # The low mean is a weighted average of the costs, hence >= x[0]; the slack absorbs the rounding
    # of the standardisation round trip.
    slack = 1e-9 * max(1.0, float(np.abs(x).max()))
    index = max(int(np.searchsorted(x, low_mean + slack, side="right")) - 1, 0)
    return float(x[index])


class MinedSelection(NamedTuple):
    """keep: per image a (n_i,) bool mask over the candidates, on their device. threshold: the cost
    threshold ("gmm", shared by all processes; -inf when no process had a finite cost), the score threshold
    ("fixed"), None for the per-image rules ("topk", "mean_std"). method: the rule that selected."""

    keep: List[Tensor]
    threshold: Optional[float]
    method: str


class PseudoLabelMiner:
    """Selects the teacher boxes of the cross-view consistency loss (Semi-DETR Table 5).

    method:
      "fixed"    score >= score_threshold (paper: 0.4);
      "topk"     the `topk` highest-scoring detections of each image (paper: 9);
      "mean_std" score >= mean + std of the image's scores;
      "gmm"      CPM: the mean+std candidates whose matching cost against the student's predictions is
                 <= the GMM threshold of the batch's costs gathered from all processes.
    gather: gather the costs over processes (detectron2 comm.all_gather) for "gmm". It is a collective:
    every process must call `select` every iteration, with or without candidates.
    """

    def __init__(self, method: str = "gmm", *, score_threshold: float = 0.4, topk: int = 9,
                 cost_class: float = 2.0, cost_giou: float = 2.0, cost_bbox: float = 5.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, gather: bool = True, random_state: int = 0):
        if method not in MINING_METHODS:
            raise ValueError(f"PseudoLabelMiner: method={method!r} is not one of {', '.join(MINING_METHODS)}")
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"PseudoLabelMiner: score_threshold={score_threshold} must lie in [0, 1]")
        if int(topk) != topk or topk < 1:
            raise ValueError(f"PseudoLabelMiner: topk={topk} must be a positive integer")
        if cost_class == 0 and cost_giou == 0 and cost_bbox == 0:
            raise ValueError("PseudoLabelMiner: all matching costs are 0")
        self.method = method
        self.score_threshold = float(score_threshold)
        self.topk = int(topk)
        self.cost_weights = dict(cost_class=cost_class, cost_giou=cost_giou, cost_bbox=cost_bbox,
                                 focal_alpha=focal_alpha, focal_gamma=focal_gamma)
        self.gather = gather
        self.random_state = random_state

    def candidates(self, teacher_scores: Sequence[Tensor]) -> List[Tensor]:
        """Per image, the (m_i,) mask of the detections the method may select: score >= score_threshold
        ("fixed"), the `topk` best ("topk"), or score >= mean + std ("mean_std", and the candidates whose
        cost "gmm" then judges). No host synchronisation."""
        if self.method == "fixed":
            return [s >= self.score_threshold for s in teacher_scores]
        if self.method == "topk":
            masks = []
            for s in teacher_scores:
                mask = torch.zeros_like(s, dtype=torch.bool)
                mask[s.topk(min(self.topk, len(s))).indices] = True
                masks.append(mask)
            return masks
        return [mean_std_candidates(s) for s in teacher_scores]

    @torch.no_grad()
    @record_function("semi/cpm_mining")
    def select(self, candidate_labels: Sequence[Tensor], candidate_boxes: Sequence[Tensor],
               student_logits: Optional[Tensor] = None, student_boxes: Optional[Tensor] = None) -> MinedSelection:
        """Which candidates are kept. Only "gmm" judges the candidates (their matching cost against the
        student, gathered over processes: a collective that every process must call every iteration); the
        other methods keep them all.

        candidate_labels (n_i,), candidate_boxes (n_i, 4) normalised cxcywh in the student's view;
        student_logits (N, Q, K) and student_boxes (N, Q, 4) the student's matching-query predictions."""
        if self.method != "gmm":
            keep = [torch.ones_like(labels, dtype=torch.bool) for labels in candidate_labels]
            return MinedSelection(keep, self.score_threshold if self.method == "fixed" else None, self.method)
        counts = [len(labels) for labels in candidate_labels]
        local_costs: List[np.ndarray] = [np.zeros(0) for _ in counts]
        if sum(counts):
            if student_logits is None or student_boxes is None:
                raise ValueError("PseudoLabelMiner(method='gmm') needs the student's logits and boxes")
            if student_logits.shape[0] != len(counts):
                raise ValueError(f"PseudoLabelMiner: {student_logits.shape[0]} student images for "
                                 f"{len(counts)} teacher images")
            local_costs = [c.numpy() for c in candidate_matching_costs(
                student_logits, student_boxes,
                [{"labels": l, "boxes": b.reshape(-1, 4)} for l, b in zip(candidate_labels, candidate_boxes)],
                **self.cost_weights)]
        local = np.concatenate(local_costs) if local_costs else np.zeros(0)
        # Collective on every call, even with no candidate here: other processes may have some.
        gathered = comm.all_gather(local) if self.gather else [local]
        threshold = gmm_cost_threshold(np.concatenate(gathered), random_state=self.random_state)
        device = candidate_labels[0].device if candidate_labels else torch.device("cpu")
        # NaN/inf costs compare False: never kept.
        keep = [torch.from_numpy(cost <= threshold).to(device) for cost in local_costs]
        return MinedSelection(keep, threshold, self.method)
