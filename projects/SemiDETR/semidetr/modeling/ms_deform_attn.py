# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Multi-scale deformable attention (Deformable DETR, Zhu et al., ICLR 2021) in pure PyTorch.

Each query attends to `P` sampled points on each of the `L` feature levels, per head. A point's value is
the bilinear interpolation of that head's value map at the point's location; the head's output is the sum
of the points' values weighted by attention weights that the query predicts (softmax over the L*P points).

Conventions are those of the official CUDA kernel (`ms_deform_attn_im2col_bilinear`):

* locations are normalised (x, y) in [0, 1] of each level's *unpadded* feature-map extent;
* pixel (i, j) has its centre at ((j + 0.5) / W, (i + 0.5) / H), i.e. the continuous pixel coordinates are
  `w_im = x * W - 0.5`, `h_im = y * H - 0.5` (`grid_sample`'s `align_corners=False`);
* a point blends its four neighbouring pixels; neighbours outside the map contribute zero (zero padding).

Three entry points:

* `ms_deform_attn_core`: the vectorised `grid_sample` implementation (one call per level), used for training
  and inference, on any device;
* `ms_deform_attn_naive`: a per-point reference that spells the bilinear formula out; tests compare the
  core against it (values and gradients);
* `ms_deform_attn`: what `MSDeformAttn` calls; it picks the implementation (`impl`, the config key
  MODEL.DETR.MS_DEFORM_ATTN_IMPL):
    "auto"    a kernel registered for the inputs' device type (`register_ms_deform_attn_kernel`), else the
              fused Triton kernel (`ms_deform_attn_triton.py`) on CUDA when Triton can be imported, else
              the core;
    "triton"  the Triton kernel (an error where it cannot run: no Triton, or CPU tensors without Triton's
              interpreter);
    "pytorch" the core.
  The choice is logged once per (setting, device type, implementation).

Mixed precision: half-precision (float16/bfloat16) inputs are sampled and weighted in float32, because
the four-corner blend and the scatter-add of its gradient lose too many bits in half precision; the
result is returned in `value`'s dtype. float64 inputs are kept in float64.
"""
import importlib.util
import logging
import math
import operator
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tensor_utils import small_tensor

__all__ = [
    "MSDeformAttn",
    "ms_deform_attn",
    "ms_deform_attn_core",
    "ms_deform_attn_naive",
    "register_ms_deform_attn_kernel",
    "set_ms_deform_attn_impl",
    "MS_DEFORM_ATTN_IMPLS",
]

logger = logging.getLogger(__name__)

# Values of MODEL.DETR.MS_DEFORM_ATTN_IMPL / the `impl` argument (see the module docstring).
MS_DEFORM_ATTN_IMPLS = ("auto", "triton", "pytorch")

# (H_l, W_l) of every level, coarse or fine in any order, as python ints or an (L, 2) integer CPU tensor.
SpatialShapes = Union[Sequence[Sequence[int]], Tensor]
# A fused kernel takes and returns what `ms_deform_attn_core` does; spatial shapes arrive as python ints.
MSDeformAttnKernel = Callable[[Tensor, Tuple[Tuple[int, int], ...], Tensor, Tensor], Tensor]

_FUSED_KERNELS: Dict[str, MSDeformAttnKernel] = {}


def register_ms_deform_attn_kernel(
    device_type: str, kernel: Optional[MSDeformAttnKernel]
) -> Optional[MSDeformAttnKernel]:
    """Make `ms_deform_attn` run `kernel` for inputs on `device_type` ("cuda", ...); `None` unregisters.

    `kernel(value, spatial_shapes, sampling_locations, attention_weights)` must compute exactly what
    `ms_deform_attn_core` computes (same shapes, same sampling convention, differentiable, output in
    `value`'s dtype); `spatial_shapes` is a tuple of (H, W) python ints, already validated.

    Returns:
        the kernel previously registered for `device_type`, or None, so that a caller can restore it.
    """
    previous = _FUSED_KERNELS.pop(device_type, None)
    if kernel is not None:
        _FUSED_KERNELS[device_type] = kernel
    return previous


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    impl: str = "auto",
) -> Tensor:
    """Multi-scale deformable attention with the implementation `impl` selects (module docstring).

    Same arguments and result as `ms_deform_attn_core`.
    """
    shapes = _as_spatial_shapes(spatial_shapes)
    _check_core_inputs(value, shapes, sampling_locations, attention_weights)
    name, kernel = _select_kernel(value, sampling_locations, impl)
    _log_choice_once(impl, value.device.type, name)
    return kernel(value, shapes, sampling_locations, attention_weights)


def _select_kernel(value: Tensor, sampling_locations: Tensor, impl: str) -> Tuple[str, MSDeformAttnKernel]:
    if impl not in MS_DEFORM_ATTN_IMPLS:
        raise ValueError(
            f"MODEL.DETR.MS_DEFORM_ATTN_IMPL={impl!r}: use one of {list(MS_DEFORM_ATTN_IMPLS)}")
    if impl == "pytorch":
        return "pytorch (grid_sample)", ms_deform_attn_core
    device_type = value.device.type
    if impl == "auto" and device_type in _FUSED_KERNELS:
        return f"registered {device_type} kernel", _FUSED_KERNELS[device_type]
    triton_module = _triton_module() if impl == "triton" or device_type == "cuda" else None
    if triton_module is not None and triton_module.triton_supports(value, sampling_locations):
        return "triton (fused)", triton_module.ms_deform_attn_triton
    if impl == "triton":
        reason = (_TRITON_STATE["error"] if triton_module is None else
                  "it needs CUDA tensors (CPU tensors only with TRITON_INTERPRET=1, Triton's interpreter) with "
                  f"fewer than 2**31 elements; got value {tuple(value.shape)} on {value.device}")
        raise RuntimeError(
            f"MODEL.DETR.MS_DEFORM_ATTN_IMPL='triton' but the Triton kernel cannot run: {reason}. Use 'auto' "
            "(fused where it can run, PyTorch elsewhere) or 'pytorch'.")
    return "pytorch (grid_sample)", ms_deform_attn_core


# Triton is imported on first use: CPU runs never pay for it, and a broken install only matters on CUDA.
_TRITON_STATE: Dict[str, object] = {}


def _triton_module():
    """The Triton kernel module, or None (with the reason in _TRITON_STATE["error"]) if it cannot load."""
    if "module" not in _TRITON_STATE:
        _TRITON_STATE["module"] = None
        if importlib.util.find_spec("triton") is None:
            _TRITON_STATE["error"] = "Triton is not installed (it ships with the CUDA builds of torch)"
        else:
            try:
                from . import ms_deform_attn_triton

                _TRITON_STATE["module"] = ms_deform_attn_triton
            except Exception as error:  # a broken Triton install: PyTorch path, said once in the log
                _TRITON_STATE["error"] = f"importing Triton failed ({type(error).__name__}: {error})"
                logger.warning("Multi-scale deformable attention: %s; the PyTorch path is used on CUDA",
                               _TRITON_STATE["error"])
    return _TRITON_STATE["module"]


_LOGGED_CHOICES = set()


def _log_choice_once(impl: str, device_type: str, name: str) -> None:
    key = (impl, device_type, name)
    if key not in _LOGGED_CHOICES:
        _LOGGED_CHOICES.add(key)
        logger.info("Multi-scale deformable attention on %s: %s (MODEL.DETR.MS_DEFORM_ATTN_IMPL=%r)",
                    device_type, name, impl)


def set_ms_deform_attn_impl(module: nn.Module, impl: str) -> None:
    """Make every `MSDeformAttn` inside `module` use `impl` (MODEL.DETR.MS_DEFORM_ATTN_IMPL)."""
    if impl not in MS_DEFORM_ATTN_IMPLS:
        raise ValueError(
            f"MODEL.DETR.MS_DEFORM_ATTN_IMPL={impl!r}: use one of {list(MS_DEFORM_ATTN_IMPLS)}")
    for submodule in module.modules():
        if isinstance(submodule, MSDeformAttn):
            submodule.impl = impl


def ms_deform_attn_core(
    value: Tensor, spatial_shapes: SpatialShapes, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Multi-scale deformable attention, vectorised with one `F.grid_sample` per level.

    Args:
        value: (N, S, M, D) the flattened multi-level value maps of M heads with D channels each;
            level l occupies S-positions [sum_{k<l} H_k W_k, sum_{k<=l} H_k W_k) in row-major (y, x) order.
        spatial_shapes: (H_l, W_l) of the L levels: python ints, or an (L, 2) integer CPU tensor.
        sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y) of each point in its level's extent;
            values outside [0, 1] are allowed (neighbours outside the map read as zero).
        attention_weights: (N, Lq, M, L, P) the points' weights (normally a softmax over L*P).

    Returns:
        (N, Lq, M*D) the weighted sums, heads concatenated (channel m*D + d), in `value`'s dtype.
    """
    shapes = _as_spatial_shapes(spatial_shapes)
    _check_core_inputs(value, shapes, sampling_locations, attention_weights)
    batch, num_keys, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    dtype = _sampling_dtype(value, sampling_locations, attention_weights)

    # (N, S, M, D) -> (N*M, D, S) in a single copy; `split` then yields each level as a zero-copy view,
    # and its backward concatenates the levels' gradients once (indexing would zero-fill a full-size
    # gradient per level).
    value_levels = (
        value.to(dtype)
        .permute(0, 2, 3, 1)
        .reshape(batch * num_heads, head_dim, num_keys)
        .split([height * width for height, width in shapes], dim=2)
    )
    # Level-major, points before queries: grid_sample then returns (N*M, D, P, Lq) per level, so the
    # weighted sum over points adds whole contiguous rows of queries (vectorised), instead of reducing an
    # innermost dimension of size P as the official (N*M, D, Lq, L*P) stack does.
    sampling_grids = (
        sampling_locations.to(dtype)
        .permute(3, 0, 2, 4, 1, 5)
        .reshape(num_levels, batch * num_heads, num_points, num_queries, 2)
        .mul(2.0)
        .sub_(1.0)  # grid_sample's [-1, 1] coordinates
    )
    level_weights = (
        attention_weights.to(dtype)
        .permute(3, 0, 2, 4, 1)
        .reshape(num_levels, batch * num_heads, 1, num_points, num_queries)
    )

    output = None
    for (height, width), value_l, grid_l, weights_l in zip(
        shapes, value_levels, sampling_grids.unbind(0), level_weights.unbind(0)
    ):
        sampled = F.grid_sample(
            value_l.view(batch * num_heads, head_dim, height, width),
            grid_l,
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )  # (N*M, D, P, Lq)
        # Weighted in place: without autograd (inference, the teacher's passes) this saves the largest
        # temporary, whose memory traffic shows on CPU; with autograd, mul_ keeps the samples that the
        # attention-weight gradient needs, exactly as `sampled * weights_l` would (grid_sample's backward
        # does not read its output).
        level_output = sampled.mul_(weights_l).sum(dim=2)  # (N*M, D, Lq)
        output = level_output if output is None else output + level_output
    output = output.view(batch, num_heads * head_dim, num_queries).transpose(1, 2)
    return output.contiguous().to(value.dtype)


def ms_deform_attn_naive(
    value: Tensor, spatial_shapes: SpatialShapes, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Per-point reference of `ms_deform_attn_core` (same arguments and result); slow, for tests only.

    Loops over every batch element, query, head, level and point, and interpolates by hand exactly as the
    official CUDA kernel does: continuous pixel coordinates (h, w) = (y * H - 0.5, x * W - 0.5); a point
    with h <= -1, w <= -1, h >= H or w >= W reads zero; otherwise the four neighbours
    (floor(h) + {0, 1}, floor(w) + {0, 1}) are blended with weights (1 - |h - h_i|)(1 - |w - w_j|), each
    neighbour outside the map reading zero. Autograd differentiates the formula, which gives the kernel's
    gradients wherever they are defined (the location gradient has kinks at pixel centres and at the
    zero-padding boundaries h, w = -1, H, W: one-sided there).
    """
    shapes = _as_spatial_shapes(spatial_shapes)
    _check_core_inputs(value, shapes, sampling_locations, attention_weights)
    batch, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    output_dtype, dtype = value.dtype, _sampling_dtype(value, sampling_locations, attention_weights)
    value = value.to(dtype)
    sampling_locations = sampling_locations.to(dtype)
    attention_weights = attention_weights.to(dtype)
    level_starts = [0]
    for height, width in shapes[:-1]:
        level_starts.append(level_starts[-1] + height * width)

    head_outputs = []  # (N * Lq * M) vectors of D channels, in (n, q, m) order
    for n in range(batch):
        for q in range(num_queries):
            for m in range(num_heads):
                head_output = value.new_zeros(head_dim)
                for level, (height, width) in enumerate(shapes):
                    # (H, W, D) map of this head, so that map[i, j] is the pixel in row i, column j.
                    value_map = value[n, level_starts[level] : level_starts[level] + height * width, m]
                    value_map = value_map.view(height, width, head_dim)
                    for point in range(num_points):
                        x, y = sampling_locations[n, q, m, level, point]
                        sample = _bilinear_sample_zero_padded(value_map, y * height - 0.5, x * width - 0.5)
                        head_output = head_output + attention_weights[n, q, m, level, point] * sample
                head_outputs.append(head_output)
    output = torch.stack(head_outputs).view(batch, num_queries, num_heads * head_dim)
    return output.to(output_dtype)


def _bilinear_sample_zero_padded(value_map: Tensor, h_im: Tensor, w_im: Tensor) -> Tensor:
    """The official kernel's bilinear read of an (H, W, D) map at continuous pixel coordinates (h, w)."""
    height, width, head_dim = value_map.shape
    if not (h_im > -1 and w_im > -1 and h_im < height and w_im < width):
        return value_map.new_zeros(head_dim)
    h_low, w_low = math.floor(h_im.item()), math.floor(w_im.item())
    # h_im - h_low keeps the graph to h_im (h_low is a python int), hence the location gradient.
    frac_h, frac_w = h_im - h_low, w_im - w_low
    sample = value_map.new_zeros(head_dim)
    for row, weight_h in ((h_low, 1 - frac_h), (h_low + 1, frac_h)):
        for col, weight_w in ((w_low, 1 - frac_w), (w_low + 1, frac_w)):
            if 0 <= row < height and 0 <= col < width:
                sample = sample + weight_h * weight_w * value_map[row, col]
    return sample


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module of Deformable DETR and DINO.

    Parameter names, shapes and initialisation are Deformable DETR's (`models/ops/modules/ms_deform_attn.py`)
    so that published checkpoints load unchanged: `sampling_offsets`, `attention_weights`, `value_proj`,
    `output_proj`.

    Args:
        embed_dim: C, the query and value width; split into `num_heads` heads of C / num_heads channels.
        num_heads: M, attention heads.
        num_levels: L, feature levels.
        num_points: P, sampling points per head and level.
        dropout: dropout probability on the output, after `output_proj` (the caller adds the residual).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads}): each head gets "
                f"embed_dim / num_heads channels"
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        # Which implementation runs (MS_DEFORM_ATTN_IMPLS; set_ms_deform_attn_impl sets it from the config).
        self.impl = "auto"

        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Deformable DETR's initialisation.

        The offsets start query-independent (zero weight): head m looks along direction 2*pi*m / M,
        scaled so that its larger component is 1, and point p sits p + 1 steps out (pixels of the level
        for 2-d reference points, eighths of the box size for P = 4 and boxes). Attention starts uniform.
        """
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        directions = torch.stack([thetas.cos(), thetas.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        steps = torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        grid_init = directions.view(self.num_heads, 1, 1, 2) * steps  # (M, 1, P, 2)
        grid_init = grid_init.expand(self.num_heads, self.num_levels, self.num_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid_init.reshape(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: Optional[Union[Tensor, Sequence[int]]] = None,
        padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            query: (N, Lq, C) queries (with their positional embedding added, as the caller decides).
            reference_points: (N, Lq, L, 2) normalised (x, y) centres in each level's unpadded extent
                (offsets are then in pixels of the level), or (N, Lq, L, 4) boxes (cx, cy, w, h)
                (offsets are then fractions of the box: location = centre + offset / P * (w, h) / 2).
            value: (N, S, C) the flattened multi-level memory, S = sum_l H_l * W_l, levels in order.
            spatial_shapes: (H_l, W_l) of the L levels: python ints, or an (L, 2) integer CPU tensor.
            level_start_index: (L,) start of each level in S. Redundant with `spatial_shapes` (their
                exclusive cumulative sum of H_l * W_l) and not read: accepted so that Deformable-DETR-style
                call sites port unchanged; only its length is checked.
            padding_mask: (N, S) bool, True at padded positions; their values are zeroed before sampling,
                so no point reads them.

        Returns:
            (N, Lq, C) the attention output after `output_proj` (and dropout), in the value's dtype.
        """
        shapes = _as_spatial_shapes(spatial_shapes)
        self._check_inputs(query, reference_points, value, shapes, level_start_index, padding_mask)
        batch, num_queries, _ = query.shape
        num_keys = value.shape[1]
        head_dim = self.embed_dim // self.num_heads

        value = self.value_proj(value)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(batch, num_keys, self.num_heads, head_dim)

        sampling_offsets = self.sampling_offsets(query).view(
            batch, num_queries, self.num_heads, self.num_levels, self.num_points, 2
        )
        attention_weights = self.attention_weights(query).view(
            batch, num_queries, self.num_heads, self.num_levels * self.num_points
        )
        attention_weights = F.softmax(attention_weights, -1).view(
            batch, num_queries, self.num_heads, self.num_levels, self.num_points
        )
        sampling_locations = self._sampling_locations(reference_points, sampling_offsets, shapes)

        output = ms_deform_attn(value, shapes, sampling_locations, attention_weights, impl=self.impl)
        return self.dropout(self.output_proj(output))

    def _sampling_locations(
        self, reference_points: Tensor, sampling_offsets: Tensor, shapes: Tuple[Tuple[int, int], ...]
    ) -> Tensor:
        """(N, Lq, M, L, P, 2) normalised sampling locations (Deformable DETR's formulas).

        Each formula is one fused multiply-add (`addcmul`) over the offsets, the largest tensor of the
        encoder's attention (N x S x M x L x P x 2): a division and an addition (2-d references), or two
        products, a division and an addition (boxes), would each be a full pass over it. Multiplying by
        1 / W instead of dividing by W changes a location by at most one rounding."""
        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: scale by the level's (1 / W, 1 / H). The scale is at
            # least float32 so that half-precision offsets do not round it (bfloat16 cannot hold 1 / 334).
            inverse_size = small_tensor(
                [(1.0 / width, 1.0 / height) for height, width in shapes],
                dtype=_sampling_dtype(sampling_offsets),
                device=sampling_offsets.device,
            )
            return torch.addcmul(
                reference_points[:, :, None, :, None, :], sampling_offsets, inverse_size[None, None, None, :, None, :]
            )
        # Offsets are in units of half the box over the number of points: location = centre +
        # offset * (w, h) * 0.5 / P.
        half_extent = reference_points[:, :, None, :, None, 2:] * (0.5 / self.num_points)
        return torch.addcmul(reference_points[:, :, None, :, None, :2], sampling_offsets, half_extent)

    def _check_inputs(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        shapes: Tuple[Tuple[int, int], ...],
        level_start_index: Optional[Union[Tensor, Sequence[int]]],
        padding_mask: Optional[Tensor],
    ) -> None:
        """Shape checks only: comparing values would read device tensors and synchronise."""
        if query.dim() != 3 or query.shape[-1] != self.embed_dim:
            raise ValueError(f"query must be (N, Lq, {self.embed_dim}), got {tuple(query.shape)}")
        if value.dim() != 3 or value.shape[-1] != self.embed_dim:
            raise ValueError(f"value must be (N, S, {self.embed_dim}), got {tuple(value.shape)}")
        batch, num_queries, _ = query.shape
        if value.shape[0] != batch:
            raise ValueError(f"query has batch size {batch} but value has {value.shape[0]}")
        if len(shapes) != self.num_levels:
            raise ValueError(
                f"the module has num_levels={self.num_levels} but spatial_shapes has {len(shapes)} levels"
            )
        num_keys = sum(height * width for height, width in shapes)
        if value.shape[1] != num_keys:
            raise ValueError(
                f"value has S={value.shape[1]} positions but spatial_shapes {list(shapes)} sum to {num_keys}"
            )
        if reference_points.dim() != 4 or reference_points.shape[:3] != (batch, num_queries, self.num_levels):
            raise ValueError(
                f"reference_points must be (N, Lq, L, 2 or 4) = ({batch}, {num_queries}, {self.num_levels}, "
                f"2 or 4), got {tuple(reference_points.shape)}"
            )
        if reference_points.shape[-1] not in (2, 4):
            raise ValueError(
                "the last dimension of reference_points must be 2 (x, y) or 4 (cx, cy, w, h), got "
                f"{reference_points.shape[-1]}"
            )
        if level_start_index is not None and len(level_start_index) != self.num_levels:
            raise ValueError(
                f"level_start_index must have {self.num_levels} entries, got {len(level_start_index)}"
            )
        if padding_mask is not None:
            if padding_mask.shape != (batch, num_keys):
                raise ValueError(
                    f"padding_mask must be (N, S) = ({batch}, {num_keys}), got {tuple(padding_mask.shape)}"
                )
            if padding_mask.dtype != torch.bool:
                raise ValueError(f"padding_mask must be a bool tensor (True = padded), got {padding_mask.dtype}")

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_levels={self.num_levels}, "
            f"num_points={self.num_points}, impl={self.impl!r}"
        )


def _as_spatial_shapes(spatial_shapes: SpatialShapes) -> Tuple[Tuple[int, int], ...]:
    """Validate the spatial shapes and return them as a tuple of (H, W) python ints."""
    if isinstance(spatial_shapes, Tensor):
        if spatial_shapes.device.type != "cpu":
            raise TypeError(
                f"spatial_shapes must be python ints or a CPU tensor, got a tensor on "
                f"{spatial_shapes.device}: reading it would synchronise the host with the device"
            )
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2 or spatial_shapes.is_floating_point():
            raise ValueError(
                f"a spatial_shapes tensor must be (L, 2) integers, got {spatial_shapes.dtype} "
                f"{tuple(spatial_shapes.shape)}"
            )
        spatial_shapes = spatial_shapes.tolist()
    shapes = []
    for level_shape in spatial_shapes:
        if len(level_shape) != 2:
            raise ValueError(f"each spatial shape must be (H, W), got {level_shape!r}")
        height, width = (operator.index(size) for size in level_shape)
        if height <= 0 or width <= 0:
            raise ValueError(f"spatial shapes must be positive, got (H, W) = ({height}, {width})")
        shapes.append((height, width))
    if not shapes:
        raise ValueError("spatial_shapes must contain at least one level")
    return tuple(shapes)


def _check_core_inputs(
    value: Tensor,
    shapes: Tuple[Tuple[int, int], ...],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> None:
    """Shape checks of the functional API (shapes only: no device tensor is read)."""
    if value.dim() != 4:
        raise ValueError(f"value must be (N, S, M, D), got shape {tuple(value.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            f"sampling_locations must be (N, Lq, M, L, P, 2), got shape {tuple(sampling_locations.shape)}"
        )
    batch, num_keys, num_heads, _ = value.shape
    num_levels = sampling_locations.shape[3]
    if sampling_locations.shape[0] != batch or sampling_locations.shape[2] != num_heads:
        raise ValueError(
            f"sampling_locations {tuple(sampling_locations.shape)} must be (N, Lq, M, L, P, 2) with "
            f"N={batch} and M={num_heads} as in value {tuple(value.shape)}"
        )
    if num_levels != len(shapes):
        raise ValueError(
            f"sampling_locations has L={num_levels} levels but spatial_shapes has {len(shapes)}"
        )
    expected_keys = sum(height * width for height, width in shapes)
    if num_keys != expected_keys:
        raise ValueError(
            f"value has S={num_keys} positions but spatial_shapes {list(shapes)} sum to {expected_keys}"
        )
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(
            f"attention_weights must be (N, Lq, M, L, P) = {tuple(sampling_locations.shape[:-1])}, "
            f"got {tuple(attention_weights.shape)}"
        )
    for name, tensor in (
        ("value", value),
        ("sampling_locations", sampling_locations),
        ("attention_weights", attention_weights),
    ):
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {tensor.dtype}")


def _sampling_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half precision is sampled in float32)."""
    return torch.float64 if any(tensor.dtype == torch.float64 for tensor in tensors) else torch.float32
