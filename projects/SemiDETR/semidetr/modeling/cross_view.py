"""Cross-view query embeddings of Semi-DETR: c = projector(RoIAlign(F, b)).

Two projectors (SEMIDETR.CQC.PROJECTOR):
  "mlp"  the paper's eq. 9: a 2-layer MLP on the flattened RoI features; RoIs pooled with detectron2's FPN
         level rule (canonical box 224 px at level 4);
  "conv" the official code's `Projector` (detr_ssod/models/dino_detr_ssod.py:33-72): two 3x3 conv + BN +
         ReLU, FC to 4C + BN + ReLU, FC to C + ReLU; RoIs pooled with mmdet's SingleRoIExtractor rule on
         strides 8-64 (finest_scale 56, dino_detr_ssod.py:97-101), i.e. detectron2's rule with a canonical
         box of 112 px.

The paper has each model embed its own view's boxes, decoded by the other model; the official code has one
projector (trained through the student's decoding) embed the teacher's weak-view features, decoded by both
models (semidetr/semi/query_consistency.py).
"""
from typing import List, Sequence

from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from torch import Tensor, nn

from .transformer import MLP

__all__ = ["CrossViewQueryEmbedding", "PROJECTORS", "CQC_VARIANTS", "resolve_cqc"]

PROJECTORS = ("mlp", "conv")

# SEMIDETR.CQC.VARIANT -> the value of every CQC setting left at "the variant's" (config.py).
CQC_VARIANTS = {
    # detr_ssod/models/dino_detr_ssod.py: one projector on the teacher's weak-view features (:593-605),
    # decoded by the student at the strong-view boxes (:404) and by the teacher at the weak-view boxes
    # without gradient (:446-456); loss 10 * mse(normalize(h_s), normalize(h_t).detach()) per decoder
    # layer (:472-481), multiplied by w_u like every unsupervised "loss" key (:143-148), zero after the
    # warm-up (:469-470); candidates = CPM-kept or score >= tau_s among the mean+std ones (:332-348).
    "official": {"structure": "official", "projector": "conv", "loss": "official_mse", "loss_weight": 10.0,
                 "stages": ("one_to_many",), "candidates": "mined_or_score", "scale_by_unsup_weight": True},
    # The paper's eq. 9-11: each model embeds its own view (c_s, c_t), the other model decodes it; a
    # cosine consistency with weight w_c (eq. 13) throughout training on the CPM-mined boxes.
    "paper": {"structure": "paper", "projector": "mlp", "loss": "cosine", "loss_weight": 1.0,
              "stages": ("one_to_many", "one_to_one"), "candidates": "mined", "scale_by_unsup_weight": False},
}


def resolve_cqc(cfg) -> dict:
    """The CQC settings of a config: SEMIDETR.CQC.VARIANT's values, overridden by the keys that are set."""
    cqc = cfg.SEMIDETR.CQC
    if cqc.VARIANT not in CQC_VARIANTS:
        raise ValueError(f"SEMIDETR.CQC.VARIANT={cqc.VARIANT!r} is not one of {sorted(CQC_VARIANTS)}")
    resolved = dict(CQC_VARIANTS[cqc.VARIANT])
    if cqc.PROJECTOR:
        resolved["projector"] = cqc.PROJECTOR
    if cqc.LOSS:
        resolved["loss"] = cqc.LOSS
    if cqc.LOSS_WEIGHT >= 0:
        resolved["loss_weight"] = float(cqc.LOSS_WEIGHT)
    if cqc.STAGES:
        resolved["stages"] = tuple(cqc.STAGES)
    if cqc.CANDIDATES:
        resolved["candidates"] = cqc.CANDIDATES
    return resolved


class _ConvProjector(nn.Module):
    """The official projector (dino_detr_ssod.py:33-72), with its widths scaled to d_model (256 -> 1024 there).

    Its batch norms always normalise with the statistics of the batch's RoIs (no running statistics): the
    official projector only ever runs in training mode, and running statistics would differ between
    processes (each sees its own RoIs; buffers are not broadcast)."""

    def __init__(self, d_model: int, roi_size: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(d_model, d_model, 3, padding=1, bias=False),
            nn.BatchNorm2d(d_model, track_running_stats=False), nn.ReLU(),
            nn.Conv2d(d_model, d_model, 3, padding=1, bias=False),
            nn.BatchNorm2d(d_model, track_running_stats=False), nn.ReLU())
        self.fcs = nn.Sequential(
            nn.Flatten(), nn.Linear(d_model * roi_size * roi_size, 4 * d_model),
            nn.BatchNorm1d(4 * d_model, track_running_stats=False), nn.ReLU(), nn.Linear(4 * d_model, d_model), nn.ReLU())

    def forward(self, pooled: Tensor) -> Tensor:
        n = pooled.shape[0]
        if n == 0:  # nothing to embed: an empty result that still ties the parameters to the graph (DDP)
            return pooled.new_zeros(0, self.fcs[-2].out_features) + 0.0 * sum(p.sum() for p in self.parameters())
        if n == 1:
            # Batch norm needs two values; two copies give the statistics of the official code's five
            # copies of every box (dino_detr_ssod.py:533-593).
            return self.fcs(self.convs(pooled.expand(2, -1, -1, -1)))[:1]
        return self.fcs(self.convs(pooled))


class CrossViewQueryEmbedding(nn.Module):
    def __init__(self, d_model: int, strides: Sequence[int], roi_size: int = 7, projector: str = "mlp"):
        """
        Args:
            d_model: channels of the features and of the embeddings.
            strides: stride of each feature level (powers of two, consecutive: 8, 16, 32, 64 for DINO-4scale).
            roi_size: RoIAlign output size.
            projector: "mlp" (paper) or "conv" (official code), see the module docstring.
        """
        super().__init__()
        if projector not in PROJECTORS:
            raise ValueError(f"CrossViewQueryEmbedding: projector={projector!r} is not one of {PROJECTORS}")
        # detectron2's multi-level RoIAlign (torchvision's aligned roi_align): each box is pooled from
        # the level that matches its scale.
        self.pooler = ROIPooler(output_size=roi_size, scales=[1.0 / s for s in strides], sampling_ratio=0,
                                pooler_type="ROIAlignV2", canonical_box_size=112 if projector == "conv" else 224)
        # Attribute names keep the state-dict keys of checkpoints written before the "conv" projector.
        if projector == "conv":
            self.conv_projector = _ConvProjector(d_model, roi_size)
        else:
            self.mlp = MLP(d_model * roi_size * roi_size, d_model, d_model, 2)
        self.projector_kind = projector

    def pool(self, features: List[Tensor], boxes: List[Tensor]) -> Tensor:
        """RoI features (sum n_i, C, S, S) of per-image (n_i, 4) pixel xyxy boxes (no parameters involved)."""
        return self.pooler(features, [Boxes(b) for b in boxes])

    def project(self, pooled: Tensor) -> Tensor:
        """(n, C, S, S) RoI features -> (n, C) embeddings."""
        return self.conv_projector(pooled) if self.projector_kind == "conv" else self.mlp(pooled.flatten(1))

    def forward(self, features: List[Tensor], boxes: List[Tensor]) -> Tensor:
        """features: per level (N, C, H_l, W_l); boxes: per image (n_i, 4) pixel xyxy in the network-input
        frame. Returns (sum n_i, C) embeddings in image order."""
        return self.project(self.pool(features, boxes))
