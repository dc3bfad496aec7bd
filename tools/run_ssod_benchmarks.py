#!/usr/bin/env python
"""The paper's Table 4 on CPU-sized settings, from one script and one iteration budget.

For each setting (embedded data with 10% labels, BCCD with 10% and 50%) and each seed:
  1. burn-in: supervised training on the labeled split for --burn-in iterations (shared by all rows);
  2. from that checkpoint, --iters more iterations of each row:
       sup-only | SSOD baseline | + SHM | + SHM + CQC (mean+std candidates) | + SHM + CQC + CPM (Semi-DETR)
     (T1 = half of --iters for the SHM rows);
  3. the ceiling: supervised training with 100% of the labels for --burn-in + --iters iterations (one per
     full labeled set and seed, shared by the settings that use it).
Every row evaluates its final model (the teacher for semi-supervised rows) with COCO-style AP.
Results: <out>/results.json and a markdown table on stdout (and <out>/results.md), with the share of the
sup-only -> 100%-labels gap that each row closes.

    python tools/run_ssod_benchmarks.py --settings shapes10 --seeds 1 2 --burn-in 1000 --iters 1000 --jobs 2
"""
import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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
ROW_TITLES = {"sup_only": "Supervised only", "ssod_baseline": "SSOD baseline", "shm": "+ SHM",
              "shm_cqc": "+ SHM + CQC", "semidetr": "+ SHM + CQC + CPM (Semi-DETR)", "ceiling": "100% labels"}


def run_training(config, out_dir, overrides, threads):
    """One tools/train_net.py run; returns the final evaluation (AP, AP50) of its model or teacher."""
    metrics_file = os.path.join(out_dir, "metrics.json")
    if os.path.exists(os.path.join(out_dir, "model_final.pth")) and os.path.exists(metrics_file):
        return final_ap(metrics_file)  # already done (the script can be re-run after an interruption)
    os.makedirs(out_dir, exist_ok=True)
    command = [sys.executable, os.path.join(REPO, "tools/train_net.py"), "--config-file", os.path.join(QUICK, config),
               "OUTPUT_DIR", out_dir, "SEMI.EVAL_MODELS", "['teacher']", "SEMI.VIS_PERIOD", "0", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.time()
    with open(os.path.join(out_dir, "stdout.txt"), "w") as log:
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
    half = str(args.iters // 2)
    return {
        "sup_only": [],
        "ssod_baseline": ["SEMIDETR.SHM.ENABLED", "False", "SEMIDETR.CQC.ENABLED", "False", "SEMI.PSEUDO_NMS_THRESH", "0.0"],
        "shm": ["SEMIDETR.SHM.O2M_ITERS", half, "SEMIDETR.CQC.ENABLED", "False"],
        "shm_cqc": ["SEMIDETR.SHM.O2M_ITERS", half, "SEMIDETR.CPM.METHOD", "mean_std"],
        "semidetr": ["SEMIDETR.SHM.O2M_ITERS", half],
    }[row]


def run_setting(setting, seed, args, pool):
    sup_config, ssod_config, semidetr_config, labeled, full = SETTINGS[setting]
    root = os.path.join(args.out, setting, f"seed{seed}")
    common = ["SEED", str(seed), "TEST.EVAL_PERIOD", "0", "SOLVER.STEPS", "()", "DATALOADER.NUM_WORKERS", "1"]
    threads = max(1, args.threads // args.jobs)
    # The ceiling depends on the full labeled set and the seed only: bccd10 and bccd50 share theirs.
    ceiling = os.path.join(args.out, f"ceiling_{full}", f"seed{seed}")
    jobs = {"ceiling": pool.submit(run_training, sup_config, ceiling,
                                   [*common, "DATASETS.TRAIN", f"('{full}',)", "SOLVER.MAX_ITER",
                                    str(args.burn_in + args.iters), "SOLVER.CHECKPOINT_PERIOD",
                                    str(args.burn_in + args.iters)], threads)}
    burn_in = os.path.join(root, "burn_in")
    pool.submit(run_training, sup_config, burn_in, [*common, "DATASETS.TRAIN", f"('{labeled}',)", "SOLVER.MAX_ITER",
                                                    str(args.burn_in), "SOLVER.CHECKPOINT_PERIOD",
                                                    str(args.burn_in)], threads).result()
    weights = ["MODEL.WEIGHTS", os.path.join(burn_in, "model_final.pth"), "SOLVER.MAX_ITER", str(args.iters),
               "SOLVER.CHECKPOINT_PERIOD", str(args.iters)]
    for row in args.rows:
        config = sup_config if row == "sup_only" else (ssod_config if row == "ssod_baseline" else semidetr_config)
        extra = ["DATASETS.TRAIN", f"('{labeled}',)"] if row == "sup_only" else []
        jobs[row] = pool.submit(run_training, config, os.path.join(root, row),
                                [*common, *weights, *extra, *row_overrides(row, args)], threads)
    return {row: job.result() for row, job in jobs.items()}


def table(results, args):
    rows = [row for row in ROWS if row in args.rows]
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
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS,
                        help="rows to run (the burn-in and the ceiling always run)")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at a time")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads shared by the jobs")
    parser.add_argument("--out", default=os.path.join(REPO, "output/ssod_benchmarks"))
    args = parser.parse_args()
    results = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        for setting in args.settings:
            results[setting] = {}
            for seed in args.seeds:
                print(f"{setting}, seed {seed}", flush=True)
                results[setting][seed] = run_setting(setting, seed, args, pool)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    markdown = table(results, args)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
