"""Checkpointing: atomic saves, self-describing checkpoints (the run's config, class names and stage
saved with the weights, checked on evaluation), and ImageNet weights in torchvision's format from a local
file."""
import logging
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog

from .stage import stage_at

__all__ = ["SemiDetrCheckpointer", "CheckpointMismatchError", "MODEL_INFO_KEY", "check_checkpoint_fits",
           "config_class_names", "convert_torchvision_resnet", "export_weights", "last_checkpoint", "read_model_info"]

logger = logging.getLogger(__name__)


def _looks_like_torchvision_resnet(state_dict: Dict[str, Any]) -> bool:
    return "conv1.weight" in state_dict and any(k.startswith("layer1.") for k in state_dict)


def convert_torchvision_resnet(state_dict: Dict[str, Any], prefix: str = "backbone.") -> Dict[str, Any]:
    """Rename a torchvision ResNet state dict to detectron2's ResNet names (the renaming of detectron2's
    tools/convert-torchvision-to-d2.py), under `prefix`. The ImageNet classifier (fc) is dropped."""
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        new_key = key if "layer" in key else "stem." + key
        new_key = re.sub(r"layer(\d)", lambda m: f"res{int(m.group(1)) + 1}", new_key)
        new_key = re.sub(r"bn(\d)", r"conv\1.norm", new_key)
        new_key = new_key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        converted[prefix + new_key] = value
    return converted


# The entry of a checkpoint that describes its model (written by a checkpointer given the run's config).
MODEL_INFO_KEY = "model_info"
# The state-dict entry whose first dimension is the class count, in checkpoints without MODEL_INFO_KEY.
_CLASS_HEAD_KEY = "transformer.class_embed.0.bias"


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model built from a config; the message names both and the fix."""


class SemiDetrCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer with these additions:

    * `atomic=True`: a checkpoint (and the `last_checkpoint` tag) is written to a temporary file, flushed
      to disk and renamed over the target, so a process killed while saving leaves the previous
      checkpoint intact and loadable.
    * `cfg` (the run's config): every checkpoint also holds MODEL_INFO_KEY, what rebuilds the model and
      names its outputs without the data: the config as YAML, the class count and names, the training
      stage of the saved weights and the iteration (`model_info`). tools/infer.py needs nothing else.
    * `load_for_evaluation`: before any weight is loaded, the checkpoint is checked against the model
      (`check_checkpoint_fits`), so a config that does not fit fails with one sentence instead of
      detectron2 silently skipping the class head (or a bare size-mismatch error).
    * a torchvision ResNet file (e.g. ImageNet weights saved with `torch.save(model.state_dict())`) given
      as MODEL.WEIGHTS is renamed to detectron2's backbone names; nothing is ever downloaded.
    """

    def __init__(self, model, save_dir: str = "", *, atomic: bool = True, cfg=None, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.atomic = atomic
        self.cfg = cfg
        self._config_yaml = cfg.dump() if cfg is not None else None
        self._evaluation_check = None  # (cfg, weights) during load_for_evaluation

    def model_info(self, iteration: Optional[int]) -> Dict[str, Any]:
        """What a checkpoint saved after `iteration` says about its model (MODEL_INFO_KEY)."""
        num_classes = getattr(self.model, "num_classes", None)
        return {
            "config": self._config_yaml,
            "num_classes": int(num_classes) if num_classes is not None else None,
            "class_names": config_class_names(self.cfg),
            "meta_architecture": self.cfg.MODEL.META_ARCHITECTURE,
            # The stage the weights were trained in at their last iteration (stage.py owns the rule).
            "stage": stage_at(self.cfg, iteration) if iteration is not None else None,
            "iteration": iteration,
        }

    def save(self, name: str, **kwargs: Any) -> None:
        if self.cfg is not None:
            kwargs[MODEL_INFO_KEY] = self.model_info(kwargs.get("iteration"))
        if not self.atomic:
            return super().save(name, **kwargs)
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        _atomic_write(save_file, lambda f: torch.save(data, f), mode="wb")
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self.atomic:
            return super().tag_last_checkpoint(last_filename_basename)
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(save_file, lambda f: f.write(last_filename_basename), mode="w")

    def load_for_evaluation(self, path: str, cfg, weights: str) -> Dict[str, Any]:
        """Load the "model" entry of `path` after checking that the entry to be evaluated (`weights`:
        "teacher" or "model") fits the model built from `cfg`; returns the other entries (teacher,
        trainer state, MODEL_INFO_KEY) like `load`.

        Raises:
            CheckpointMismatchError: see `check_checkpoint_fits`.
        """
        self._evaluation_check = (path, cfg, weights)
        try:
            return self.load(path, checkpointables=[])
        finally:
            self._evaluation_check = None

    def _load_model(self, checkpoint):
        if self._evaluation_check is not None:
            path, cfg, weights = self._evaluation_check
            check_checkpoint_fits(cfg, self.model, path, checkpoint, weights)
        return super()._load_model(checkpoint)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        loaded = super()._load_file(filename)
        model_state = loaded.get("model", {})
        if _looks_like_torchvision_resnet(model_state):
            logger.info("%s is a torchvision ResNet state dict: renaming it to detectron2's backbone names", filename)
            loaded["model"] = convert_torchvision_resnet(model_state)
            loaded["matching_heuristics"] = False
        return loaded


def config_class_names(cfg) -> Optional[List[str]]:
    """The class names of the model a config builds: those of its first training set, if it has one."""
    if cfg is None or not cfg.DATASETS.TRAIN:
        return None
    names = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("thing_classes")
    return list(names) if names else None


def _read_checkpoint(path: str, mmap: bool = False) -> Any:
    """torch.load of a checkpoint file on the CPU (memory-mapped: tensors stay on disk until used).

    Raises:
        ValueError: `path` is missing or not a torch checkpoint.
    """
    if not os.path.isfile(path):
        raise ValueError(f"Checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception:  # torch raises many types; mmap needs the zip format of torch >= 1.6
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:
            raise ValueError(f"{path} cannot be read as a torch checkpoint ({type(error).__name__}: {error})") \
                from error


def _model_info(checkpoint: Any) -> Optional[Dict[str, Any]]:
    info = checkpoint.get(MODEL_INFO_KEY) if isinstance(checkpoint, dict) else None
    return info if isinstance(info, dict) and info.get("config") else None


def read_model_info(path: str) -> Optional[Dict[str, Any]]:
    """MODEL_INFO_KEY of checkpoint `path` (None for a checkpoint without it, e.g. an older one).

    Raises:
        ValueError: `path` is missing or not a torch checkpoint.
    """
    return _model_info(_read_checkpoint(path, mmap=True))  # only the small info entry is read


# The entries of a checkpoint that hold weights: the trained model (the student of a semi-supervised run) and
# the EMA teacher. Everything else but MODEL_INFO_KEY is the trainer's state, needed only to resume.
WEIGHT_KEYS = ("model", "teacher")


def export_weights(source: str, target: str, dtype: Optional[torch.dtype] = torch.float16) -> Dict[str, Any]:
    """Write the weights of checkpoint `source` to `target` without the trainer's state (optimizer, scheduler,
    iteration): what starts or evaluates a model, a third of a checkpoint. `dtype` (float16 by default: half
    of that again) is applied to the floating-point tensors only; loading casts them back to the model's
    dtype. MODEL_INFO_KEY is kept, so the copy still names its config, classes and stage. Returns what was
    written.

    Raises:
        ValueError: `source` is missing, not a torch checkpoint, or holds no weights.
    """
    checkpoint = _read_checkpoint(source)  # ValueError naming the file if it cannot be read
    info = _model_info(checkpoint)
    weights = {key: checkpoint[key] for key in WEIGHT_KEYS
               if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict)}
    if not weights:
        raise ValueError(f"{source} holds no weights (no {' or '.join(repr(k) for k in WEIGHT_KEYS)} entry)")
    exported = {key: {name: tensor.to(dtype) if dtype is not None and torch.is_tensor(tensor)
                      and tensor.is_floating_point() else tensor for name, tensor in state.items()}
                for key, state in weights.items()}
    if info is not None:
        exported[MODEL_INFO_KEY] = info
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    _atomic_write(target, lambda f: torch.save(exported, f), mode="wb")
    return exported


def _names_summary(names: Optional[Sequence[str]], limit: int = 10) -> str:
    if not names:
        return "names unknown"
    more = f", ... {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(map(str, names[:limit])) + more


def check_checkpoint_fits(cfg, model, path: str, checkpoint: Dict[str, Any], weights: str = "model") -> None:
    """Raise if the `weights` entry ("teacher", or "model" = the student / a supervised model) of
    `checkpoint` (loaded from `path`) cannot be evaluated with `model`, built from `cfg`.

    First the classes (the checkpoint's saved class count and names, or for an older checkpoint its class
    head's size, against the model's count and the config's class names), then the weights themselves
    (missing, unexpected and differently shaped entries, e.g. CQC switched on for a run trained without
    it). detectron2 would otherwise drop the mismatching class head with a warning and score a random one.

    Raises:
        CheckpointMismatchError: one sentence naming the checkpoint's classes, the config's, and the fix.
    """
    info = checkpoint.get(MODEL_INFO_KEY) or {}
    state = checkpoint["teacher"] if weights == "teacher" and "teacher" in checkpoint else checkpoint.get("model", {})
    run_config = os.path.join(os.path.dirname(path) or ".", "config.yaml")
    fix = (f"evaluate with the config the run was trained with ({run_config} is its full copy, overrides "
           "included)" + (", or give tools/infer.py no --config-file: it then uses the config saved in the "
                           "checkpoint" if info.get("config") else ""))

    saved_count = info.get("num_classes")
    if saved_count is None and _CLASS_HEAD_KEY in state:
        saved_count = int(state[_CLASS_HEAD_KEY].shape[0])
    saved_names = info.get("class_names")
    model_count = getattr(model, "num_classes", None)
    config_names = config_class_names(cfg)
    count_differs = saved_count is not None and model_count is not None and saved_count != model_count
    names_differ = bool(saved_names) and bool(config_names) and list(saved_names) != list(config_names)
    if count_differs or names_differ:
        if cfg.MODEL.DETR.NUM_CLASSES > 0:
            source = "MODEL.DETR.NUM_CLASSES"
        else:
            source = f"DATASETS.TRAIN[0] '{cfg.DATASETS.TRAIN[0]}'" if cfg.DATASETS.TRAIN else "the config"
        saved = (_names_summary(saved_names) if saved_names else "names unknown" if info
                 else "names not saved: a checkpoint from before checkpoints described their model")
        raise CheckpointMismatchError(
            f"{path} was trained on {saved_count} classes ({saved}) but this config builds a model for "
            f"{model_count} classes ({_names_summary(config_names)}; from {source}): {fix}.")

    if checkpoint.get("matching_heuristics"):
        return  # detectron2 matches the names of such files (model-zoo .pkl) by heuristics on loading
    missing, unexpected, shapes = _state_dict_mismatch(model, state)
    if missing or unexpected or shapes:
        name = "teacher does" if weights == "teacher" and "teacher" in checkpoint else "weights do"
        raise CheckpointMismatchError(
            f"{path}: its {name} not fit the model built from this config (missing: {_key_summary(missing)}; "
            f"unexpected: {_key_summary(unexpected)}; other shape: {_key_summary(shapes)}): {fix}.")


def _state_dict_mismatch(model, state_dict) -> Tuple[List[str], List[str], List[str]]:
    expected = model.state_dict()
    state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    shapes = sorted(k for k in set(expected) & set(state_dict)
                    if hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(expected[k].shape))
    return sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected)), shapes


def _key_summary(keys, limit: int = 3) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _atomic_write(path: str, write, mode: str) -> None:
    directory = os.path.dirname(path) or "."
    tmp_path = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp_path, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def last_checkpoint(output_dir: str) -> str:
    """Path of the checkpoint tagged in `output_dir/last_checkpoint`, or "" when there is none."""
    tag = os.path.join(output_dir, "last_checkpoint")
    if not os.path.isfile(tag):
        return ""
    with open(tag) as f:
        return os.path.join(output_dir, f.read().strip())
