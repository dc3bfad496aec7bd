"""Sine positional embeddings: of feature-map pixels (DETR) and of boxes / reference points (DAB/DINO)."""
import math

import torch
from torch import Tensor, nn

__all__ = ["PositionEmbeddingSine", "sine_embedding_of_boxes"]


class PositionEmbeddingSine(nn.Module):
    """Normalised 2-D sine embedding of the valid (unpadded) part of a feature map.

    Coordinates are normalised by the valid extent of each image, so a padded image gets the same
    embedding on its content as the unpadded one. Output channels: `num_pos_feats` for y, then x.
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi,
                 offset: float = -0.5, eps: float = 1e-6):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale
        self.offset = offset
        self.eps = eps

    def forward(self, padding_mask: Tensor) -> Tensor:
        """padding_mask: (N, H, W), True at padded pixels. Returns (N, 2 * num_pos_feats, H, W)."""
        not_mask = (~padding_mask).to(torch.float32)
        y_embed = not_mask.cumsum(1)
        x_embed = not_mask.cumsum(2)
        y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + self.eps) * self.scale
        x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + self.eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=padding_mask.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def sine_embedding_of_boxes(boxes: Tensor, num_pos_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of normalised points or boxes, each coordinate to `num_pos_feats` channels.

    boxes: (..., 2) as (x, y) or (..., 4) as (cx, cy, w, h), in [0, 1]. Returns (..., num_pos_feats * D)
    ordered (y, x[, w, h]) as in DAB-DETR/DINO, so the decoder's positional query head sees the same
    layout as published checkpoints.
    """
    scale = 2 * math.pi
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    coords = boxes.to(torch.float32)[..., None] * scale / dim_t  # (..., D, F)
    coords = torch.stack((coords[..., 0::2].sin(), coords[..., 1::2].cos()), dim=-1).flatten(-2)
    order = [1, 0] + list(range(2, boxes.shape[-1]))
    return coords[..., order, :].flatten(-2)
