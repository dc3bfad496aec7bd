#!/usr/bin/env python
"""Run a trained model on images: visualised PNGs and a JSON file of detections.

    python tools/infer.py --weights output/semidetr_shapes10_cpu/model_final.pth --input path/to/images \\
        --output output/predictions [--score-threshold 0.3] [--which teacher|student] [KEY VALUE ...]
    python tools/infer.py --config-file <cfg> --weights <old checkpoint> --input ... --output ...

A checkpoint written by this project's trainer holds its run's config and class names, so no config
file is needed; with --config-file, the config must build the checkpoint's model (same classes), else
the tool stops with one sentence saying what differs and how to fix it. Checkpoints from before that
need the run's config. A semi-supervised checkpoint is scored with its teacher (EMA) weights unless
--which student; a checkpoint saved in Semi-DETR's one-to-many stage predicts with class-aware NMS
(decided from the stage saved in the checkpoint).

Inputs are image files, folders (searched recursively, hidden files ignored) and glob patterns. Bad
inputs are handled as in training (semidetr/data/datasets/validation.py): files without an image extension,
missing files and images that cannot be decoded are skipped, with one warning per kind naming them and
their counts in the summary. Every readable image gets <output>/<path relative to its folder>.png and
its entry in <output>/detections.json. Exit status 0 when something was written, 1 when no image could
be read (or the checkpoint/config cannot be used; nothing is written then).
"""
import argparse
import glob
import json
import logging
import os
import sys

import torch
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer
from PIL import Image
from tqdm import tqdm

from semidetr.data.datasets.folder import list_image_files
from semidetr.data.datasets.validation import DataIssues, check_image_files, is_image_file
from semidetr.data.mappers import build_test_mapper
from semidetr.engine.checkpoint import config_class_names, read_model_info
from semidetr.engine.defaults import setup_cfg, setup_cfg_from_checkpoint
from semidetr.engine.trainer import Trainer, load_weights_for_evaluation

logger = logging.getLogger("semidetr.infer")


def list_images(inputs, issues: DataIssues):
    """Files, folders (recursive, as data/datasets/folder.py lists them) and glob patterns -> (image path, name of
    its PNG without extension) pairs, sorted by path. Non-image files and missing paths are counted in
    `issues`; so are images whose header cannot be read (validation.check_image_files)."""
    named = {}
    for item in inputs:
        if os.path.isdir(item):
            for relative in list_image_files(item, recursive=True, issues=issues):
                named.setdefault(os.path.join(item, relative), os.path.splitext(relative)[0])
            continue
        for path in sorted(glob.glob(item)) or [item]:
            if not os.path.isfile(path):
                issues.add("missing_image", path)
            elif not is_image_file(path):
                issues.add("non_image_file", path)
            else:
                named.setdefault(path, os.path.splitext(os.path.basename(path))[0])
    records = check_image_files([{"file_name": p} for p in sorted(named)], issues, verify_sizes=True)
    # Two inputs with the same relative name (e.g. a.jpg and a.png) must not overwrite each other's PNG.
    taken, pairs = set(), []
    for record in records:
        path = record["file_name"]
        name, suffix = named[path], 1
        while name in taken:
            name, suffix = f"{named[path]}_{suffix}", suffix + 1
        taken.add(name)
        pairs.append((path, name))
    return pairs


def build_model_and_config(args):
    """(cfg, model with the checkpoint's weights, which weights, stage, class names)."""
    if args.config_file:
        cfg = setup_cfg(args, for_training=False)
        try:
            info = read_model_info(args.weights)
        except ValueError:  # not a torch file (e.g. detectron2's .pkl): the checkpointer below reads it
            info = None
    else:
        cfg, info = setup_cfg_from_checkpoint(args.weights, args.opts)
    model = Trainer.build_model(cfg).eval()
    # Raises CheckpointMismatchError when the config does not build the checkpoint's model.
    which, stage = load_weights_for_evaluation(cfg, model, args.weights, args.which)
    class_names = (info or {}).get("class_names") or config_class_names(cfg) or []
    return cfg, model, which, stage, class_names


def predict(model, mapper, path: str, index: int):
    """The model's Instances (original image frame) and the RGB image, or None when it cannot be decoded."""
    try:
        rgb = read_image(path, format="RGB")  # EXIF orientation applied, as the mapper does
    # PIL reports undecodable files with many exception types (as the training mappers do, any of them
    # means this image cannot be used).
    except Exception as error:
        logger.debug("Cannot decode %s: %s: %s", path, type(error).__name__, error)
        return None
    inputs = mapper({"file_name": path, "image_id": index})
    with torch.no_grad():
        return model([inputs])[0]["instances"].to("cpu"), rgb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="",
                        help="the run's config; not needed for a checkpoint that saved it (this project's)")
    parser.add_argument("--weights", required=True, help="checkpoint (.pth) to load")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders or glob patterns")
    parser.add_argument("--output", required=True, help="folder for the PNGs and detections.json")
    parser.add_argument("--score-threshold", type=float, default=0.3, help="drawn detections (JSON keeps all)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="size of the PNGs relative to the images (small images read better enlarged)")
    parser.add_argument("--which", default="teacher", choices=["teacher", "student"])
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    setup_logger(name="semidetr")
    setup_logger(name="detectron2")

    issues = DataIssues(source=f"inputs {args.input}")
    images = list_images(args.input, issues)
    if not images:
        issues.report()
        logger.error("No readable image in %s (skipped: %s): give image files, folders or glob patterns; "
                     "nothing was written", args.input, issues.as_dict() or "none found")
        return 1
    try:
        cfg, model, which, stage, class_names = build_model_and_config(args)
    except ValueError as error:  # a checkpoint without config, or one the config does not fit
        logger.error("%s", error)
        return 1
    logger.info("Predicting with the %s weights of %s (stage %s, %d classes: %s)", which, args.weights, stage,
                model.num_classes, ", ".join(class_names[:10]) or "names unknown")
    mapper = build_test_mapper(cfg)
    records = []
    for index, (path, name) in enumerate(tqdm(images, desc="infer", unit="image")):
        predicted = predict(model, mapper, path, index)
        if predicted is None:
            issues.add("unreadable_image", path)
            continue
        instances, rgb = predicted
        shown = instances[instances.scores >= args.score_threshold]
        labels = [f"{class_names[c] if c < len(class_names) else c} {s:.2f}"
                  for c, s in zip(shown.pred_classes.tolist(), shown.scores.tolist())]
        picture = Visualizer(rgb, scale=args.scale).overlay_instances(boxes=shown.pred_boxes.tensor.numpy(), labels=labels).get_image()
        png = os.path.join(args.output, name + ".png")
        os.makedirs(os.path.dirname(png), exist_ok=True)
        Image.fromarray(picture).save(png)
        records.append({
            "file_name": path, "png": png, "image_size": list(instances.image_size), "model": which, "stage": stage,
            "boxes_xyxy": instances.pred_boxes.tensor.tolist(), "scores": instances.scores.tolist(),
            "classes": instances.pred_classes.tolist(),
            "class_names": [class_names[c] if c < len(class_names) else str(c) for c in instances.pred_classes.tolist()],
        })
    skipped = issues.report()  # one warning per kind of bad input, naming examples
    if not records:
        logger.error("None of the %d images in %s could be decoded (skipped: %s); nothing was written",
                     len(images), args.input, skipped)
        return 1
    with open(os.path.join(args.output, "detections.json"), "w") as f:
        json.dump(records, f)
    logger.info("Wrote %d PNGs and detections.json to %s; skipped %d inputs%s", len(records), args.output,
                sum(skipped.values()), f" ({skipped})" if skipped else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
