"""Hooks of semi-supervised training: the EMA teacher update and teacher/student evaluation."""
import logging
from typing import Callable, Dict

from detectron2.engine import HookBase
from detectron2.engine.hooks import EvalHook
from torch.profiler import record_function

from ..semi.ema import EmaUpdater, ema_decay

__all__ = ["EmaTeacherHook", "TeacherStudentEvalHook"]

logger = logging.getLogger(__name__)


class EmaTeacherHook(HookBase):
    """After every applied step: teacher <- EMA of the student with decay min(m, 1 - 1/(iter + 1)) (warm-up)
    or m.

    Skipped steps (non-finite loss or gradient) leave the teacher untouched, like the optimizer."""

    def __init__(self, updater: EmaUpdater, momentum: float, warmup: bool = True):
        self.updater = updater
        self.momentum = momentum
        self.warmup = warmup

    def after_step(self):
        if self.trainer.last_step_skipped:
            return
        with record_function("semi/ema"):
            self.updater.update(ema_decay(self.momentum, self.trainer.iter, self.warmup))


class TeacherStudentEvalHook(EvalHook):
    """Periodic evaluation of several models (e.g. teacher and student); each model's metrics carry its
    name as a prefix ("teacher/bbox/AP", "student/bbox/AP")."""

    def __init__(self, eval_period: int, evaluators: Dict[str, Callable[[], Dict]], eval_after_train: bool = True):
        self.evaluators = evaluators
        super().__init__(eval_period, self._evaluate_all, eval_after_train=eval_after_train)

    def _evaluate_all(self) -> Dict:
        results: Dict = {}
        for name, evaluate in self.evaluators.items():
            logger.info("Evaluating the %s", name)
            results.update(evaluate())
        return results
