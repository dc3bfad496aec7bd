"""Cross-view query embeddings of Semi-DETR (eq. 9): c = MLP(RoIAlign(F, b)).

Each model (teacher and student) embeds the pseudo boxes of its own view from its own projected
multi-scale features F; the embeddings are then decoded by the *other* model (see
`DeformableDETR.decode_queries` and semidetr/semi/query_consistency.py).
"""
from typing import List, Sequence

from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from torch import Tensor, nn

from .transformer import MLP

__all__ = ["CrossViewQueryEmbedding"]


class CrossViewQueryEmbedding(nn.Module):
    def __init__(self, d_model: int, strides: Sequence[int], roi_size: int = 7):
        """
        Args:
            d_model: channels of the features and of the embeddings.
            strides: stride of each feature level (powers of two, consecutive: 8, 16, 32, 64 for DINO-4scale).
            roi_size: RoIAlign output size.
        """
        super().__init__()
        # detectron2's multi-level RoIAlign (torchvision's aligned roi_align): each box is pooled from
        # the level that matches its scale (FPN rule, canonical 224 px at level 4).
        self.pooler = ROIPooler(output_size=roi_size, scales=[1.0 / s for s in strides], sampling_ratio=0,
                                pooler_type="ROIAlignV2")
        self.mlp = MLP(d_model * roi_size * roi_size, d_model, d_model, 2)

    def forward(self, features: List[Tensor], boxes: List[Tensor]) -> Tensor:
        """features: per level (N, C, H_l, W_l); boxes: per image (n_i, 4) pixel xyxy in the network-input
        frame. Returns (sum n_i, C) embeddings in image order."""
        pooled = self.pooler(features, [Boxes(b) for b in boxes])
        return self.mlp(pooled.flatten(1))
