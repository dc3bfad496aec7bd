# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""The semi-supervised section: the project's `Trainer` stepped as `Trainer.train` does, a Semi-DETR
iteration against a supervised one with the same student images, and the profiled breakdown of an
iteration by the code's `record_function` scopes (see tools/benchmark.py)."""
import os
import statistics
import tempfile
import time
from collections import OrderedDict, defaultdict
from typing import Dict, List

from .harness import GOALS, REPO, alternate_steps, parameter_info, start_workers, sync, timing_summary

# Scopes of the training step (record_function names in the code) and where they nest.
SCOPES = (
    "semi/data", "step/data", "semi/teacher_inference", "semi/cqc_candidates", "semi/pseudo_labels",
    "semi/student_forward", "step/forward", "matching/hungarian", "matching/one_to_many", "semi/cqc_loss",
    "semi/cpm_mining", "semi/cqc_teacher_decode", "step/backward", "step/clip_and_check", "step/optimizer",
    "semi/ema",
)
SCOPE_LABELS = OrderedDict([
    ("semi/data", "data (wait for the loader)"),
    ("step/data", "data (wait for the loader)"),
    ("semi/teacher_inference", "teacher inference (weak views)"),
    ("semi/pseudo_labels", "pseudo labels: filter, NMS, weak->strong mapping"),
    ("semi/cqc_candidates", "CQC candidates + teacher embeddings c_t"),
    ("semi/student_forward", "student forward (excl. matching)"),
    ("step/forward", "forward (excl. matching)"),
    ("matching/hungarian", "Hungarian matching"),
    ("matching/one_to_many", "one-to-many assignment"),
    ("semi/cqc_loss", "CQC loss (excl. mining, teacher decode)"),
    ("semi/cpm_mining", "CPM: matching costs + GMM"),
    ("semi/cqc_teacher_decode", "CQC teacher decode of c_s"),
    ("step/backward", "backward"),
    ("step/clip_and_check", "gradient clip + finite check"),
    ("step/optimizer", "optimizer step"),
    ("semi/ema", "EMA teacher update"),
])
# The "matching, assignment, pseudo-label processing and GMM".
MATCHING_SHARE_SCOPES = ("matching/hungarian", "matching/one_to_many", "semi/pseudo_labels", "semi/cpm_mining")
MONITORED_METRICS = ("pseudo/labels_per_image", "cpm/candidates_per_image", "cqc/selected_per_image",
                     "cqc/boxes_per_image")


def scope_breakdown(events, wall_seconds: float, iterations: int) -> Dict:
    """Inclusive and exclusive milliseconds per iteration of every scope in SCOPES, from profiler events.

    Exclusive = inclusive minus the scopes nested directly in it (nearest enclosing scope on the event's
    CPU call tree), so the exclusive times of all scopes add up to the time spent inside any scope."""
    names = set(SCOPES)
    inclusive, exclusive, calls = defaultdict(float), defaultdict(float), defaultdict(int)
    for event in events:
        if event.name not in names:
            continue
        duration = event.time_range.elapsed_us() / 1e3
        inclusive[event.name] += duration
        exclusive[event.name] += duration
        calls[event.name] += 1
        parent = event.cpu_parent
        while parent is not None and parent.name not in names:
            parent = parent.cpu_parent
        if parent is not None:
            exclusive[parent.name] -= duration
    wall_ms = wall_seconds * 1e3 / iterations
    rows = OrderedDict()
    for name in SCOPES:
        if name in inclusive:
            rows[name] = {"inclusive_ms": round(inclusive[name] / iterations, 2),
                          "exclusive_ms": round(exclusive[name] / iterations, 2),
                          "calls_per_iter": round(calls[name] / iterations, 2),
                          "share": round(exclusive[name] / iterations / wall_ms, 4)}
    scoped = sum(exclusive.values()) / iterations
    rows["other"] = {"inclusive_ms": round(wall_ms - scoped, 2), "exclusive_ms": round(wall_ms - scoped, 2),
                     "calls_per_iter": 1.0, "share": round((wall_ms - scoped) / wall_ms, 4)}
    matching = sum(rows[n]["exclusive_ms"] for n in MATCHING_SHARE_SCOPES if n in rows)
    return {"iterations": iterations, "wall_ms_per_iter": round(wall_ms, 2), "scopes": rows,
            "matching_share": round(matching / wall_ms, 4), "matching_ms": round(matching, 2)}


class TrainerRunner:
    """The project's `Trainer` built from a config, stepped one iteration at a time as `Trainer.train`
    does (before_step hooks, run_step, after_step hooks)."""

    def __init__(self, *, device: str, config_file: str, opts: List[str], output_dir: str, seed: int = 1):
        import logging

        import torch
        from detectron2.config import get_cfg
        from detectron2.utils.env import seed_all_rng
        from detectron2.utils.events import EventStorage

        from semidetr import add_semidetr_config
        from semidetr.data.datasets.catalog import register_datasets_from_config
        from semidetr.engine.config_checks import check_config
        from semidetr.engine.trainer import build_trainer

        logging.basicConfig(level=logging.WARNING)
        for name in ("detectron2", "semidetr", "fvcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # Trainer sets up detectron2's (INFO, stdout) logger unless one is enabled for INFO: keep the
        # per-iteration log out of the timing (the worker's stdout is its log file anyway).
        logging.getLogger("detectron2").setLevel(logging.INFO)
        cfg = get_cfg()
        add_semidetr_config(cfg)
        cfg.merge_from_file(os.path.join(REPO, config_file))
        cfg.merge_from_list(list(opts))
        cfg.MODEL.DEVICE = device
        cfg.OUTPUT_DIR = output_dir
        cfg.SEED = seed
        cfg.TEST.EVAL_PERIOD = 0
        cfg.SOLVER.CHECKPOINT_PERIOD = 10 ** 9
        cfg.SOLVER.MAX_ITER = max(cfg.SOLVER.MAX_ITER, 10 ** 6)  # no end-of-training hook fires
        check_config(cfg, world_size=1)
        register_datasets_from_config(cfg)
        cfg.freeze()
        seed_all_rng(seed)
        torch.manual_seed(seed)
        self.cfg = cfg
        self.trainer = build_trainer(cfg)
        self.trainer.resume_or_load(resume=False)
        self.storage = EventStorage(0)
        self.storage.__enter__()
        self.trainer.storage = self.storage
        self.trainer.iter = 0
        self.trainer.before_train()
        self.iteration = 0
        self.device = device

    def info(self) -> Dict:
        from semidetr.data.build import semi_batch_sizes

        info = parameter_info(self.trainer.models()["teacher" if self.cfg.SEMI.ENABLED else "model"])
        if self.cfg.SEMI.ENABLED:
            labeled, unlabeled = semi_batch_sizes(self.cfg, 1)
            info.update(labeled_images=labeled, unlabeled_images=unlabeled, student_images=labeled + unlabeled,
                        teacher_images=unlabeled)
        else:
            info.update(labeled_images=self.cfg.SOLVER.IMS_PER_BATCH, unlabeled_images=0,
                        student_images=self.cfg.SOLVER.IMS_PER_BATCH, teacher_images=0)
        info["stage"] = self.trainer.stage
        return info

    def step(self):
        trainer = self.trainer
        trainer.iter = self.iteration
        trainer.before_step()
        trainer.run_step()
        trainer.after_step()
        self.iteration += 1

    def metrics(self) -> Dict:
        latest = self.storage.latest()
        histories = self.storage.histories()
        values = {}
        for key in MONITORED_METRICS:  # averaged over every iteration run so far
            history = histories.get(key)
            if history is not None and history.values():
                values[key] = round(statistics.mean(v for v, _ in history.values()), 3)
        values["stage"] = self.trainer.stage
        values["iterations_run"] = self.iteration
        values["skipped_nonfinite_steps"] = latest.get("skipped_nonfinite_steps", (0, 0))[0]
        return values

    def profile(self, iterations: int) -> Dict:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
        wall = 0.0
        with profile(activities=activities) as prof:
            for _ in range(iterations):
                sync(self.device)
                start = time.perf_counter()
                self.step()
                sync(self.device)
                wall += time.perf_counter() - start
        return scope_breakdown(prof.events(), wall, iterations)


# ----------------------------------------------------------------------------------------------------
# Section
SEMI_RUNS = OrderedDict([
    # label: (config, extra opts, description)
    ("supervised", ("configs/quick_schedules/dino_shapes_cpu.yaml", [],
                    "supervised DINO, one-to-one (IMS_PER_BATCH = student images of Semi-DETR)")),
    ("ssod_baseline", ("configs/quick_schedules/ssod_baseline_shapes10_cpu.yaml", [],
                       "SSOD baseline: teacher-student, score threshold, one-to-one")),
    ("semidetr_stage1", ("configs/quick_schedules/semidetr_shapes10_cpu.yaml", [],
                         "Semi-DETR stage 1: one-to-many (SHM) + CQC + CPM")),
    ("semidetr_stage2", ("configs/quick_schedules/semidetr_shapes10_cpu.yaml", ["SEMIDETR.SHM.O2M_ITERS", "0"],
                         "Semi-DETR stage 2: one-to-one + CQC + CPM")),
])


def _semi_student_images(opts: List[str]) -> int:
    from detectron2.config import get_cfg

    from semidetr import add_semidetr_config
    from semidetr.data.build import semi_batch_sizes

    cfg = get_cfg()
    add_semidetr_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, SEMI_RUNS["semidetr_stage1"][0]))
    cfg.merge_from_list(list(opts))
    return sum(semi_batch_sizes(cfg, 1))


def run_semi_section(args, log_dir: str, results: Dict) -> None:
    student_images = _semi_student_images(args.semi_opts)
    runs = [r for r in SEMI_RUNS if r in args.semi_runs]
    specs = []
    output_root = tempfile.mkdtemp(prefix="semidetr_benchmark_")
    for label in runs:
        config_file, extra, _ = SEMI_RUNS[label]
        opts = list(extra) + list(args.semi_opts)
        if label == "supervised":
            opts += ["SOLVER.IMS_PER_BATCH", str(student_images)]
        if args.semi_weights:
            opts += ["MODEL.WEIGHTS", args.semi_weights]
        specs.append((f"semi-{label}", TrainerRunner, {"config_file": config_file, "opts": opts,
                                                        "output_dir": os.path.join(output_root, label)}))
    print(f"[benchmark] semi: starting {len(specs)} trainers ({', '.join(runs)})", flush=True)
    semi = results.setdefault("semi", OrderedDict())
    semi["student_images"] = student_images
    semi["opts"] = list(args.semi_opts)
    semi["weights"] = args.semi_weights or "random initialisation"
    workers = start_workers(specs, args, log_dir)
    try:
        times = alternate_steps(workers, args.semi_warmup, args.semi_iters, "semi")
        entries = semi.setdefault("runs", OrderedDict())
        for label, worker in zip(runs, workers):
            entry = OrderedDict(description=SEMI_RUNS[label][2], config=SEMI_RUNS[label][0], info=worker.info)
            entry.update(timing_summary(times[worker.label], worker.info["student_images"]))
            entry["memory"] = worker.call("memory")
            entry["metrics"] = worker.call("metrics")
            entries[label] = entry
        breakdowns = semi.setdefault("breakdown", OrderedDict())
        for label, worker in zip(runs, workers):
            if label in args.profile_runs and args.profile_iters > 0:
                print(f"[benchmark] semi: profiling {args.profile_iters} iteration(s) of {label}", flush=True)
                breakdowns[label] = worker.call("profile", args.profile_iters)
    finally:
        for worker in workers:
            worker.close()
    if "supervised" in entries:
        base = entries["supervised"]
        for label, entry in entries.items():
            entry["time_ratio_vs_supervised"] = round(entry["median_s"] / base["median_s"], 3)
            entry["memory_ratio_vs_supervised"] = _memory_ratio(entry["memory"], base["memory"])
    goals = OrderedDict()
    for label in ("semidetr_stage1", "semidetr_stage2"):
        if label in entries and "time_ratio_vs_supervised" in entries[label]:
            goals[label] = {"time_ratio": entries[label]["time_ratio_vs_supervised"],
                            "time_ratio_met": entries[label]["time_ratio_vs_supervised"] <= GOALS["semi_ratio_max"],
                            "memory_ratio": entries[label]["memory_ratio_vs_supervised"],
                            "memory_ratio_met": entries[label]["memory_ratio_vs_supervised"] <= GOALS["semi_memory_ratio_max"]}
        if label in breakdowns:
            goals.setdefault(label, {})["matching_share"] = breakdowns[label]["matching_share"]
            goals[label]["matching_share_met"] = breakdowns[label]["matching_share"] <= GOALS["matching_share_max"]
    semi["goals"] = goals


def _memory_ratio(memory: Dict, base: Dict) -> float:
    key = "cuda_max_allocated_mib" if "cuda_max_allocated_mib" in memory else "peak_rss_mib"
    return round(memory[key] / base[key], 3)
