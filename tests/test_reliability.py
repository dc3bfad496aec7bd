"""What happens when things go wrong: config errors, non-finite steps, processes killed while saving or
training, ranks without pseudo labels, a crashing rank. (Bad data: test_data_validation.py,
test_mappers.py.)"""
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.utils.events import EventStorage
from torch import nn

from conftest import REPO_ROOT, micro_config_args
from semidetr import add_semidetr_config
from semidetr.engine.config_checks import check_config
from semidetr.engine.hooks import EmaTeacherHook
from semidetr.engine.train_loop import DetrTrainer, NonFiniteLossError
from semidetr.semi.ema import EmaUpdater

FAULTS = os.path.join(REPO_ROOT, "tests/scripts/train_with_faults.py")
TRAIN_NET = os.path.join(REPO_ROOT, "tools/train_net.py")
SEMIDETR_CONFIG = os.path.join(REPO_ROOT, "configs/quick_schedules/semidetr_shapes10_cpu.yaml")
SSOD_CONFIG = os.path.join(REPO_ROOT, "configs/quick_schedules/ssod_baseline_shapes10_cpu.yaml")


# ----------------------------------------------------------------------------------------------------
# Config errors
def _semi_cfg(**overrides):
    cfg = get_cfg()
    add_semidetr_config(cfg)
    cfg.merge_from_file(SEMIDETR_CONFIG)
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


@pytest.mark.parametrize("key, value, message", [
    ("SEMI.SAMPLE_RATIO", (0, 4), "SEMI.SAMPLE_RATIO"),
    ("SEMI.SAMPLE_RATIO", (2, 4), "SEMI.SAMPLE_RATIO"),  # 5 images per process cannot be split 2:4
    ("SEMI.PSEUDO_SCORE_THRESH", 1.2, "SEMI.PSEUDO_SCORE_THRESH"),
    ("SEMI.PSEUDO_SCORE_THRESH", 0.0, "SEMI.PSEUDO_SCORE_THRESH"),
    ("SEMI.IMAGES_WITHOUT_PSEUDO_LABELS", "skip", "SEMI.IMAGES_WITHOUT_PSEUDO_LABELS"),
    ("SEMIDETR.SHM.ASSIGNER", "hungarian", "SEMIDETR.SHM.ASSIGNER"),
    ("SEMIDETR.CPM.METHOD", "median", "SEMIDETR.CPM.METHOD"),
    ("SEMIDETR.CPM.SCORE_THRESH", 1.5, "SEMIDETR.CPM.SCORE_THRESH"),
    ("SEMIDETR.CPM.TOPK", 0, "SEMIDETR.CPM.TOPK"),
    ("SEMIDETR.CQC.LOSS", "l2", "SEMIDETR.CQC.LOSS"),
    ("SEMIDETR.CQC.STAGES", ["stage1"], "SEMIDETR.CQC.STAGES"),
    ("SEMI.EVAL_MODELS", ["ema"], "SEMI.EVAL_MODELS"),
    ("DATASETS.TRAIN_UNLABELED", (), "DATASETS.TRAIN_UNLABELED"),
])
def test_config_errors_name_the_key(key, value, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        check_config(_semi_cfg(**{key: value}))


def test_one_to_many_until_the_end_warns_about_nms(caplog):
    with caplog.at_level(logging.WARNING):
        check_config(_semi_cfg(**{"SEMIDETR.SHM.O2M_ITERS": 5000, "SOLVER.MAX_ITER": 2000}))
    assert "SEMIDETR.SHM.O2M_ITERS=5000 >= SOLVER.MAX_ITER=2000" in caplog.text and "NMS" in caplog.text


def test_unregistered_data_set_lists_close_names():
    from semidetr.data.datasets.catalog import ensure_registered

    with pytest.raises(Exception, match=r"Close registered names: \[.*'shapes_train'.*DATASETS\.REGISTER"):
        ensure_registered("shapes_trian")


# ----------------------------------------------------------------------------------------------------
# Non-finite losses and gradients
class _ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))

    def forward(self, batch):
        value = (self.weight * batch[0]["x"]).sum()
        if batch[0]["fault"] == "loss":
            value = value * float("nan")
        if batch[0]["fault"] == "gradient":  # finite loss, infinite gradient
            value = value + _InfGrad.apply(self.weight.sum())
        return {"loss_main": value, "loss_other": self.weight.sum() * 0.1}


class _InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 0

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def _toy_trainer(faults, max_nonfinite=3):
    model = _ToyModel()
    data = iter([[{"x": torch.tensor([1.0, 2.0, 3.0]), "fault": f}] for f in faults])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return DetrTrainer(model, data, optimizer, clip_grad_norm=0.0, max_nonfinite_steps=max_nonfinite), model


def test_nonfinite_steps_are_skipped_and_counted(caplog):
    trainer, model = _toy_trainer(["", "loss", "gradient", ""])
    teacher = _ToyModel()
    # No warm-up: the teacher then differs from the student after step 0, so an EMA update in a skipped
    # step would move it (with warm-up it would be a copy of the unchanged student, and so unchanged).
    ema = EmaTeacherHook(EmaUpdater(teacher, model), momentum=0.5, warmup=False)
    ema.trainer = type("T", (), {"last_step_skipped": property(lambda _: trainer.last_step_skipped), "iter": 0})()
    weights = []
    with EventStorage(0) as storage, caplog.at_level(logging.WARNING):
        for iteration in range(4):
            trainer.iter = storage.iter = ema.trainer.iter = iteration
            trainer.run_step()
            ema.after_step()
            weights.append((model.weight.detach().clone(), teacher.weight.detach().clone()))
    assert not torch.equal(weights[0][1], weights[0][0])
    # Steps 1 and 2 change neither the student (optimizer) nor the teacher (EMA).
    for skipped in (1, 2):
        torch.testing.assert_close(weights[skipped][0], weights[0][0], rtol=0, atol=0)
        torch.testing.assert_close(weights[skipped][1], weights[0][1], rtol=0, atol=0)
    assert not torch.equal(weights[3][0], weights[2][0])  # training continues
    assert trainer.nonfinite_total == 2 and trainer.nonfinite_in_a_row == 0
    assert "non-finite loss" in caplog.text and "loss_main" in caplog.text
    assert "non-finite gradient" in caplog.text


def test_too_many_nonfinite_steps_in_a_row_stop_training():
    trainer, _ = _toy_trainer(["loss"] * 3, max_nonfinite=3)
    with EventStorage(0), pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        for iteration in range(3):
            trainer.iter = iteration
            trainer.run_step()


# ----------------------------------------------------------------------------------------------------
# Interrupted runs (real processes, SIGKILL)
def _semi_opts(specs, out, *extra):
    return micro_config_args(specs, out, "DATASETS.TRAIN", "('micro_train.1@25',)",
                             "DATASETS.TRAIN_UNLABELED", "('micro_train.1@25-unlabeled',)",
                             "SOLVER.IMS_PER_BATCH", "3", "SEMI.SAMPLE_RATIO", "(1, 2)", "SEMI.VIS_PERIOD", "0",
                             "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", *extra)


class _Run:
    """A training process whose output goes to a file (a pipe nobody reads would block it)."""

    def __init__(self, script, config, opts, log_path, env=None, flags=()):
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.process = subprocess.Popen([sys.executable, script, "--config-file", config, *flags, *opts],
                                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **(env or {})})

    def wait(self, timeout=300) -> str:
        try:
            self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        return self.log()

    def log(self) -> str:
        return open(self.log_path).read()

    def wait_for(self, condition, timeout=300):
        deadline = time.time() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"process ended early:\n{self.log()[-3000:]}")
            if time.time() > deadline:
                self.process.kill()
                raise AssertionError(f"timed out:\n{self.log()[-3000:]}")
            time.sleep(0.02)

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


def test_process_killed_while_saving_leaves_previous_checkpoint(micro_shapes, tmp_path):
    from semidetr.engine.checkpoint import last_checkpoint

    out = tmp_path / "run"
    run = _Run(FAULTS, SEMIDETR_CONFIG, _semi_opts(micro_shapes, out, "SOLVER.MAX_ITER", "6",
                                                   "SOLVER.CHECKPOINT_PERIOD", "1"), tmp_path / "log.txt",
               env={"SEMIDETR_FAULT": "slow_second_save", "SEMIDETR_FAULT_DIR": str(tmp_path)})
    run.wait_for(lambda: (tmp_path / "saving").exists())
    run.kill()
    path = last_checkpoint(str(out))
    assert path.endswith("model_0000000.pth")
    assert not (out / "model_0000001.pth").exists()  # the interrupted save never became a checkpoint
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["iteration"] == 0 and "teacher" in checkpoint


def _records(path):
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def _steps(record_dir):
    """[(iteration, start iteration, batch)] of a run under SEMIDETR_FAULT=record_steps."""
    records = _records(os.path.join(record_dir, "rank0_steps.jsonl"))
    iterations = [r for r in records if "iter" in r]
    batches = [r["batch"] for r in records if "batch" in r]
    return [(r["iter"], r["start_iter"], batch) for r, batch in zip(iterations, batches)]


def test_sigkill_then_resume_equals_uninterrupted_run(micro_shapes, tmp_path):
    """--resume after a SIGKILL continues at the iteration after the last checkpoint, with the batches (the
    same images, the same augmented pixels) the uninterrupted run had there, and ends with its weights."""
    opts = ("SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3", "SEMIDETR.SHM.O2M_ITERS", "4")
    records = {name: tmp_path / f"records_{name}" for name in ("straight", "killed", "resumed")}
    for folder in records.values():
        folder.mkdir()

    def run(name, out, flags=()):
        return _Run(FAULTS, SEMIDETR_CONFIG, _semi_opts(micro_shapes, out, *opts), tmp_path / f"{name}.txt",
                    env={"SEMIDETR_FAULT": "record_steps", "SEMIDETR_FAULT_DIR": str(records[name])}, flags=flags)

    straight = run("straight", tmp_path / "straight")
    straight_log = straight.wait()
    assert straight.process.returncode == 0, straight_log[-3000:]

    out = tmp_path / "killed"
    killed = run("killed", out)
    tag = out / "last_checkpoint"
    killed.wait_for(lambda: tag.exists() and tag.read_text() == "model_0000002.pth")
    killed.kill()  # somewhere in iteration 3 or 4
    assert not (out / "model_final.pth").exists()
    resumed = run("resumed", out, flags=("--resume",))
    resumed_log = resumed.wait()
    assert resumed.process.returncode == 0, resumed_log[-3000:]

    straight_steps, killed_steps, resumed_steps = (_steps(records[n]) for n in ("straight", "killed", "resumed"))
    assert [step[0] for step in straight_steps] == list(range(6))
    assert [step[0] for step in killed_steps][:3] == [0, 1, 2]
    # The resumed run starts after the checkpoint of iteration 2, not from 0, and sees the data of the
    # uninterrupted run at those iterations.
    assert [(step[0], step[1]) for step in resumed_steps] == [(3, 3), (4, 3), (5, 3)]
    assert "Starting training from iteration 3" in resumed_log
    for (iteration, _, batch), (_, _, expected) in zip(resumed_steps, straight_steps[3:]):
        assert batch == expected, f"iteration {iteration}"

    a = torch.load(tmp_path / "straight" / "model_final.pth", map_location="cpu", weights_only=True)
    b = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    for key in ("model", "teacher"):
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], rtol=0, atol=0, msg=f"{key}.{name}")
    switch = "Iteration 4: training stage one_to_many -> one_to_one"
    assert switch in straight_log and switch in resumed_log


# ----------------------------------------------------------------------------------------------------
# Multi-process
def test_rank_without_pseudo_labels_does_not_hang(micro_shapes, tmp_path):
    """2 gloo processes; rank 1 never has a pseudo label. No hang, no unused-parameter error; the GMM
    thresholds agree on both ranks at every step, and so do the final student weights."""
    out = tmp_path / "ddp"
    run = _Run(FAULTS, SEMIDETR_CONFIG,
               _semi_opts(micro_shapes, out, "SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "6",
                          "SEMIDETR.SHM.O2M_ITERS", "2", "SEMI.PSEUDO_SCORE_THRESH", "0.05",
                          # CQC (and its GMM) in both stages; the official variant has it in stage 1 only
                          "SEMIDETR.CQC.STAGES", "['one_to_many', 'one_to_one']"), tmp_path / "log.txt",
               env={"SEMIDETR_FAULT": "no_pseudo_labels_rank1", "SEMIDETR_FAULT_DIR": str(tmp_path)},
               flags=("--num-gpus", "2", "--dist-url", "auto"))
    log = run.wait(timeout=400)
    assert run.process.returncode == 0, log[-4000:]
    thresholds = [[json.loads(line) for line in open(tmp_path / f"rank{r}_gmm_thresholds.jsonl")] for r in (0, 1)]
    assert len(thresholds[0]) == 4 and thresholds[0] == thresholds[1]
    students = [torch.load(tmp_path / f"rank{r}_student.pth", weights_only=True) for r in (0, 1)]
    for name in students[0]:
        torch.testing.assert_close(students[0][name], students[1][name], rtol=0, atol=0, msg=name)


def test_nonfinite_loss_on_one_process_skips_the_step_on_every_process(micro_shapes, tmp_path):
    """2 gloo processes; only rank 1 sees a NaN loss at iteration 1 (its gradients stay finite). Both skip
    that step: neither student nor teacher changes on either rank, the ranks stay equal, training goes on;
    the skip is counted in the metrics (`skipped_nonfinite_steps`) and rank 1 names the non-finite part."""
    out = tmp_path / "ddp"
    run = _Run(FAULTS, SSOD_CONFIG,
               _semi_opts(micro_shapes, out, "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "6"),
               tmp_path / "log.txt", env={"SEMIDETR_FAULT": "nonfinite_rank1", "SEMIDETR_FAULT_DIR": str(tmp_path)},
               flags=("--num-gpus", "2", "--dist-url", "auto"))
    log = run.wait(timeout=400)
    assert run.process.returncode == 0, log[-4000:]
    checksums = [_records(tmp_path / f"rank{r}_checksums.jsonl") for r in (0, 1)]
    assert [c["iter"] for c in checksums[0]] == [0, 1, 2] and checksums[0] == checksums[1]
    for model in ("student", "teacher"):
        assert checksums[0][1][model] == checksums[0][0][model], model  # iteration 1 skipped
        assert checksums[0][2][model] != checksums[0][1][model], model  # iteration 2 trained
    metrics = _records(out / "metrics.json")
    assert [m["skipped_nonfinite_steps"] for m in metrics if "skipped_nonfinite_steps" in m] == [1]
    assert "Non-finite loss parts on this process: ['unsup_loss_class']" in open(out / "log.txt.rank1").read()
    assert "Iteration 1: non-finite loss or gradient on another process" in open(out / "log.txt").read()


def test_crash_in_one_rank_ends_the_job(micro_shapes, tmp_path):
    run = _Run(FAULTS, SEMIDETR_CONFIG,
               _semi_opts(micro_shapes, tmp_path / "crash", "SOLVER.MAX_ITER", "6", "SOLVER.IMS_PER_BATCH", "6"),
               tmp_path / "log.txt", env={"SEMIDETR_FAULT": "crash_rank1"},
               flags=("--num-gpus", "2", "--dist-url", "auto"))
    log = run.wait(timeout=300)
    assert run.process.returncode != 0
    assert "injected failure in rank 1 at iteration 2" in log
