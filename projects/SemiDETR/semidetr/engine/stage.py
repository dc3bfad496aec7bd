"""Stage-wise Hybrid Matching's training stage: one-to-many assignment for the first T1 iterations, then
one-to-one.

This module is the one owner of the stage. It is a function of the iteration (`StageSchedule.at`): the
Trainer, the SemiTrainer's step and the checkpoint all read it from the same schedule, so nothing has to be
kept in sync. The stage of the last trained iteration is saved in checkpoints ("trainer" -> "stage"), where
evaluation of a checkpoint reads it. The stage decides three things, each read here:
  * the assignment of the training step (`StageSchedule.at`);
  * the NMS of evaluation (`test_nms_threshold`): a model trained one-to-many predicts duplicates. It is
    applied only while evaluating (`evaluation_nms`) and never to the teacher's pseudo labels, whose NMS
    is SEMI.PSEUDO_NMS_THRESH, passed explicitly to `teacher.predict`;
  * the stages of stage-dependent switches (SEMI.PSEUDO_LABEL_DENOISING, SEMIDETR.CQC.STAGES).
"""
import contextlib
import logging
from dataclasses import dataclass

from detectron2.engine import HookBase

__all__ = ["ONE_TO_MANY", "ONE_TO_ONE", "STAGES", "StageSchedule", "stage_at", "test_nms_threshold",
           "evaluation_nms", "StageLogHook"]

logger = logging.getLogger(__name__)

ONE_TO_MANY = "one_to_many"
ONE_TO_ONE = "one_to_one"
STAGES = (ONE_TO_MANY, ONE_TO_ONE)


@dataclass(frozen=True)
class StageSchedule:
    """one_to_many_iters: T1 (0 = one-to-one throughout, i.e. SHM off)."""

    one_to_many_iters: int = 0

    @classmethod
    def from_config(cls, cfg) -> "StageSchedule":
        return cls(cfg.SEMIDETR.SHM.O2M_ITERS if cfg.SEMIDETR.SHM.ENABLED else 0)

    def at(self, iteration: int) -> str:
        """Eq. 13: iterations t <= T1 (1-based; 0-based index < T1) train one-to-many."""
        return ONE_TO_MANY if iteration < self.one_to_many_iters else ONE_TO_ONE


def stage_at(cfg, iteration: int) -> str:
    return StageSchedule.from_config(cfg).at(iteration)


def test_nms_threshold(cfg, stage: str) -> float:
    """Evaluation NMS of a model in `stage`: class-aware NMS (SEMIDETR.SHM.TEST_NMS_THRESH) after
    one-to-many training, MODEL.DETR.TEST_NMS_THRESH (0 = NMS-free by default) after the switch."""
    if stage not in STAGES:
        raise ValueError(f"Unknown training stage {stage!r}; expected one of {STAGES}")
    return cfg.SEMIDETR.SHM.TEST_NMS_THRESH if stage == ONE_TO_MANY else cfg.MODEL.DETR.TEST_NMS_THRESH


@contextlib.contextmanager
def evaluation_nms(model, threshold: float):
    """The model's inference NMS for the duration of an evaluation only (restored afterwards)."""
    previous = model.test_nms_thresh
    model.test_nms_thresh = threshold
    try:
        yield model
    finally:
        model.test_nms_thresh = previous


class StageLogHook(HookBase):
    """Logs the switch between stages (the stage itself is derived from the iteration)."""

    def before_step(self):
        schedule = self.trainer.stage_schedule
        stage = schedule.at(self.trainer.iter)
        if self.trainer.iter > self.trainer.start_iter and stage != schedule.at(self.trainer.iter - 1):
            logger.info("Iteration %d: training stage %s -> %s", self.trainer.iter,
                        schedule.at(self.trainer.iter - 1), stage)
