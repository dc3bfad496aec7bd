"""Checkpointing: atomic saves, and ImageNet weights in torchvision's format from a local file."""
import logging
import os
import re
from typing import Any, Dict

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["SemiDetrCheckpointer", "convert_torchvision_resnet", "last_checkpoint"]

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


class SemiDetrCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer with two additions:

    * `atomic=True`: a checkpoint (and the `last_checkpoint` tag) is written to a temporary file, flushed
      to disk and renamed over the target, so a process killed while saving leaves the previous
      checkpoint intact and loadable.
    * a torchvision ResNet file (e.g. ImageNet weights saved with `torch.save(model.state_dict())`) given
      as MODEL.WEIGHTS is renamed to detectron2's backbone names; nothing is ever downloaded.
    """

    def __init__(self, model, save_dir: str = "", *, atomic: bool = True, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.atomic = atomic

    def save(self, name: str, **kwargs: Any) -> None:
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

    def _load_file(self, filename: str) -> Dict[str, Any]:
        loaded = super()._load_file(filename)
        model_state = loaded.get("model", {})
        if _looks_like_torchvision_resnet(model_state):
            logger.info("%s is a torchvision ResNet state dict: renaming it to detectron2's backbone names", filename)
            loaded["model"] = convert_torchvision_resnet(model_state)
            loaded["matching_heuristics"] = False
        return loaded


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
