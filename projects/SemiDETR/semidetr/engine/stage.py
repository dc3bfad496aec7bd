"""Stage-wise Hybrid Matching's training stage: one-to-many assignment for the first T1 iterations, then
one-to-one. The stage is trainer state (saved in checkpoints); evaluation takes the NMS decision from it."""
import logging

from detectron2.engine import HookBase

__all__ = ["ONE_TO_MANY", "ONE_TO_ONE", "stage_at", "test_nms_threshold", "StageSwitchHook"]

logger = logging.getLogger(__name__)

ONE_TO_MANY = "one_to_many"
ONE_TO_ONE = "one_to_one"
STAGES = (ONE_TO_MANY, ONE_TO_ONE)


def stage_at(cfg, iteration: int) -> str:
    """Eq. 13: iterations t <= T1 (1-based; iteration index < T1) train one-to-many when SHM is on."""
    if cfg.SEMIDETR.SHM.ENABLED and iteration < cfg.SEMIDETR.SHM.O2M_ITERS:
        return ONE_TO_MANY
    return ONE_TO_ONE


def test_nms_threshold(cfg, stage: str) -> float:
    """A model trained one-to-many predicts duplicates: class-aware NMS at inference. After the switch to
    one-to-one it is NMS-free (MODEL.DETR.TEST_NMS_THRESH, 0 by default)."""
    if stage not in STAGES:
        raise ValueError(f"Unknown training stage {stage!r}; expected one of {STAGES}")
    return cfg.SEMIDETR.SHM.TEST_NMS_THRESH if stage == ONE_TO_MANY else cfg.MODEL.DETR.TEST_NMS_THRESH


class StageSwitchHook(HookBase):
    """Before every step, puts the trainer in the stage of that iteration (`Trainer.set_stage`)."""

    def before_step(self):
        stage = stage_at(self.trainer.cfg, self.trainer.iter)
        if stage != self.trainer.stage:
            logger.info("Iteration %d: training stage %s -> %s", self.trainer.iter, self.trainer.stage, stage)
            self.trainer.set_stage(stage)
