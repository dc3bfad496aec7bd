#!/usr/bin/env python
# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""GPU benchmark at paper scale (run by tools/gpu_check.sh): the attention op and the training steps.

Sections
  op     multi-scale deformable attention alone (tools/bench_ms_deform_attn.py): the PyTorch path
         (grid_sample) against the fused Triton kernel, forward and forward + backward, at the encoder and
         decoder sizes of the paper-scale step (5 images of 800 x 1333, strides 8-64, 8 heads x 32
         channels, 4 levels x 4 points, 900 + 100 decoder queries), float32 and bfloat16 values; time
         and the peak memory forward + backward allocates.
  steps  the project's Trainer (tools/benchmarking/semi.py's TrainerRunner: hooks + run_step, as Trainer.train)
         at paper scale - DINO-4scale R-50 (FrozenBN), 256 wide, 6 + 6 layers, 900 queries, 100
         denoising queries, images resized to shortest side 800 (longest <= 1333: about 800 x 1070 on
         average for the generated images' aspect ratios, like COCO's), 5 images per GPU as in the paper:
         a supervised step (5 labeled images) and a Semi-DETR stage-1 step (SHM one-to-many + CQC + CPM;
         1 labeled + 4 unlabeled, whose weak views the teacher labels) for every precision (float32,
         bfloat16 autocast) and attention implementation (pytorch, triton): seconds per iteration, images/s
         and peak CUDA memory (torch.cuda.max_memory_allocated). Each (precision, implementation) pair runs
         its two trainers in fresh processes driven in alternation (warm-up rounds not counted).
         Random initialisation (or --weights): an untrained teacher gives few pseudo labels, so the
         pseudo-label-dependent parts of the Semi-DETR step are cheaper than in a trained run.

Data: a generated "shapes" set (tens of images, in --work-dir), registered through DATASETS.REGISTER so
the worker processes see it.

    python tools/gpu_benchmark.py --out output/gpu_check/benchmark.md
    python tools/gpu_benchmark.py --dry-run --out /tmp/x.md   # CPU, micro model: the plumbing and the report

Goals (issue 16): fused attention >= 3x faster than the PyTorch path in forward + backward at paper scale
and at most half its memory; a bfloat16 step >= 1.5x the float32 one; the Semi-DETR iteration against
the official code's ~0.63 s/iteration on an A100 (a user's report).
"""
import argparse
import json
import os
import sys
import tempfile
import time
from collections import OrderedDict
from types import SimpleNamespace
from typing import Dict, List

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TOOLS)
sys.path.insert(0, TOOLS)

import bench_ms_deform_attn  # noqa: E402
from benchmarking import harness  # noqa: E402  (tools/benchmarking/: workers, environment)
from benchmarking.semi import TrainerRunner  # noqa: E402

GOALS = {"op_speedup_min": 3.0, "op_memory_ratio_max": 0.5, "bf16_step_speedup_min": 1.5,
         "official_semidetr_s_per_iter_a100": 0.63}
SUP_CONFIG = "configs/quick_schedules/dino_shapes_cpu.yaml"
SEMI_CONFIG = "configs/quick_schedules/semidetr_shapes10_cpu.yaml"
# Paper scale over the CPU quick configs (configs/Base-DINO-R50.yaml's model; the paper's 5 images per GPU).
PAPER_OPTS = [
    "MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.RES2_OUT_CHANNELS", "256", "MODEL.RESNETS.NORM", "FrozenBN",
    "MODEL.RESNETS.STRIDE_IN_1X1", "False", "MODEL.BACKBONE.FREEZE_AT", "2",
    "MODEL.DETR.HIDDEN_DIM", "256", "MODEL.DETR.NHEADS", "8", "MODEL.DETR.DIM_FEEDFORWARD", "2048",
    "MODEL.DETR.ENC_LAYERS", "6", "MODEL.DETR.DEC_LAYERS", "6", "MODEL.DETR.NUM_QUERIES", "900",
    "MODEL.DETR.NUM_SELECT", "300", "MODEL.DETR.DN_NUMBER", "100",
    "INPUT.MIN_SIZE_TRAIN", "(800,)", "INPUT.MIN_SIZE_TRAIN_SAMPLING", "choice", "INPUT.MAX_SIZE_TRAIN", "1333",
    "SOLVER.IMS_PER_BATCH", "5", "DATALOADER.NUM_WORKERS", "4",
]
# The CPU test model (tests/conftest.py's micro overrides) for --dry-run.
MICRO_OPTS = [
    "MODEL.DETR.HIDDEN_DIM", "64", "MODEL.DETR.NHEADS", "4", "MODEL.DETR.DIM_FEEDFORWARD", "128",
    "MODEL.DETR.ENC_LAYERS", "1", "MODEL.DETR.DEC_LAYERS", "2", "MODEL.DETR.NUM_QUERIES", "30",
    "MODEL.DETR.NUM_SELECT", "30", "MODEL.DETR.DN_NUMBER", "10", "INPUT.MIN_SIZE_TRAIN", "(96,)",
    "INPUT.MIN_SIZE_TRAIN_SAMPLING", "choice", "INPUT.MAX_SIZE_TRAIN", "160", "SOLVER.IMS_PER_BATCH", "3",
    "SEMI.SAMPLE_RATIO", "(1, 2)", "DATALOADER.NUM_WORKERS", "0",
]
RUN_DESCRIPTIONS = {"supervised": "supervised DINO step", "semidetr": "Semi-DETR stage-1 step (SHM + CQC + CPM)"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(REPO, "output", "gpu_check", "benchmark.md"),
                        help="markdown output; the JSON goes next to it (same name, .json), worker logs in logs/")
    parser.add_argument("--sections", nargs="+", default=["op", "steps"], choices=["op", "steps"])
    parser.add_argument("--runs", nargs="+", default=["supervised", "semidetr"], choices=list(RUN_DESCRIPTIONS))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--impls", nargs="+", default=["pytorch", "triton"], choices=["pytorch", "triton"])
    parser.add_argument("--warmup", type=int, default=2, help="steps: warm-up rounds (not counted)")
    parser.add_argument("--iters", type=int, default=5, help="steps: counted rounds")
    parser.add_argument("--op-repeat", type=int, default=10)
    parser.add_argument("--weights", default="", help="MODEL.WEIGHTS of every trainer (default: random init)")
    parser.add_argument("--work-dir", default="", help="where the generated images go (default: a temporary dir)")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, the micro test model, 1 iteration, the PyTorch path only: tests the plumbing")
    args = parser.parse_args(argv)
    args.device = "cpu" if args.dry_run else "cuda"
    if args.dry_run:
        args.impls, args.dtypes, args.warmup, args.iters, args.op_repeat = ["pytorch"], ["float32"], 0, 1, 1
    args.threads = 2 if args.dry_run else (os.cpu_count() or 1)
    return args


def prepare_data(work_dir: str, dry_run: bool) -> List[str]:
    """DATASETS.REGISTER specs of a small generated labeled set (its splits give the unlabeled images)."""
    from semidetr.data.datasets.synthetic import ShapesConfig, prepare_shapes_split

    size = (64, 96) if dry_run else (288, 480)  # resized to the training size anyway
    config = ShapesConfig(classes=("circle", "square", "triangle"), image_size=size, objects_per_image=(2, 8),
                          object_size=(12.0, 0.5), distractors=(0, 3))
    json_file, image_root = prepare_shapes_split("train", 12 if dry_run else 40, 1, config, root=work_dir)
    return [f"gpubench_train=coco:{json_file}:{image_root}"]


def run_op_section(args, results: Dict) -> None:
    rows = []
    height, width, batch = (64, 96, 2) if args.dry_run else (800, 1333, 5)
    for dtype in args.dtypes:
        argv = ["--device", args.device, "--impls", *args.impls, "--dtype", dtype, "--batch", str(batch),
                "--image-size", str(height), str(width), "--decoder-queries", "40" if args.dry_run else "1000",
                "--repeat", str(args.op_repeat), "--warmup", "1" if args.dry_run else "3"]
        print(f"[gpu_benchmark] op: bench_ms_deform_attn.py {' '.join(argv)}", flush=True)
        rows += [{**row, "value_dtype": dtype} for row in bench_ms_deform_attn.main(argv)["rows"]]
    results["op"] = {"batch": batch, "image_size": [height, width], "rows": rows}


def _step_opts(run: str, dtype: str, impl: str, specs: List[str], args) -> List[str]:
    opts = ["DATASETS.REGISTER", str(specs), "DATASETS.TEST", "()", *(MICRO_OPTS if args.dry_run else PAPER_OPTS),
            "MODEL.DETR.MS_DEFORM_ATTN_IMPL", impl, "SOLVER.AMP.ENABLED", str(dtype != "float32"),
            "SOLVER.AMP.DTYPE", "bfloat16" if dtype == "float32" else dtype]
    if run == "supervised":
        opts += ["DATASETS.TRAIN", "('gpubench_train',)"]
    else:
        opts += ["DATASETS.TRAIN", "('gpubench_train.1@20',)",
                 "DATASETS.TRAIN_UNLABELED", "('gpubench_train.1@20-unlabeled',)", "SEMI.VIS_PERIOD", "0"]
    if args.weights:
        opts += ["MODEL.WEIGHTS", args.weights]
    return opts


def run_steps_section(args, results: Dict, specs: List[str], log_dir: str, work_dir: str) -> None:
    entries = results.setdefault("steps", OrderedDict())
    worker_args = SimpleNamespace(threads=args.threads, device=args.device)
    for dtype in args.dtypes:
        for impl in args.impls:
            labels, worker_specs = [], []
            for run in args.runs:
                label = f"{run}-{dtype}-{impl}"
                config = SUP_CONFIG if run == "supervised" else SEMI_CONFIG
                worker_specs.append((label, TrainerRunner, {"config_file": config,
                                                             "opts": _step_opts(run, dtype, impl, specs, args),
                                                             "output_dir": os.path.join(work_dir, label)}))
                labels.append((label, run))
            print(f"[gpu_benchmark] steps: {', '.join(l for l, _ in labels)}", flush=True)
            workers = harness.start_workers(worker_specs, worker_args, log_dir)
            try:
                times = harness.alternate_steps(workers, args.warmup, args.iters, f"{dtype} {impl}")
                for (label, run), worker in zip(labels, workers):
                    entry = OrderedDict(run=run, dtype=dtype, impl=impl, info=worker.info)
                    entry.update(harness.timing_summary(times[label], worker.info["student_images"]))
                    entry["memory"] = worker.call("memory")
                    entry["metrics"] = worker.call("metrics")
                    entries[label] = entry
            finally:
                for worker in workers:
                    worker.close()


def evaluate_goals(results: Dict) -> Dict:
    goals = OrderedDict()
    rows = results.get("op", {}).get("rows", [])
    by_key = {(r["stage"], r["impl"], r.get("value_dtype", "")): r for r in rows}
    for row in rows:
        if row["impl"] != "triton":
            continue
        base = by_key.get((row["stage"], "pytorch", row.get("value_dtype", "")))
        if base is None:
            continue
        speedup = base["forward_backward_ms"] / row["forward_backward_ms"]
        memory = (row["peak_mib"] / base["peak_mib"]) if row.get("peak_mib") and base.get("peak_mib") else None
        goals[f"op {row['stage']} {row.get('value_dtype', '')}"] = {
            "speedup": round(speedup, 2), "speedup_met": speedup >= GOALS["op_speedup_min"],
            "memory_ratio": None if memory is None else round(memory, 3),
            "memory_met": None if memory is None else memory <= GOALS["op_memory_ratio_max"]}
    steps = results.get("steps", {})
    for label, entry in steps.items():
        if entry["dtype"] != "bfloat16":
            continue
        base = steps.get(label.replace("bfloat16", "float32"))
        if base is not None:
            speedup = base["median_s"] / entry["median_s"]
            goals[f"bf16 step {entry['run']} {entry['impl']}"] = {
                "speedup": round(speedup, 2), "speedup_met": speedup >= GOALS["bf16_step_speedup_min"]}
    return goals


def _fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def render_markdown(results: Dict) -> str:
    env = results["environment"]
    lines = [f"## GPU benchmark ({env['device_name']}, {env['date_utc']})", "",
             f"torch {env['torch']} (CUDA {env['torch_cuda']}), Python {env['python']}, commit "
             f"{env['git_commit']}, {env['cpu_count']} CPUs; command: `{env['command']}`"
             + (" (DRY RUN: CPU, micro model - not a measurement)" if results["dry_run"] else ""), ""]
    if "op" in results:
        op = results["op"]
        lines += [f"### Multi-scale deformable attention alone (batch {op['batch']}, images "
                  f"{op['image_size'][0]}x{op['image_size'][1]})", "",
                  "| stage | Lq | values | impl | forward ms | forward+backward ms | fwd+bwd peak MiB |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for row in op["rows"]:
            if row["what"] != "op":
                continue
            lines.append(f"| {row['stage']} | {row['queries']} | {row['value_dtype']} | {row['impl']} | "
                         f"{_fmt(row['forward_ms'])} | {_fmt(row['forward_backward_ms'])} | {_fmt(row['peak_mib'], 0)} |")
        lines.append("")
    if "steps" in results:
        lines += ["### Training steps (5 images per GPU at paper scale; random initialisation unless weights given)", "",
                  "| step | precision | attention | s/iter (median) | min | images/s | peak MiB (CUDA allocated; "
                  "CPU: RSS) | pseudo labels/img |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for entry in results["steps"].values():
            memory = entry["memory"].get("cuda_max_allocated_mib", entry["memory"].get("peak_rss_mib"))
            pseudo = entry["metrics"].get("pseudo/labels_per_image")
            lines.append(f"| {RUN_DESCRIPTIONS[entry['run']]} | {entry['dtype']} | {entry['impl']} | "
                         f"{entry['median_s']:.3f} | {entry['min_s']:.3f} | {entry['images_per_s']:.2f} | "
                         f"{_fmt(memory, 0)} | {_fmt(pseudo)} |")
        lines.append("")
    lines += ["### Goals (issue 16)", "", "| check | value | goal | met |", "| --- | --- | --- | --- |"]
    for name, goal in results["goals"].items():
        if "memory_ratio" in goal:
            lines.append(f"| {name}: fused vs PyTorch forward+backward | {goal['speedup']}x | >= "
                         f"{GOALS['op_speedup_min']}x | {goal['speedup_met']} |")
            lines.append(f"| {name}: fused / PyTorch peak memory | {_fmt(goal['memory_ratio'], 3)} | <= "
                         f"{GOALS['op_memory_ratio_max']} | {goal['memory_met']} |")
        else:
            lines.append(f"| {name}: bfloat16 vs float32 | {goal['speedup']}x | >= {GOALS['bf16_step_speedup_min']}x "
                         f"| {goal['speedup_met']} |")
    semi = [e for e in results.get("steps", {}).values() if e["run"] == "semidetr"]
    for entry in semi:
        lines.append(f"| Semi-DETR s/iter, {entry['dtype']} {entry['impl']} | {entry['median_s']:.3f} | official "
                     f"code ~{GOALS['official_semidetr_s_per_iter_a100']} on A100 | (reference) |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> Dict:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("tools/gpu_benchmark.py needs a CUDA GPU (or --dry-run)")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    log_dir = os.path.join(out_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="semidetr_gpu_benchmark_")
    results = OrderedDict(dry_run=args.dry_run)
    results["environment"] = harness.environment(args)
    start = time.perf_counter()
    if "op" in args.sections:
        run_op_section(args, results)
    if "steps" in args.sections:
        specs = prepare_data(os.path.join(work_dir, "data"), args.dry_run)
        run_steps_section(args, results, specs, log_dir, work_dir)
    results["goals"] = evaluate_goals(results)
    results["environment"]["duration_s"] = round(time.perf_counter() - start, 1)
    markdown = render_markdown(results)
    with open(args.out, "w") as f:
        f.write(markdown)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(results, f, indent=1)
    print(markdown)
    print(f"[gpu_benchmark] wrote {args.out} ({results['environment']['duration_s']:.0f} s)", flush=True)
    return results


if __name__ == "__main__":
    main()
