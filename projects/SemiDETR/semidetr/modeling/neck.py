"""Multi-scale input projection: backbone maps -> the transformer's feature levels (F in the paper)."""
import math
from typing import List

from torch import Tensor, nn

__all__ = ["MultiScaleProjection"]


def _group_norm(channels: int) -> nn.GroupNorm:
    # 32 groups as DINO/Deformable DETR; fewer when a small model has fewer (or indivisible) channels.
    return nn.GroupNorm(math.gcd(32, channels), channels)


class MultiScaleProjection(nn.Module):
    """Project each backbone map to `d_model` channels (1x1 conv + GroupNorm) and add
    `num_levels - len(in_channels)` coarser levels with stride-2 3x3 convolutions, the first on the
    coarsest backbone map (DINO-4scale: res3, res4, res5 + one extra level)."""

    def __init__(self, in_channels: List[int], d_model: int, num_levels: int):
        super().__init__()
        if num_levels < len(in_channels):
            raise ValueError(
                f"MODEL.DETR.NUM_FEATURE_LEVELS ({num_levels}) < number of MODEL.DETR.IN_FEATURES "
                f"({len(in_channels)}): use fewer IN_FEATURES or more levels")
        projections = [nn.Sequential(nn.Conv2d(c, d_model, kernel_size=1), _group_norm(d_model)) for c in in_channels]
        previous = in_channels[-1]
        for _ in range(num_levels - len(in_channels)):
            projections.append(nn.Sequential(nn.Conv2d(previous, d_model, kernel_size=3, stride=2, padding=1),
                                             _group_norm(d_model)))
            previous = d_model
        self.projections = nn.ModuleList(projections)
        self.num_backbone_levels = len(in_channels)
        for projection in self.projections:
            nn.init.xavier_uniform_(projection[0].weight, gain=1)
            nn.init.zeros_(projection[0].bias)

    def forward(self, features: List[Tensor]) -> List[Tensor]:
        outputs = [proj(x) for proj, x in zip(self.projections, features)]
        previous = features[-1]
        for proj in self.projections[self.num_backbone_levels:]:
            previous = proj(previous)
            outputs.append(previous)
        return outputs
