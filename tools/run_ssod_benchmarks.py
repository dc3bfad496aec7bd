#!/usr/bin/env python
"""The paper's Table 4 on CPU-sized settings, from one script and one iteration budget.

For each setting and each seed (seed k also picks fold k of the labeled split):
  1. burn-in: supervised training on the labeled split for --burn-in iterations, evaluated every
     --curve-period iterations (the plateau curve: the rows start from a converged supervised model);
  2. from that checkpoint, --iters more iterations of each row:
       sup-only | SSOD baseline | + SHM | + SHM + CQC (mean+std candidates) | + SHM + CQC + CPM (Semi-DETR)
     (T1 = --o2m-iters for the SHM rows, by default half of --iters; --burn-in-weights FILE: the rows start
     from that supervised checkpoint of --burn-in iterations instead, and no burn-in is trained). Every row
     sees the same labeled images per step: the semi-supervised rows take SOLVER.IMS_PER_BATCH images split
     by SEMI.SAMPLE_RATIO (1 labeled + 4 unlabeled by default) and sup-only takes that many labeled images
     per step (its burn-in used the full batch; the burn-in's final AP is reported beside it). The rows
     differ only in their component: every semi-supervised row, the SSOD baseline included, makes pseudo
     labels by the same rule (the config defaults: the official class-aware NMS at IoU 0.6 on boxes clipped
     to the weak view, SEMI.*), the
     CQC rows use the configs' CQC (SEMIDETR.CQC.VARIANT, official by default), and a row's component is
     what its configs/ablations/ file (ROW_ABLATIONS) sets on its COCO base;
     the extra row sup_only_ema (--rows) is the control for the EMA teacher: the SSOD baseline at w_u 0,
     i.e. sup-only's labeled images scored by an EMA teacher, which a teacher-scored row must beat before
     its gain is credited to the unlabeled images;
  3. the ceiling: supervised training with 100% of the labels for --burn-in + --iters iterations (one per
     full labeled set and seed, shared by the settings that use it), with its curve.
--burn-in-until-plateau MAX: the burn-in is trained until it reaches its plateau (the report's test below), each
seed on its own: a burn-in of --burn-in iterations that fails the test is continued by --burn-in-step iterations
(burn_in<N + step>, from its checkpoint), and again, until one passes or MAX is reached; the rows start from
that one and the ceiling trains its iterations + --iters.
--jobs runs train at a time (--threads // --jobs threads each; a burn-in with nothing beside it, one setting x
seed with --no-ceiling, takes all --threads), earlier seeds and settings first (a later seed's burn-in fills a slot while
an earlier seed's rows wait for theirs). A finished run (model_final.pth + metrics.json) is not run again;
an interrupted one resumes from its last checkpoint; a run directory is locked while it trains, so a second
instance of the script waits for it instead of training it twice. Run directories name their budget
(burn_in<N>, rows_from<N>_iters<M>[_t1-<T1>]/<row>, ceiling<N+M>; rows from --burn-in-weights:
rows_from-<file name>_iters<M>...), so a new budget never reuses a run of another;
a longer burn-in or ceiling (constant LR) continues from the longest finished shorter one.
Every row evaluates its final model (the teacher for semi-supervised rows) with COCO-style AP.
Results: <out>/results.json and markdown on stdout (and <out>/results.md): per setting the table
| Row | seed 1 | ... | mean | std | (AP), the share of the sup-only -> 100%-labels gap each row closes, the
pseudo-label precision / recall / duplicates of each semi-supervised row (averaged over the second half of
its iterations) and its trajectory (per fifth of them), the curves (burn-in, ceiling and rows, evaluated every
--curve-period iterations) and whether the burn-in reached its plateau (< 1 AP gained over its last quarter,
by a fitted line: plateau_gain). --report writes the tables from the finished runs only, training nothing
(missing seeds: "-"). --archive DIR (benchmarks/ssod_runs in this repository) keeps each finished run's
summary as a JSON file there and reads from there the runs that this machine does not have: the run
directories stay on the machine that trained them, so seeds trained in different sessions, on different
machines, meet in one report. Each start or resume of a run appends its machine (CPU model, instruction set,
threads, device, torch) to the run's machines.jsonl, kept in its summary and named by the report: the runs are
deterministic on one machine type, so a run missing here reproduces only when retrained on the machine that
trained it, and a resume on another machine is warned about.

    python tools/run_ssod_benchmarks.py --settings shapes_lite --seeds 1 2 3 --burn-in 2000 --iters 1000 --jobs 2
"""
import argparse
import fcntl
import heapq
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from statistics import linear_regression, mean, stdev

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.path.join(REPO, "configs/quick_schedules")
ABLATIONS = os.path.join(REPO, "configs/ablations")

SETTINGS = {
    # name: (supervised config, SSOD config, Semi-DETR config, labeled split of fold {fold}, full labeled set)
    "shapes_lite": ("dino_shapes_lite_cpu.yaml", "ssod_baseline_shapes_lite_cpu.yaml", "semidetr_shapes_lite_cpu.yaml",
                    "shapes_lite_train.{fold}@5", "shapes_lite_train"),
    # The same data with 10% labeled (the paper's COCO protocol) and tau_s 0.3 (the configs say why): a
    # stronger burn-in teacher than at 5%, whose pseudo labels are mostly wrong (BENCHMARKS.md section 8).
    "shapes_lite10": ("dino_shapes_lite_cpu.yaml", "ssod_baseline_shapes_lite10_cpu.yaml",
                      "semidetr_shapes_lite10_cpu.yaml", "shapes_lite_train.{fold}@10", "shapes_lite_train"),
    "shapes10": ("dino_shapes_cpu.yaml", "ssod_baseline_shapes10_cpu.yaml", "semidetr_shapes10_cpu.yaml",
                 "shapes_train.{fold}@10", "shapes_train"),
    "bccd10": ("dino_bccd_cpu.yaml", "ssod_baseline_bccd10_cpu.yaml", "semidetr_bccd10_cpu.yaml",
               "bccd_trainval.{fold}@10", "bccd_trainval"),
    "bccd50": ("dino_bccd_cpu.yaml", "ssod_baseline_bccd50_cpu.yaml", "semidetr_bccd50_cpu.yaml",
               "bccd_trainval.{fold}@50", "bccd_trainval"),
}
ROWS = ("sup_only", "ssod_baseline", "shm", "shm_cqc", "semidetr")
SEMI_ROWS = ROWS[1:]
# Not Table 4: the SSOD baseline without loss on unlabeled images that have no pseudo label; the EMA control
# (the SSOD baseline with w_u 0: sup-only's labeled images and the semi rows' EMA teacher, no unlabeled loss).
EXTRA_ROWS = ("ssod_ignore_empty", "sup_only_ema")
ROW_TITLES = {"sup_only": "sup-only", "ssod_baseline": "SSOD baseline", "shm": "+ SHM",
              "shm_cqc": "+ SHM + CQC", "semidetr": "Semi-DETR", "ceiling": "100% labels",
              "ssod_ignore_empty": "SSOD baseline, SEMI.IMAGES_WITHOUT_PSEUDO_LABELS ignore",
              "sup_only_ema": "sup-only + EMA teacher (w_u 0)"}
# Logged by the semi-supervised rows (semidetr/semi/pseudo_labels.py), averaged over the second half of a run.
PRECISION, RECALL, DUPLICATES, LABELS_PER_IMAGE = PSEUDO_METRICS = (
    "pseudo/precision@0.5", "pseudo/recall@0.5", "pseudo/duplicates@0.5", "pseudo/labels_per_image")
PER_LABEL_METRICS = (PRECISION, DUPLICATES)  # rates over the pseudo labels, undefined without any
# The report's pseudo-label trajectory: the metrics averaged over this many equal spans of a row's iterations.
TRAJECTORY_SPANS = 5
# The burn-in has reached its plateau when its AP gains less than this over the last quarter of its iterations.
PLATEAU_GAIN = 1.0
# In a run directory: one JSON line per training segment (a start or a resume), the machine that trained it.
MACHINES_FILE = "machines.jsonl"


def burn_in_budgets(args):
    """The burn-in lengths a seed may train, shortest first: --burn-in, or with --burn-in-until-plateau MAX
    every --burn-in-step from it up to MAX."""
    most = getattr(args, "burn_in_until_plateau", None)
    return [args.burn_in] if most is None else list(range(args.burn_in, most + 1, args.burn_in_step))


def reached_plateau(summary, args):
    """Whether a finished burn-in's curve gains less than PLATEAU_GAIN over its last quarter (fitted)."""
    gain = plateau_gain(summary["curve"], args.curve_period)
    return gain is not None and gain < PLATEAU_GAIN


def seed_burn_in(setting, seed, args, train=None):
    """The burn-in length (iterations) the rows of a setting x seed start from: the first of `burn_in_budgets`
    whose burn-in reached its plateau, or the last; a burn-in that has not been trained (nor archived) ends the
    search there, it is the one to train. train(iterations): trains that burn-in first (a longer one continues
    the shorter one's checkpoint), so that training and the report decide by the same rule."""
    budgets = burn_in_budgets(args)
    for iterations in budgets:
        if train is not None:
            train(iterations)
        if iterations == budgets[-1]:
            return iterations  # the longest (a fixed --burn-in: the only one): nothing to read
        summary = archived_summary(burn_in_dir(setting, seed, iterations, args), args)
        if summary is None or reached_plateau(summary, args):
            return iterations


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


def run_training(config, out_dir, overrides, threads, extend=False):
    """One tools/train_net.py run; returns the final evaluation (AP, AP50) of its model or teacher.
    extend: a constant-LR run that may continue a finished shorter one (extend_finished_shorter_run)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another instance training this run: wait for it, then reuse it
        if extend:
            extend_finished_shorter_run(out_dir)
        return _run_training_locked(config, out_dir, overrides, threads)


def _run_training_locked(config, out_dir, overrides, threads):
    metrics_file = os.path.join(out_dir, "metrics.json")
    if os.path.exists(os.path.join(out_dir, "model_final.pth")) and os.path.exists(metrics_file):
        return final_ap(metrics_file)  # already done (the script can be re-run after an interruption)
    # An interrupted run (or one extended to a longer budget: the LR is constant, SOLVER.STEPS "()")
    # continues from its last checkpoint; --resume restores the data stream and RNG exactly.
    resume = ["--resume"] if os.path.exists(os.path.join(out_dir, "last_checkpoint")) else []
    record_machine(out_dir, threads, dict(zip(overrides[::2], overrides[1::2])).get("MODEL.DEVICE", "cpu"))
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


def extend_finished_shorter_run(out_dir):
    """Start a constant-LR supervised run (burn-in, ceiling) named ``<prefix><N>`` from the longest finished
    sibling ``<prefix><M>``, M < N, instead of from scratch: its final checkpoint (linked, read only), metrics
    and log (copied, the new run appends to them) become this run's; --resume then continues at iteration M
    with the data stream and RNG where they were. Returns the sibling used, or None."""
    if os.path.exists(os.path.join(out_dir, "last_checkpoint")):
        return None  # already started: it resumes itself
    parent, name = os.path.split(out_dir)
    prefix = name.rstrip("0123456789")
    budget = int(name[len(prefix):])
    shorter = sorted((int(other[len(prefix):]), other) for other in os.listdir(parent)
                     if other.startswith(prefix) and other[len(prefix):].isdigit()
                     and int(other[len(prefix):]) < budget
                     and os.path.exists(os.path.join(parent, other, "model_final.pth")))
    if not shorter:
        return None
    iterations, source = shorter[-1][0], os.path.join(parent, shorter[-1][1])
    checkpoint = f"model_{iterations - 1:07d}.pth"
    os.makedirs(out_dir, exist_ok=True)
    # model_final.pth is written before the final evaluation: wait for the source's lock (held while it
    # trains and evaluates) so that its metrics are complete when copied.
    with open(os.path.join(source, ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.link(os.path.join(source, "model_final.pth"), os.path.join(out_dir, checkpoint))
        for file_name in ("metrics.json", "log.txt", MACHINES_FILE):
            if os.path.exists(os.path.join(source, file_name)):
                shutil.copyfile(os.path.join(source, file_name), os.path.join(out_dir, file_name))
    with open(os.path.join(out_dir, "last_checkpoint"), "w") as f:
        f.write(checkpoint)
    return source


def prune_checkpoints(out_dir):
    """Delete a finished run's periodic checkpoints (model_<iteration>.pth): what follows it needs only
    model_final.pth (the rows start from it, a longer run links it) and its curve is in metrics.json, while each
    periodic checkpoint of these models takes 160-270 MB (a 4000-iteration row: 2 GB). Returns the number deleted;
    a run that is not finished (no model_final.pth or metrics.json) keeps them all: it resumes from them."""
    if not os.path.isdir(out_dir):
        return 0
    with open(os.path.join(out_dir, ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # not while another instance trains (or extends from) this run
        if not all(os.path.exists(os.path.join(out_dir, name)) for name in ("model_final.pth", "metrics.json")):
            return 0
        periodic = [name for name in os.listdir(out_dir)
                    if name.startswith("model_") and name.endswith(".pth") and name[6:-4].isdigit()]
        for name in periodic:
            os.remove(os.path.join(out_dir, name))
        return len(periodic)


def this_machine(threads, device):
    """What a run's numbers depend on besides its code, config and seed: the CPU (oneDNN picks its kernels by
    instruction set and their float sums differ, so a burn-in retrained on another machine type differs from
    its first evaluation on: BENCHMARKS.md section 8), the threads, the device and torch."""
    import torch

    cpu = {}
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "cpu family", "model", "stepping"):
                    cpu.setdefault(key.strip(), value.strip())
    name = cpu.get("model name", platform.processor() or platform.machine())
    if "cpu family" in cpu:
        name += f" (family {cpu['cpu family']} model {cpu.get('model')} stepping {cpu.get('stepping')})"
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else None
    return {"cpu": name, "cpus": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": threads, "device": device, "gpu": gpu, "torch": torch.__version__}


def machine_segments(run_dir):
    """A run's segments from its MACHINES_FILE: [{"from_iteration": first iteration, **machine}], consecutive
    segments of one machine merged; [] when the run predates the file."""
    path = os.path.join(run_dir, MACHINES_FILE)
    if not os.path.exists(path):
        return []
    segments = []
    with open(path) as f:
        for line in f:
            segment = {k: v for k, v in json.loads(line).items() if k != "utc"}
            if not segments or _machine(segments[-1]) != _machine(segment):
                segments.append(segment)
    return segments


def _machine(segment):
    return {k: v for k, v in segment.items() if k != "from_iteration"}


def record_machine(out_dir, threads, device):
    """Append this training segment's machine to the run's MACHINES_FILE, warning when a resume runs on
    another machine than the run's last segment: from there on it is not what one machine gives."""
    start = 0  # where --resume continues: after the iteration of the last checkpoint (model_<iteration>.pth)
    if os.path.exists(os.path.join(out_dir, "last_checkpoint")):
        with open(os.path.join(out_dir, "last_checkpoint")) as f:
            iteration = f.read().strip().removeprefix("model_").removesuffix(".pth")
        start = int(iteration) + 1 if iteration.isdigit() else None  # model_final.pth: nothing left to train
    machine = this_machine(threads, device)
    previous = machine_segments(out_dir)
    if previous and _machine(previous[-1]) != machine:
        print(f"warning: {os.path.relpath(out_dir, REPO)} resumes at iteration {start} on {describe_machine(machine)}; "
              f"its earlier iterations ran on {describe_machine(previous[-1])}: the runs are deterministic on "
              "one machine type only, so this run is no longer what either gives alone", file=sys.stderr)
    with open(os.path.join(out_dir, MACHINES_FILE), "a") as f:
        f.write(json.dumps({"from_iteration": start, "utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                            **machine}) + "\n")


def describe_machine(machine):
    device = machine["gpu"] or machine["device"]
    return (f"{machine['cpu']}, {machine['cpus']} CPUs, {machine['cpu_capability']}, {machine['threads']} "
            f"thread{'s' if machine['threads'] != 1 else ''}, {device}, torch {machine['torch']}")


def evaluations_of(records):
    """(the evaluation records of a run in iteration order, their key prefix: the teacher's for semi-supervised
    runs). An iteration evaluated twice counts once, with its later record."""
    by_iteration = {m["iteration"]: m for m in records if any(k.endswith("bbox/AP") for k in m)}
    evaluations = [by_iteration[i] for i in sorted(by_iteration)]
    prefix = "teacher/bbox/" if evaluations and "teacher/bbox/AP" in evaluations[-1] else "bbox/"
    return evaluations, prefix


def current_records(metrics_file):
    """The records of a metrics.json that the run's final history consists of (`read_metrics_log`: those
    superseded by a restart dropped), warning about lines that are not metrics."""
    from semidetr.engine.metrics_log import read_metrics_log

    records, skipped = read_metrics_log(metrics_file)
    if skipped:
        print(f"warning: {metrics_file}: skipped {skipped} lines that are not metrics", file=sys.stderr)
    return records


def final_ap(metrics_file):
    """The last evaluation of a run: AP and AP50 of its model (the teacher's for semi-supervised runs)."""
    evaluations, prefix = evaluations_of(current_records(metrics_file))
    last = evaluations[-1]
    return {"AP": last[prefix + "AP"], "AP50": last[prefix + "AP50"], "iteration": last["iteration"]}


def labeled_per_step(config):
    """Labeled images per step of a semi-supervised config: SOLVER.IMS_PER_BATCH split by SEMI.SAMPLE_RATIO."""
    from detectron2.config import get_cfg

    from semidetr.config import add_semidetr_config

    cfg = get_cfg()
    add_semidetr_config(cfg)
    cfg.merge_from_file(os.path.join(QUICK, config))
    labeled, unlabeled = cfg.SEMI.SAMPLE_RATIO
    return cfg.SOLVER.IMS_PER_BATCH * labeled // (labeled + unlabeled)


# A Table-4 row's component is its ablation config's delta (configs/ablations/), applied to the setting's
# Semi-DETR or SSOD config: one home for what a row changes.
ROW_ABLATIONS = {"shm": "table4_shm.yaml", "shm_cqc": "table4_shm_cqc.yaml",
                 "ssod_ignore_empty": "ssod_ignore_empty.yaml", "sup_only_ema": "sup_only_ema.yaml"}
# Which of the setting's configs a row starts from: 0 supervised, 1 SSOD baseline, 2 Semi-DETR.
ROW_BASES = {"sup_only": 0, "ssod_baseline": 1, "ssod_ignore_empty": 1, "sup_only_ema": 1,
             "shm": 2, "shm_cqc": 2, "semidetr": 2}
# Keys of an ablation config that are not its component: the base config, the schedule (the script's budget
# decides it) and where it writes.
NOT_A_COMPONENT = ("_BASE_", "SOLVER", "OUTPUT_DIR")


def ablation_overrides(config_name):
    """KEY VALUE pairs (for merge_from_list) of the keys an ablation config sets on top of its _BASE_."""
    import yaml

    path = os.path.join(ABLATIONS, config_name)
    with open(path) as f:
        delta = yaml.safe_load(f) or {}

    def flatten(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", str(value)

    pairs = [pair for key, value in delta.items() if key not in NOT_A_COMPONENT
             for pair in flatten({key: value}, "")]
    if not pairs:
        raise ValueError(f"{path} sets no component key (only {', '.join(NOT_A_COMPONENT)}): a row needs one")
    return [item for pair in pairs for item in pair]


def row_config(row, setting):
    """The config a row trains: the setting's supervised, SSOD or Semi-DETR config."""
    return SETTINGS[setting][ROW_BASES[row]]


def o2m_iters(args):
    """T1 of the SHM rows: --o2m-iters, by default half of the row's iterations."""
    given = getattr(args, "o2m_iters", None)
    return args.iters // 2 if given is None else given


def row_overrides(row, args):
    """The row's component (its ablation config's delta) and its schedule: T1 (o2m_iters) for the SHM rows.
    The SEMI settings, pseudo-label rule included, are the configs' own."""
    if row == "sup_only":
        return []
    component = ablation_overrides(ROW_ABLATIONS[row]) if row in ROW_ABLATIONS else []
    schedule = ["SEMIDETR.SHM.O2M_ITERS", str(o2m_iters(args))] if ROW_BASES[row] == 2 else []
    # The teacher starts from the burn-in: no EMA warm-up, which would make it a copy of the student
    # during the first ~1 / (1 - m) iterations.
    return ["SEMI.EMA_WARMUP", "False", *component, *schedule]


def burn_in_dir(setting, seed, iterations, args):
    return os.path.join(args.out, setting, f"seed{seed}", f"burn_in{iterations}")


def run_dirs(setting, seed, args, burn_in=None):
    """Where each run of a setting x seed lives (the budgets are in the names: the rows' folder names where
    they start, the burn-in's iterations or the --burn-in-weights file, and a T1 other than half the row).
    burn_in: the burn-in's iterations, by default `seed_burn_in`'s."""
    full = SETTINGS[setting][4]
    root = os.path.join(args.out, setting, f"seed{seed}")
    weights = getattr(args, "burn_in_weights", None)
    if burn_in is None:
        burn_in = args.burn_in if weights else seed_burn_in(setting, seed, args)
    start = f"-{os.path.splitext(os.path.basename(weights))[0]}" if weights else str(burn_in)
    t1 = "" if o2m_iters(args) == args.iters // 2 else f"_t1-{o2m_iters(args)}"
    rows_root = os.path.join(root, f"rows_from{start}_iters{args.iters}{t1}")
    dirs = {"burn_in": burn_in_dir(setting, seed, burn_in, args),
            "ceiling": os.path.join(args.out, f"ceiling_{full}", f"seed{seed}", f"ceiling{burn_in + args.iters}")}
    dirs.update({row: os.path.join(rows_root, row) for row in args.rows})
    return dirs


def run_setting(setting, seed, args, queue, priority, burn_in_alone=False):
    """Submit one setting x seed to the queue (burn-in, ceiling, then the rows once the burn-in is done).
    burn_in_alone: nothing can train beside the burn-in (one setting x seed, no ceiling), so it takes all
    --threads instead of its --jobs share: it is the critical path, and 2 threads train a shapes_lite
    iteration 1.5x faster than 1 (0.55 s against 0.82 s, AMD EPYC, BENCHMARKS.md "Evidence: shapes_lite10")."""
    sup_config, ssod_config, semidetr_config, labeled_split, full = SETTINGS[setting]
    labeled = labeled_split.format(fold=seed)
    # Until its plateau, the burn-in's length (and so the rows' start and the ceiling's length) is known once
    # it has trained; a fixed one is known now, and the ceiling trains beside it.
    until_plateau = getattr(args, "burn_in_until_plateau", None) is not None
    common = ["SEED", str(seed), "TEST.EVAL_PERIOD", "0", "SOLVER.STEPS", "()", "DATALOADER.NUM_WORKERS", "1",
              "MODEL.DEVICE", args.device]
    curve = ["TEST.EVAL_PERIOD", str(args.curve_period)]  # after `common`: the later value wins
    threads = max(1, args.threads // args.jobs)
    per_step = labeled_per_step(ssod_config)

    def train(config, out_dir, overrides, threads, extend=False):  # archived as soon as it finishes
        result = run_training(config, out_dir, overrides, threads, extend)
        archived_summary(out_dir, args)
        if not getattr(args, "keep_checkpoints", False):
            prune_checkpoints(out_dir)
        return result

    def budget(iterations):  # checkpoints every 500 iterations: an interrupted run loses little
        return ["SOLVER.MAX_ITER", str(iterations), "SOLVER.CHECKPOINT_PERIOD", str(min(iterations, 500))]

    given_weights = getattr(args, "burn_in_weights", None)
    if given_weights:
        check_burn_in_weights(given_weights, labeled)
    splits = {"sup": ["DATASETS.TRAIN", f"('{labeled}',)", "SOLVER.IMS_PER_BATCH", str(per_step)],
              "semi": ["DATASETS.TRAIN", f"('{labeled}',)", "DATASETS.TRAIN_UNLABELED", f"('{labeled}-unlabeled',)"]}

    def train_burn_in(iterations):
        train(sup_config, burn_in_dir(setting, seed, iterations, args),
              [*common, *curve, "DATASETS.TRAIN", f"('{labeled}',)", *budget(iterations)],
              args.threads if burn_in_alone else threads, True)

    def submit_ceiling(dirs, burn_in, step):  # depends on the full labeled set and the seed only: shared by settings
        return queue.submit((*priority, step), train, sup_config, dirs["ceiling"],
                            [*common, *curve, "DATASETS.TRAIN", f"('{full}',)", *budget(burn_in + args.iters)],
                            threads, True)

    def burn_in_then_queue_rows():
        # The rows are queued by the worker that ran the burn-in, before it takes its next job: they take
        # precedence over later seeds' jobs.
        burn_in = args.burn_in if given_weights else seed_burn_in(setting, seed, args, train=train_burn_in)
        dirs = run_dirs(setting, seed, args, burn_in)
        weights = ["MODEL.WEIGHTS", given_weights or os.path.join(dirs["burn_in"], "model_final.pth"),
                   *budget(args.iters)]
        rows = {}
        for step, row in enumerate(args.rows, start=2):
            config = row_config(row, setting)
            split = splits["sup" if row == "sup_only" else "semi"]
            rows[row] = queue.submit((*priority, step), train, config, dirs[row],
                                     [*common, *curve, *weights, *split, *row_overrides(row, args)], threads)
        if until_plateau and not args.no_ceiling:  # after the rows: they are the result, the ceiling its scale
            rows["ceiling"] = submit_ceiling(dirs, burn_in, len(args.rows) + 2)
        return rows

    row_jobs = None if args.ceiling_only else queue.submit((*priority, 0), burn_in_then_queue_rows)
    jobs = {}
    if args.ceiling_only and until_plateau:
        burn_in = seed_burn_in(setting, seed, args)
        if archived_summary(burn_in_dir(setting, seed, burn_in, args), args) is None:
            raise ValueError(f"--ceiling-only with --burn-in-until-plateau: the ceiling of {setting} seed {seed} "
                             f"trains its burn-in's iterations + {args.iters}, and that burn-in is not decided "
                             f"({burn_in_dir(setting, seed, burn_in, args)} has not finished): train it first "
                             "(leave out --ceiling-only)")
        jobs["ceiling"] = submit_ceiling(run_dirs(setting, seed, args, burn_in), burn_in, 1)
    elif not args.no_ceiling and not until_plateau:  # beside the burn-in
        jobs["ceiling"] = submit_ceiling(run_dirs(setting, seed, args, args.burn_in), args.burn_in, 1)
    if row_jobs is not None:
        jobs.update(row_jobs.result())  # raises if the burn-in failed
    return {row: job.result() for row, job in jobs.items()}


def check_burn_in_weights(path, labeled):
    """--burn-in-weights must be a checkpoint of this project's trainer (it names its training set) trained on
    the labeled split that the rows use: rows from another fold's burn-in would not be this seed's rows."""
    import yaml

    from semidetr.engine.checkpoint import read_model_info

    info = read_model_info(path)  # ValueError naming the file if it is missing or not a checkpoint
    if info is None:
        raise ValueError(f"--burn-in-weights {path} does not say what it was trained on (no model_info): give a "
                         "checkpoint written by tools/train_net.py, or tools/export_weights.py's copy of one")
    trained_on = tuple((yaml.safe_load(info["config"]).get("DATASETS") or {}).get("TRAIN") or ())
    if trained_on != (labeled,):
        raise ValueError(f"--burn-in-weights {path} was trained on {trained_on}, but these rows train on "
                         f"('{labeled}',): pick the --settings and --seeds of that split, or retrain the burn-in "
                         "(leave out --burn-in-weights)")


# ------------------------------------------------------------------------------------------------------
# Results, read back from the run directories (so --report needs no training)
def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.json")
    if not (os.path.exists(os.path.join(run_dir, "model_final.pth")) and os.path.exists(path)):
        return None
    return current_records(path)


def summarize_run(run_dir):
    """Final AP (the teacher's for semi-supervised rows), the AP curve, and the pseudo-label statistics
    averaged over the second half of the run; None if the run has not finished."""
    records = read_metrics(run_dir)
    if records is None:
        return None
    evaluations, prefix = evaluations_of(records)
    if not evaluations:
        return None
    last_iteration = max(m["iteration"] for m in records)

    def pseudo_means(start, end):
        """Each logged pseudo-label metric over iterations [start, end): rates per pseudo label (precision,
        duplicates) weighted by the labels per image logged with them, the others averaged. A record is
        detectron2's JSONWriter value, the median over the last 20 steps (put_scalars' smoothing hint), so a
        record without labels (all 0) does not count, while a step without labels inside a window is one
        value of its median."""
        span = [m for m in records if start <= m["iteration"] < end]
        means = {}
        for key in PSEUDO_METRICS:
            if key in PER_LABEL_METRICS:
                pairs = [(m[key], m[LABELS_PER_IMAGE]) for m in span if key in m and LABELS_PER_IMAGE in m]
                weight = sum(labels for _, labels in pairs)
                if weight > 0:
                    means[key] = sum(value * labels for value, labels in pairs) / weight
            else:
                values = [m[key] for m in span if key in m]
                if values:
                    means[key] = mean(values)
        return means

    fifth = (last_iteration + 1) / TRAJECTORY_SPANS
    # Which machine trained which iterations (absent for runs that predate the record: their archive is unchanged).
    segments = machine_segments(run_dir)
    machines = {"machines": segments} if segments else {}
    return {"AP": evaluations[-1][prefix + "AP"], "AP50": evaluations[-1][prefix + "AP50"],
            "iteration": evaluations[-1]["iteration"],
            "curve": [(m["iteration"], m[prefix + "AP"]) for m in evaluations if prefix + "AP" in m],
            "pseudo": pseudo_means(last_iteration / 2, last_iteration + 1),
            # How the pseudo labels evolve (a collapse shows as labels / image falling to 0).
            "pseudo_trajectory": [pseudo_means(k * fifth, (k + 1) * fifth) for k in range(TRAJECTORY_SPANS)],
            **machines}


def trained_iterations(iteration, period):
    """Iterations trained at an evaluation logged at `iteration`: periodic evaluations are logged at the
    iteration index k * period - 1, the final one at MAX_ITER."""
    return period * -(-iteration // period)


def last_quarter(curve, period):
    """A curve's evaluations (trained iterations, AP) from the last one at or before 3/4 of its iterations;
    empty if there is none."""
    points = [(trained_iterations(iteration, period), ap) for iteration, ap in curve]
    last_iteration = points[-1][0] if points else 0
    start = [iteration for iteration, _ in points if iteration <= 0.75 * last_iteration]
    return [(iteration, ap) for iteration, ap in points if iteration >= start[-1]] if start else []


def plateau_gain(curve, period):
    """AP gained over the last quarter of a curve's iterations: the slope of the least-squares line through
    `last_quarter`, times a quarter of the iterations (one evaluation is noisy by about 1 AP: a difference of
    two points would decide the plateau by that noise, so a curve needs several evaluations in its last
    quarter for the fit to mean more than that). None if the curve is too short."""
    quarter = last_quarter(curve, period)
    if not quarter:
        return None
    slope = linear_regression(*zip(*quarter)).slope
    return slope * quarter[-1][0] / 4


def archived_summary(run_dir, args):
    """A run's summary, kept in --archive (a folder of the repository: the run directories, checkpoints
    included, stay on the machine that trained them, and a later session may have another). A finished run
    writes its summary there (with the commit that archived it and when its metrics were last written); a
    run that is not on this machine, or not finished, is read from there. None if neither has it."""
    summary = summarize_run(run_dir)
    if not getattr(args, "archive", None):
        return summary
    stored = os.path.join(args.archive, os.path.relpath(run_dir, args.out) + ".json")
    archived = None
    if os.path.exists(stored):
        with open(stored) as f:
            archived = json.load(f)["summary"]
    if summary is None:
        return archived
    summary = json.loads(json.dumps(summary))  # the JSON types of a summary read back (tuples -> lists)
    if archived == summary:
        return summary  # archived already: a later report does not rewrite it under a new commit
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    finished = time.gmtime(os.path.getmtime(os.path.join(run_dir, "metrics.json")))
    os.makedirs(os.path.dirname(stored), exist_ok=True)
    with open(stored, "w") as f:
        json.dump({"run": os.path.relpath(run_dir, args.out), "finished_utc": time.strftime("%Y-%m-%d %H:%M", finished),
                   "archived_at_commit": commit.stdout.strip() or None, "summary": summary}, f, indent=1)
        f.write("\n")
    return summary


def collect(args):
    """{setting: {seed: {run: summary or None}}} for every run the arguments name."""
    return {setting: {seed: {run: archived_summary(path, args) for run, path in run_dirs(setting, seed, args).items()}
                      for seed in args.seeds} for setting in args.settings}


def _fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def _fmt_signed(value):
    return "-" if value is None else f"{value:+.1f}"


def _seed_list(seeds):
    """'seed 3' or 'seeds 1, 2': the seeds a figure is over."""
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def _stats(values):
    values = [v for v in values if v is not None]
    return (mean(values) if values else None), (stdev(values) if len(values) > 1 else None)


def table(results, args):
    rows = [row for row in ROWS + EXTRA_ROWS if row in args.rows]
    weights = getattr(args, "burn_in_weights", None)
    until_plateau = getattr(args, "burn_in_until_plateau", None)
    if until_plateau is not None:
        burn_in = (f"a supervised burn-in of {args.burn_in} iterations, continued by {args.burn_in_step} at a time "
                   f"until it gains less than {PLATEAU_GAIN:g} AP over its last quarter or reaches {until_plateau} "
                   "(each seed's length is on its burn-in line)")
        ceiling = f"its seed's burn-in + {args.iters}"
    else:
        burn_in = f"{args.burn_in} supervised burn-in iterations" + (f" ({weights}, not trained here)" if weights else "")
        ceiling = str(args.burn_in + args.iters)
    lines = [f"Budget: {burn_in}, then {args.iters} iterations per row, T1 = {o2m_iters(args)} for the SHM rows "
             f"(ceiling: {ceiling} supervised iterations with all labels). AP (COCO-style, on the "
             "test split) of the final model; semi-supervised rows: the teacher. Seed k uses fold k of the labeled "
             "split. std: sample standard deviation over the seeds.", ""]
    for setting, per_seed in results.items():
        seeds = sorted(per_seed)

        def ap(seed, run):
            summary = per_seed[seed].get(run)
            return None if summary is None else summary["AP"]

        def differences(run, baseline):
            """run - baseline per seed, None where either did not run: the pair shares its seed's burn-in, so
            the seed-to-seed spread of the burn-ins cancels (unpaired means over different seeds keep it)."""
            return [None if ap(s, run) is None or ap(s, baseline) is None else ap(s, run) - ap(s, baseline)
                    for s in seeds]

        header = "| Row | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | std |"
        lines += [f"**{setting}**", "", header, "|" + " --- |" * (len(seeds) + 3)]
        stats = {}
        for run in (*rows, "ceiling"):
            values = [ap(s, run) for s in seeds]
            stats[run] = _stats(values)
            lines.append(f"| {ROW_TITLES[run]} | " + " | ".join(_fmt(v) for v in values)
                         + f" | {_fmt(stats[run][0])} | {_fmt(stats[run][1])} |")
        burn_in = [ap(s, "burn_in") for s in seeds]
        lengths = [f" ({seed_burn_in(setting, s, args)} iterations)" if until_plateau is not None else "" for s in seeds]
        lines += ["", "Burn-in (sup-only at its full batch, where every row starts): "
                  + (f"{weights} (see the budget above)." if weights else
                     ", ".join(f"seed {s} {_fmt(v)}{n}" for s, v, n in zip(seeds, burn_in, lengths)) + "."), ""]
        sup, ceiling = stats.get("sup_only", (None, None))[0], stats["ceiling"][0]
        sup_seeds = [s for s in seeds if ap(s, "sup_only") is not None]

        def with_sup_only(run):
            """The seeds where both `run` and sup-only ran, and both rows' values on them: a row that lacks a
            seed is compared with sup-only on its own seeds, not with sup-only's mean over seeds it lacks."""
            both = [s for s in seeds if ap(s, run) is not None and ap(s, "sup_only") is not None]
            return both, [ap(s, run) for s in both], [ap(s, "sup_only") for s in both]

        def seeds_note(both):
            return "" if both == sup_seeds else f" ({_seed_list(both)})"

        if sup is not None and ceiling is not None:
            # The ceiling trains on every label: its seed sets only the random seed (no fold), so its mean over
            # its own seeds is the gap's end for every row.
            ceiling_seeds = [s for s in seeds if ap(s, "ceiling") is not None]
            lines += [f"Gap sup-only -> 100% labels: {ceiling - sup:.1f} AP"
                      + ("" if ceiling_seeds == sup_seeds else
                         f" (100% labels over {_seed_list(ceiling_seeds)}, sup-only over {_seed_list(sup_seeds)})") + ".",
                      "", "| Row | gap closed |", "| --- | --- |"]
            for run in rows:
                both, run_values, sup_values = with_sup_only(run)
                if run != "sup_only" and both and ceiling > mean(sup_values):
                    closed = (mean(run_values) - mean(sup_values)) / (ceiling - mean(sup_values))
                    lines.append(f"| {ROW_TITLES[run]} | {100 * closed:.0f}%{seeds_note(both)} |")
            lines.append("")
        paired_rows = [run for run in rows if run != "sup_only"]
        if "sup_only" in rows and paired_rows:
            # A seed missing from either row is left out of the pair, not of the means above.
            lines += ["Paired by seed (each row minus its seed's sup-only, seeds where both ran):", "",
                      header, "|" + " --- |" * (len(seeds) + 3)]
            for run in paired_rows:
                paired = differences(run, "sup_only")
                paired_mean, paired_std = _stats(paired)
                lines.append(f"| {ROW_TITLES[run]} | " + " | ".join(_fmt_signed(v) for v in paired)
                             + f" | {_fmt_signed(paired_mean)} | {_fmt(paired_std)} |")
            lines.append("")
        both, ssod_values, sup_values = with_sup_only("ssod_baseline") if "ssod_baseline" in rows else ([], [], [])
        if both:
            lines += [f"SSOD baseline - sup-only = {mean(ssod_values) - mean(sup_values):+.1f} AP{seeds_note(both)}.", ""]
        both, semi_values, sup_values = with_sup_only("semidetr") if "semidetr" in rows else ([], [], [])
        if both:
            # The test: the difference of the means against twice the larger of the two (unpaired) stds.
            difference = mean(semi_values) - mean(sup_values)
            if len(both) < 2:
                lines += [f"Semi-DETR - sup-only = {difference:+.1f} AP{seeds_note(both)} (one seed: no std).", ""]
            else:
                margin = 2 * max(stdev(sup_values), stdev(semi_values))
                lines += [f"Semi-DETR - sup-only = {difference:+.1f} AP{seeds_note(both)}; twice the larger std = "
                          f"{margin:.1f} AP: " + ("above." if difference > margin else "not above."), ""]
        def paired_difference(run, baseline):
            """'+x.x AP (seeds ...)': the mean of `differences` over the seeds where both ran; None if none."""
            paired = differences(run, baseline)
            both = [str(s) for s, d in zip(seeds, paired) if d is not None]
            return f"{_stats(paired)[0]:+.1f} AP (seeds {', '.join(both)})" if both else None

        semi_over_ema = paired_difference("semidetr", "sup_only_ema")
        if semi_over_ema is not None:
            # The part of the gain that the unlabeled images bring: against the same EMA teacher without them.
            ema_over_sup = paired_difference("sup_only_ema", "sup_only")
            lines += [f"Semi-DETR - (sup-only + EMA teacher) = {semi_over_ema}; sup-only + EMA teacher - sup-only = "
                      + ("-." if ema_over_sup is None else f"{ema_over_sup}."), ""]
        pseudo_rows = [run for run in rows if run not in ("sup_only", "sup_only_ema")]
        if pseudo_rows:
            lines += ["Pseudo labels (mean over the seeds of each run's second half; IoU 0.5 against the unlabeled "
                      "images' hidden ground truth):", "",
                      "| Row | precision | recall | duplicates | labels / image |", "| --- | --- | --- | --- | --- |"]
            for run in pseudo_rows:
                cells = []
                for key in PSEUDO_METRICS:
                    values = [per_seed[s][run]["pseudo"].get(key) for s in seeds if per_seed[s].get(run)]
                    cells.append(_fmt(_stats(values)[0], 3 if key != LABELS_PER_IMAGE else 2))
                lines.append(f"| {ROW_TITLES[run]} | " + " | ".join(cells) + " |")
            spans = [f"{100 * k // TRAJECTORY_SPANS}-{100 * (k + 1) // TRAJECTORY_SPANS}%" for k in range(TRAJECTORY_SPANS)]
            lines += ["", "Pseudo labels over each run (labels / image (precision), mean over the seeds, per fifth of the "
                      "iterations):", "", "| Row | " + " | ".join(spans) + " |", "|" + " --- |" * (len(spans) + 1)]
            for run in pseudo_rows:
                cells = []
                for span in range(TRAJECTORY_SPANS):
                    by_seed = [per_seed[s][run]["pseudo_trajectory"][span] for s in seeds if per_seed[s].get(run)]
                    count = _stats([m.get(LABELS_PER_IMAGE) for m in by_seed])[0]
                    precision = _stats([m.get(PRECISION) for m in by_seed])[0]
                    cells.append(f"{_fmt(count, 2)} ({_fmt(precision, 2)})")
                lines.append(f"| {ROW_TITLES[run]} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += ["Curves (AP every " + str(args.curve_period) + " iterations; gain over the last quarter; rows: from "
                  "their start at the burn-in):", ""]
        for run in ("burn_in", "ceiling", *rows):  # a row's curve: is it still gaining at its end?
            for s in seeds:
                summary = per_seed[s].get(run)
                if summary is None:
                    continue
                gain = plateau_gain(summary["curve"], args.curve_period)
                two_points = len(last_quarter(summary["curve"], args.curve_period)) == 2  # a row of 4 evaluations
                verdict = "" if gain is None else (f"; gain over the last quarter {gain:+.1f} AP"
                                                   + (" (two evaluations: their difference)" if two_points else "")
                                                   + (" (plateau)" if run == "burn_in" and gain < PLATEAU_GAIN else ""))
                points = ", ".join(f"{trained_iterations(i, args.curve_period)}: {a:.1f}" for i, a in summary["curve"])
                lines.append(f"- {run} seed {s}: {points}{verdict}")
        # Which machines trained the runs: a missing run retrained on another machine type will not reproduce.
        trained_on = {}
        for run in ("burn_in", "ceiling", *rows):
            for s in seeds:
                for segment in (per_seed[s].get(run) or {}).get("machines", []):
                    label = f"{run} seed {s}" + (f" from {segment['from_iteration']}" if segment["from_iteration"] else "")
                    trained_on.setdefault(describe_machine(segment), []).append(label)
        if trained_on:
            lines += ["", "Trained on (runs archived before the record have none):", ""]
            lines += [f"- {name}: {', '.join(labels)}" for name, labels in trained_on.items()]
        lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["shapes_lite", "bccd10"], choices=sorted(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--burn-in", type=int, default=2000)
    parser.add_argument("--burn-in-until-plateau", type=int, default=None, metavar="MAX",
                        help="continue a burn-in that has not reached its plateau (< 1 AP gained over its last "
                             "quarter, fitted) by --burn-in-step iterations at a time, up to MAX iterations; each "
                             "seed's rows start from its first burn-in that has, and its ceiling is that long + --iters")
    parser.add_argument("--burn-in-step", type=int, default=500, help="see --burn-in-until-plateau")
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--curve-period", type=int, default=250, help="evaluation period of the burn-in, the ceiling and the rows")
    parser.add_argument("--o2m-iters", type=int, default=None,
                        help="T1 of the SHM rows (+ SHM, + SHM + CQC, Semi-DETR): their one-to-many iterations "
                             "(default: half of --iters; at least --iters: no switch in the row)")
    parser.add_argument("--burn-in-weights", default=None,
                        help="start the rows from this supervised checkpoint (of --burn-in iterations on the labeled "
                             "split of the one --settings x --seeds) instead of training the burn-in: tools/demo.sh's "
                             "shipped burn-in")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS + EXTRA_ROWS,
                        help="rows to run (the burn-in and the ceiling always run)")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at a time")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads shared by the jobs (all of them for a burn-in "
                        "that trains alone: one setting x seed with --no-ceiling)")
    parser.add_argument("--device", default="cpu",
                        help="MODEL.DEVICE of every run (the configs' is cpu); 'cuda': the same runs on the GPU, "
                             "--jobs of them sharing it. The run directories do not name it: a finished run is "
                             "reused whichever device trained it")
    parser.add_argument("--out", default=os.path.join(REPO, "output/ssod_benchmarks"))
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep a finished run's periodic checkpoints (by default only model_final.pth is kept)")
    ceiling = parser.add_mutually_exclusive_group()
    ceiling.add_argument("--no-ceiling", action="store_true", help="do not train the 100%%-labels ceiling")
    ceiling.add_argument("--ceiling-only", action="store_true",
                         help="train the 100%%-labels ceilings only (they need no burn-in): a second core's job "
                              "beside another invocation's burn-in")
    parser.add_argument("--report", action="store_true", help="write the tables from the finished runs; train nothing")
    parser.add_argument("--archive", default=None,
                        help="folder (in the repository: benchmarks/ssod_runs) of the finished runs' summaries, one "
                             "JSON file per run, written as runs finish and read for runs this machine does not "
                             "have: the tables of a report survive a new machine")
    args = parser.parse_args()
    if args.burn_in_weights and len(args.settings) * len(args.seeds) != 1:
        parser.error("--burn-in-weights is the burn-in of one setting and seed: give one --settings and one --seeds")
    if args.burn_in_until_plateau is not None:
        if args.burn_in_weights:
            parser.error("--burn-in-until-plateau trains the burn-in, --burn-in-weights gives it: pick one")
        if args.burn_in_until_plateau < args.burn_in or args.burn_in_step < 1:
            parser.error("--burn-in-until-plateau MAX must be at least --burn-in, and --burn-in-step positive")
    if not args.report:
        queue = JobQueue(args.jobs)
        pairs = [(setting, seed) for setting in args.settings for seed in args.seeds]
        with ThreadPoolExecutor(len(pairs)) as submitters:  # one waiting thread per setting x seed
            futures = [submitters.submit(run_setting, setting, seed, args, queue,
                                         (args.seeds.index(seed), args.settings.index(setting)),
                                         len(pairs) == 1 and args.no_ceiling)
                       for setting, seed in pairs]
            for future in futures:
                future.result()
    results = collect(args)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        # The run directories too: where a caller (tools/demo.sh) finds a row's checkpoint.
        json.dump({"args": vars(args), "results": results,
                   "run_dirs": {setting: {seed: run_dirs(setting, seed, args) for seed in args.seeds}
                                for setting in args.settings}}, f, indent=1)
    markdown = table(results, args)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
