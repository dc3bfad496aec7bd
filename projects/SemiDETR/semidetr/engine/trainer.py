"""`Trainer`: builds model(s), optimizer, data, hooks and checkpointer from a config (detectron2's
DefaultTrainer workflow) around this project's training steps.

Checkpoints hold the student ("model"), the EMA teacher ("teacher"), and under "trainer": the
iteration, optimizer, scheduler, the training stage (Stage-wise Hybrid Matching), the data seed and the
torch RNG state, so `--resume` continues a run exactly (batches from the resumable data streams).
"""
import copy
import logging
import os
import weakref
from collections import OrderedDict
from typing import Callable, Dict, List, Tuple

import torch
from detectron2.data import build_detection_test_loader
from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, inference_on_dataset, print_csv_format
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.build import build_labeled_train_loader, build_semi_train_loader
from ..data.mappers import build_test_mapper
from ..modeling.cross_view import resolve_cqc
from ..semi.cost_mining import PseudoLabelMiner
from ..semi.ema import EmaUpdater
from ..semi.pseudo_labels import PseudoLabeler
from ..semi.query_consistency import CrossViewConsistency
from ..semi.visualization import PseudoLabelVisualizer
from .checkpoint import SemiDetrCheckpointer
from .hooks import EmaTeacherHook, TeacherStudentEvalHook
from .semi_trainer import SemiTrainer
from .solver import build_optimizer
from .stage import ONE_TO_ONE, StageLogHook, StageSchedule, evaluation_nms, test_nms_threshold
from .train_loop import DetrTrainer, amp_dtype_from_config

__all__ = ["SemiSupervisedTrainer", "Trainer", "build_teacher", "build_trainer", "load_weights_for_evaluation"]

logger = logging.getLogger(__name__)


class Trainer(DefaultTrainer):
    """Supervised training of DINO / Deformable DETR (detectron2's DefaultTrainer workflow). Its
    semi-supervised mode is the subclass `SemiSupervisedTrainer`; `build_trainer(cfg)` picks by SEMI.ENABLED."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        if cfg.SEMI.ENABLED != isinstance(self, SemiSupervisedTrainer):
            # A semi-supervised config trained by the supervised class would silently ignore its unlabeled data.
            raise ValueError(f"SEMI.ENABLED={cfg.SEMI.ENABLED} needs "
                             f"{'SemiSupervisedTrainer' if cfg.SEMI.ENABLED else 'Trainer'}, not "
                             f"{type(self).__name__}: build the trainer with build_trainer(cfg)")
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        self.cfg = cfg
        student = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, student)
        data_loader = self.build_train_loader(cfg)
        # detectron2 pins DDP to the local GPU; a CPU process group (gloo) needs device_ids=None.
        ddp_device = {} if student.device.type == "cuda" else {"device_ids": None}
        model = create_ddp_model(student, broadcast_buffers=False, **ddp_device)
        # The one owner of the training stage: every reader derives it from the iteration through this.
        self.stage_schedule = StageSchedule.from_config(cfg)
        self._trainer = self.build_train_loop(
            cfg, model, data_loader, optimizer, clip_grad_norm=self.clip_grad_norm(cfg),
            clip_norm_type=cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE, max_nonfinite_steps=cfg.SOLVER.MAX_NONFINITE_STEPS,
            amp_dtype=amp_dtype_from_config(cfg))
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SemiDetrCheckpointer(
            model, cfg.OUTPUT_DIR, atomic=cfg.SOLVER.ATOMIC_CHECKPOINTS, cfg=cfg, trainer=weakref.proxy(self),
            **self.extra_checkpointables())
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.register_hooks(self.build_hooks())

    def build_train_loop(self, cfg, model, data_loader, optimizer, **loop_args) -> DetrTrainer:
        """The step (a detectron2 SimpleTrainer): one supervised forward/backward per iteration."""
        return DetrTrainer(model, data_loader, optimizer, **loop_args)

    def extra_checkpointables(self) -> Dict[str, object]:
        """Checkpointables saved beside the model and the trainer state."""
        return {}

    def model_update_hooks(self) -> List[hooks.HookBase]:
        """Hooks that change models after the optimizer step; they run before the checkpointer and the
        evaluation, so both see this iteration's models."""
        return []

    def evaluated_models(self) -> Dict[str, nn.Module]:
        """What periodic evaluation scores, by the prefix of its metrics ("" for none)."""
        return {"": self.models()["model"]}

    # ------------------------------------------------------------------------------------------------
    @property
    def stage(self) -> str:
        """The training stage of the current iteration (of the last trained one once training ended)."""
        return self.stage_schedule.at(min(self.iter, self.max_iter - 1))

    @property
    def last_step_skipped(self) -> bool:
        """Whether the last step was skipped (non-finite loss or gradient): the optimizer did not step."""
        return self._trainer.last_step_skipped

    def models(self) -> Dict[str, nn.Module]:
        return {"model": _unwrap(self._trainer.model)}

    def resume_or_load(self, resume=True):
        """`--resume`: continue from the last checkpoint (student, teacher, optimizer, scheduler, iteration
        and trainer state). Otherwise load MODEL.WEIGHTS (e.g. a supervised checkpoint) into the student
        and start both models from it."""
        super().resume_or_load(resume=resume)
        # The data stream continues at the first iteration that has not run (0 for a new run).
        self._trainer.data_loader.start_at(self.start_iter)

    def state_dict(self):
        state = super().state_dict()
        state["stage"] = self.stage
        state["data_seed"] = self._trainer.data_loader.seed
        # DINO's denoising noise and dropout draw from torch's RNG: restoring it makes a resumed run
        # reproduce the uninterrupted one (per process; checkpoints hold the main process's state).
        state["torch_rng_state"] = torch.get_rng_state()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "data_seed" in state_dict:
            self._trainer.data_loader.set_seed(state_dict["data_seed"])
        if "torch_rng_state" in state_dict:
            torch.set_rng_state(state_dict["torch_rng_state"])
        # The stage is derived from the iteration; a checkpoint saved under another T1 says so.
        saved = state_dict.get("stage")
        if saved is not None and saved != self.stage_schedule.at(max(self.iter, 0)):
            logger.warning("The checkpoint was saved in training stage %s; with this config (SEMIDETR.SHM) "
                           "iteration %d is in stage %s, which training continues with.", saved, self.iter,
                           self.stage_schedule.at(max(self.iter, 0)))

    # ------------------------------------------------------------------------------------------------
    @staticmethod
    def clip_grad_norm(cfg) -> float:
        clip = cfg.SOLVER.CLIP_GRADIENTS
        if not clip.ENABLED:
            return 0.0
        if clip.CLIP_TYPE != "full_model":
            raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE={clip.CLIP_TYPE!r}: this project clips the norm of "
                             "all gradients together; use 'full_model' (or ENABLED False)")
        return clip.CLIP_VALUE

    @classmethod
    def build_model(cls, cfg):
        model = build_model(cfg)
        logger.info("Model:\n%s", model)
        logger.info("Parameters: %.2fM", sum(p.numel() for p in model.parameters()) / 1e6)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_labeled_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=build_test_mapper(cfg))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None) -> DatasetEvaluator:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        # The official COCO evaluation code (pycocotools): the "fast" variant needs detectron2._C.
        return COCOEvaluator(dataset_name, tasks=("bbox",), distributed=True, output_dir=output_folder,
                             use_fast_impl=False)

    def build_hooks(self):
        cfg = self.cfg
        ret = [hooks.IterationTimer(), hooks.LRScheduler(), StageLogHook(), *self.model_update_hooks()]
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))
        ret.append(TeacherStudentEvalHook(cfg.TEST.EVAL_PERIOD, self.evaluation_functions()))
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=20))
        return ret

    def evaluation_functions(self) -> Dict[str, Callable[[], Dict]]:
        """One function per evaluated model (`evaluated_models`). Evaluation leaves torch's RNG as it found
        it (its data loader would otherwise draw from it), so a resumed run sees the same random numbers as
        an uninterrupted one."""
        def evaluate(prefix, model):
            # Evaluation NMS follows the stage of the model being scored, for this evaluation only.
            with torch.random.fork_rng(devices=[]), evaluation_nms(model, test_nms_threshold(self.cfg, self.stage)):
                return self.test(self.cfg, model, prefix=prefix)

        return {prefix or "model": (lambda p=prefix, m=model: evaluate(p, m))
                for prefix, model in self.evaluated_models().items()}

    @classmethod
    def test(cls, cfg, model, evaluators=None, prefix: str = ""):
        """Evaluate `model` on DATASETS.TEST. With a `prefix` (e.g. "teacher") the results are nested under
        it, so several models' metrics can live in one event storage ("teacher/bbox/AP")."""
        results = OrderedDict()
        for index, dataset_name in enumerate(cfg.DATASETS.TEST):
            data_loader = cls.build_test_loader(cfg, dataset_name)
            evaluator = evaluators[index] if evaluators is not None else cls.build_evaluator(cfg, dataset_name)
            result = inference_on_dataset(model, data_loader, evaluator)
            if comm.is_main_process():
                logger.info("Evaluation of the %s on %s (NMS IoU %s):", prefix or "model", dataset_name,
                            getattr(model, "test_nms_thresh", 0.0) or "off")
                print_csv_format(result)
            results[dataset_name] = result
        if len(results) == 1:
            results = list(results.values())[0]
        return {prefix: results} if prefix else results


class SemiSupervisedTrainer(Trainer):
    """Teacher-student training (SEMI.ENABLED) with Semi-DETR's components as configured (SEMIDETR.*): the
    step is `SemiTrainer` (engine/semi_trainer.py), the teacher an EMA of the student (EmaTeacherHook),
    saved as the checkpointable "teacher"; periodic evaluation scores SEMI.EVAL_MODELS."""

    @classmethod
    def build_train_loader(cls, cfg):
        return build_semi_train_loader(cfg)

    def build_train_loop(self, cfg, model, data_loader, optimizer, **loop_args) -> SemiTrainer:
        # The teacher is a plain module (never DDP-wrapped) in eval mode without gradients, copied from the
        # student after DDP has synchronised it across processes, and again after weights are loaded
        # (resume_or_load).
        student = _unwrap(model)
        self.teacher = build_teacher(student)
        self.ema = EmaUpdater(self.teacher, student)
        self.teacher_checkpointable = ModuleCheckpointable(self.teacher)
        return SemiTrainer(
            model, self.teacher, data_loader, optimizer, pseudo_labeler=build_pseudo_labeler(cfg),
            unsup_weight=cfg.SEMI.UNSUP_LOSS_WEIGHT,
            pseudo_label_denoising_stages=cfg.SEMI.PSEUDO_LABEL_DENOISING,
            stage_schedule=self.stage_schedule, pseudo_nms_thresh=cfg.SEMI.PSEUDO_NMS_THRESH,
            clip_pseudo_boxes=cfg.SEMI.PSEUDO_CLIP_BOXES,
            one_to_many_for_labeled=cfg.SEMIDETR.SHM.APPLY_TO_LABELED,
            consistency=build_cross_view_consistency(cfg),
            images_without_pseudo_labels=cfg.SEMI.IMAGES_WITHOUT_PSEUDO_LABELS,
            visualizer=PseudoLabelVisualizer(cfg) if cfg.SEMI.VIS_PERIOD > 0 else None,
            vis_period=cfg.SEMI.VIS_PERIOD, **loop_args)

    def extra_checkpointables(self):
        return {"teacher": self.teacher_checkpointable}

    def model_update_hooks(self):
        cfg = self.cfg
        return [EmaTeacherHook(self.ema, cfg.SEMI.EMA_MOMENTUM, cfg.SEMI.EMA_WARMUP)]

    def models(self):
        return {"teacher": self.teacher, "student": _unwrap(self._trainer.model)}

    def evaluated_models(self):
        models = self.models()
        unknown = set(self.cfg.SEMI.EVAL_MODELS) - set(models)
        if unknown:
            raise ValueError(f"SEMI.EVAL_MODELS has {sorted(unknown)}: use 'teacher' and/or 'student'")
        return {name: models[name] for name in self.cfg.SEMI.EVAL_MODELS}

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if not self.teacher_checkpointable.loaded:
            self.ema.copy_student()


def build_trainer(cfg) -> Trainer:
    """The trainer of a config: `SemiSupervisedTrainer` if SEMI.ENABLED, else the supervised `Trainer`."""
    return (SemiSupervisedTrainer if cfg.SEMI.ENABLED else Trainer)(cfg)


def build_pseudo_labeler(cfg) -> PseudoLabeler:
    return PseudoLabeler(cfg.SEMI.PSEUDO_SCORE_THRESH, cfg.INPUT.AUG.MIN_BOX_SIZE, cfg.SEMI.PSEUDO_MEAN_STD_FLOOR)


def build_cross_view_consistency(cfg):
    cqc, cpm = cfg.SEMIDETR.CQC, cfg.SEMIDETR.CPM
    if not cqc.ENABLED:
        return None
    miner = PseudoLabelMiner(cpm.METHOD, score_threshold=cpm.SCORE_THRESH, topk=cpm.TOPK, cost_class=cpm.COST_CLASS,
                             cost_giou=cpm.COST_GIOU, cost_bbox=cpm.COST_BBOX, focal_alpha=cfg.MODEL.DETR.FOCAL_ALPHA,
                             focal_gamma=cfg.MODEL.DETR.FOCAL_GAMMA)
    settings = resolve_cqc(cfg)
    return CrossViewConsistency(
        miner, structure=settings["structure"], loss=settings["loss"], loss_weight=settings["loss_weight"],
        stages=settings["stages"], grad_through_teacher=cqc.GRAD_THROUGH_TEACHER,
        min_box_size=cfg.INPUT.AUG.MIN_BOX_SIZE, candidates=settings["candidates"],
        score_threshold=cfg.SEMI.PSEUDO_SCORE_THRESH, scale_by_unsup_weight=settings["scale_by_unsup_weight"])


def build_teacher(student: nn.Module) -> nn.Module:
    """A copy of the student that is never trained by gradients: eval mode, requires_grad False."""
    teacher = copy.deepcopy(student)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class ModuleCheckpointable:
    """A module as a checkpointable that remembers whether a checkpoint restored it."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.loaded = False

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state_dict):
        self.module.load_state_dict(state_dict)
        self.loaded = True


def load_weights_for_evaluation(cfg, model: nn.Module, path: str, which: str = "teacher") -> Tuple[str, str]:
    """Load `path` into `model` for evaluation; `which` picks the teacher (EMA) or the student weights of a
    semi-supervised checkpoint. The training stage saved in the checkpoint decides whether the model
    predicts with NMS (one-to-many stage) or NMS-free. Returns (which weights: "teacher", "student" or
    "model" for a supervised checkpoint, the stage).

    Raises:
        CheckpointMismatchError: the checkpoint does not fit the config's model (other classes or
            components), checked before any weight is loaded (engine/checkpoint.py).
    """
    if which not in ("teacher", "student"):
        raise ValueError(f"SEMI.EVAL_ONLY_MODEL={which!r}: use 'teacher' or 'student'")
    extra = SemiDetrCheckpointer(model).load_for_evaluation(path, cfg, which)
    stage = extra.get("trainer", {}).get("stage", ONE_TO_ONE)
    model.test_nms_thresh = test_nms_threshold(cfg, stage)
    if "teacher" not in extra:
        return "model", stage
    if which == "teacher":
        model.load_state_dict(extra["teacher"])
    return which, stage
