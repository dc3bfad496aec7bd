# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Tests of the fused Triton kernel (semidetr/modeling/ms_deform_attn_triton.py) and of the dispatch.

The kernel runs on the CPU under Triton's interpreter, which Triton picks when a kernel is defined
(TRITON_INTERPRET=1 before the module is imported). So that the rest of the suite, and CUDA runs, keep
compiled kernels, `test_kernel_under_the_interpreter` re-runs this file in a subprocess with the variable
set; there the kernel is compared with the PyTorch path (`ms_deform_attn_core`) and the per-point
reference (`ms_deform_attn_naive`): values and gradients, float64 gradcheck, points outside the maps,
several levels, odd sizes, float32 / float16 / bfloat16 values. Shapes are small: the interpreter runs
each program in Python (~0.1-0.2 s each on 2 shared cores).
"""
import logging
import os
import subprocess
import sys

import pytest
import torch

from semidetr.modeling import ms_deform_attn as msda
from semidetr.modeling.ms_deform_attn import (
    MSDeformAttn,
    ms_deform_attn,
    ms_deform_attn_core,
    ms_deform_attn_naive,
    set_ms_deform_attn_impl,
)
from test_ms_deform_attn import SHAPE_SETS, _kink_free, _random_inputs

pytest.importorskip("triton")

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _inputs(shapes, dtype=torch.float64, kink_free=False, **kwargs):
    value, locations, weights = _random_inputs(shapes, dtype=torch.float64, **kwargs)
    if kink_free:
        locations = _kink_free(locations)
        weights = weights[:, : locations.shape[1]].contiguous()
    return value.to(dtype), locations, weights


def _forward_backward(implementation, shapes, value, locations, weights, cotangent):
    inputs = [tensor.clone().requires_grad_() for tensor in (value, locations, weights)]
    output = implementation(inputs[0], shapes, inputs[1], inputs[2])
    return output, torch.autograd.grad((output.double() * cotangent).sum(), inputs)


def _assert_float64_match(reference, shapes, value, locations, weights, cotangent):
    """The fused kernel's float64 values and gradients equal `reference`'s (within 1e-12 / 1e-10)."""
    fused, fused_grads = _forward_backward(ms_deform_attn_triton, tuple(shapes), value, locations, weights, cotangent)
    expected, expected_grads = _forward_backward(reference, shapes, value, locations, weights, cotangent)
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-12)
    for fused_grad, expected_grad in zip(fused_grads, expected_grads):
        torch.testing.assert_close(fused_grad, expected_grad, rtol=0, atol=1e-10)


if not INTERPRETED:

    def test_kernel_under_the_interpreter():
        env = {**os.environ, "TRITON_INTERPRET": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [os.path.join(REPO_ROOT, "projects", "SemiDETR"),
                                                           os.environ.get("PYTHONPATH")]))}
        result = subprocess.run([sys.executable, "-m", "pytest", os.path.abspath(__file__), "-q", "-p",
                                 "no:cacheprovider", "-W", "ignore::RuntimeWarning"], cwd=REPO_ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-6000:]
        assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-3000:]

    # --- dispatch (no kernel runs: compiled kernels need CUDA) ---------------------------------------
    def test_triton_impl_on_cpu_without_the_interpreter_is_an_error():
        shapes = SHAPE_SETS["multi"]
        value, locations, weights = _inputs(shapes)
        with pytest.raises(RuntimeError, match="MS_DEFORM_ATTN_IMPL='triton'.*TRITON_INTERPRET"):
            ms_deform_attn(value, shapes, locations, weights, impl="triton")

    def test_unknown_impl_is_an_error_naming_the_key():
        shapes = SHAPE_SETS["multi"]
        value, locations, weights = _inputs(shapes)
        with pytest.raises(ValueError, match="MODEL.DETR.MS_DEFORM_ATTN_IMPL='cuda'"):
            ms_deform_attn(value, shapes, locations, weights, impl="cuda")
        with pytest.raises(ValueError, match="MODEL.DETR.MS_DEFORM_ATTN_IMPL"):
            set_ms_deform_attn_impl(MSDeformAttn(16, 4, 3, 2), "fused")

    def test_auto_on_cpu_runs_the_pytorch_path_and_logs_the_choice_once(monkeypatch, caplog):
        monkeypatch.setattr(msda, "_LOGGED_CHOICES", set())
        shapes = SHAPE_SETS["multi"]
        value, locations, weights = _inputs(shapes)
        with caplog.at_level(logging.INFO, logger=msda.__name__):
            for _ in range(3):
                output = ms_deform_attn(value, shapes, locations, weights, impl="auto")
        assert torch.equal(output, ms_deform_attn_core(value, shapes, locations, weights))
        messages = [r.getMessage() for r in caplog.records if "deformable attention" in r.getMessage()]
        assert messages == ["Multi-scale deformable attention on cpu: pytorch (grid_sample) "
                            "(MODEL.DETR.MS_DEFORM_ATTN_IMPL='auto')"]

    def test_config_key_reaches_every_attention_module():
        from detectron2.modeling import build_model

        from helpers import tiny_detector_cfg

        cfg = tiny_detector_cfg()
        assert cfg.MODEL.DETR.MS_DEFORM_ATTN_IMPL == "auto"
        cfg.MODEL.DETR.MS_DEFORM_ATTN_IMPL = "pytorch"
        modules = [m for m in build_model(cfg).modules() if isinstance(m, MSDeformAttn)]
        assert len(modules) == 4 and all(m.impl == "pytorch" for m in modules)  # 2 encoder + 2 decoder layers

else:
    from semidetr.modeling.ms_deform_attn_triton import interpreter_enabled, ms_deform_attn_triton

    def test_kernels_are_interpreted():
        assert interpreter_enabled()

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
    @pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
    def test_values_and_gradients_match_the_pytorch_path(shapes, dtype):
        # Points inside, straddling and outside the maps (locations in [-0.25, 1.25]), on the borders;
        # pixel centres (query 1) are dropped: the location gradient has a kink there.
        value, locations, weights = _inputs(shapes, kink_free=True, seed=1)
        value, locations, weights = value.to(dtype), locations.to(dtype), weights.to(dtype)
        cotangent = torch.randn(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3],
                                dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        fused, fused_grads = _forward_backward(ms_deform_attn_triton, tuple(shapes), value, locations, weights,
                                               cotangent)
        core, core_grads = _forward_backward(ms_deform_attn_core, shapes, value, locations, weights, cotangent)
        tolerance = dict(rtol=0, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
        assert fused.dtype == dtype
        torch.testing.assert_close(fused, core, **tolerance)
        for fused_grad, core_grad in zip(fused_grads, core_grads):
            assert fused_grad.dtype == dtype
            torch.testing.assert_close(fused_grad, core_grad, **tolerance)
        assert fused_grads[1].abs().max() > 1e-2  # the location gradient is not trivially zero

    def test_values_and_gradients_match_the_naive_reference():
        shapes = SHAPE_SETS["multi"]
        value, locations, weights = _inputs(shapes, kink_free=True, seed=3)
        cotangent = torch.randn(2, locations.shape[1], 6, dtype=torch.float64,
                                generator=torch.Generator().manual_seed(4))
        _assert_float64_match(ms_deform_attn_naive, shapes, value, locations, weights, cotangent)

    def test_values_at_pixel_centres_match():
        # Values (not gradients) are continuous at pixel centres: query 1 sits on them.
        shapes = SHAPE_SETS["degenerate"]
        value, locations, weights = _inputs(shapes, seed=5)
        torch.testing.assert_close(ms_deform_attn_triton(value, tuple(shapes), locations, weights),
                                   ms_deform_attn_naive(value, shapes, locations, weights), rtol=0, atol=1e-12)

    def test_gradcheck_float64():
        # Two levels of odd sizes, 2 heads, 3 channels (padded to 4 in the kernel); fast mode keeps the
        # number of interpreted kernel runs small.
        shapes = [(3, 5), (2, 1)]
        value, locations, weights = _inputs(shapes, kink_free=True, batch=1, num_queries=4, num_points=2, seed=6)
        inputs = [tensor.requires_grad_() for tensor in (value, locations, weights)]
        assert torch.autograd.gradcheck(lambda v, loc, w: ms_deform_attn_triton(v, tuple(shapes), loc, w), inputs,
                                        eps=1e-6, atol=1e-7, fast_mode=True)
        # The full Jacobian on a smaller case: one level, one head, 2 queries x 2 points.
        shapes = [(2, 3)]
        value, locations, weights = _inputs(shapes, kink_free=True, batch=1, num_queries=3, num_heads=1, head_dim=2,
                                            num_points=2, seed=12)
        inputs = [tensor.requires_grad_() for tensor in (value, locations, weights)]
        assert torch.autograd.gradcheck(lambda v, loc, w: ms_deform_attn_triton(v, tuple(shapes), loc, w), inputs,
                                        eps=1e-6, atol=1e-7)

    def test_queries_across_several_blocks():
        # 70 queries: two forward blocks (64) and three backward blocks (32), the last ones partly masked.
        shapes = [(4, 3), (1, 2)]
        value, locations, weights = _inputs(shapes, batch=1, num_queries=70, num_heads=1, head_dim=5, num_points=2,
                                            seed=7)
        locations[:, 1] = 0.3  # off the pixel centres (see _random_inputs)
        cotangent = torch.randn(1, 70, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
        _assert_float64_match(ms_deform_attn_core, shapes, value, locations, weights, cotangent)

    def test_points_far_outside_read_zero_and_get_no_gradient():
        shapes = SHAPE_SETS["multi"]
        value, locations, weights = _inputs(shapes, seed=9)
        locations = torch.where(torch.rand(locations.shape, generator=torch.Generator().manual_seed(1)) < 0.5,
                                -1.5 + 0 * locations, 2.5 + 0 * locations)
        cotangent = torch.ones(2, 4, 6, dtype=torch.float64)
        output, grads = _forward_backward(ms_deform_attn_triton, tuple(shapes), value, locations, weights, cotangent)
        assert torch.equal(output, torch.zeros_like(output))
        assert all(torch.equal(grad, torch.zeros_like(grad)) for grad in grads)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
    def test_half_precision_values(dtype):
        # As under autocast: half-precision values, float32 locations and weights. Sampled and accumulated
        # in float32 (value gradient by float32 atomics), so the result is the float32 one rounded once.
        shapes = SHAPE_SETS["multi"]
        value, locations, weights = _inputs(shapes, kink_free=True, seed=10)
        value, locations, weights = value.to(dtype), locations.float(), weights.float()
        cotangent = torch.randn(2, locations.shape[1], 6, dtype=torch.float64,
                                generator=torch.Generator().manual_seed(11))
        fused, fused_grads = _forward_backward(ms_deform_attn_triton, tuple(shapes), value, locations, weights,
                                               cotangent)
        core, core_grads = _forward_backward(ms_deform_attn_core, shapes, value, locations, weights, cotangent)
        assert fused.dtype == dtype and [g.dtype for g in fused_grads] == [dtype, torch.float32, torch.float32]
        resolution = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(fused, core, **resolution)
        torch.testing.assert_close(fused_grads[0], core_grads[0], **resolution)
        for fused_grad, core_grad in zip(fused_grads[1:], core_grads[1:]):
            torch.testing.assert_close(fused_grad, core_grad, rtol=1e-5, atol=1e-5)

    def test_module_dispatches_to_the_kernel(monkeypatch, caplog):
        monkeypatch.setattr(msda, "_LOGGED_CHOICES", set())
        shapes = [(5, 4), (2, 3)]
        torch.manual_seed(0)
        module = MSDeformAttn(16, 2, len(shapes), 2).double()
        with torch.no_grad():
            module.sampling_offsets.weight.normal_(std=0.5)
            module.attention_weights.weight.normal_(std=0.5)
        generator = torch.Generator().manual_seed(0)
        query = torch.randn(1, 6, 16, generator=generator, dtype=torch.float64)
        memory = torch.randn(1, 26, 16, generator=generator, dtype=torch.float64)
        reference = torch.rand(1, 6, len(shapes), 2, generator=generator, dtype=torch.float64)
        results = {}
        for impl in ("triton", "pytorch"):
            set_ms_deform_attn_impl(module, impl)
            module.zero_grad()
            with caplog.at_level(logging.INFO, logger=msda.__name__):
                output = module(query, reference, memory, shapes)
            output.square().sum().backward()
            results[impl] = (output.detach(), module.value_proj.weight.grad.clone(),
                             module.sampling_offsets.weight.grad.clone())
        for fused, core in zip(results["triton"], results["pytorch"]):
            torch.testing.assert_close(fused, core, rtol=1e-10, atol=1e-10)
        assert any("cpu: triton (fused)" in r.getMessage() for r in caplog.records)
