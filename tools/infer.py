#!/usr/bin/env python
"""Run a trained model on images: visualised PNGs and a JSON file of detections.

    python tools/infer.py --config-file configs/quick_schedules/semidetr_shapes10_cpu.yaml \\
        --weights output/semidetr_shapes10_cpu/model_final.pth --input path/to/images_or_files \\
        --output output/predictions [--score-threshold 0.3] [--which teacher|student] [KEY VALUE ...]

A semi-supervised checkpoint is scored with its teacher (EMA) weights unless --which student; a
checkpoint saved in Semi-DETR's one-to-many stage predicts with class-aware NMS (decided from the stage
saved in the checkpoint). Writes <output>/<image name>.png and <output>/detections.json.
"""
import argparse
import glob
import json
import logging
import os

import torch
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from semidetr.data.mappers import build_test_mapper
from semidetr.data.validation import is_image_file
from semidetr.engine.defaults import setup_cfg
from semidetr.engine.trainer import Trainer, load_weights_for_evaluation

logger = logging.getLogger("semidetr.infer")


def list_images(inputs):
    """Files, folders (recursive) and glob patterns -> sorted image paths; non-images are skipped and
    reported."""
    paths, skipped = [], []
    for item in inputs:
        if os.path.isdir(item):
            candidates = [os.path.join(d, f) for d, _, files in os.walk(item) for f in files]
        else:
            candidates = glob.glob(item) or [item]
        for path in candidates:
            (paths if os.path.isfile(path) and is_image_file(path) else skipped).append(path)
    if skipped:
        logger.warning("Skipped %d inputs that are not image files (e.g. %s)", len(skipped), skipped[:3])
    if not paths:
        raise SystemExit(f"No image found in {inputs}: give image files, folders or glob patterns")
    return sorted(set(paths))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="checkpoint (.pth) to load")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders or glob patterns")
    parser.add_argument("--output", required=True, help="folder for the PNGs and detections.json")
    parser.add_argument("--score-threshold", type=float, default=0.3, help="drawn detections (JSON keeps all)")
    parser.add_argument("--which", default="teacher", choices=["teacher", "student"])
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    setup_logger(name="semidetr")
    setup_logger(name="detectron2")

    cfg = setup_cfg(args, for_training=False)
    model = Trainer.build_model(cfg).eval()
    which, stage = load_weights_for_evaluation(cfg, model, args.weights, args.which)
    logger.info("Predicting with the %s weights of %s (stage %s)", which, args.weights, stage)
    class_names = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("thing_classes", []) if cfg.DATASETS.TRAIN else []
    mapper = build_test_mapper(cfg)
    os.makedirs(args.output, exist_ok=True)
    records = []
    for index, path in enumerate(list_images(args.input)):
        inputs = mapper({"file_name": path, "image_id": index})
        with torch.no_grad():
            instances = model([inputs])[0]["instances"].to("cpu")
        rgb = read_image(path, format="RGB")  # EXIF orientation applied, as the mapper does
        shown = instances[instances.scores >= args.score_threshold]
        labels = [f"{class_names[c] if c < len(class_names) else c} {s:.2f}"
                  for c, s in zip(shown.pred_classes.tolist(), shown.scores.tolist())]
        picture = Visualizer(rgb).overlay_instances(boxes=shown.pred_boxes.tensor.numpy(), labels=labels).get_image()
        png = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".png")
        Image.fromarray(picture).save(png)
        records.append({
            "file_name": path, "image_size": list(instances.image_size), "model": which, "stage": stage,
            "boxes_xyxy": instances.pred_boxes.tensor.tolist(), "scores": instances.scores.tolist(),
            "classes": instances.pred_classes.tolist(),
            "class_names": [class_names[c] if c < len(class_names) else str(c) for c in instances.pred_classes.tolist()],
        })
    with open(os.path.join(args.output, "detections.json"), "w") as f:
        json.dump(records, f)
    logger.info("Wrote %d PNGs and detections.json to %s", len(records), args.output)


if __name__ == "__main__":
    main()
