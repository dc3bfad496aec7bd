# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Fused multi-scale deformable attention in Triton: forward and backward kernels.

Computes exactly what `ms_deform_attn.ms_deform_attn_core` computes (same arguments, same sampling
convention as the official CUDA kernel: pixel centres at (j + 0.5) / W, zero padding, a point with
h <= -1, w <= -1, h >= H or w >= W reading zero), without the (N*M, D, P, Lq) per-level temporaries of the
grid_sample formulation: one program owns BLOCK_Q queries of one (image, head) and all D channels, reads
the four neighbours of each of its L*P points straight from `value` (N, S, M, D) and accumulates in
registers.

Backward: every (query, head, level, point) belongs to exactly one program, so the gradients of the
sampling locations and attention weights are plain stores; the gradient of `value` is a scatter (several
points read the same pixel) done with `tl.atomic_add` into a float32 buffer (float64 for float64 inputs):
half-precision atomics would lose the small contributions, and bfloat16 atomics are not supported
everywhere (nor by Triton's CPU interpreter).

Precision: inputs of any floating dtype are read as they are and converted in registers to the compute
dtype (float64 if any input is float64, float32 otherwise); the output is written in `value`'s dtype, the
gradients in their inputs' dtypes.

Kept compatible with Triton's CPU interpreter (`TRITON_INTERPRET=1` set before this module is imported),
which the CPU tests use: no autotuning (fixed block sizes), no libdevice call, no half-precision atomic.
"""
import os
from typing import Dict, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["ms_deform_attn_triton", "interpreter_enabled", "triton_supports"]

# Queries per program; D (the head width) is padded to a power of two. Fixed rather than autotuned so
# that the interpreter can run the kernels; 64 / 32 keep the (BLOCK_Q, D=32) tiles in registers with 4 warps
# (the backward holds four value tiles, the output gradient and their products at once).
FORWARD_BLOCK_Q = 64
BACKWARD_BLOCK_Q = 32
NUM_WARPS = 4
# Offsets are int32 in the kernels: every tensor must have fewer elements (the dispatcher falls back to
# the PyTorch path otherwise).
MAX_NUMEL = 2**31 - 1


def interpreter_enabled() -> bool:
    """Whether the kernels were defined for Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return _INTERPRETED


_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_supports(value: Tensor, sampling_locations: Tensor) -> bool:
    """Whether the kernels can run on these inputs: CUDA tensors (or CPU ones under the interpreter) of
    fewer than 2**31 elements."""
    device_ok = value.device.type == "cuda" or (_INTERPRETED and value.device.type == "cpu")
    return device_ok and max(value.numel(), sampling_locations.numel()) <= MAX_NUMEL


@triton.jit
def _bilinear_corners(h_im, w_im, height, width, start, row_stride, inside):
    """The four neighbours of points at continuous pixel coordinates (h_im, w_im) of one level: the element
    offsets of their rows (keys) in one head's value, whether each lies in the map (a point outside has
    none), and the fractional parts (lh, lw) and their complements (hh, hw)."""
    h_low_f = tl.floor(h_im)
    w_low_f = tl.floor(w_im)
    lh = h_im - h_low_f
    lw = w_im - w_low_f
    hh = 1.0 - lh
    hw = 1.0 - lw
    h_low = h_low_f.to(tl.int32)
    w_low = w_low_f.to(tl.int32)
    h_high = h_low + 1
    w_high = w_low + 1
    row_low_ok = inside & (h_low >= 0)
    row_high_ok = inside & (h_high < height)
    col_low_ok = w_low >= 0
    col_high_ok = w_high < width
    # Element offset of the (h_low, w_low) neighbour's row; the others are one key / one map row away.
    o1 = (start + h_low * width + w_low) * row_stride
    o2 = o1 + row_stride
    o3 = o1 + width * row_stride
    o4 = o3 + row_stride
    m1 = row_low_ok & col_low_ok
    m2 = row_low_ok & col_high_ok
    m3 = row_high_ok & col_low_ok
    m4 = row_high_ok & col_high_ok
    return o1, o2, o3, o4, m1, m2, m3, m4, lh, lw, hh, hw


@triton.jit
def _ms_deform_attn_forward_kernel(
    value_ptr, levels_ptr, loc_ptr, attn_ptr, out_ptr,
    num_keys, num_queries, num_heads, head_dim,
    NUM_LEVELS: tl.constexpr, NUM_POINTS: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_nm = tl.program_id(1)
    n = pid_nm // num_heads
    m = pid_nm % num_heads
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, BLOCK_D)
    q_mask = offs_q < num_queries
    d_mask = offs_d < head_dim
    row_stride = num_heads * head_dim  # value elements between consecutive keys
    value_head = value_ptr + n * num_keys * row_stride + m * head_dim
    # (n, q, m) row of the (N, Lq, M, L, P) weights; the locations interleave (x, y).
    point_base = ((n * num_queries + offs_q) * num_heads + m) * (NUM_LEVELS * NUM_POINTS)
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=COMPUTE)
    for level in tl.static_range(NUM_LEVELS):
        height = tl.load(levels_ptr + 3 * level)
        width = tl.load(levels_ptr + 3 * level + 1)
        start = tl.load(levels_ptr + 3 * level + 2)
        for point in tl.static_range(NUM_POINTS):
            index = point_base + level * NUM_POINTS + point
            weight = tl.load(attn_ptr + index, mask=q_mask, other=0.0).to(COMPUTE)
            x = tl.load(loc_ptr + 2 * index, mask=q_mask, other=0.0).to(COMPUTE)
            y = tl.load(loc_ptr + 2 * index + 1, mask=q_mask, other=0.0).to(COMPUTE)
            h_im = y * height - 0.5
            w_im = x * width - 0.5
            inside = q_mask & (h_im > -1.0) & (w_im > -1.0) & (h_im < height) & (w_im < width)
            o1, o2, o3, o4, m1, m2, m3, m4, lh, lw, hh, hw = _bilinear_corners(
                h_im, w_im, height, width, start, row_stride, inside)
            v1 = tl.load((value_head + o1)[:, None] + offs_d[None, :], mask=m1[:, None] & d_mask[None, :], other=0.0).to(COMPUTE)
            v2 = tl.load((value_head + o2)[:, None] + offs_d[None, :], mask=m2[:, None] & d_mask[None, :], other=0.0).to(COMPUTE)
            v3 = tl.load((value_head + o3)[:, None] + offs_d[None, :], mask=m3[:, None] & d_mask[None, :], other=0.0).to(COMPUTE)
            v4 = tl.load((value_head + o4)[:, None] + offs_d[None, :], mask=m4[:, None] & d_mask[None, :], other=0.0).to(COMPUTE)
            sample = (hh * hw)[:, None] * v1 + (hh * lw)[:, None] * v2 + (lh * hw)[:, None] * v3 \
                + (lh * lw)[:, None] * v4
            acc += weight[:, None] * sample
    out_offsets = ((n * num_queries + offs_q) * num_heads + m) * head_dim
    out_ptrs = out_ptr + out_offsets[:, None] + offs_d[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=q_mask[:, None] & d_mask[None, :])


@triton.jit
def _ms_deform_attn_backward_kernel(
    value_ptr, levels_ptr, loc_ptr, attn_ptr, grad_out_ptr,
    grad_value_ptr, grad_loc_ptr, grad_attn_ptr,
    num_keys, num_queries, num_heads, head_dim,
    NUM_LEVELS: tl.constexpr, NUM_POINTS: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_nm = tl.program_id(1)
    n = pid_nm // num_heads
    m = pid_nm % num_heads
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, BLOCK_D)
    q_mask = offs_q < num_queries
    d_mask = offs_d < head_dim
    qd_mask = q_mask[:, None] & d_mask[None, :]
    row_stride = num_heads * head_dim
    head_offset = n * num_keys * row_stride + m * head_dim
    value_head = value_ptr + head_offset
    grad_value_head = grad_value_ptr + head_offset
    point_base = ((n * num_queries + offs_q) * num_heads + m) * (NUM_LEVELS * NUM_POINTS)
    out_offsets = ((n * num_queries + offs_q) * num_heads + m) * head_dim
    grad_out = tl.load(grad_out_ptr + out_offsets[:, None] + offs_d[None, :], mask=qd_mask, other=0.0).to(COMPUTE)
    for level in tl.static_range(NUM_LEVELS):
        height = tl.load(levels_ptr + 3 * level)
        width = tl.load(levels_ptr + 3 * level + 1)
        start = tl.load(levels_ptr + 3 * level + 2)
        for point in tl.static_range(NUM_POINTS):
            index = point_base + level * NUM_POINTS + point
            weight = tl.load(attn_ptr + index, mask=q_mask, other=0.0).to(COMPUTE)
            x = tl.load(loc_ptr + 2 * index, mask=q_mask, other=0.0).to(COMPUTE)
            y = tl.load(loc_ptr + 2 * index + 1, mask=q_mask, other=0.0).to(COMPUTE)
            h_im = y * height - 0.5
            w_im = x * width - 0.5
            inside = q_mask & (h_im > -1.0) & (w_im > -1.0) & (h_im < height) & (w_im < width)
            o1, o2, o3, o4, m1, m2, m3, m4, lh, lw, hh, hw = _bilinear_corners(
                h_im, w_im, height, width, start, row_stride, inside)
            mask1 = m1[:, None] & d_mask[None, :]
            mask2 = m2[:, None] & d_mask[None, :]
            mask3 = m3[:, None] & d_mask[None, :]
            mask4 = m4[:, None] & d_mask[None, :]
            v1 = tl.load((value_head + o1)[:, None] + offs_d[None, :], mask=mask1, other=0.0).to(COMPUTE)
            v2 = tl.load((value_head + o2)[:, None] + offs_d[None, :], mask=mask2, other=0.0).to(COMPUTE)
            v3 = tl.load((value_head + o3)[:, None] + offs_d[None, :], mask=mask3, other=0.0).to(COMPUTE)
            v4 = tl.load((value_head + o4)[:, None] + offs_d[None, :], mask=mask4, other=0.0).to(COMPUTE)
            w1 = hh * hw
            w2 = hh * lw
            w3 = lh * hw
            w4 = lh * lw
            sample = w1[:, None] * v1 + w2[:, None] * v2 + w3[:, None] * v3 + w4[:, None] * v4
            tl.store(grad_attn_ptr + index, tl.sum(grad_out * sample, axis=1), mask=q_mask)
            top = grad_out * weight[:, None]
            # d sample / d h_im and d sample / d w_im (the official kernel's grad_h_weight, grad_w_weight).
            grad_h = tl.sum(top * (hw[:, None] * (v3 - v1) + lw[:, None] * (v4 - v2)), axis=1)
            grad_w = tl.sum(top * (hh[:, None] * (v2 - v1) + lh[:, None] * (v4 - v3)), axis=1)
            tl.store(grad_loc_ptr + 2 * index, grad_w * width, mask=q_mask)
            tl.store(grad_loc_ptr + 2 * index + 1, grad_h * height, mask=q_mask)
            # Scatter into the value gradient (the offsets of the reads).
            tl.atomic_add((grad_value_head + o1)[:, None] + offs_d[None, :], w1[:, None] * top, mask=mask1)
            tl.atomic_add((grad_value_head + o2)[:, None] + offs_d[None, :], w2[:, None] * top, mask=mask2)
            tl.atomic_add((grad_value_head + o3)[:, None] + offs_d[None, :], w3[:, None] * top, mask=mask3)
            tl.atomic_add((grad_value_head + o4)[:, None] + offs_d[None, :], w4[:, None] * top, mask=mask4)


_LEVEL_TABLES: Dict[Tuple[Tuple[Tuple[int, int], ...], torch.device], Tensor] = {}


def _level_table(shapes: Tuple[Tuple[int, int], ...], device: torch.device) -> Tensor:
    """(L, 3) int32 (H, W, start) per level on `device`, cached: image sizes repeat, and each new table is a
    host-to-device copy."""
    key = (shapes, device)
    table = _LEVEL_TABLES.get(key)
    if table is None:
        if len(_LEVEL_TABLES) > 1024:  # many distinct batch shapes: keep the cache bounded
            _LEVEL_TABLES.clear()
        rows, start = [], 0
        for height, width in shapes:
            rows.append((height, width, start))
            start += height * width
        table = torch.tensor(rows, dtype=torch.int32).to(device, non_blocking=True)
        _LEVEL_TABLES[key] = table
    return table


def _compute_dtype(*tensors: Tensor):
    if any(t.dtype == torch.float64 for t in tensors):
        return torch.float64, tl.float64
    return torch.float32, tl.float32


def _block_q(num_queries: int, largest: int) -> int:
    # Small query counts (tests, tiny maps) get a smaller block rather than mostly masked-out rows.
    return min(largest, max(16, triton.next_power_of_2(num_queries)))


class _MSDeformAttnFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, shapes, sampling_locations, attention_weights):
        value = value.contiguous()
        sampling_locations = sampling_locations.contiguous()
        attention_weights = attention_weights.contiguous()
        batch, num_keys, num_heads, head_dim = value.shape
        num_queries, num_levels, num_points = sampling_locations.shape[1], sampling_locations.shape[3], \
            sampling_locations.shape[4]
        levels = _level_table(shapes, value.device)
        _, compute = _compute_dtype(value, sampling_locations, attention_weights)
        # The interpreter cannot store bfloat16 (numpy has no such type): it writes float32, cast after.
        out_dtype = torch.float32 if _INTERPRETED and value.dtype == torch.bfloat16 else value.dtype
        output = value.new_empty(batch, num_queries, num_heads * head_dim, dtype=out_dtype)
        block_q = _block_q(num_queries, FORWARD_BLOCK_Q)
        grid = (triton.cdiv(num_queries, block_q), batch * num_heads)
        _ms_deform_attn_forward_kernel[grid](
            value, levels, sampling_locations, attention_weights, output,
            num_keys, num_queries, num_heads, head_dim,
            NUM_LEVELS=num_levels, NUM_POINTS=num_points, COMPUTE=compute,
            BLOCK_Q=block_q, BLOCK_D=triton.next_power_of_2(head_dim), num_warps=NUM_WARPS)
        ctx.save_for_backward(value, sampling_locations, attention_weights, levels)
        return output.to(value.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        value, sampling_locations, attention_weights, levels = ctx.saved_tensors
        batch, num_keys, num_heads, head_dim = value.shape
        num_queries, num_levels, num_points = sampling_locations.shape[1], sampling_locations.shape[3], \
            sampling_locations.shape[4]
        torch_compute, compute = _compute_dtype(value, sampling_locations, attention_weights)
        # Accumulated in the compute dtype (the value gradient by atomics: it must start at zero).
        grad_value = torch.zeros(value.shape, dtype=torch_compute, device=value.device)
        grad_locations = torch.empty(sampling_locations.shape, dtype=torch_compute, device=value.device)
        grad_weights = torch.empty(attention_weights.shape, dtype=torch_compute, device=value.device)
        block_q = _block_q(num_queries, BACKWARD_BLOCK_Q)
        grid = (triton.cdiv(num_queries, block_q), batch * num_heads)
        _ms_deform_attn_backward_kernel[grid](
            value, levels, sampling_locations, attention_weights, grad_output.contiguous(),
            grad_value, grad_locations, grad_weights,
            num_keys, num_queries, num_heads, head_dim,
            NUM_LEVELS=num_levels, NUM_POINTS=num_points, COMPUTE=compute,
            BLOCK_Q=block_q, BLOCK_D=triton.next_power_of_2(head_dim), num_warps=NUM_WARPS)
        return (grad_value.to(value.dtype), None, grad_locations.to(sampling_locations.dtype),
                grad_weights.to(attention_weights.dtype))


def ms_deform_attn_triton(
    value: Tensor, spatial_shapes: Tuple[Tuple[int, int], ...], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """The fused kernel; arguments and result as `ms_deform_attn_core`, with `spatial_shapes` a tuple of
    (H, W) python ints (already validated by the caller, `ms_deform_attn`)."""
    if not triton_supports(value, sampling_locations):
        raise ValueError(
            f"the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 for CPU ones) with fewer than 2**31 "
            f"elements; got value {tuple(value.shape)} on {value.device}: use MODEL.DETR.MS_DEFORM_ATTN_IMPL "
            f"'pytorch' (or 'auto') for these inputs")
    if value.device.type != "cuda":  # the interpreter
        return _MSDeformAttnFunction.apply(value, tuple(spatial_shapes), sampling_locations, attention_weights)
    with torch.cuda.device(value.device):  # kernels launch on the current device: make it the inputs'
        return _MSDeformAttnFunction.apply(value, tuple(spatial_shapes), sampling_locations, attention_weights)
