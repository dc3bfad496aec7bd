"""Deformable transformer of DINO and (two-stage, box-refining) Deformable DETR.

    encode()          deformable self-attention over the flattened multi-scale features -> memory (E)
    select_queries()  two-stage query selection from encoder proposals (top-k by class score)
    decode()          deformable decoder with iterative box refinement over any set of queries
                      (denoising, matching and Semi-DETR's cross-view queries share one pass)

The prediction heads live here too, because box refinement inside the decoder uses them.
"""
import copy
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .box_ops import inverse_sigmoid
from .ms_deform_attn import MSDeformAttn
from .position_encoding import sine_embedding_of_boxes

__all__ = ["MLP", "DeformableTransformer", "EncoderMemory", "QuerySelection", "DecoderOutput"]


class MLP(nn.Module):
    """Plain multi-layer perceptron with ReLU between layers."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def _activation(name: str):
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu
    raise ValueError(f"Unknown activation {name!r} (MODEL.DETR.ACTIVATION): use 'relu' or 'gelu'")


class DeformableEncoderLayer(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, dropout: float, activation: str, n_levels: int,
                 n_heads: int, n_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_heads, n_levels, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = _activation(activation)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, padding_mask):
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, padding_mask=padding_mask)
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class DeformableDecoderLayer(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, dropout: float, activation: str, n_levels: int,
                 n_heads: int, n_points: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformAttn(d_model, n_heads, n_levels, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = _activation(activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt, query_pos, reference_points, memory, spatial_shapes, memory_padding_mask, self_attn_mask):
        q = k = tgt + query_pos
        attended = self.self_attn(q, k, tgt, attn_mask=self_attn_mask, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(attended))
        attended = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes,
                                   padding_mask=memory_padding_mask)
        tgt = self.norm1(tgt + self.dropout1(attended))
        ffn = self.linear2(self.dropout3(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(ffn))


@dataclass
class EncoderMemory:
    """The encoded image (E in the paper) and what the decoder needs to attend to it."""

    memory: Tensor  # (N, S, C)
    padding_mask: Tensor  # (N, S), True at padded positions
    spatial_shapes: List[Tuple[int, int]]  # (H_l, W_l) per level, python ints (no device sync)
    valid_ratios: Tensor  # (N, L, 2): valid (w, h) fraction of each level


@dataclass
class QuerySelection:
    """Matching queries chosen from the encoder proposals, and the proposals' own predictions (for the
    encoder loss)."""

    content: Tensor  # (N, Q, C)
    reference: Tensor  # (N, Q, 4) unsigmoided cxcywh, detached
    enc_logits: Tensor  # (N, Qe, Ke)
    enc_boxes: Tensor  # (N, Qe, 4) normalised cxcywh


@dataclass
class DecoderOutput:
    hidden: Tensor  # (L, N, T, C) per-layer query features (after the decoder norm, if any)
    logits: Tensor  # (L, N, T, K)
    boxes: Tensor  # (L, N, T, 4) normalised cxcywh


def encoder_output_proposals(memory: Tensor, padding_mask: Tensor, spatial_shapes: Sequence[Tuple[int, int]]):
    """One proposal per encoder position: its pixel centre with a level-dependent size 0.05 * 2^l
    (Deformable DETR two-stage). Returns (unsigmoided proposals (N, S, 4) with +inf where invalid,
    validity (N, S)). Positions in padding or too close to the border are invalid."""
    batch_size = memory.shape[0]
    # Box coordinates in at least float32: under mixed precision bfloat16 would put a proposal centre up
    # to ~0.4% of the image (half a pixel of the finest map) off its pixel.
    dtype = torch.promote_types(memory.dtype, torch.float32)
    proposals = []
    start = 0
    for level, (height, width) in enumerate(spatial_shapes):
        mask = padding_mask[:, start:start + height * width].view(batch_size, height, width)
        valid_h = (~mask[:, :, 0]).sum(1).to(dtype)
        valid_w = (~mask[:, 0, :]).sum(1).to(dtype)
        grid_y, grid_x = torch.meshgrid(
            torch.arange(height, dtype=dtype, device=memory.device),
            torch.arange(width, dtype=dtype, device=memory.device), indexing="ij")
        grid = torch.stack([grid_x, grid_y], -1)[None] + 0.5  # (1, H, W, 2)
        scale = torch.stack([valid_w, valid_h], -1).view(batch_size, 1, 1, 2)
        centres = grid / scale
        sizes = torch.full_like(centres, 0.05 * (2.0 ** level))
        proposals.append(torch.cat([centres, sizes], -1).view(batch_size, -1, 4))
        start += height * width
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1) & ~padding_mask
    proposals = torch.log(proposals / (1 - proposals))
    proposals = proposals.masked_fill(~valid[..., None], float("inf"))
    return proposals, valid


class DeformableTransformer(nn.Module):
    def __init__(
        self,
        *,
        num_classes: int,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.0,
        activation: str = "relu",
        num_feature_levels: int = 4,
        enc_n_points: int = 4,
        dec_n_points: int = 4,
        num_queries: int = 900,
        query_init: str = "mixed",
        look_forward_twice: bool = True,
        share_pred_heads: bool = True,
    ):
        """
        Args:
            query_init: "mixed" (DINO mixed query selection: learnable content, positions from the top-k
                encoder proposals, class-aware encoder loss on the selected proposals, positional query
                recomputed from the refined box at every layer, final decoder norm) or "proposal"
                (Deformable DETR two-stage: content and a fixed positional query from an embedding of
                the top-k proposals, class-agnostic encoder loss on all positions).
            look_forward_twice: DINO's box update (see `decode`).
            share_pred_heads: one class/box head for all decoder layers (DINO) or one per layer.
        """
        super().__init__()
        if query_init not in ("mixed", "proposal"):
            raise ValueError(f"query_init must be 'mixed' or 'proposal', got {query_init!r}")
        if d_model % nhead != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by nhead ({nhead})")
        self.d_model = d_model
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.query_init = query_init
        self.look_forward_twice = look_forward_twice

        layer_args = (d_model, dim_feedforward, dropout, activation, num_feature_levels, nhead)
        self.encoder_layers = nn.ModuleList(DeformableEncoderLayer(*layer_args, enc_n_points) for _ in range(num_encoder_layers))
        self.decoder_layers = nn.ModuleList(DeformableDecoderLayer(*layer_args, dec_n_points) for _ in range(num_decoder_layers))
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))

        # Two-stage: proposals from the encoder memory.
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self.enc_class_embed = nn.Linear(d_model, num_classes if query_init == "mixed" else 1)
        self.enc_bbox_embed = MLP(d_model, d_model, 4, 3)
        if query_init == "mixed":
            self.tgt_embed = nn.Embedding(num_queries, d_model)
            self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
            self.decoder_norm = nn.LayerNorm(d_model)
        else:
            self.pos_trans = nn.Linear(2 * d_model, 2 * d_model)
            self.pos_trans_norm = nn.LayerNorm(2 * d_model)
            self.decoder_norm = nn.Identity()

        # Prediction heads of the decoder layers.
        class_embed = nn.Linear(d_model, num_classes)
        bbox_embed = MLP(d_model, d_model, 4, 3)
        if share_pred_heads:
            self.class_embed = nn.ModuleList([class_embed])
            self.bbox_embed = nn.ModuleList([bbox_embed])
        else:
            self.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(num_decoder_layers))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(num_decoder_layers))
        self._reset_parameters()

    def _reset_parameters(self):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module._reset_parameters()
        nn.init.normal_(self.level_embed)
        # Focal-loss prior: every class starts at probability 0.01 (RetinaNet/Deformable DETR).
        prior_bias = -math.log((1 - 0.01) / 0.01)
        for head in list(self.class_embed) + [self.enc_class_embed]:
            nn.init.constant_(head.bias, prior_bias)
        # Box heads start as the identity update of their reference box.
        for head in list(self.bbox_embed) + [self.enc_bbox_embed]:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)

    @property
    def num_decoder_layers(self) -> int:
        return len(self.decoder_layers)

    def _head(self, heads: nn.ModuleList, layer: int) -> nn.Module:
        return heads[layer if len(heads) > 1 else 0]

    # ------------------------------------------------------------------------------------------------
    def encode(self, srcs: List[Tensor], masks: List[Tensor], pos_embeds: List[Tensor]) -> EncoderMemory:
        """srcs/pos_embeds: per level (N, C, H_l, W_l); masks: per level (N, H_l, W_l), True = padding."""
        spatial_shapes = [tuple(src.shape[-2:]) for src in srcs]
        flat_src = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)
        flat_mask = torch.cat([mask.flatten(1) for mask in masks], 1)
        flat_pos = torch.cat([pos.flatten(2).transpose(1, 2) + self.level_embed[level]
                              for level, pos in enumerate(pos_embeds)], 1)
        valid_ratios = torch.stack([self._valid_ratio(mask) for mask in masks], 1)

        reference_points = self._encoder_reference_points(spatial_shapes, valid_ratios)
        memory = flat_src
        for layer in self.encoder_layers:
            memory = layer(memory, flat_pos, reference_points, spatial_shapes, flat_mask)
        return EncoderMemory(memory, flat_mask, spatial_shapes, valid_ratios)

    @staticmethod
    def _valid_ratio(mask: Tensor) -> Tensor:
        height, width = mask.shape[1:]
        valid_h = (~mask[:, :, 0]).sum(1)
        valid_w = (~mask[:, 0, :]).sum(1)
        return torch.stack([valid_w / width, valid_h / height], -1).float()

    @staticmethod
    def _encoder_reference_points(spatial_shapes, valid_ratios: Tensor) -> Tensor:
        """Pixel centres of every level, normalised by the valid extent: (N, S, L, 2)."""
        device = valid_ratios.device
        points = []
        for level, (height, width) in enumerate(spatial_shapes):
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, height - 0.5, height, dtype=torch.float32, device=device),
                torch.linspace(0.5, width - 0.5, width, dtype=torch.float32, device=device), indexing="ij")
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
            points.append(torch.stack((ref_x, ref_y), -1))
        points = torch.cat(points, 1)
        return points[:, :, None] * valid_ratios[:, None]

    # ------------------------------------------------------------------------------------------------
    def select_queries(self, enc: EncoderMemory) -> QuerySelection:
        """Top-k encoder proposals become the matching queries' reference boxes (two-stage)."""
        proposals, valid = encoder_output_proposals(enc.memory, enc.padding_mask, enc.spatial_shapes)
        output_memory = enc.memory.masked_fill(~valid[..., None], 0.0)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        enc_logits_all = self.enc_class_embed(output_memory)
        enc_coords_all = self.enc_bbox_embed(output_memory) + proposals  # unsigmoided; +inf where invalid

        # A batch of small images can have fewer encoder positions than queries: then every position
        # becomes a query.
        num_select = min(self.num_queries, enc_logits_all.shape[1])
        scores = enc_logits_all.max(-1).values.masked_fill(~valid, float("-inf"))
        topk = scores.topk(num_select, dim=1).indices
        reference_undetached = enc_coords_all.gather(1, topk[..., None].expand(-1, -1, 4))
        reference = reference_undetached.detach()
        # Invalid positions are only chosen when an image has fewer valid positions than queries;
        # give them a finite (far off) box instead of +inf so no NaN can arise downstream.
        reference = torch.nan_to_num(reference, posinf=10.0)

        if self.query_init == "mixed":
            selected_memory = output_memory.gather(1, topk[..., None].expand(-1, -1, self.d_model))
            content = self.tgt_embed.weight[:num_select][None].expand(enc.memory.shape[0], -1, -1)
            enc_logits = self.enc_class_embed(selected_memory)
            enc_boxes = reference_undetached.sigmoid()
        else:
            content = self.static_query_pos_and_content(reference)[1]
            enc_logits, enc_boxes = enc_logits_all, enc_coords_all.sigmoid()
        return QuerySelection(content, reference, enc_logits, enc_boxes)

    def static_query_pos_and_content(self, reference: Tensor) -> Tuple[Tensor, Tensor]:
        """Deformable DETR two-stage: (positional query, content query) from an embedding of the box."""
        embedding = sine_embedding_of_boxes(reference.sigmoid(), self.d_model // 2)
        return self.pos_trans_norm(self.pos_trans(embedding)).split(self.d_model, dim=-1)

    # ------------------------------------------------------------------------------------------------
    def decode(self, enc: EncoderMemory, content: Tensor, reference: Tensor,
               self_attn_mask: Optional[Tensor] = None) -> DecoderOutput:
        """Decode a set of queries with iterative box refinement.

        Args:
            content: (N, T, C) query content; reference: (N, T, 4) unsigmoided initial boxes.
            self_attn_mask: (T, T) bool, True = blocked (see denoising.build_self_attention_mask).

        Box update (look-forward-twice, DINO): the box passed to the next layer is
        b_l = sigmoid(head(o_l) + logit(b_{l-1}.detach())), from the layer output o_l *before* the final
        decoder norm, while the box that the loss sees is sigmoid(head(norm(o_l)) + logit(b'_{l-1})),
        with b'_{l-1} the undetached b_{l-1}, so the loss of layer l also refines layer l-1's box.
        Without it (Deformable DETR) the loss sees sigmoid(head(norm(o_l)) + logit(b_{l-1}.detach())).
        The norm feeds only the prediction heads, as in DINO, detrex
        (projects/dino/modeling/dino_transformer.py:214 vs :226) and the official Semi-DETR code
        (detr_od/models/utils/transformer.py:1030 vs :1039, dense_heads/dino_detr_head.py:374-377).
        """
        valid_scale = torch.cat([enc.valid_ratios, enc.valid_ratios], -1)[:, None]  # (N, 1, L, 4)
        static_pos = self.static_query_pos_and_content(reference)[0] if self.query_init == "proposal" else None
        box = reference.sigmoid()  # detached input box of the current layer
        box_undetached = box  # b'_{l-1}
        output = content
        hidden, logits, boxes = [], [], []
        for layer_index, layer in enumerate(self.decoder_layers):
            reference_input = box[:, :, None] * valid_scale
            if static_pos is None:
                query_pos = self.ref_point_head(sine_embedding_of_boxes(reference_input[:, :, 0], self.d_model // 2))
            else:
                query_pos = static_pos
            output = layer(output, query_pos, reference_input, enc.memory, enc.spatial_shapes, enc.padding_mask,
                           self_attn_mask)
            features = self.decoder_norm(output)
            box_head = self._head(self.bbox_embed, layer_index)
            refine_delta = box_head(output)
            refined = (refine_delta + inverse_sigmoid(box)).sigmoid()
            # Without a decoder norm (Deformable DETR) both see the same input: one head call serves both.
            delta = refine_delta if isinstance(self.decoder_norm, nn.Identity) else box_head(features)
            previous = box_undetached if self.look_forward_twice else box
            predicted = (delta + inverse_sigmoid(previous)).sigmoid()
            hidden.append(features)
            logits.append(self._head(self.class_embed, layer_index)(features))
            boxes.append(predicted)
            box_undetached, box = refined, refined.detach()
        return DecoderOutput(torch.stack(hidden), torch.stack(logits), torch.stack(boxes))
