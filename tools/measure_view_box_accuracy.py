#!/usr/bin/env python
"""How exact are the strong view's boxes? IoU of the mapped box with the true tight box of the object.

A box is moved into the strong view by the bounding box of its four transformed corners (data/geometry.py,
as the official code). For a translation, resize or flip that is the object's tight box; for a rotation or a
shear it is larger, by how much depending on the object's shape. This draws objects of the embedded data's
classes with the generator's own outlines (data/datasets/synthetic.py: shape, jitter, random orientation), puts each
through the strong view's geometric operation drawn exactly as training draws it (the config's
INPUT.AUG.GEOMETRIC_OPS and ranges, or only the box-exact ones with INPUT.AUG.BOX_EXACT_GEOMETRY), and
compares the mapped box with the tight box of the transformed outline (exact: a polygon's extreme points
are vertices). Prints mean / min IoU per class and overall as a markdown table.

    python tools/measure_view_box_accuracy.py --samples 2000 --seed 0
"""
import argparse
import sys

import numpy as np
import torch
from detectron2.config import get_cfg
from torchvision.ops import box_iou

from semidetr import add_semidetr_config
from semidetr.data.datasets.synthetic import SHAPE_CLASSES, ShapesConfig, _place_outlines, _unit_outlines
from semidetr.data.geometry import transform_boxes
from semidetr.data.transforms import build_view_augmentation


def _bbox(points: np.ndarray) -> torch.Tensor:
    return torch.tensor([[*points.min(0), *points.max(0)]], dtype=torch.float64)


def measure(cfg, samples: int, seed: int):
    """({class: (IoU per object, op name per object)}, the ops drawn from) for `samples` objects per class."""
    rng = np.random.default_rng(seed)
    np.random.seed(seed)  # the augmentation draws from numpy's global generator, as in the data loader
    augmentation = build_view_augmentation(cfg, "strong")
    ops = augmentation.geometric_ops
    shapes = ShapesConfig()
    results = {}
    for name in SHAPE_CLASSES:
        ious, names = [], []
        for _ in range(samples):
            height, width = rng.integers(shapes.image_size[0], shapes.image_size[1] + 1, size=2)
            size = rng.uniform(0.2, 0.5) * min(height, width)
            outline = _place_outlines(_unit_outlines(name, rng), size, shapes.shape_jitter, rng)[0][0]
            outline = outline + np.array([width / 2.0, height / 2.0])
            matrix, op = np.eye(3), "none"
            if ops:
                op = ops[np.random.randint(len(ops))]
                matrix = augmentation._draw_geometric_matrix(op, height, width)
            # Shifted into a destination large enough that nothing is clipped: the box shape alone is measured.
            matrix = np.array([[1.0, 0, 2 * width], [0, 1, 2 * height], [0, 0, 1]]) @ matrix
            moved = outline @ matrix[:2, :2].T + matrix[:2, 2]
            mapped, _ = transform_boxes(_bbox(outline), matrix, (10 * height, 10 * width))
            ious.append(float(box_iou(mapped, _bbox(moved))[0, 0]))
            names.append(op)
        results[name] = (np.asarray(ious), np.asarray(names))
    return results, ops


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", help="config whose INPUT.AUG is measured (default: defaults)")
    parser.add_argument("--samples", type=int, default=2000, help="objects per class and setting")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = []
    for box_exact in (False, True):
        cfg = get_cfg()
        add_semidetr_config(cfg)
        if args.config_file:
            cfg.merge_from_file(args.config_file)
        cfg.INPUT.AUG.BOX_EXACT_GEOMETRY = box_exact
        results, ops = measure(cfg, args.samples, args.seed)
        subsets = [(f"{box_exact} ({', '.join(ops) or 'none'})", None)]
        if any(op in ops for op in ("rotate", "shear")):
            subsets.append((f"{box_exact}, the objects that drew rotate or shear", ("rotate", "shear")))
        for title, only in subsets:
            chosen = [iou[np.isin(op, only)] if only else iou for iou, op in results.values()]
            every = np.concatenate(chosen)
            cells = [f"{v.mean():.3f} / {v.min():.3f}" for v in chosen]
            rows.append(f"| {title} | " + " | ".join(cells) + f" | {every.mean():.3f} / {every.min():.3f} |")
    print("Mean / min IoU of the mapped box with the tight box of the transformed object, "
          f"{args.samples} objects per class and setting, seed {args.seed}.\n")
    print("| INPUT.AUG.BOX_EXACT_GEOMETRY (geometric ops) | " + " | ".join(SHAPE_CLASSES) + " | all |")
    print("|" + " --- |" * (len(SHAPE_CLASSES) + 2))
    print("\n".join(rows))


if __name__ == "__main__":
    sys.exit(main())
