"""Cross-view Query Consistency (Semi-DETR Sec. 3.4) with Cost-based Pseudo Label Mining (Sec. 3.5).

Two structures (SEMIDETR.CQC.VARIANT, settings resolved by `modeling.cross_view.resolve_cqc`):

"paper" (eq. 9-11), per unlabeled image:
  1. candidates: teacher detections on the weak view chosen by the miner's candidate rule (CPM: score >=
     mean + std), mapped into the strong view (boxes the mapping drops are dropped on both sides);
  2. c_t = teacher projector(RoIAlign(F_t, b_weak)) without gradient; the student decodes c_t as
     cross-view queries positioned at b_strong, in the same pass as its own queries (eq. 10, bottom);
  3. c_s = student projector(RoIAlign(F_s, b_strong)), computed in the student's forward; the teacher
     decodes c_s positioned at b_weak (eq. 10, top), reusing its encoded weak view;
  4. the miner keeps the candidates whose matching cost against the student's predictions is below the
     GMM threshold of the batch (CPM); the consistency loss (eq. 11) compares the decoded embeddings of
     the kept candidates, at every decoder layer.
  By default (SEMIDETR.CQC.GRAD_THROUGH_TEACHER) the loss reaches c_s through the teacher's frozen decoder,
  which is what trains the student's projector; otherwise the teacher's embeddings are a pure target.

"official" (detr_ssod/models/dino_detr_ssod.py:362-481):
  1. the same candidates;
  2. one embedding c = student projector(RoIAlign(F_t, b_weak)) of the teacher's weak-view features: the
     RoI features are pooled here without gradient, the student's forward projects them (so the projector
     trains through the student's decoding) and decodes c at b_strong;
  3. the teacher decodes the same c at b_weak without gradient (a stop-gradient target);
  4. the loss compares the kept candidates' decoded embeddings, h_s against h_t.detach().

The teacher's parameters never receive gradients.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import record_function

from ..data.geometry import map_instances
from ..modeling.box_ops import xyxy_to_cxcywh
from ..modeling.detector import CrossViewQueries
from .cost_mining import MinedSelection, PseudoLabelMiner

__all__ = ["CrossViewCandidates", "CrossViewConsistency", "consistency_loss", "CONSISTENCY_LOSSES"]

CONSISTENCY_LOSSES = ("cosine", "normalized_mse", "official_mse")
CANDIDATE_SETS = ("mined", "mined_or_score")
STRUCTURES = ("paper", "official")


def consistency_loss(student: Tensor, teacher: Tensor, kind: str = "cosine", extra_count: int = 0) -> Tensor:
    """Consistency between decoded embeddings (L, M, C) of M boxes at L decoder layers: summed over
    layers (like the auxiliary losses), averaged over boxes.

    "cosine": 1 - cos(o_s, o_t), eq. 11 up to the constant 1 (same gradients; zero at agreement);
    "normalized_mse": |o_s/|o_s| - o_t/|o_t||^2 = 2 - 2 cos;
    "official_mse": F.mse_loss(normalize(o_s), normalize(o_t)) averaged over boxes *and channels*, i.e.
        (2 - 2 cos) / C, with `extra_count` more entries in the average (the official code's zero-weight
        placeholder box of every image without a candidate, dino_detr_ssod.py:515-516, 575-578, 479).
    No box: an exact zero that stays in the autograd graph."""
    if kind not in CONSISTENCY_LOSSES:
        raise ValueError(f"consistency_loss: kind={kind!r} is not one of {CONSISTENCY_LOSSES}")
    if student.shape[1] == 0:
        return student.sum() * 0.0 + teacher.sum() * 0.0
    cosine = F.cosine_similarity(student.float(), teacher.float(), dim=-1)  # (L, M)
    if kind == "cosine":
        return (1.0 - cosine).sum(0).mean()
    if kind == "normalized_mse":
        return (2.0 - 2.0 * cosine).sum(0).mean()
    squared = (F.normalize(student.float(), dim=-1) - F.normalize(teacher.float(), dim=-1)).pow(2).mean(-1)
    return squared.sum(0).sum() / (student.shape[1] + extra_count)


@dataclass
class CrossViewCandidates:
    """Teacher boxes offered to the consistency loss, per unlabeled image (after the weak->strong mapping).

    weak_boxes / strong_boxes: (x_i, 4) pixel xyxy in the weak / strong view; labels, scores: (x_i,);
    teacher_embeddings: (x_i, C) c_t ("paper"), or teacher_rois: (x_i, C, S, S) RoI features of the
    teacher's weak view ("official"); strong_sizes / weak_sizes: (h, w) of the views."""

    weak_boxes: List[Tensor]
    strong_boxes: List[Tensor]
    labels: List[Tensor]
    scores: List[Tensor]
    teacher_embeddings: Optional[List[Tensor]]
    weak_sizes: List[tuple]
    strong_sizes: List[tuple]
    teacher_rois: Optional[List[Tensor]] = None

    @property
    def counts(self) -> List[int]:
        return [len(b) for b in self.strong_boxes]

    def normalised_strong_boxes(self) -> List[Tensor]:
        return [_normalise(b, size) for b, size in zip(self.strong_boxes, self.strong_sizes)]

    def normalised_weak_boxes(self) -> List[Tensor]:
        return [_normalise(b, size) for b, size in zip(self.weak_boxes, self.weak_sizes)]


def _normalise(boxes: Tensor, size) -> Tensor:
    h, w = size
    return xyxy_to_cxcywh(boxes / boxes.new_tensor([w, h, w, h]))


class CrossViewConsistency:
    def __init__(self, miner: PseudoLabelMiner, *, structure: str = "paper", loss: str = "cosine",
                 loss_weight: float = 1.0, stages: Sequence[str] = ("one_to_many", "one_to_one"),
                 grad_through_teacher: bool = True, min_box_size: float = 1.0, candidates: str = "mined",
                 score_threshold: float = 0.4, scale_by_unsup_weight: bool = False):
        """
        Args:
            miner: CPM (or a Table 5 rule): candidate rule and selection.
            structure: "paper" or "official" (module docstring).
            loss, loss_weight: `consistency_loss` kind and its factor (w_c).
            stages: training stages with the loss.
            grad_through_teacher: "paper" only: whether the loss reaches c_s through the teacher decoder.
            candidates: "mined" (the miner's selection) or "mined_or_score" (the miner's selection, plus the
                candidates with score >= score_threshold: the official code's set).
            score_threshold: tau_s of "mined_or_score".
            scale_by_unsup_weight: the trainer multiplies the loss by w_u too (the official code does).
        """
        # `loss` is checked where it is interpreted (consistency_loss); the config keys in config_checks.
        if structure not in STRUCTURES:
            raise ValueError(f"CrossViewConsistency: structure={structure!r} is not one of {STRUCTURES}")
        if candidates not in CANDIDATE_SETS:
            raise ValueError(f"CrossViewConsistency: candidates={candidates!r} is not one of {CANDIDATE_SETS}")
        self.miner = miner
        self.structure = structure
        self.loss_kind = loss
        self.loss_weight = loss_weight
        self.stages = tuple(stages)
        self.grad_through_teacher = grad_through_teacher
        self.min_box_size = min_box_size
        self.candidate_set = candidates
        self.score_threshold = score_threshold
        self.scale_by_unsup_weight = scale_by_unsup_weight

    def active(self, stage: str) -> bool:
        return stage in self.stages

    @torch.no_grad()
    def candidates(self, teacher, teacher_encoded, predictions, weak_views: List[Dict],
                   strong_views: List[Dict]) -> CrossViewCandidates:
        """Steps 1-2: candidates from the teacher's detections (weak-view Instances) and their c_t."""
        masks = self.miner.candidates([p.scores for p in predictions])
        weak_boxes, strong_boxes, labels, scores = [], [], [], []
        for prediction, mask, weak, strong in zip(predictions, masks, weak_views, strong_views):
            selected = prediction[mask]
            mapped, keep = map_instances(selected, weak, strong, self.min_box_size)
            weak_boxes.append(selected.pred_boxes.tensor[keep])
            strong_boxes.append(mapped.pred_boxes.tensor)
            labels.append(mapped.pred_classes)
            scores.append(mapped.scores)
        counts = [len(b) for b in weak_boxes]
        sizes = dict(weak_sizes=list(teacher_encoded.images.image_sizes),
                     strong_sizes=[tuple(s["image"].shape[-2:]) for s in strong_views])
        if self.structure == "official":
            # The RoI features only (the pooler has no parameters): the student's projector embeds them.
            rois = teacher.cross_view_embedding.pool(teacher_encoded.srcs, weak_boxes)
            return CrossViewCandidates(weak_boxes, strong_boxes, labels, scores, None,
                                       teacher_rois=list(rois.split(counts)), **sizes)
        flat = teacher.cross_view_embedding(teacher_encoded.srcs, weak_boxes)
        return CrossViewCandidates(weak_boxes, strong_boxes, labels, scores, list(flat.split(counts)), **sizes)

    def student_inputs(self, candidates: CrossViewCandidates) -> List[Dict]:
        """Per unlabeled image, the keys that make the student decode the cross-view queries at the
        strong-view boxes: c_t ("paper"; the student also embeds those boxes itself, c_s), or the teacher's
        RoI features that the student's projector embeds into c ("official")."""
        if self.structure == "official":
            return [{"cross_view_roi_features": r, "cross_view_boxes": b}
                    for r, b in zip(candidates.teacher_rois, candidates.strong_boxes)]
        return [{"cross_view_queries": c, "cross_view_boxes": b}
                for c, b in zip(candidates.teacher_embeddings, candidates.strong_boxes)]

    def loss(self, teacher, teacher_encoded, candidates: CrossViewCandidates, student_hidden: Tensor,
             student_embeddings: Tensor, student_logits: Tensor,
             student_boxes: Tensor) -> Tuple[Tensor, MinedSelection]:
        """Steps 3-4. student_hidden (L, N_u, X, C): the student's decoded cross-view queries of the N_u
        unlabeled images; student_embeddings (sum x_i, C): the embeddings the teacher decodes (c_s, or the
        official c); student_logits / student_boxes: its final predictions on those images. Returns
        (weighted loss, the MinedSelection of the candidates in the loss, for semi/monitoring.py); the
        trainer multiplies the loss by w_u when `scale_by_unsup_weight`."""
        counts = candidates.counts
        selection = self.miner.select(
            candidates.labels, candidates.normalised_strong_boxes(), student_logits.detach(), student_boxes.detach())
        keep = selection.keep
        if self.candidate_set == "mined_or_score":
            keep = [k | (s >= self.score_threshold) for k, s in zip(keep, candidates.scores)]

        own = list(student_embeddings.split(counts))
        cross = CrossViewQueries.pad(own, candidates.normalised_weak_boxes())
        # "official": the teacher's decoding is a stop-gradient target (dino_detr_ssod.py:446, 479).
        through_teacher = self.grad_through_teacher and self.structure == "paper"
        with torch.set_grad_enabled(through_teacher and torch.is_grad_enabled()), \
                record_function("semi/cqc_teacher_decode"):
            _, teacher_hidden = teacher.decode_queries(teacher_encoded, None, cross.content, cross.reference)
        if not through_teacher:
            teacher_hidden = teacher_hidden.detach()

        selected = _pad_mask(keep, student_hidden.shape[2], student_hidden.device)
        images_without = int(torch.stack([~k.any() for k in keep]).sum()) \
            if self.loss_kind == "official_mse" and keep else 0
        loss = consistency_loss(student_hidden[:, selected], teacher_hidden[:, selected], self.loss_kind,
                                extra_count=images_without)
        if not through_teacher and self.structure == "paper":
            # c_s is then outside the loss; keep the student's projector in the graph (zero gradient) so
            # DDP sees the same used parameters in every step.
            loss = loss + 0.0 * student_embeddings.sum()
        return self.loss_weight * loss, selection._replace(keep=keep)


def _pad_mask(masks: List[Tensor], width: int, device) -> Tensor:
    padded = torch.zeros(len(masks), width, dtype=torch.bool, device=device)
    for i, mask in enumerate(masks):
        padded[i, :len(mask)] = mask.to(device)
    return padded
