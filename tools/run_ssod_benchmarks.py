#!/usr/bin/env python
"""The paper's Table 4 on CPU-sized settings, from one script and one iteration budget.

For each setting (embedded data with 10% labels, BCCD with 10% and 50%) and each seed:
  1. burn-in: supervised training on the labeled split for --burn-in iterations (shared by all rows);
  2. from that checkpoint, --iters more iterations of each row:
       sup-only | SSOD baseline | + SHM | + SHM + CQC (mean+std candidates) | + SHM + CQC + CPM (Semi-DETR)
     (T1 = half of --iters for the SHM rows). The rows differ only in their component: every
     semi-supervised row, the SSOD baseline included, makes pseudo labels by the same rule (the config
     defaults: the official class-aware NMS at IoU 0.6 on boxes clipped to the weak view, SEMI.*), and the
     CQC rows use the configs' CQC (SEMIDETR.CQC.VARIANT, official by default);
  3. the ceiling: supervised training with 100% of the labels for --burn-in + --iters iterations (one per
     full labeled set and seed, shared by the settings that use it).
--jobs runs train at a time, earlier seeds and settings first (a later seed's burn-in fills a slot while
an earlier seed's rows wait for theirs). A finished run (model_final.pth + metrics.json) is not run again;
an interrupted one, or one extended to a larger budget, resumes from its last checkpoint; a run directory
is locked while it trains, so a second instance of the script waits for it instead of training it twice.
Every row evaluates its final model (the teacher for semi-supervised rows) with COCO-style AP.
Results: <out>/results.json and a markdown table on stdout (and <out>/results.md), with the share of the
sup-only -> 100%-labels gap that each row closes.

    python tools/run_ssod_benchmarks.py --settings shapes10 --seeds 1 2 --burn-in 1000 --iters 1000 --jobs 2
"""
import argparse
import fcntl
import heapq
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from statistics import mean

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.path.join(REPO, "configs/quick_schedules")

SETTINGS = {
    # name: (supervised config, SSOD config, Semi-DETR config, labeled split, full labeled set)
    "shapes10": ("dino_shapes_cpu.yaml", "ssod_baseline_shapes10_cpu.yaml", "semidetr_shapes10_cpu.yaml",
                 "shapes_train.1@10", "shapes_train"),
    "bccd10": ("dino_bccd_cpu.yaml", "ssod_baseline_bccd10_cpu.yaml", "semidetr_bccd10_cpu.yaml",
               "bccd_trainval.1@10", "bccd_trainval"),
    "bccd50": ("dino_bccd_cpu.yaml", "ssod_baseline_bccd50_cpu.yaml", "semidetr_bccd50_cpu.yaml",
               "bccd_trainval.1@50", "bccd_trainval"),
}
ROWS = ("sup_only", "ssod_baseline", "shm", "shm_cqc", "semidetr")
# Not Table 4: the SSOD baseline without loss on unlabeled images that have no pseudo label.
EXTRA_ROWS = ("ssod_ignore_empty",)
ROW_TITLES = {"sup_only": "Supervised only", "ssod_baseline": "SSOD baseline", "shm": "+ SHM",
              "shm_cqc": "+ SHM + CQC", "semidetr": "+ SHM + CQC + CPM (Semi-DETR)", "ceiling": "100% labels",
              "ssod_ignore_empty": "SSOD baseline, SEMI.IMAGES_WITHOUT_PSEUDO_LABELS ignore"}


class JobQueue:
    """Training runs `slots` at a time; a free slot takes the ready job with the smallest priority."""

    def __init__(self, slots: int):
        self._jobs = []
        self._order = itertools.count()
        self._ready = threading.Condition()
        for _ in range(slots):
            threading.Thread(target=self._worker, daemon=True).start()

    def submit(self, priority, fn, *args) -> Future:
        future = Future()
        with self._ready:
            heapq.heappush(self._jobs, (priority, next(self._order), future, fn, args))
            self._ready.notify()
        return future

    def _worker(self):
        while True:
            with self._ready:
                while not self._jobs:
                    self._ready.wait()
                _, _, future, fn, args = heapq.heappop(self._jobs)
            try:
                future.set_result(fn(*args))
            except BaseException as error:  # reported by future.result() in the waiting thread
                future.set_exception(error)


def run_training(config, out_dir, overrides, threads):
    """One tools/train_net.py run; returns the final evaluation (AP, AP50) of its model or teacher."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another instance training this run: wait for it, then reuse it
        return _run_training_locked(config, out_dir, overrides, threads)


def _run_training_locked(config, out_dir, overrides, threads):
    metrics_file = os.path.join(out_dir, "metrics.json")
    if os.path.exists(os.path.join(out_dir, "model_final.pth")) and os.path.exists(metrics_file):
        return final_ap(metrics_file)  # already done (the script can be re-run after an interruption)
    # An interrupted run (or one extended to a longer budget: the LR is constant, SOLVER.STEPS "()")
    # continues from its last checkpoint; --resume restores the data stream and RNG exactly.
    resume = ["--resume"] if os.path.exists(os.path.join(out_dir, "last_checkpoint")) else []
    command = [sys.executable, os.path.join(REPO, "tools/train_net.py"), "--config-file", os.path.join(QUICK, config),
               *resume, "OUTPUT_DIR", out_dir, "SEMI.EVAL_MODELS", "['teacher']", "SEMI.VIS_PERIOD", "0", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.time()
    with open(os.path.join(out_dir, "stdout.txt"), "a") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed, see {out_dir}/stdout.txt")
    print(f"  done {os.path.relpath(out_dir, REPO)} in {(time.time() - start) / 60:.1f} min", flush=True)
    return final_ap(metrics_file)


def final_ap(metrics_file):
    evaluations = [json.loads(line) for line in open(metrics_file)]
    last = [m for m in evaluations if any(k.endswith("bbox/AP") for k in m)][-1]
    prefix = "teacher/bbox/" if "teacher/bbox/AP" in last else "bbox/"
    return {"AP": last[prefix + "AP"], "AP50": last[prefix + "AP50"], "iteration": last["iteration"]}


def row_overrides(row, args):
    if row == "sup_only":
        return []
    half = str(args.iters // 2)
    # Components only: the SEMI settings (pseudo-label rule included) are the configs' own, the same in every row.
    ssod = ["SEMIDETR.SHM.ENABLED", "False", "SEMIDETR.CQC.ENABLED", "False"]
    # The teacher starts from the burn-in: no EMA warm-up, which would make it a copy of the student
    # during the first ~1 / (1 - m) iterations.
    return ["SEMI.EMA_WARMUP", "False", *{
        "ssod_baseline": ssod,
        "ssod_ignore_empty": [*ssod, "SEMI.IMAGES_WITHOUT_PSEUDO_LABELS", "ignore"],
        "shm": ["SEMIDETR.SHM.O2M_ITERS", half, "SEMIDETR.CQC.ENABLED", "False"],
        "shm_cqc": ["SEMIDETR.SHM.O2M_ITERS", half, "SEMIDETR.CPM.METHOD", "mean_std"],
        "semidetr": ["SEMIDETR.SHM.O2M_ITERS", half],
    }[row]]


def run_setting(setting, seed, args, queue, priority):
    """Submit one setting x seed to the queue (burn-in, ceiling, then the rows once the burn-in is done)."""
    sup_config, ssod_config, semidetr_config, labeled, full = SETTINGS[setting]
    root = os.path.join(args.out, setting, f"seed{seed}")
    common = ["SEED", str(seed), "TEST.EVAL_PERIOD", "0", "SOLVER.STEPS", "()", "DATALOADER.NUM_WORKERS", "1"]
    threads = max(1, args.threads // args.jobs)

    def budget(iterations):  # checkpoints every 500 iterations: an interrupted run loses little
        return ["SOLVER.MAX_ITER", str(iterations), "SOLVER.CHECKPOINT_PERIOD", str(min(iterations, 500))]

    burn_in = os.path.join(root, "burn_in")
    weights = ["MODEL.WEIGHTS", os.path.join(burn_in, "model_final.pth"), *budget(args.iters)]

    def burn_in_then_queue_rows():
        # The rows are queued by the worker that ran the burn-in, before it takes its next job: they take
        # precedence over later seeds' jobs.
        run_training(sup_config, burn_in, [*common, "DATASETS.TRAIN", f"('{labeled}',)", *budget(args.burn_in)],
                     threads)
        rows = {}
        for step, row in enumerate(args.rows, start=2):
            config = sup_config if row == "sup_only" else (ssod_config if row.startswith("ssod") else semidetr_config)
            extra = ["DATASETS.TRAIN", f"('{labeled}',)"] if row == "sup_only" else []
            rows[row] = queue.submit((*priority, step), run_training, config, os.path.join(root, row),
                                     [*common, *weights, *extra, *row_overrides(row, args)], threads)
        return rows

    row_jobs = queue.submit((*priority, 0), burn_in_then_queue_rows)
    # The ceiling depends on the full labeled set and the seed only: bccd10 and bccd50 share theirs.
    ceiling = os.path.join(args.out, f"ceiling_{full}", f"seed{seed}")
    jobs = {"ceiling": queue.submit((*priority, 1), run_training, sup_config, ceiling,
                                    [*common, "DATASETS.TRAIN", f"('{full}',)", *budget(args.burn_in + args.iters)],
                                    threads)}
    jobs.update(row_jobs.result())  # raises if the burn-in failed
    return {row: job.result() for row, job in jobs.items()}


def table(results, args):
    rows = [row for row in ROWS + EXTRA_ROWS if row in args.rows]
    lines = [f"Budget: {args.burn_in} supervised burn-in iterations + {args.iters} iterations per row "
             f"(ceiling: {args.burn_in + args.iters} supervised iterations with all labels). AP / AP50 of the final "
             "model (semi-supervised rows: the teacher). Gap closed = (row - sup only) / (100% labels - sup only).", ""]
    for setting, per_seed in results.items():
        seeds = sorted(per_seed)
        header = "| Row | " + " | ".join(f"seed {s} AP / AP50" for s in seeds) + " | mean AP | gap closed |"
        lines += [f"**{setting}**", "", header, "|" + " --- |" * (len(seeds) + 3)]
        mean_ap = {row: mean(per_seed[s][row]["AP"] for s in seeds) for row in (*rows, "ceiling")}
        gap = mean_ap["ceiling"] - mean_ap.get("sup_only", float("nan"))
        for row in (*rows, "ceiling"):
            cells = " | ".join(f"{per_seed[s][row]['AP']:.2f} / {per_seed[s][row]['AP50']:.2f}" for s in seeds)
            closed = "" if row in ("sup_only", "ceiling") or not gap > 0 else \
                f"{100 * (mean_ap[row] - mean_ap['sup_only']) / gap:.0f}%"
            lines.append(f"| {ROW_TITLES[row]} | {cells} | {mean_ap[row]:.2f} | {closed} |")
        lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["shapes10", "bccd10", "bccd50"], choices=sorted(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--burn-in", type=int, default=1000)
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS + EXTRA_ROWS,
                        help="rows to run (the burn-in and the ceiling always run)")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at a time")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads shared by the jobs")
    parser.add_argument("--out", default=os.path.join(REPO, "output/ssod_benchmarks"))
    args = parser.parse_args()
    queue = JobQueue(args.jobs)
    pairs = [(setting, seed) for setting in args.settings for seed in args.seeds]
    with ThreadPoolExecutor(len(pairs)) as submitters:  # one waiting thread per setting x seed
        futures = {(setting, seed): submitters.submit(run_setting, setting, seed, args, queue,
                                                      (args.seeds.index(seed), args.settings.index(setting)))
                   for setting, seed in pairs}
        results = {setting: {} for setting in args.settings}
        for (setting, seed), future in futures.items():
            results[setting][seed] = future.result()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    markdown = table(results, args)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
