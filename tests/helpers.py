"""Small configs and inputs shared by the tests."""
import contextlib
import logging

import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances

from semidetr import add_semidetr_config


def tiny_detector_cfg(meta_architecture: str = "DINO", num_classes: int = 3):
    """A DINO small enough for CPU tests: R-18 with GroupNorm, 2+2 transformer layers, width 64."""
    cfg = get_cfg()
    add_semidetr_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = meta_architecture
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "GN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    d = cfg.MODEL.DETR
    d.NUM_CLASSES = num_classes
    d.HIDDEN_DIM, d.NHEADS, d.DIM_FEEDFORWARD = 64, 4, 128
    d.ENC_LAYERS, d.DEC_LAYERS = 2, 2
    d.NUM_QUERIES, d.NUM_SELECT, d.DN_NUMBER = 30, 30, 20
    if meta_architecture == "DeformableDETR":
        d.QUERY_INIT, d.LOOK_FORWARD_TWICE, d.SHARE_PRED_HEADS, d.DN_NUMBER = "proposal", False, False, 0
    return cfg


def synthetic_input(height: int, width: int, num_boxes: int, num_classes: int = 3, seed: int = 0):
    """A training input dict: random image with `num_boxes` random boxes."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    instances = Instances((height, width))
    top_left = torch.rand(num_boxes, 2, generator=generator) * torch.tensor([width * 0.6, height * 0.6])
    size = torch.rand(num_boxes, 2, generator=generator) * 30 + 8
    instances.gt_boxes = Boxes(torch.cat([top_left, top_left + size], 1))
    instances.gt_classes = torch.randint(0, num_classes, (num_boxes,), generator=generator)
    return {"image": image, "instances": instances, "height": height, "width": width}


@contextlib.contextmanager
def recorded_log_messages(logger_name: str = "semidetr", level: int = logging.INFO):
    """The messages `logger_name` (and its children) log at `level` or above inside the block, as a list."""
    messages = []

    class Recorder(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    recorder = Recorder(level)
    logging.getLogger(logger_name).addHandler(recorder)
    try:
        yield messages
    finally:
        logging.getLogger(logger_name).removeHandler(recorder)
