"""Pictures of what the student is taught: weak views with the teacher's pseudo labels next to the strong
views with the same labels mapped into them (SEMI.VIS_PERIOD)."""
import logging
import os
from typing import Dict, List

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.utils.events import get_event_storage
from detectron2.utils.visualizer import Visualizer
from PIL import Image

__all__ = ["PseudoLabelVisualizer", "view_to_rgb", "draw_boxes"]

logger = logging.getLogger(__name__)


def view_to_rgb(view: Dict, input_format: str) -> np.ndarray:
    """The HWC uint8 RGB picture of a mapped view (its "image" is CHW in INPUT.FORMAT)."""
    image = view["image"].permute(1, 2, 0).cpu().numpy()
    return image[:, :, ::-1] if input_format == "BGR" else image


def draw_boxes(image_rgb: np.ndarray, boxes: torch.Tensor, classes: torch.Tensor, scores: torch.Tensor,
               class_names: List[str]) -> np.ndarray:
    visualizer = Visualizer(image_rgb, metadata=None)
    labels = [f"{class_names[c] if c < len(class_names) else c} {s:.2f}" for c, s in zip(classes.tolist(), scores.tolist())]
    return visualizer.overlay_instances(boxes=boxes.cpu().numpy(), labels=labels).get_image()


class PseudoLabelVisualizer:
    def __init__(self, cfg, max_images: int = 4):
        self.output_dir = os.path.join(cfg.OUTPUT_DIR, "pseudo_labels")
        self.input_format = cfg.INPUT.FORMAT
        self.class_names = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("thing_classes", [])
        self.max_images = max_images

    def __call__(self, iteration: int, weak_views: List[Dict], strong_views: List[Dict], pseudo) -> str:
        rows = []
        for weak, strong, weak_labels, strong_labels in list(zip(weak_views, strong_views, pseudo.weak, pseudo.strong))[:self.max_images]:
            left = draw_boxes(view_to_rgb(weak, self.input_format), weak_labels.gt_boxes.tensor,
                              weak_labels.gt_classes, weak_labels.scores, self.class_names)
            right = draw_boxes(view_to_rgb(strong, self.input_format), strong_labels.gt_boxes.tensor,
                               strong_labels.gt_classes, strong_labels.scores, self.class_names)
            rows.append(_side_by_side(left, right))
        picture = _stack_rows(rows)
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, f"iter_{iteration + 1:07d}.png")
        Image.fromarray(picture).save(path)
        get_event_storage().put_image("pseudo_labels (weak | strong)", picture.transpose(2, 0, 1))
        return path


def _side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    height = max(left.shape[0], right.shape[0])
    pad = lambda x: np.pad(x, ((0, height - x.shape[0]), (0, 0), (0, 0)))  # noqa: E731
    return np.concatenate([pad(left), np.full((height, 8, 3), 255, np.uint8), pad(right)], 1)


def _stack_rows(rows: List[np.ndarray]) -> np.ndarray:
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 8), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate(padded, 0)
