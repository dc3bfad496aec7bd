#!/usr/bin/env python
"""tools/train_net.py with faults injected, for the reliability tests (never used in training).

SEMIDETR_FAULT selects the fault; SEMIDETR_FAULT_DIR receives per-rank records. The patches are applied
at import, so the processes that detectron2's launch() spawns (they import this module) get them too.

    slow_second_save      the second checkpoint save writes half its bytes, then hangs (kill it there)
    no_pseudo_labels_rank1  rank 1's teacher never yields a pseudo label; every rank records its CPM
                          thresholds and its final student parameters
    crash_rank1           rank 1 raises at iteration 2
    nonfinite_rank1       rank 1 alone sees a NaN loss at iteration 1 (a NaN constant added to one loss: its
                          gradients stay finite, so only the all-reduced decision can make rank 0 skip too);
                          every rank records checksums of its student and teacher after every step
    record_steps          records, per step, the iteration, the trainer's start iteration and the images of
                          the batch (ids and pixel sums of every view)
"""
import json
import os
import sys
import time

import torch
from detectron2.utils import comm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
from detectron2.engine import HookBase  # noqa: E402

import train_net  # noqa: E402
from semidetr.data import build as data_build  # noqa: E402
from semidetr.engine import semi_trainer, train_loop  # noqa: E402
from semidetr.semi import cost_mining, pseudo_labels  # noqa: E402

FAULT = os.environ.get("SEMIDETR_FAULT", "")
RECORDS = os.environ.get("SEMIDETR_FAULT_DIR", ".")


def _record(name, value):
    path = os.path.join(RECORDS, f"rank{comm.get_rank()}_{name}.jsonl")
    with open(path, "a") as f:
        f.write(json.dumps(value) + "\n")


if FAULT == "slow_second_save":
    _real_save = torch.save
    _saves = []

    def _slow_save(obj, f, *args, **kwargs):
        _saves.append(1)
        if len(_saves) < 2 or not hasattr(f, "write"):
            return _real_save(obj, f, *args, **kwargs)
        import io
        buffer = io.BytesIO()
        _real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        open(os.path.join(RECORDS, "saving"), "w").close()  # tells the test to kill now
        time.sleep(600)

    torch.save = _slow_save

elif FAULT == "no_pseudo_labels_rank1":
    _real_filter = pseudo_labels.PseudoLabeler.filter

    def _filter(self, predictions):
        selected = _real_filter(self, predictions)
        return selected[:0] if comm.get_rank() == 1 else selected

    pseudo_labels.PseudoLabeler.filter = _filter
    _real_threshold = cost_mining.gmm_cost_threshold

    def _threshold(costs, **kwargs):
        value = _real_threshold(costs, **kwargs)
        _record("gmm_thresholds", value)
        return value

    cost_mining.gmm_cost_threshold = _threshold
    _real_train = train_net.Trainer.train

    def _train(self):
        result = _real_train(self)
        student = self.models()["student"]
        torch.save(student.state_dict(), os.path.join(RECORDS, f"rank{comm.get_rank()}_student.pth"))
        return result

    train_net.Trainer.train = _train

elif FAULT == "crash_rank1":
    _real_step = semi_trainer.SemiTrainer.run_step

    def _step(self):
        if comm.get_rank() == 1 and self.iter == 2:
            raise RuntimeError("injected failure in rank 1 at iteration 2")
        return _real_step(self)

    semi_trainer.SemiTrainer.run_step = _step

elif FAULT == "nonfinite_rank1":
    _real_apply_update = train_loop.DetrTrainer.apply_update

    def _apply_update(self, loss_dict, data_time, extra_metrics=None):
        if comm.get_rank() == 1 and self.iter == 1:
            loss_dict = {**loss_dict, "unsup_loss_class": loss_dict["unsup_loss_class"] + float("nan")}
        return _real_apply_update(self, loss_dict, data_time, extra_metrics)

    train_loop.DetrTrainer.apply_update = _apply_update

    class _ChecksumHook(HookBase):
        def after_step(self):
            models = self.trainer.models()
            _record("checksums", {"iter": self.trainer.iter, **{
                name: sum(float(p.double().sum()) for p in model.parameters()) for name, model in models.items()}})

    _real_build_hooks = train_net.Trainer.build_hooks
    train_net.Trainer.build_hooks = lambda self: _real_build_hooks(self) + [_ChecksumHook()]

elif FAULT == "record_steps":
    class _StepHook(HookBase):
        def before_step(self):
            _record("steps", {"iter": self.trainer.iter, "start_iter": self.trainer.start_iter})

    _real_build_hooks = train_net.Trainer.build_hooks
    train_net.Trainer.build_hooks = lambda self: _real_build_hooks(self) + [_StepHook()]
    _real_iter = data_build.TwoStreamLoader.__iter__

    def _view(view):
        return [view["image_id"], float(view["image"].double().sum())]

    def _iter(self):
        for labeled, unlabeled in _real_iter(self):
            _record("steps", {"batch": [_view(x) for x in labeled] + [
                _view(pair[key]) for pair in unlabeled for key in ("weak", "strong")]})
            yield labeled, unlabeled

    data_build.TwoStreamLoader.__iter__ = _iter


if __name__ == "__main__":
    args = train_net.default_argument_parser().parse_args()
    train_net.launch(train_net.main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                     dist_url=args.dist_url, args=(args,))
