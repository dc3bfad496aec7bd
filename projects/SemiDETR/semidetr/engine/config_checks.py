"""Config errors caught before anything is built, each naming the key to fix.

The one layer of key-naming errors: the constructors built from these keys check only their own
arguments (and name those), so a setting is checked against its key here, once."""
import logging

from ..data.build import semi_batch_sizes
from ..modeling.cross_view import PROJECTORS, resolve_cqc
from ..modeling.one_to_many import ONE_TO_MANY_ASSIGNERS
from ..semi.cost_mining import MINING_METHODS
from ..semi.pseudo_labels import IMAGES_WITHOUT_PSEUDO_LABELS
from ..semi.query_consistency import CANDIDATE_SETS, CONSISTENCY_LOSSES
from .stage import STAGES

__all__ = ["check_config"]

logger = logging.getLogger(__name__)


def check_config(cfg, world_size: int = 1) -> None:
    """Raise ValueError for inconsistent settings; warn where a setting is legal but surprising."""
    errors = []
    d = cfg.MODEL.DETR
    if d.QUERY_INIT not in ("mixed", "proposal"):
        errors.append(f"MODEL.DETR.QUERY_INIT={d.QUERY_INIT!r}: use 'mixed' (DINO) or 'proposal' (Deformable DETR)")
    if d.HIDDEN_DIM % d.NHEADS:
        errors.append(f"MODEL.DETR.HIDDEN_DIM={d.HIDDEN_DIM} is not divisible by MODEL.DETR.NHEADS={d.NHEADS}")
    if cfg.SOLVER.MAX_ITER <= 0:
        errors.append(f"SOLVER.MAX_ITER={cfg.SOLVER.MAX_ITER} must be positive")
    if cfg.SEMI.ENABLED:
        errors += _semi_errors(cfg, world_size)
    elif cfg.SEMIDETR.SHM.ENABLED or cfg.SEMIDETR.CQC.ENABLED:
        errors.append("SEMIDETR.SHM/CQC need semi-supervised training: set SEMI.ENABLED True")
    if errors:
        raise ValueError("Invalid config:\n  " + "\n  ".join(errors))

    shm = cfg.SEMIDETR.SHM
    if shm.ENABLED and shm.O2M_ITERS >= cfg.SOLVER.MAX_ITER:
        logger.warning(
            "SEMIDETR.SHM.O2M_ITERS=%d >= SOLVER.MAX_ITER=%d: training ends in the one-to-many stage, so the "
            "final model predicts duplicates and is evaluated with class-aware NMS (IoU %s, "
            "SEMIDETR.SHM.TEST_NMS_THRESH) - the last column of the paper's Table 7.",
            shm.O2M_ITERS, cfg.SOLVER.MAX_ITER, shm.TEST_NMS_THRESH)


def _semi_errors(cfg, world_size: int):
    errors = []
    try:
        semi_batch_sizes(cfg, world_size)
    except ValueError as error:
        errors.append(str(error))
    if not 0.0 < cfg.SEMI.PSEUDO_SCORE_THRESH < 1.0:
        errors.append(f"SEMI.PSEUDO_SCORE_THRESH={cfg.SEMI.PSEUDO_SCORE_THRESH} must lie in (0, 1)")
    if not 0.0 <= cfg.SEMI.EMA_MOMENTUM < 1.0:
        errors.append(f"SEMI.EMA_MOMENTUM={cfg.SEMI.EMA_MOMENTUM} must lie in [0, 1)")
    if cfg.SEMI.UNSUP_LOSS_WEIGHT < 0:
        errors.append(f"SEMI.UNSUP_LOSS_WEIGHT={cfg.SEMI.UNSUP_LOSS_WEIGHT} must be >= 0")
    if cfg.SEMI.IMAGES_WITHOUT_PSEUDO_LABELS not in IMAGES_WITHOUT_PSEUDO_LABELS:
        errors.append(f"SEMI.IMAGES_WITHOUT_PSEUDO_LABELS={cfg.SEMI.IMAGES_WITHOUT_PSEUDO_LABELS!r} must be one of "
                      f"{list(IMAGES_WITHOUT_PSEUDO_LABELS)}")
    if not cfg.DATASETS.TRAIN_UNLABELED:
        errors.append("SEMI.ENABLED is True but DATASETS.TRAIN_UNLABELED is empty: name the unlabeled data sets")
    for key, values in (("SEMI.PSEUDO_LABEL_DENOISING", cfg.SEMI.PSEUDO_LABEL_DENOISING),
                        ("SEMIDETR.CQC.STAGES", cfg.SEMIDETR.CQC.STAGES)):
        unknown = set(values) - set(STAGES)
        if unknown:
            errors.append(f"{key} has unknown stages {sorted(unknown)}; valid: {list(STAGES)}")
    unknown_models = set(cfg.SEMI.EVAL_MODELS) - {"teacher", "student"}
    if unknown_models:
        errors.append(f"SEMI.EVAL_MODELS has {sorted(unknown_models)}: use 'teacher' and/or 'student'")
    if cfg.SEMI.EVAL_ONLY_MODEL not in ("teacher", "student"):
        errors.append(f"SEMI.EVAL_ONLY_MODEL={cfg.SEMI.EVAL_ONLY_MODEL!r}: use 'teacher' or 'student'")
    shm, cqc, cpm = cfg.SEMIDETR.SHM, cfg.SEMIDETR.CQC, cfg.SEMIDETR.CPM
    if shm.ENABLED:
        if shm.ASSIGNER not in ONE_TO_MANY_ASSIGNERS:
            errors.append(f"SEMIDETR.SHM.ASSIGNER={shm.ASSIGNER!r} is not one of {list(ONE_TO_MANY_ASSIGNERS)}")
        if shm.O2M_ITERS < 0:
            errors.append(f"SEMIDETR.SHM.O2M_ITERS={shm.O2M_ITERS} must be >= 0")
        if shm.TOPK < 1:
            errors.append(f"SEMIDETR.SHM.TOPK={shm.TOPK} must be >= 1")
    if cqc.ENABLED:
        try:
            resolve_cqc(cfg)  # SEMIDETR.CQC.VARIANT
        except ValueError as error:
            errors.append(str(error))
        for key, value, valid in (("LOSS", cqc.LOSS, CONSISTENCY_LOSSES),
                                  ("CANDIDATES", cqc.CANDIDATES, CANDIDATE_SETS), ("PROJECTOR", cqc.PROJECTOR, PROJECTORS)):
            if value and value not in valid:
                errors.append(f"SEMIDETR.CQC.{key}={value!r} is not one of {list(valid)} (or '' for the variant's)")
        if cpm.METHOD not in MINING_METHODS:
            errors.append(f"SEMIDETR.CPM.METHOD={cpm.METHOD!r} is not one of {list(MINING_METHODS)}")
        if not 0.0 <= cpm.SCORE_THRESH <= 1.0:
            errors.append(f"SEMIDETR.CPM.SCORE_THRESH={cpm.SCORE_THRESH} must lie in [0, 1]")
        if cpm.TOPK < 1:
            errors.append(f"SEMIDETR.CPM.TOPK={cpm.TOPK} must be a positive integer")
        if cqc.ROI_SIZE < 1:
            errors.append(f"SEMIDETR.CQC.ROI_SIZE={cqc.ROI_SIZE} must be >= 1")
    return errors
