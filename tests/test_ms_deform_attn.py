# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Tests of multi-scale deformable attention (semidetr/modeling/ms_deform_attn.py).

The vectorised core (grid_sample) is compared with the per-point reference (the official CUDA kernel's
bilinear formula spelled out), values and gradients, and the reference with values computed by hand, so a
convention error in either one shows; deliberately wrong conventions are checked to be told apart.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from semidetr.modeling.ms_deform_attn import (
    MSDeformAttn,
    ms_deform_attn,
    ms_deform_attn_core,
    ms_deform_attn_naive,
    register_ms_deform_attn_kernel,
)

# One square level; non-square levels of different sizes (not sorted by size); degenerate 1-pixel maps.
SHAPE_SETS = {
    "single": [(4, 4)],
    "multi": [(5, 7), (3, 2), (1, 4)],
    "degenerate": [(1, 1), (6, 1), (2, 9)],
}


def _random_inputs(shapes, batch=2, num_queries=4, num_heads=2, head_dim=3, num_points=3, dtype=torch.float64,
                   seed=0):
    """(value, sampling_locations, attention_weights) with points inside, straddling and outside the maps.

    Query 0 has its points exactly on the map borders (x or y in {0, 1}), query 1 at pixel centres (where
    the location gradient has a kink: only values are compared there; see `_kink_free`).
    """
    generator = torch.Generator().manual_seed(seed)
    num_keys = sum(height * width for height, width in shapes)
    num_levels = len(shapes)
    value = torch.randn(batch, num_keys, num_heads, head_dim, generator=generator, dtype=dtype)
    locations = torch.rand(batch, num_queries, num_heads, num_levels, num_points, 2, generator=generator, dtype=dtype)
    locations = locations * 1.5 - 0.25  # [-0.25, 1.25]: a quarter of the extent beyond each border
    borders = torch.tensor([[0.0, 0.0], [1.0, 0.3], [0.6, 1.0], [1.0, 1.0], [0.0, 0.7]], dtype=dtype)
    locations[:, 0] = borders[torch.arange(num_levels * num_points) % len(borders)].view(num_levels, num_points, 2)
    for level, (height, width) in enumerate(shapes):
        columns = torch.randint(0, width, (batch, num_heads, num_points), generator=generator)
        rows = torch.randint(0, height, (batch, num_heads, num_points), generator=generator)
        locations[:, 1, :, level, :, 0] = (columns.to(dtype) + 0.5) / width
        locations[:, 1, :, level, :, 1] = (rows.to(dtype) + 0.5) / height
    weights = torch.rand(batch, num_queries, num_heads, num_levels, num_points, generator=generator, dtype=dtype)
    return value, locations, weights


def _kink_free(locations):
    """Drop query 1 (pixel centres), where the location gradient is one-sided and implementations may differ."""
    keep = [q for q in range(locations.shape[1]) if q != 1]
    return locations[:, keep].contiguous()


def _grid_sample_variant(value, shapes, locations, weights, align_corners=False, padding_mode="zeros",
                         swap_xy=False):
    """The official PyTorch formulation with a switchable convention, to check that the tests see errors."""
    batch, _, num_heads, head_dim = value.shape
    num_queries = locations.shape[1]
    grids = 2 * (locations.flip(-1) if swap_xy else locations) - 1
    output = 0
    for level, (value_l, (height, width)) in enumerate(zip(value.split([h * w for h, w in shapes], 1), shapes)):
        value_l = value_l.permute(0, 2, 3, 1).reshape(batch * num_heads, head_dim, height, width)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (N*M, Lq, P, 2)
        sampled = F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode=padding_mode,
                                align_corners=align_corners)  # (N*M, D, Lq, P)
        weights_l = weights[:, :, :, level].transpose(1, 2).flatten(0, 1)[:, None]  # (N*M, 1, Lq, P)
        output = output + (sampled * weights_l).sum(-1)
    return output.view(batch, num_heads * head_dim, num_queries).transpose(1, 2)


# ------------------------------------------------------------------------------------------------------
# ms_deform_attn_core against the reference
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
def test_core_matches_naive_values(shapes):
    value, locations, weights = _random_inputs(shapes)
    expected = ms_deform_attn_naive(value, shapes, locations, weights)
    output = ms_deform_attn_core(value, shapes, locations, weights)
    assert output.shape == (2, 4, 2 * 3)
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
def test_core_matches_naive_gradients(shapes):
    value, locations, weights = _random_inputs(shapes, seed=1)
    locations = _kink_free(locations)
    weights = weights[:, : locations.shape[1]].contiguous()
    cotangent = torch.randn(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3],
                            dtype=value.dtype, generator=torch.Generator().manual_seed(2))
    gradients = {}
    for name, implementation in (("core", ms_deform_attn_core), ("naive", ms_deform_attn_naive)):
        inputs = [tensor.clone().requires_grad_() for tensor in (value, locations, weights)]
        output = implementation(inputs[0], shapes, inputs[1], inputs[2])
        gradients[name] = torch.autograd.grad((output * cotangent).sum(), inputs)
    for core_grad, naive_grad in zip(gradients["core"], gradients["naive"]):
        torch.testing.assert_close(core_grad, naive_grad, rtol=0, atol=1e-10)
    # The location gradient is not trivially zero (border and outside points included).
    assert gradients["naive"][1].abs().max() > 1e-2


def test_core_gradcheck():
    shapes = [(2, 3), (1, 2)]
    value, locations, weights = _random_inputs(shapes, batch=1, num_queries=3, head_dim=2, num_points=2, seed=3)
    locations = _kink_free(locations)
    weights = weights[:, : locations.shape[1]].contiguous()
    inputs = [tensor.requires_grad_() for tensor in (value, locations, weights)]
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn_core(v, shapes, loc, w), inputs, eps=1e-6, atol=1e-8
    )


def test_naive_matches_hand_computed_values():
    # Level 0: 2x2 map [[1, 2], [3, 4]] (row i, column j); level 1: 1x3 map [5, 6, 7]. One head, one channel.
    shapes = [(2, 2), (1, 3)]
    value = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], dtype=torch.float64).view(1, 7, 1, 1)
    cases = [  # (level, x, y, expected): x is the column, y the row; pixel centres at (j + 0.5) / W
        (0, 0.25, 0.25, 1.0),
        (0, 0.75, 0.25, 2.0),
        (0, 0.25, 0.75, 3.0),
        (0, 0.5, 0.5, 2.5),  # the mean of the four pixels
        (0, 0.375, 0.25, 1.25),  # a quarter of the way from pixel (0, 0) to (0, 1)
        (0, 0.0, 0.25, 0.5),  # on the left border: half of pixel (0, 0), half of zero padding
        (0, 0.0, 0.0, 0.25),  # on the corner: a quarter of pixel (0, 0)
        (0, 1.0, 1.0, 1.0),  # a quarter of pixel (1, 1)
        (0, -0.25, 0.25, 0.0),  # one pixel outside: zero padding only
        (0, 0.5, 1.5, 0.0),
        (1, 0.5, 0.5, 6.0),  # the second level's middle pixel: level offsets are right
        (1, 0.5, 0.0, 3.0),  # its top border: half of the pixel
    ]
    num_queries = len(cases)
    locations = torch.zeros(1, num_queries, 1, 2, 1, 2, dtype=torch.float64)
    weights = torch.zeros(1, num_queries, 1, 2, 1, dtype=torch.float64)
    for query, (level, x, y, _) in enumerate(cases):
        locations[0, query, 0, level, 0] = torch.tensor([x, y])
        weights[0, query, 0, level, 0] = 1.0
    expected = torch.tensor([case[-1] for case in cases], dtype=torch.float64).view(1, num_queries, 1)
    torch.testing.assert_close(ms_deform_attn_naive(value, shapes, locations, weights), expected)
    torch.testing.assert_close(ms_deform_attn_core(value, shapes, locations, weights), expected)


@pytest.mark.parametrize(
    "convention",
    [dict(align_corners=True), dict(padding_mode="border"), dict(swap_xy=True)],
    ids=["align_corners_true", "border_padding", "swapped_xy"],
)
def test_reference_tells_wrong_conventions_apart(convention):
    shapes = SHAPE_SETS["multi"]
    value, locations, weights = _random_inputs(shapes, seed=4)
    expected = ms_deform_attn_naive(value, shapes, locations, weights)
    # The variant with the right convention agrees, so a difference below is the convention's alone.
    torch.testing.assert_close(_grid_sample_variant(value, shapes, locations, weights), expected)
    wrong = _grid_sample_variant(value, shapes, locations, weights, **convention)
    assert (wrong - expected).abs().max() > 1e-2


# ------------------------------------------------------------------------------------------------------
# ms_deform_attn_core: dtypes, arguments, dispatch
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_core_samples_half_precision_in_float32(dtype):
    shapes = SHAPE_SETS["multi"]
    value, locations, weights = (t.to(dtype) for t in _random_inputs(shapes, dtype=torch.float32, seed=5))
    output = ms_deform_attn_core(value, shapes, locations, weights)
    assert output.dtype == dtype
    # Sampled in float32 from the same (rounded) inputs, rounded once at the end.
    expected = ms_deform_attn_core(value.float(), shapes, locations.float(), weights.float()).to(dtype)
    assert torch.equal(output, expected)
    reference = ms_deform_attn_naive(value, shapes, locations, weights)
    assert reference.dtype == dtype
    torch.testing.assert_close(reference, output)
    inputs = [tensor.requires_grad_() for tensor in (value, locations, weights)]
    gradients = torch.autograd.grad(ms_deform_attn_core(inputs[0], shapes, inputs[1], inputs[2]).sum(), inputs)
    assert all(grad.dtype == dtype and torch.isfinite(grad).all() for grad in gradients)


def test_core_accepts_spatial_shapes_tensor():
    shapes = SHAPE_SETS["multi"]
    value, locations, weights = _random_inputs(shapes)
    as_tensor = ms_deform_attn_core(value, torch.tensor(shapes), locations, weights)
    assert torch.equal(as_tensor, ms_deform_attn_core(value, shapes, locations, weights))
    with pytest.raises(TypeError, match="CPU tensor"):
        ms_deform_attn_core(value, torch.tensor(shapes, device="meta"), locations, weights)


def _drop_last_level(v, loc, w):
    return v, loc[:, :, :, :-1].contiguous(), w[:, :, :, :-1].contiguous()


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda v, loc, w: (v[:, :-1], loc, w), r"S=\d+ positions"),
        (lambda v, loc, w: (v.flatten(2), loc, w), r"value must be \(N, S, M, D\)"),
        (lambda v, loc, w: (v, loc[..., :1], w), r"sampling_locations must be \(N, Lq, M, L, P, 2\)"),
        (lambda v, loc, w: (v, loc[:, :, :1], w), "M=2"),
        (_drop_last_level, "L=2 levels"),
        (lambda v, loc, w: (v, loc, w[..., :1]), r"attention_weights must be \(N, Lq, M, L, P\)"),
        (lambda v, loc, w: (v, loc, w.long()), "floating-point"),
    ],
    ids=["num_keys", "value_dims", "location_dims", "heads", "levels", "weights_shape", "weights_dtype"],
)
def test_core_rejects_mismatched_shapes(corrupt, message):
    shapes = SHAPE_SETS["multi"]
    value, locations, weights = corrupt(*_random_inputs(shapes))
    with pytest.raises(ValueError, match=message):
        ms_deform_attn_core(value, shapes, locations, weights)


@pytest.mark.parametrize(
    "spatial_shapes, message",
    [([(5, 7), (3, 0), (1, 4)], "positive"), ([(5, 7, 1)], r"\(H, W\)"), ([], "at least one level")],
    ids=["empty_level", "three_sizes", "no_level"],
)
def test_core_rejects_bad_spatial_shapes(spatial_shapes, message):
    value, locations, weights = _random_inputs(SHAPE_SETS["multi"])
    with pytest.raises(ValueError, match=message):
        ms_deform_attn_core(value, spatial_shapes, locations, weights)


@pytest.fixture
def recording_cpu_kernel():
    """Registers, for CPU tensors, a kernel that records its inputs and runs the core; restores after."""
    calls = []

    def kernel(value, spatial_shapes, sampling_locations, attention_weights):
        calls.append((spatial_shapes, sampling_locations.detach().clone(), attention_weights.detach().clone()))
        return ms_deform_attn_core(value, spatial_shapes, sampling_locations, attention_weights)

    previous = register_ms_deform_attn_kernel("cpu", kernel)
    try:
        yield calls
    finally:
        register_ms_deform_attn_kernel("cpu", previous)


def test_dispatch_runs_the_registered_kernel_for_the_device(recording_cpu_kernel):
    shapes = SHAPE_SETS["multi"]
    value, locations, weights = _random_inputs(shapes)
    output = ms_deform_attn(value, torch.tensor(shapes), locations, weights)
    assert len(recording_cpu_kernel) == 1
    assert recording_cpu_kernel[0][0] == tuple(shapes)  # shapes arrive as python ints
    assert torch.equal(output, ms_deform_attn_core(value, shapes, locations, weights))
    with pytest.raises(ValueError, match="S=\\d+ positions"):  # inputs are validated before the kernel
        ms_deform_attn(value[:, 1:], shapes, locations, weights)


def test_dispatch_falls_back_to_the_core():
    shapes = SHAPE_SETS["multi"]
    value, locations, weights = _random_inputs(shapes)
    assert torch.equal(ms_deform_attn(value, shapes, locations, weights),
                       ms_deform_attn_core(value, shapes, locations, weights))


# ------------------------------------------------------------------------------------------------------
# MSDeformAttn
# ------------------------------------------------------------------------------------------------------
MODULE_SHAPES = [(6, 5), (3, 3), (2, 1)]
EMBED_DIM, NUM_HEADS, NUM_POINTS = 16, 4, 3


def _module_inputs(batch=2, num_queries=5, reference_dims=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    num_keys = sum(h * w for h, w in MODULE_SHAPES)
    query = torch.randn(batch, num_queries, EMBED_DIM, generator=generator)
    memory = torch.randn(batch, num_keys, EMBED_DIM, generator=generator)
    reference_points = torch.rand(batch, num_queries, len(MODULE_SHAPES), reference_dims, generator=generator)
    if reference_dims == 4:
        reference_points[..., 2:] = reference_points[..., 2:] * 0.5 + 0.05  # box sizes in (0.05, 0.55)
    return query, reference_points, memory


def _module(seed=0, randomise=True, **kwargs):
    torch.manual_seed(seed)
    module = MSDeformAttn(EMBED_DIM, NUM_HEADS, len(MODULE_SHAPES), NUM_POINTS, **kwargs)
    if randomise:  # query-dependent offsets and attention, as after training
        with torch.no_grad():
            module.sampling_offsets.weight.normal_(std=0.5)
            module.attention_weights.weight.normal_(std=0.5)
    return module


def test_parameter_names_and_shapes_match_deformable_detr():
    module = MSDeformAttn()  # 256 channels, 8 heads, 4 levels, 4 points
    shapes = {name: tuple(param.shape) for name, param in module.named_parameters()}
    assert shapes == {
        "sampling_offsets.weight": (256, 256),
        "sampling_offsets.bias": (256,),
        "attention_weights.weight": (128, 256),
        "attention_weights.bias": (128,),
        "value_proj.weight": (256, 256),
        "value_proj.bias": (256,),
        "output_proj.weight": (256, 256),
        "output_proj.bias": (256,),
    }


def test_initialisation_matches_deformable_detr():
    num_heads, num_levels, num_points = 8, 4, 4
    module = MSDeformAttn(256, num_heads, num_levels, num_points)
    # Head m looks along 2*pi*m/8, scaled so that the larger component is 1; point p sits p + 1 steps out.
    directions = torch.tensor([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]],
                              dtype=torch.float32)
    steps = torch.arange(1, num_points + 1, dtype=torch.float32)
    expected_bias = directions[:, None, None, :] * steps[None, None, :, None]
    expected_bias = expected_bias.expand(num_heads, num_levels, num_points, 2).reshape(-1)
    torch.testing.assert_close(module.sampling_offsets.bias.detach(), expected_bias, rtol=0, atol=1e-5)
    # Bit for bit what Deformable DETR's MSDeformAttn._reset_parameters computes:
    thetas = torch.arange(num_heads, dtype=torch.float32) * (2.0 * math.pi / num_heads)
    grid_init = torch.stack([thetas.cos(), thetas.sin()], -1)
    grid_init = (grid_init / grid_init.abs().max(-1, keepdim=True)[0]).view(num_heads, 1, 1, 2).repeat(
        1, num_levels, num_points, 1)
    for i in range(num_points):
        grid_init[:, :, i, :] *= i + 1
    assert torch.equal(module.sampling_offsets.bias.detach(), grid_init.view(-1))
    assert not module.sampling_offsets.weight.any()
    assert not module.attention_weights.weight.any() and not module.attention_weights.bias.any()
    for projection in (module.value_proj, module.output_proj):
        assert not projection.bias.any()
        bound = math.sqrt(6.0 / (2 * 256))  # xavier_uniform
        assert projection.weight.abs().max() <= bound and projection.weight.std() > bound / 2


@pytest.mark.parametrize("reference_dims", [2, 4])
def test_initial_sampling_locations_are_reference_plus_grid(recording_cpu_kernel, reference_dims):
    module = _module(randomise=False)
    query, reference_points, memory = _module_inputs(reference_dims=reference_dims)
    module(query, reference_points, memory, MODULE_SHAPES)
    (_, locations, weights), = recording_cpu_kernel
    num_levels = len(MODULE_SHAPES)
    grid = module.sampling_offsets.bias.detach().view(NUM_HEADS, num_levels, NUM_POINTS, 2)
    if reference_dims == 2:  # pixel offsets of each level
        level_size = torch.tensor([[w, h] for h, w in MODULE_SHAPES], dtype=torch.float32)
        expected = reference_points[:, :, None, :, None, :] + grid / level_size[None, :, None, :]
    else:  # offsets in units of half the box over the number of points
        expected = (reference_points[:, :, None, :, None, :2]
                    + grid / NUM_POINTS * reference_points[:, :, None, :, None, 2:] * 0.5)
    torch.testing.assert_close(locations, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(weights, torch.full_like(weights, 1.0 / (num_levels * NUM_POINTS)))


@pytest.mark.parametrize("reference_dims", [2, 4])
def test_module_composes_projections_and_reference(reference_dims):
    module = _module().double()
    query, reference_points, memory = (t.double() for t in _module_inputs(reference_dims=reference_dims))
    batch, num_queries, _ = query.shape
    num_levels, head_dim = len(MODULE_SHAPES), EMBED_DIM // NUM_HEADS
    with torch.no_grad():
        value = module.value_proj(memory).view(batch, -1, NUM_HEADS, head_dim)
        offsets = module.sampling_offsets(query).view(batch, num_queries, NUM_HEADS, num_levels, NUM_POINTS, 2)
        logits = module.attention_weights(query).view(batch, num_queries, NUM_HEADS, num_levels * NUM_POINTS)
        weights = logits.softmax(-1).view(batch, num_queries, NUM_HEADS, num_levels, NUM_POINTS)
        locations = torch.empty_like(offsets)
        for level, (height, width) in enumerate(MODULE_SHAPES):
            for coordinate, size in ((0, width), (1, height)):
                ref = reference_points[:, :, None, level, None, coordinate]
                if reference_dims == 2:
                    shift = offsets[:, :, :, level, :, coordinate] / size
                else:
                    shift = offsets[:, :, :, level, :, coordinate] / NUM_POINTS * reference_points[
                        :, :, None, level, None, 2 + coordinate] * 0.5
                locations[:, :, :, level, :, coordinate] = ref + shift
        expected = module.output_proj(ms_deform_attn_naive(value, MODULE_SHAPES, locations, weights))
        output = module(query, reference_points, memory, MODULE_SHAPES)
    assert output.shape == (batch, num_queries, EMBED_DIM)
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-12)


def test_padding_mask_hides_padded_values():
    module = _module()
    query, reference_points, memory = _module_inputs()
    # Pad the last column and the last row of every level, as for an image narrower than the batch's.
    padding_mask = torch.cat([
        torch.zeros(h, w, dtype=torch.bool).index_fill_(1, torch.tensor([w - 1]), True)
        .index_fill_(0, torch.tensor([h - 1]), True).flatten() for h, w in MODULE_SHAPES
    ]).expand(memory.shape[0], -1)
    # Reference points inside the valid region, with wide enough offsets to reach the padding.
    with torch.no_grad():
        module.sampling_offsets.weight.mul_(4.0)
    noisy_memory = torch.where(padding_mask[..., None], torch.randn_like(memory) * 100, memory)
    memory.requires_grad_()
    output = module(query, reference_points, memory, MODULE_SHAPES, padding_mask=padding_mask)
    noisy_output = module(query, reference_points, noisy_memory, MODULE_SHAPES, padding_mask=padding_mask)
    assert torch.equal(output, noisy_output)
    (memory_grad,) = torch.autograd.grad(output.sum(), memory)
    assert not memory_grad[padding_mask].any() and memory_grad[~padding_mask].abs().sum() > 0
    # Without the mask the padded values are read: the test can fail.
    unmasked = module(query, reference_points, memory, MODULE_SHAPES)
    assert not torch.allclose(unmasked, module(query, reference_points, noisy_memory, MODULE_SHAPES))


def test_level_start_index_and_tensor_shapes_are_accepted():
    module = _module()
    query, reference_points, memory = _module_inputs()
    sizes = torch.tensor([h * w for h, w in MODULE_SHAPES])
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    output = module(query, reference_points, memory, torch.tensor(MODULE_SHAPES), level_start_index)
    assert torch.equal(output, module(query, reference_points, memory, MODULE_SHAPES))


def test_embed_dim_must_be_divisible_by_heads():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        MSDeformAttn(embed_dim=30, num_heads=8)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda q, r, m, s, kw: (q[..., :-1], r, m, s, kw), r"query must be \(N, Lq, 16\)"),
        (lambda q, r, m, s, kw: (q, r, m[..., :-1], s, kw), r"value must be \(N, S, 16\)"),
        (lambda q, r, m, s, kw: (q, r, m[:1], s, kw), "batch size"),
        (lambda q, r, m, s, kw: (q, r, m, s[:-1], kw), "num_levels=3"),
        (lambda q, r, m, s, kw: (q, r, m[:, :-1], s, kw), r"S=\d+ positions"),
        (lambda q, r, m, s, kw: (q, r[:, :, :-1], m, s, kw), r"reference_points must be \(N, Lq, L"),
        (lambda q, r, m, s, kw: (q, r[..., :1], m, s, kw), "2 \\(x, y\\) or 4"),
        (lambda q, r, m, s, kw: (q, r, m, s, dict(level_start_index=torch.zeros(2))), "level_start_index"),
        (lambda q, r, m, s, kw: (q, r, m, s, dict(padding_mask=torch.zeros(2, 3, dtype=torch.bool))),
         r"padding_mask must be \(N, S\)"),
        (lambda q, r, m, s, kw: (q, r, m, s, dict(padding_mask=torch.zeros(m.shape[:2]))), "bool"),
    ],
    ids=["query_dim", "value_dim", "batch", "levels", "num_keys", "reference_levels", "reference_last_dim",
         "level_start_index", "padding_mask_shape", "padding_mask_dtype"],
)
def test_module_rejects_mismatched_shapes(corrupt, message):
    module = _module()
    query, reference_points, memory, shapes, kwargs = corrupt(*_module_inputs(), MODULE_SHAPES, {})
    with pytest.raises(ValueError, match=message):
        module(query, reference_points, memory, shapes, **kwargs)


@pytest.mark.parametrize("reference_dims", [2, 4])
def test_module_runs_on_meta_tensors(reference_dims):
    # A meta tensor has no data: any host read of a device value (.item(), .tolist(), a data-dependent
    # branch) raises, so this proves the forward and backward never synchronise with the device.
    module = _module().to("meta")
    query, reference_points, memory = (t.to("meta") for t in _module_inputs(reference_dims=reference_dims))
    padding_mask = torch.zeros(memory.shape[:2], dtype=torch.bool, device="meta")
    output = module(query.requires_grad_(), reference_points, memory, MODULE_SHAPES, padding_mask=padding_mask)
    assert output.device.type == "meta" and output.shape == query.shape
    output.sum().backward()
    assert module.sampling_offsets.weight.grad.device.type == "meta"


def test_module_in_bfloat16_returns_bfloat16():
    module = _module()
    inputs = _module_inputs(reference_dims=4)
    expected = module(*inputs, MODULE_SHAPES)
    output = module.to(torch.bfloat16)(*(t.to(torch.bfloat16) for t in inputs), MODULE_SHAPES)
    assert output.dtype == torch.bfloat16
    torch.testing.assert_close(output.float(), expected, rtol=0.05, atol=0.05)
