"""CUDA tests (marker `cuda`; skipped without a GPU): the fused deformable attention against the PyTorch
path on the GPU, one detector step, a Semi-DETR step, mixed precision, and tools/train_net.py through
detectron2's launch(). Run them with `pytest -m cuda tests/test_cuda.py` (tools/gpu_check.sh does).

With --num-gpus 1, launch() runs the job in-process (no process group); NCCL is exercised by the
two-process test, which needs two GPUs."""
import logging
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, micro_config_args

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SUP_CONFIG = os.path.join(REPO_ROOT, "configs/quick_schedules/dino_shapes_cpu.yaml")
SEMIDETR_CONFIG = os.path.join(REPO_ROOT, "configs/quick_schedules/semidetr_shapes10_cpu.yaml")
TRAIN_NET = os.path.join(REPO_ROOT, "tools/train_net.py")


def _attention_inputs(dtype=torch.float32, batch=2, num_queries=1000, heads=8, head_dim=32, points=4, seed=0):
    """Odd-sized levels (as from a 250 x 333 image), points reaching beyond the maps."""
    shapes = ((32, 42), (16, 21), (8, 11), (4, 6))
    generator = torch.Generator().manual_seed(seed)
    keys = sum(h * w for h, w in shapes)
    value = torch.randn(batch, keys, heads, head_dim, generator=generator).to("cuda", dtype)
    locations = (torch.rand(batch, num_queries, heads, len(shapes), points, 2, generator=generator) * 1.2 - 0.1).cuda()
    weights = torch.rand(batch, num_queries, heads, len(shapes), points, generator=generator).cuda()
    return shapes, value, locations, weights


def _fwd_bwd(fn, shapes, value, locations, weights):
    inputs = [t.clone().requires_grad_() for t in (value, locations, weights)]
    output = fn(inputs[0], shapes, inputs[1], inputs[2])
    cotangent = torch.randn(output.shape, generator=torch.Generator().manual_seed(1)).to(output.device)
    return output, torch.autograd.grad((output.float() * cotangent).sum(), inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_attention_matches_pytorch_on_cuda(dtype):
    from semidetr.modeling.ms_deform_attn import ms_deform_attn_core
    from semidetr.modeling.ms_deform_attn_triton import ms_deform_attn_triton

    shapes, value, locations, weights = _attention_inputs(dtype)
    fused, fused_grads = _fwd_bwd(ms_deform_attn_triton, shapes, value, locations, weights)
    core, core_grads = _fwd_bwd(ms_deform_attn_core, shapes, value, locations, weights)
    assert fused.dtype == dtype
    # float32: summation order only (atomics); half: one rounding of the float32 result.
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(fused, core, **tol)
    for fused_grad, core_grad in zip(fused_grads, core_grads):
        torch.testing.assert_close(fused_grad.float(), core_grad.float(), **(tol if fused_grad.dtype == dtype else
                                                                             dict(rtol=1e-3, atol=1e-3)))


def test_fused_attention_gradcheck_on_cuda():
    from semidetr.modeling.ms_deform_attn_triton import ms_deform_attn_triton

    shapes = ((5, 7), (3, 2))
    generator = torch.Generator().manual_seed(0)
    value = torch.randn(1, 41, 2, 3, generator=generator, dtype=torch.float64).cuda().requires_grad_()
    locations = (torch.rand(1, 5, 2, 2, 2, 2, generator=generator, dtype=torch.float64) * 1.4 - 0.2).cuda()
    weights = torch.rand(1, 5, 2, 2, 2, generator=generator, dtype=torch.float64).cuda().requires_grad_()
    locations.requires_grad_()
    assert torch.autograd.gradcheck(lambda v, loc, w: ms_deform_attn_triton(v, shapes, loc, w),
                                    (value, locations, weights), eps=1e-6, atol=1e-6)


def test_auto_dispatch_picks_the_fused_kernel_on_cuda(caplog, monkeypatch):
    from semidetr.modeling import ms_deform_attn as msda

    monkeypatch.setattr(msda, "_LOGGED_CHOICES", set())
    shapes, value, locations, weights = _attention_inputs(num_queries=10)
    with caplog.at_level(logging.INFO, logger=msda.__name__):
        msda.ms_deform_attn(value, shapes, locations, weights, impl="auto")
    assert "cuda: triton (fused)" in caplog.text


def _cuda_trainer(config, opts):
    from detectron2.engine import default_argument_parser

    from semidetr.engine.defaults import setup_cfg
    from semidetr.engine.trainer import build_trainer

    cfg = setup_cfg(default_argument_parser().parse_args(["--config-file", config, *opts, "MODEL.DEVICE", "cuda"]),
                    for_training=False)
    return build_trainer(cfg)


def _steps(trainer, steps):
    from detectron2.utils.events import EventStorage

    inner, totals = trainer._trainer, []
    with EventStorage(0) as storage:
        for iteration in range(steps):
            inner.iter = storage.iter = iteration
            inner.run_step()
            assert not inner.last_step_skipped
            totals.append(storage.history("total_loss").latest())
    return totals


@pytest.mark.parametrize("amp", ["off", "bfloat16", "float16"])
@pytest.mark.parametrize("impl", ["triton", "pytorch"])
def test_detector_step_on_cuda(micro_shapes, tmp_path, impl, amp):
    if amp == "bfloat16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    amp_opts = [] if amp == "off" else ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", amp]
    trainer = _cuda_trainer(SUP_CONFIG, micro_config_args(micro_shapes, tmp_path, "SOLVER.IMS_PER_BATCH", "2",
                                                          "MODEL.DETR.MS_DEFORM_ATTN_IMPL", impl, *amp_opts))
    assert next(trainer.models()["model"].parameters()).is_cuda
    assert all(torch.isfinite(torch.tensor(_steps(trainer, 2))))


def test_fused_and_pytorch_detectors_agree_on_cuda():
    from detectron2.modeling import build_model

    from helpers import synthetic_input, tiny_detector_cfg
    from semidetr.modeling.ms_deform_attn import set_ms_deform_attn_impl

    cfg = tiny_detector_cfg()
    cfg.MODEL.DEVICE = "cuda"
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = [synthetic_input(160, 224, 4, seed=i) for i in range(2)]
    losses = {}
    for impl in ("triton", "pytorch"):
        set_ms_deform_attn_impl(model, impl)
        torch.manual_seed(1)  # the same denoising noise
        model.zero_grad()
        loss_dict = model(batch)
        sum(loss_dict.values()).backward()
        losses[impl] = ({k: v.item() for k, v in loss_dict.items()},
                        model.transformer.encoder_layers[0].self_attn.value_proj.weight.grad.clone())
    for name, value in losses["pytorch"][0].items():
        assert losses["triton"][0][name] == pytest.approx(value, rel=1e-3, abs=1e-4), name
    torch.testing.assert_close(losses["triton"][1], losses["pytorch"][1], rtol=1e-2, atol=1e-4)


def test_semidetr_step_on_cuda(micro_shapes, tmp_path):
    opts = micro_config_args(micro_shapes, tmp_path, "DATASETS.TRAIN", "('micro_train.1@25',)",
                             "DATASETS.TRAIN_UNLABELED", "('micro_train.1@25-unlabeled',)", "SOLVER.IMS_PER_BATCH",
                             "3", "SEMI.SAMPLE_RATIO", "(1, 2)", "SEMI.VIS_PERIOD", "0", "SEMI.PSEUDO_SCORE_THRESH",
                             "0.05", "SOLVER.AMP.ENABLED", str(torch.cuda.is_bf16_supported()))
    trainer = _cuda_trainer(SEMIDETR_CONFIG, opts)
    assert next(trainer.models()["teacher"].parameters()).is_cuda
    assert all(torch.isfinite(torch.tensor(_steps(trainer, 2))))


def _train_net(specs, out, num_gpus, *extra):
    command = [sys.executable, TRAIN_NET, "--config-file", SUP_CONFIG, "--num-gpus", str(num_gpus),
               *micro_config_args(specs, out, "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", str(2 * num_gpus),
                                  "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "MODEL.DEVICE", "cuda", *extra)]
    result = subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
    assert (out / "model_final.pth").exists()
    return result.stdout


def test_train_net_num_gpus_1(micro_shapes, tmp_path):
    log = _train_net(micro_shapes, tmp_path / "one", 1, "SOLVER.AMP.ENABLED", str(torch.cuda.is_bf16_supported()))
    assert "Multi-scale deformable attention on cuda: triton (fused)" in log


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL between two processes needs two GPUs")
def test_train_net_num_gpus_2_nccl(micro_shapes, tmp_path):
    _train_net(micro_shapes, tmp_path / "two", 2)
