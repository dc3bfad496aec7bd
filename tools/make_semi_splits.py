#!/usr/bin/env python
# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Write COCO-Partial split files (SoftTeacher / Semi-DETR naming), reproducibly.

For every fold k and percentage p, writes ``{stem}.{k}@{p}.json`` (the labeled images) and
``{stem}.{k}@{p}-unlabeled.json`` (all other images) next to each other, where ``stem`` is the input
file name without ".json". Both keep "info", "licenses", "categories" and the annotations of their
images (those of the unlabeled file serve only as monitoring ground truth). The labeled images are
chosen by ``semidetr.data.datasets.splits.select_labeled_indices`` over the json's "images" in file order:
``int(p / 100 * N)`` images drawn with ``numpy.random.RandomState(k)``, the rule of SoftTeacher's
``prepare_coco_data.py --seed k``, and the same function as the in-memory splits ``X.k@p``.

Example (COCO-Partial, folds 1-5 at 1/5/10 %)::

    python tools/make_semi_splits.py --json datasets/coco/annotations/instances_train2017.json \\
        --percents 1 5 10 --folds 1 2 3 4 5 --out-dir datasets/coco/annotations/semi_supervised

The files are then registered as ``coco_2017_train.{k}@{p}`` / ``coco_2017_train.{k}@{p}-unlabeled``
(see datasets/README.md).
"""
import argparse
import json
import os
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

from semidetr.data.datasets.splits import UNLABELED_SUFFIX, format_percent, select_labeled_indices


def split_coco_content(content: dict, percent: float, fold: int) -> Tuple[dict, dict]:
    """(labeled, unlabeled) json contents of one split of a COCO json content."""
    images = content["images"]
    labeled_indices = set(select_labeled_indices(len(images), percent, fold).tolist())
    annotations_per_image: Dict[int, List[dict]] = defaultdict(list)
    for annotation in content.get("annotations", []):
        annotations_per_image[annotation["image_id"]].append(annotation)

    def part(selected_images: List[dict]) -> dict:
        result = {key: value for key, value in content.items() if key not in ("images", "annotations")}
        result["images"] = selected_images
        if "annotations" in content:
            result["annotations"] = [a for image in selected_images for a in annotations_per_image[image["id"]]]
        return result

    labeled = [image for index, image in enumerate(images) if index in labeled_indices]
    unlabeled = [image for index, image in enumerate(images) if index not in labeled_indices]
    return part(labeled), part(unlabeled)


def _write_json(content: dict, path: str) -> None:
    # Write then rename: a reader never sees a half-written split file.
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        json.dump(content, f)
    os.replace(temporary, path)


def make_semi_splits(json_file: str, percents: Sequence[float], folds: Sequence[int], out_dir: str) -> List[str]:
    """Write the split files of every (fold, percent); returns their paths."""
    with open(json_file) as f:
        content = json.load(f)
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(json_file))[0]
    written = []
    for fold in folds:
        for percent in percents:
            labeled, unlabeled = split_coco_content(content, percent, fold)
            name = f"{stem}.{fold}@{format_percent(percent)}"
            for part, suffix in ((labeled, ""), (unlabeled, UNLABELED_SUFFIX)):
                path = os.path.join(out_dir, f"{name}{suffix}.json")
                _write_json(part, path)
                written.append(path)
                print(f"wrote {path}: {len(part['images'])} images, {len(part.get('annotations', []))} annotations")
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="COCO instances json to split")
    parser.add_argument("--percents", type=float, nargs="+", required=True, help="labeled percentages, e.g. 1 5 10")
    parser.add_argument("--folds", type=int, nargs="+", default=[1], help="folds; fold k uses seed k (default: 1)")
    parser.add_argument("--out-dir", help="output folder (default: semi_supervised/ next to the json)")
    args = parser.parse_args(argv)
    out_dir = args.out_dir or os.path.join(os.path.dirname(os.path.abspath(args.json)), "semi_supervised")
    make_semi_splits(args.json, args.percents, args.folds, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
