#!/usr/bin/env python
# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Micro-benchmark of multi-scale deformable attention at realistic DINO / Deformable DETR sizes.

Times `ms_deform_attn_core` (and, with --baseline, the official Deformable DETR PyTorch formulation
`ms_deform_attn_core_pytorch`, for comparison; with --impls triton, the fused Triton kernel) on the
encoder (Lq = S: every memory position queries) and the decoder (Lq = --decoder-queries), forward only
under no_grad and forward + backward, and the full `MSDeformAttn` module (projections included) with
--module. Prints the median and the minimum over --repeat runs, in milliseconds, and on CUDA the peak
memory that forward + backward allocates on top of its inputs. Runs on CPU, or on CUDA with --device cuda
(timed with synchronisation). --json writes every number to a file.

    .venv/bin/python tools/bench_ms_deform_attn.py --baseline --module
    python tools/bench_ms_deform_attn.py --device cuda --impls pytorch triton --batch 5 --image-size 800 1333

On CPU, timings of a fresh process include page faults: glibc hands large freed blocks back to the OS
(mmap threshold, heap trimming), so temporaries of several MB (the encoder's (N*M, D, P, Lq) samples are
14 MB per level) are faulted in again on every call. How much a training process pays depends on its
allocation history; to time without that effect, run with
`MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=1073741824` in the environment.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from semidetr.modeling.ms_deform_attn import MSDeformAttn, ms_deform_attn_core, set_ms_deform_attn_impl


def _triton_kernel():
    from semidetr.modeling.ms_deform_attn_triton import ms_deform_attn_triton

    return ms_deform_attn_triton


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


def parse_args(argv=None):
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
    parser.add_argument("--impls", nargs="+", default=["pytorch"], choices=["pytorch", "triton"],
                        help="implementations to time: the PyTorch path (ms_deform_attn_core) and/or the fused kernel")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="dtype of the values (locations and weights stay float32, as under autocast)")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    return parser.parse_args(argv)


def peak_memory_mib(fn, device):
    """Peak CUDA memory one call of fn() allocates on top of what was allocated before it (None on CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return round((torch.cuda.max_memory_allocated(device) - before) / 2**20, 1)


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


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    height, width = args.image_size
    # Backbone feature maps of stride s have ceil(size / s) pixels per side (as ResNet's stride-2 convs).
    shapes = [(-(-height // stride), -(-width // stride)) for stride in args.strides]
    num_keys = sum(h * w for h, w in shapes)
    num_levels, num_heads, num_points = len(shapes), args.heads, args.points
    head_dim = args.embed_dim // num_heads
    value_dtype = getattr(torch, args.dtype)
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}; N={args.batch}, "
        f"image {height}x{width}, levels {shapes} (S={num_keys}), M={num_heads}, D={head_dim}, "
        f"L={num_levels}, P={num_points}, values {args.dtype}"
    )
    results = {"torch": torch.__version__, "device": str(device), "batch": args.batch, "image_size": [height, width],
               "shapes": shapes, "heads": num_heads, "head_dim": head_dim, "points": num_points,
               "value_dtype": args.dtype, "rows": []}
    generator = torch.Generator().manual_seed(0)

    implementations = []
    if "pytorch" in args.impls:
        implementations.append(("pytorch", "ms_deform_attn_core", ms_deform_attn_core))
    if "triton" in args.impls:
        implementations.append(("triton", "triton (fused)", _triton_kernel()))
    if args.baseline:
        implementations.append(("baseline", "official pytorch (baseline)", ms_deform_attn_core_pytorch))

    for stage, num_queries in (("encoder", num_keys), ("decoder", args.decoder_queries)):
        value = torch.randn(args.batch, num_keys, num_heads, head_dim, generator=generator).to(device, value_dtype)
        # Locations reach a little beyond the maps (as a trained model's do); weights: a softmax over L*P.
        locations = torch.rand(args.batch, num_queries, num_heads, num_levels, num_points, 2, generator=generator)
        locations = (locations * 1.2 - 0.1).to(device)
        weights = torch.randn(args.batch, num_queries, num_heads, num_levels * num_points, generator=generator)
        weights = weights.softmax(-1).view(args.batch, num_queries, num_heads, num_levels, num_points).to(device)
        leaves = [t.requires_grad_() for t in (value, locations, weights)]
        for key, name, core in implementations:

            def forward():
                with torch.no_grad():
                    core(value, shapes, locations, weights)

            def forward_backward():
                output = core(value, shapes, locations, weights)
                torch.autograd.grad(output, leaves, torch.ones_like(output))

            fwd = timed(forward, device, args.repeat, args.warmup)
            fwd_bwd = timed(forward_backward, device, args.repeat, args.warmup)
            memory = peak_memory_mib(forward_backward, device)
            results["rows"].append({"stage": stage, "queries": num_queries, "impl": key, "what": "op",
                                    "forward_ms": round(fwd[0], 3), "forward_min_ms": round(fwd[1], 3),
                                    "forward_backward_ms": round(fwd_bwd[0], 3),
                                    "forward_backward_min_ms": round(fwd_bwd[1], 3), "peak_mib": memory})
            print(
                f"{stage:8s} Lq={num_queries:5d}  {name:28s} forward {fwd[0]:7.2f} ms (min {fwd[1]:7.2f})  "
                f"forward+backward {fwd_bwd[0]:7.2f} ms (min {fwd_bwd[1]:7.2f})"
                + (f"  peak +{memory:.0f} MiB" if memory is not None else "")
            )
        if args.module:
            module = MSDeformAttn(args.embed_dim, num_heads, num_levels, num_points).to(device)
            # Queries and memory are activations of earlier layers: their gradients are computed too.
            query = torch.randn(args.batch, num_queries, args.embed_dim, generator=generator).to(device)
            memory = torch.randn(args.batch, num_keys, args.embed_dim, generator=generator).to(device)
            query.requires_grad_()
            memory.requires_grad_()
            reference_points = torch.rand(args.batch, num_queries, num_levels, 2, generator=generator).to(device)
            for key in args.impls:
                set_ms_deform_attn_impl(module, key)

                def module_forward():
                    with torch.no_grad():
                        module(query, reference_points, memory, shapes)

                def module_forward_backward():
                    module(query, reference_points, memory, shapes).sum().backward()

                fwd = timed(module_forward, device, args.repeat, args.warmup)
                fwd_bwd = timed(module_forward_backward, device, args.repeat, args.warmup)
                results["rows"].append({"stage": stage, "queries": num_queries, "impl": key, "what": "module",
                                        "forward_ms": round(fwd[0], 3), "forward_backward_ms": round(fwd_bwd[0], 3)})
                print(
                    f"{stage:8s} Lq={num_queries:5d}  {'MSDeformAttn module ' + key:28s} forward {fwd[0]:7.2f} ms "
                    f"(min {fwd[1]:7.2f})  forward+backward {fwd_bwd[0]:7.2f} ms (min {fwd_bwd[1]:7.2f})"
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
