#!/usr/bin/env python
# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Speed and memory of SemiDETR-D2, side by side with the detector users would pick instead.

One command, one run; every section that can run on this machine runs by default:

    .venv/bin/python tools/benchmark.py                                  # CPU, ~15-25 min on 2 cores
    .venv/bin/python tools/benchmark.py --sections detector --sizes tiny
    .venv/bin/python tools/benchmark.py --device cuda                    # timed with synchronize

Sections
  detector  Our DeformableDETR against Hugging Face `transformers`' DeformableDetrForObjectDetection
            (random initialisation, nothing downloaded; install it with
            `SEMIDETR_EXTRAS=benchmark bash tools/setup_env.sh`), our DINO beside both, at the matched
            configurations of SIZES ("tiny" and "mid"; "micro" is a smoke-test size):
              training step = forward + loss + backward + AdamW step (same optimizer and settings for
                              every model, no gradient clipping), identical synthetic images and targets;
              inference     = eval forward + post-processing to the final top-100 detections per image
                              (ours: `model(inputs)`; theirs: `model(pixel_values, pixel_mask)` +
                              `post_process_object_detection`), both under torch.inference_mode.
  semi      The real `Trainer` (engine/trainer.py) on the embedded synthetic data with the CPU configs of
            configs/quick_schedules: a Semi-DETR iteration (stage 1: one-to-many + CQC + CPM; stage 2:
            one-to-one + CQC + CPM) and the SSOD baseline against a supervised DINO iteration with the
            same number of student images (SOLVER.IMS_PER_BATCH = labeled + unlabeled images of the
            Semi-DETR step). An iteration is what `Trainer.train` runs per step: hooks (EMA, LR
            scheduler, stage switch, metrics) and `run_step`. Then one profiled run of a few
            iterations gives the breakdown by the code's `record_function` scopes.

Method
  * Every model (and, for the detector section, every model x {training, inference}) runs in its own
    fresh worker process, so peak memory is per model and mode. Peak memory: on CPU the process's peak
    resident set (VmHWM of /proc/self/status), reported absolute and as the increase over the worker's
    resident set after its imports (before the model is built); data-loader worker processes are not
    included. On CUDA: torch.cuda.max_memory_allocated since the model was built.
  * Workers are driven in alternation (A B A B ...: one step of each model per round), so a change of
    background load hits every model alike; the first --warmup rounds are not counted; the median (and
    the minimum) over the remaining rounds is reported.
  * torch.set_num_threads(--threads) in every worker (default: the machine's cores).
  * Profiled breakdown: torch.profiler over --profile-iters iterations (after the timed ones); each
    scope's inclusive time is aggregated by name, and its exclusive time is the inclusive time minus
    that of the scopes directly nested in it (e.g. "semi/student_forward" minus "matching/hungarian"
    and "matching/one_to_many"), so the exclusive times add up without double counting; "other" is the
    iteration's wall time minus all scopes (hooks other than EMA, loss weighting, metrics). The
    profiler itself slows the iteration down; shares are of the profiled iterations' wall time.

Output: markdown tables on stdout and in --out (default output/benchmark/benchmark.md), every number
and the environment (torch, threads, CPU model, date, load average at start and end) in the JSON file
next to it; the workers' logs in the same folder.
"""
import argparse
import json
import os
import signal
import sys
import time
from collections import OrderedDict
from typing import Dict

# tools/ is on sys.path as the script's folder (and in the spawned workers, which inherit sys.path).
from benchmarking.detectors import SIZES, TRANSFORMERS_HINT, run_detector_section
from benchmarking.harness import GOALS, REPO, environment, load_average, transformers_version
from benchmarking.report import render_markdown
from benchmarking.semi import SEMI_RUNS, run_semi_section


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=["detector", "semi"], choices=["detector", "semi"])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "mid"], choices=list(SIZES),
                        help="detector sizes ('micro' is for smoke tests)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: the machine's cores)")
    parser.add_argument("--warmup", type=int, default=2, help="detector: warm-up rounds (not counted)")
    parser.add_argument("--repeat", type=int, default=5, help="detector: counted rounds")
    parser.add_argument("--no-transformers", action="store_true", help="time our detectors only")
    parser.add_argument("--semi-runs", nargs="+", default=list(SEMI_RUNS), choices=list(SEMI_RUNS))
    parser.add_argument("--semi-warmup", type=int, default=3, help="semi: warm-up iterations (not counted)")
    parser.add_argument("--semi-iters", type=int, default=10, help="semi: counted iterations")
    parser.add_argument("--profile-iters", type=int, default=3, help="semi: profiled iterations (0: none)")
    parser.add_argument("--profile-runs", nargs="+", default=["supervised", "semidetr_stage1", "semidetr_stage2"],
                        choices=list(SEMI_RUNS))
    parser.add_argument("--semi-weights", default="",
                        help="MODEL.WEIGHTS for every semi run (e.g. a trained supervised checkpoint, so the "
                             "teacher produces pseudo labels); default: random initialisation")
    parser.add_argument("--semi-opts", nargs="*", default=[],
                        help="KEY VALUE config overrides applied to every semi run")
    parser.add_argument("--out", default=os.path.join(REPO, "output", "benchmark", "benchmark.md"),
                        help="markdown output; the JSON goes next to it (same name, .json)")
    args = parser.parse_args(argv)
    if len(args.semi_opts) % 2:
        parser.error("--semi-opts takes KEY VALUE pairs")
    if args.threads <= 0:
        args.threads = os.cpu_count() or 1
    return args


def main(argv=None) -> Dict:
    args = parse_args(argv)
    # A terminated benchmark still stops its workers (the `finally` clauses run on SystemExit).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: CUDA is not available on this machine")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    log_dir = os.path.join(out_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    results = OrderedDict()
    results["environment"] = environment(args)
    results["environment"]["load_start"] = load_average()
    results["goals"] = GOALS
    if transformers_version() is None and "detector" in args.sections and not args.no_transformers:
        print(f"[benchmark] transformers is not installed: the comparison with Hugging Face's "
              f"DeformableDetrForObjectDetection is skipped. Install it with `{TRANSFORMERS_HINT}`.", flush=True)
    start = time.perf_counter()
    if "detector" in args.sections:
        run_detector_section(args, log_dir, results)
    if "semi" in args.sections:
        run_semi_section(args, log_dir, results)
    results["environment"]["load_end"] = load_average()
    results["environment"]["duration_s"] = round(time.perf_counter() - start, 1)
    markdown = render_markdown(results)
    with open(args.out, "w") as f:
        f.write(markdown)
    json_path = os.path.splitext(args.out)[0] + ".json"
    with open(json_path, "w") as f:
        json.dump(results, f, indent=2)
    print(markdown)
    print(f"[benchmark] wrote {args.out} and {json_path} ({results['environment']['duration_s']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
