"""Mixed precision (SOLVER.AMP) on the CPU: bfloat16 autocast in the supervised and the semi-supervised
step, float32 losses, a float32-vs-bfloat16 comparison of one forward, and float16 loss scaling with
the non-finite-step handling."""
import logging
import os

import pytest
import torch
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch import nn

from conftest import REPO_ROOT, micro_config_args
from helpers import synthetic_input, tiny_detector_cfg
from semidetr.engine.defaults import setup_cfg
from semidetr.engine.train_loop import DetrTrainer, amp_dtype_from_config

SUP_CONFIG = os.path.join(REPO_ROOT, "configs/quick_schedules/dino_shapes_cpu.yaml")
SEMIDETR_CONFIG = os.path.join(REPO_ROOT, "configs/quick_schedules/semidetr_shapes10_cpu.yaml")


def _trainer(config, opts):
    from semidetr.engine.trainer import build_trainer

    cfg = setup_cfg(default_argument_parser().parse_args(["--config-file", config, *opts]), for_training=False)
    return build_trainer(cfg)


def _run_steps(trainer, steps):
    """Training steps without the hooks; returns the total loss of each step."""
    inner = trainer._trainer
    totals = []
    with EventStorage(0) as storage:
        for iteration in range(steps):
            inner.iter = storage.iter = iteration
            inner.run_step()
            assert not inner.last_step_skipped, f"step {iteration} was skipped"
            totals.append(storage.history("total_loss").latest())
    return totals


def _record_dtypes(module: nn.Module):
    """The output dtypes of `module`'s forward calls."""
    seen = []
    module.register_forward_hook(lambda _module, _inputs, output: seen.append(output.dtype))
    return seen


def test_amp_dtype_from_config():
    cfg = tiny_detector_cfg()
    assert amp_dtype_from_config(cfg) is None  # off by default (detectron2's SOLVER.AMP.ENABLED False)
    cfg.SOLVER.AMP.ENABLED = True
    assert cfg.SOLVER.AMP.DTYPE == "bfloat16" and amp_dtype_from_config(cfg) == torch.bfloat16
    cfg.SOLVER.AMP.DTYPE = "float16"
    assert amp_dtype_from_config(cfg) == torch.float16
    cfg.SOLVER.AMP.DTYPE = "fp8"
    with pytest.raises(ValueError, match="SOLVER.AMP.DTYPE='fp8'"):
        amp_dtype_from_config(cfg)


def test_bfloat16_supervised_steps(micro_shapes, tmp_path):
    trainer = _trainer(SUP_CONFIG, micro_config_args(micro_shapes, tmp_path, "SOLVER.IMS_PER_BATCH", "2",
                                                     "SOLVER.AMP.ENABLED", "True"))
    model = trainer.models()["model"]
    before = model.transformer.decoder_layers[0].linear1.weight.detach().clone()
    linear_dtypes = _record_dtypes(model.transformer.decoder_layers[0].linear1)
    totals = _run_steps(trainer, 2)
    assert all(torch.isfinite(torch.tensor(totals)))
    assert set(linear_dtypes) == {torch.bfloat16}  # the forward ran under autocast
    assert model.transformer.decoder_layers[0].linear1.weight.dtype == torch.float32  # master weights
    assert not torch.equal(before, model.transformer.decoder_layers[0].linear1.weight)  # optimizer stepped


def test_bfloat16_semidetr_steps(micro_shapes, tmp_path):
    opts = micro_config_args(micro_shapes, tmp_path, "DATASETS.TRAIN", "('micro_train.1@25',)",
                             "DATASETS.TRAIN_UNLABELED", "('micro_train.1@25-unlabeled',)", "SOLVER.IMS_PER_BATCH",
                             "3", "SEMI.SAMPLE_RATIO", "(1, 2)", "SEMI.VIS_PERIOD", "0", "SOLVER.AMP.ENABLED", "True",
                             "SEMI.PSEUDO_SCORE_THRESH", "0.05")  # pseudo labels from an untrained teacher
    trainer = _trainer(SEMIDETR_CONFIG, opts)
    teacher_dtypes = _record_dtypes(trainer.models()["teacher"].transformer.decoder_layers[0].linear1)
    student_dtypes = _record_dtypes(trainer.models()["student"].transformer.decoder_layers[0].linear1)
    totals = _run_steps(trainer, 2)
    assert all(torch.isfinite(torch.tensor(totals)))
    assert set(teacher_dtypes) == {torch.bfloat16} and set(student_dtypes) == {torch.bfloat16}


def test_float32_and_bfloat16_forward_agree():
    """One training forward of the same model and batch, float32 vs bfloat16 autocast. Tolerances: the
    denoising losses, whose assignment is fixed, within 2% (bfloat16 keeps 8 bits: ~0.4% per rounding,
    through 2 + 2 transformer layers); the total, where a random-init model's Hungarian matching may flip
    between near-equal queries, within 5%."""
    cfg = tiny_detector_cfg()
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = [synthetic_input(96, 128, 3, seed=i) for i in range(2)]
    torch.manual_seed(1)
    full = model(batch)
    torch.manual_seed(1)  # the same denoising noise
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(batch)
    assert all(loss.dtype == torch.float32 for loss in mixed.values())  # losses computed in float32
    denoising = [name for name in full if name.endswith("_dn")]
    assert denoising
    for name in denoising:
        torch.testing.assert_close(mixed[name], full[name], rtol=2e-2, atol=0)
    torch.testing.assert_close(sum(mixed.values()), sum(full.values()), rtol=5e-2, atol=0)
    assert any(not torch.equal(mixed[name], full[name]) for name in full)  # autocast did something


# ----------------------------------------------------------------------------------------------------
# float16 with a gradient scaler
class _HalfToy(nn.Module):
    """loss = factor * sum(linear(x)): a large factor makes the scaled float16 gradients overflow."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, batch):
        output = self.linear(batch[0]["x"])
        return {"loss": output.float().sum() * batch[0]["factor"]}


def _half_trainer(factors):
    torch.manual_seed(0)
    model = _HalfToy()
    data = iter([[{"x": torch.ones(2, 4), "factor": f}] for f in factors])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    return DetrTrainer(model, data, optimizer, max_nonfinite_steps=2, amp_dtype=torch.float16), model


def test_float16_overflow_lowers_the_scale_and_skips_without_counting(caplog):
    # The float16 weight gradient is 2 * 30 * scale (two rows of ones): above 65504 it overflows, so the
    # scales 65536 ... 2048 fail (6 steps) and the step at 1024 is applied.
    trainer, model = _half_trainer([30.0] * 8)
    initial = model.linear.weight.detach().clone()
    scales, applied = [], []
    with EventStorage(0) as storage, caplog.at_level(logging.INFO):
        for iteration in range(8):
            trainer.iter = storage.iter = iteration
            trainer.run_step()
            scales.append(trainer.grad_scaler.get_scale())
            applied.append(not trainer.last_step_skipped)
    assert trainer.grad_scaler is not None and scales[0] == 65536.0 / 2
    assert applied == [False] * 6 + [True] * 2 and trainer.overflow_total == 6
    assert scales[5] == 1024.0 and scales[6] == 1024.0  # lowered per overflow, kept after a good step
    assert trainer.nonfinite_in_a_row == 0 and trainer.nonfinite_total == 0  # overflows are not failures
    assert "float16 gradients overflowed" in caplog.text
    # The applied steps moved the weights.
    assert not torch.equal(model.linear.weight, initial)
    assert "grad_scaler" in trainer.state_dict()


def test_float16_nonfinite_loss_is_still_a_counted_skip():
    trainer, model = _half_trainer([0.1, float("nan"), float("nan")])  # 2 * 0.1 * 65536 fits float16
    with EventStorage(0) as storage:
        trainer.iter = storage.iter = 0
        trainer.run_step()
        assert not trainer.last_step_skipped
        weights = model.linear.weight.detach().clone()
        trainer.iter = storage.iter = 1
        trainer.run_step()
        assert trainer.last_step_skipped and trainer.nonfinite_in_a_row == 1
        assert torch.equal(model.linear.weight, weights)
        trainer.iter = storage.iter = 2
        with pytest.raises(FloatingPointError, match="2 consecutive steps"):
            trainer.run_step()
