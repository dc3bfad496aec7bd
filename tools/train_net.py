#!/usr/bin/env python
"""Train or evaluate DINO / Deformable DETR, supervised or semi-supervised (Semi-DETR).

    python tools/train_net.py --config-file configs/quick_schedules/dino_shapes_cpu.yaml
    python tools/train_net.py --config-file configs/DINO/dino_r50_4scale_coco.yaml --num-gpus 8
    python tools/train_net.py --config-file <cfg> --eval-only MODEL.WEIGHTS output/model_final.pth

On a machine without GPUs, --num-gpus N starts N CPU processes (gloo).
"""
import logging

from detectron2.engine import default_argument_parser, launch

from semidetr.engine.checkpoint import last_checkpoint
from semidetr.engine.defaults import setup_cfg, shutdown_distributed
from semidetr.engine.trainer import Trainer, build_trainer, load_weights_for_evaluation

# A script's __name__ is "__main__": the tools log under "semidetr.<tool>", whose handler setup_cfg installs.
logger = logging.getLogger("semidetr.train_net")


def main(args):
    result = train_or_evaluate(args)
    shutdown_distributed()  # in a launch()ed worker: barrier, tear-down and exit here
    return result


def train_or_evaluate(args):
    cfg = setup_cfg(args)
    if args.eval_only:
        # Scores the teacher of a semi-supervised checkpoint by default (SEMI.EVAL_ONLY_MODEL) and says so.
        model = Trainer.build_model(cfg)
        path = last_checkpoint(cfg.OUTPUT_DIR) if args.resume else cfg.MODEL.WEIGHTS
        if not path:
            raise ValueError("--eval-only needs weights: set MODEL.WEIGHTS (or --resume with a checkpoint in OUTPUT_DIR)")
        which, stage = load_weights_for_evaluation(cfg, model, path, cfg.SEMI.EVAL_ONLY_MODEL)
        logger.info(
            "--eval-only: scoring the %s weights of %s (saved in training stage %s: %s)", which, path, stage,
            f"class-aware NMS at IoU {model.test_nms_thresh}" if model.test_nms_thresh > 0 else "NMS-free")
        return Trainer.test(cfg, model, prefix=which)
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
