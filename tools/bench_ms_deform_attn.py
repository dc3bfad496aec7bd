#!/usr/bin/env python
# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Micro-benchmark of multi-scale deformable attention at realistic DINO / Deformable DETR sizes.

Times `ms_deform_attn_core` (and, with --baseline, the official Deformable DETR PyTorch formulation
`ms_deform_attn_core_pytorch`, for comparison) on the encoder (Lq = S: every memory position queries) and
the decoder (Lq = --decoder-queries), forward only under no_grad and forward + backward, and the full
`MSDeformAttn` module (projections included) with --module. Prints the median and the minimum over
--repeat runs, in milliseconds. Runs on CPU, or on CUDA with --device cuda (timed with synchronisation).

    .venv/bin/python tools/bench_ms_deform_attn.py --baseline --module

On CPU, timings of a fresh process include page faults: glibc hands large freed blocks back to the OS
(mmap threshold, heap trimming), so temporaries of several MB (the encoder's (N*M, D, P, Lq) samples are
14 MB per level) are faulted in again on every call. How much a training process pays depends on its
allocation history; to time without that effect, run with
`MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=1073741824` in the environment.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from semidetr.modeling.ms_deform_attn import MSDeformAttn, ms_deform_attn_core


def ms_deform_attn_core_pytorch(value, value_spatial_shapes, sampling_locations, attention_weights):
    """Deformable DETR's reference (models/ops/functions/ms_deform_attn_func.py), the baseline."""
    N_, S_, M_, D_ = value.shape
    _, Lq_, M_, L_, P_, _ = sampling_locations.shape
    value_list = value.split([H_ * W_ for H_, W_ in value_spatial_shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampling_value_list = []
    for lid_, (H_, W_) in enumerate(value_spatial_shapes):
        value_l_ = value_list[lid_].flatten(2).transpose(1, 2).reshape(N_ * M_, D_, H_, W_)
        sampling_grid_l_ = sampling_grids[:, :, :, lid_].transpose(1, 2).flatten(0, 1)
        sampling_value_l_ = F.grid_sample(
            value_l_, sampling_grid_l_, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        sampling_value_list.append(sampling_value_l_)
    attention_weights = attention_weights.transpose(1, 2).reshape(N_ * M_, 1, Lq_, L_ * P_)
    output = (torch.stack(sampling_value_list, dim=-2).flatten(-2) * attention_weights).sum(-1)
    return output.view(N_, M_ * D_, Lq_).transpose(1, 2).contiguous()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 keeps the default")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--image-size", type=int, nargs=2, default=(256, 320), metavar=("H", "W"))
    parser.add_argument("--strides", type=int, nargs="+", default=(8, 16, 32, 64))
    parser.add_argument("--embed-dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--decoder-queries", type=int, default=900)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--baseline", action="store_true", help="also time the official PyTorch formulation")
    parser.add_argument("--module", action="store_true", help="also time MSDeformAttn (with projections)")
    return parser.parse_args()


def timed(fn, device, repeat, warmup):
    """(median, min) wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    height, width = args.image_size
    # Backbone feature maps of stride s have ceil(size / s) pixels per side (as ResNet's stride-2 convs).
    shapes = [(-(-height // stride), -(-width // stride)) for stride in args.strides]
    num_keys = sum(h * w for h, w in shapes)
    num_levels, num_heads, num_points = len(shapes), args.heads, args.points
    head_dim = args.embed_dim // num_heads
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}; N={args.batch}, "
        f"image {height}x{width}, levels {shapes} (S={num_keys}), M={num_heads}, D={head_dim}, "
        f"L={num_levels}, P={num_points}"
    )
    generator = torch.Generator().manual_seed(0)

    implementations = [("ms_deform_attn_core", ms_deform_attn_core)]
    if args.baseline:
        implementations.append(("official pytorch (baseline)", ms_deform_attn_core_pytorch))

    for stage, num_queries in (("encoder", num_keys), ("decoder", args.decoder_queries)):
        value = torch.randn(args.batch, num_keys, num_heads, head_dim, generator=generator).to(device)
        # Locations reach a little beyond the maps (as a trained model's do); weights: a softmax over L*P.
        locations = torch.rand(args.batch, num_queries, num_heads, num_levels, num_points, 2, generator=generator)
        locations = (locations * 1.2 - 0.1).to(device)
        weights = torch.randn(args.batch, num_queries, num_heads, num_levels * num_points, generator=generator)
        weights = weights.softmax(-1).view(args.batch, num_queries, num_heads, num_levels, num_points).to(device)
        leaves = [t.requires_grad_() for t in (value, locations, weights)]
        for name, core in implementations:

            def forward():
                with torch.no_grad():
                    core(value, shapes, locations, weights)

            def forward_backward():
                output = core(value, shapes, locations, weights)
                torch.autograd.grad(output, leaves, torch.ones_like(output))

            fwd = timed(forward, device, args.repeat, args.warmup)
            fwd_bwd = timed(forward_backward, device, args.repeat, args.warmup)
            print(
                f"{stage:8s} Lq={num_queries:5d}  {name:28s} forward {fwd[0]:7.2f} ms (min {fwd[1]:7.2f})  "
                f"forward+backward {fwd_bwd[0]:7.2f} ms (min {fwd_bwd[1]:7.2f})"
            )
        if args.module:
            module = MSDeformAttn(args.embed_dim, num_heads, num_levels, num_points).to(device)
            # Queries and memory are activations of earlier layers: their gradients are computed too.
            query = torch.randn(args.batch, num_queries, args.embed_dim, generator=generator).to(device)
            memory = torch.randn(args.batch, num_keys, args.embed_dim, generator=generator).to(device)
            query.requires_grad_()
            memory.requires_grad_()
            reference_points = torch.rand(args.batch, num_queries, num_levels, 2, generator=generator).to(device)

            def module_forward():
                with torch.no_grad():
                    module(query, reference_points, memory, shapes)

            def module_forward_backward():
                module(query, reference_points, memory, shapes).sum().backward()

            fwd = timed(module_forward, device, args.repeat, args.warmup)
            fwd_bwd = timed(module_forward_backward, device, args.repeat, args.warmup)
            print(
                f"{stage:8s} Lq={num_queries:5d}  {'MSDeformAttn module':28s} forward {fwd[0]:7.2f} ms (min "
                f"{fwd[1]:7.2f})  forward+backward {fwd_bwd[0]:7.2f} ms (min {fwd_bwd[1]:7.2f})"
            )


if __name__ == "__main__":
    main()
