#!/usr/bin/env python
"""Per-class pseudo-label quality of a checkpoint on a labeled data set: what tau_s would give.

    python tools/pseudo_label_quality.py --config-file configs/quick_schedules/ssod_baseline_bccd10_cpu.yaml \\
        --weights output/ssod_baseline_bccd10_cpu/model_final.pth --dataset bccd_test \\
        [--thresholds 0.3 0.4 0.5] [--which teacher|student] [--max-images N] [KEY VALUE ...]

For every score threshold and class: pseudo labels per image, precision (share of them that hit a
same-class ground-truth box at IoU >= 0.5) and recall (share of ground-truth boxes hit); and, per class,
the distribution of the best score the model gives each ground-truth object (its highest same-class
score at IoU >= 0.5, 0 when none), which says how far below tau_s the missed objects are. The detections
are made by the training's pseudo-label rule (the config's SEMI.PSEUDO_NMS_THRESH, SEMI.PSEUDO_CLIP_BOXES
and SEMI.PSEUDO_MEAN_STD_FLOOR, as SemiTrainer passes them to the teacher), so the counts are those of the
pseudo labels a run with that config and tau_s would train on. The model sees the test-time view
(MIN_SIZE_TEST), as the teacher's weak view is at test scale in the official code.
A semi-supervised checkpoint is scored with its teacher weights unless --which student.
"""
import argparse
import json
import logging

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import annotations_to_instances
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.utils.logger import setup_logger

from semidetr.data.mappers import build_test_mapper
from semidetr.engine.defaults import setup_cfg
from semidetr.engine.trainer import Trainer, load_weights_for_evaluation
from semidetr.semi.monitoring import hit_matrix
from semidetr.semi.pseudo_labels import PseudoLabeler

logger = logging.getLogger("semidetr.pseudo_label_quality")


def pseudo_label_candidates(cfg, model, inputs, lowest_threshold):
    """The detections of one mapped image that the training's pseudo-label rule keeps at score
    >= lowest_threshold (class-aware NMS and clipping as SemiTrainer passes them to the teacher, then the
    labeler's mean + std floor), in the image's original frame, where its annotations are."""
    with torch.no_grad():
        detections = model.predict([inputs], nms_thresh=cfg.SEMI.PSEUDO_NMS_THRESH, clip=cfg.SEMI.PSEUDO_CLIP_BOXES)[0]
    kept = PseudoLabeler(lowest_threshold, mean_std_floor=cfg.SEMI.PSEUDO_MEAN_STD_FLOOR).filter(detections)
    return detector_postprocess(kept, inputs["height"], inputs["width"]).to("cpu")


def count_hits(pred_boxes, pred_scores, pred_classes, gt_boxes, gt_classes, thresholds, num_classes, iou=0.5):
    """Counts for one image. Returns {"pseudo": [T, K], "precise": [T, K], "gt": [K], "recalled": [T, K]}
    (T thresholds, K classes) and "best_scores": per ground-truth box, its highest same-class prediction
    score at IoU >= `iou` (0 if none), with "best_classes" its class."""
    thresholds = torch.as_tensor(thresholds, dtype=torch.float32)
    hit = hit_matrix(pred_boxes, pred_classes, gt_boxes, gt_classes, iou)  # [P, G], as the training metrics
    above = pred_scores[None, :] >= thresholds[:, None]                       # [T, P]
    pred_onehot = torch.nn.functional.one_hot(pred_classes.long(), num_classes).float()  # [P, K]
    gt_onehot = torch.nn.functional.one_hot(gt_classes.long(), num_classes).float()      # [G, K]
    kept_hit = above[:, :, None] & hit[None]                                 # [T, P, G]
    return {
        "pseudo": above.float() @ pred_onehot,
        "precise": (above & hit.any(1)[None]).float() @ pred_onehot,
        "recalled": kept_hit.any(1).float() @ gt_onehot,
        "gt": gt_onehot.sum(0),
        "best_scores": (hit.float() * pred_scores[:, None]).amax(0) if len(pred_boxes) else torch.zeros(len(gt_boxes)),
        "best_classes": gt_classes,
    }


ALL_CLASSES = "(all classes)"


def summarise(per_image, thresholds, class_names):
    """Sum count_hits() over images -> rows of plain numbers (one per threshold x class, then one per
    threshold over all classes)."""
    num_images = max(len(per_image), 1)
    totals = {k: sum(c[k] for c in per_image) for k in ("pseudo", "precise", "recalled", "gt")}
    best = torch.cat([c["best_scores"] for c in per_image]) if per_image else torch.zeros(0)
    best_classes = torch.cat([c["best_classes"] for c in per_image]) if per_image else torch.zeros(0)
    groups = [(name, k, best[best_classes == k]) for k, name in enumerate(class_names)]
    groups.append((ALL_CLASSES, slice(None), best))
    rows = []
    for t, tau in enumerate(thresholds):
        for name, k, scores in groups:
            pseudo, precise = float(totals["pseudo"][t, k].sum()), float(totals["precise"][t, k].sum())
            recalled, gt = float(totals["recalled"][t, k].sum()), float(totals["gt"][k].sum())
            rows.append({
                "threshold": tau, "class": name,
                "gt_per_image": gt / num_images,
                "pseudo_per_image": pseudo / num_images,
                "precision": precise / pseudo if pseudo else None,
                "recall": recalled / gt if gt else None,
                "best_score_median": float(scores.median()) if len(scores) else None,
                "best_score_q25": float(scores.quantile(0.25)) if len(scores) else None,
            })
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="checkpoint (.pth) to load")
    parser.add_argument("--dataset", required=True, help="a registered data set with annotations")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.4, 0.5])
    parser.add_argument("--which", default="teacher", choices=["teacher", "student"])
    parser.add_argument("--max-images", type=int, default=0, help="0: all")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    setup_logger(name="semidetr")

    cfg = setup_cfg(args, for_training=False)
    model = Trainer.build_model(cfg).eval()
    which, stage = load_weights_for_evaluation(cfg, model, args.weights, args.which)
    records = DatasetCatalog.get(args.dataset)
    if any("annotations" not in r for r in records):
        raise SystemExit(f"{args.dataset} has images without annotations: give a labeled data set "
                         "(e.g. the test split, or the full labeled set the unlabeled split was cut from)")
    records = records[:args.max_images] if args.max_images else records
    class_names = MetadataCatalog.get(args.dataset).thing_classes
    mapper = build_test_mapper(cfg)
    per_image = []
    for record in records:
        out = pseudo_label_candidates(cfg, model, mapper(dict(record)), min(args.thresholds))
        gt = annotations_to_instances(record["annotations"], (record["height"], record["width"]))
        per_image.append(count_hits(out.pred_boxes.tensor, out.scores, out.pred_classes, gt.gt_boxes.tensor,
                                    gt.gt_classes, args.thresholds, len(class_names)))
    rows = summarise(per_image, args.thresholds, class_names)
    print(f"{which} weights of {args.weights} (stage {stage}) on {args.dataset}, {len(records)} images")
    print("| tau | class | GT / image | pseudo / image | precision | recall | best score per GT: median, q25 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        print(f"| {r['threshold']} | {r['class']} | {r['gt_per_image']:.2f} | {r['pseudo_per_image']:.2f} | "
              f"{fmt(r['precision'])} | {fmt(r['recall'])} | {fmt(r['best_score_median'])}, {fmt(r['best_score_q25'])} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"weights": args.weights, "which": which, "dataset": args.dataset, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
