# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""The benchmark's harness: each runner in its own spawned worker process, driven in alternation
(A B A B ...), per-process peak memory, and the environment recorded with the results (see
tools/benchmark.py for the method)."""
import importlib
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Type

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# detectron2's import-time uses of torch.jit.script are deprecated in recent torch: not ours to fix.
warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
GOALS = {
    "train_ratio_max": 0.8,  # our Deformable DETR training step <= 0.8 x the transformers step
    "infer_speedup_min": 1.25,  # our inference images/s >= 1.25 x theirs
    "semi_ratio_max": 1.6,  # Semi-DETR iteration <= 1.6 x the supervised iteration
    "matching_share_max": 0.05,  # matching + assignment + pseudo labels + GMM <= 5% of an iteration
    "semi_memory_ratio_max": 1.5,  # Semi-DETR peak memory <= 1.5 x supervised
}



# ----------------------------------------------------------------------------------------------------
# Memory and environment
def _proc_status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_now_mib() -> Optional[float]:
    kib = _proc_status_kib("VmRSS")
    return None if kib is None else kib / 1024.0


def rss_peak_mib() -> float:
    kib = _proc_status_kib("VmHWM")
    if kib is None:  # not Linux: getrusage's peak (KiB on Linux, bytes on macOS)
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0
    return kib / 1024.0


def _read_first(path: str, key: str) -> Optional[str]:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def load_average() -> List[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def environment(args) -> Dict:
    import torch

    env = OrderedDict()
    env["date_utc"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    env["command"] = " ".join([os.path.relpath(sys.executable, REPO) if sys.executable.startswith(REPO)
                               else sys.executable, os.path.relpath(os.path.abspath(sys.argv[0]), REPO)]
                              + sys.argv[1:])
    env["cpu_model"] = _read_first("/proc/cpuinfo", "model name") or platform.processor() or "unknown"
    env["cpu_count"] = os.cpu_count()
    mem_kib = _read_first("/proc/meminfo", "MemTotal")
    env["memory_gib"] = round(int(mem_kib.split()[0]) / 2 ** 20, 1) if mem_kib else None
    env["platform"] = platform.platform()
    env["python"] = platform.python_version()
    env["torch"] = torch.__version__
    env["torch_cuda"] = torch.version.cuda
    env["device"] = args.device
    env["device_name"] = torch.cuda.get_device_name(0) if args.device == "cuda" else env["cpu_model"]
    env["threads"] = args.threads
    env["transformers"] = transformers_version()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        env["git_commit"] = commit + ("+uncommitted" if dirty else "") if commit else None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    env["malloc_env"] = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    return env


def transformers_version() -> Optional[str]:
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__


# ----------------------------------------------------------------------------------------------------
# Worker processes
class WorkerError(RuntimeError):
    pass


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _memory_report(baseline_mib: Optional[float], device: str) -> Dict:
    peak = rss_peak_mib()
    report = {"peak_rss_mib": round(peak, 1),
              "baseline_rss_mib": None if baseline_mib is None else round(baseline_mib, 1),
              "peak_rss_increase_mib": None if baseline_mib is None else round(peak - baseline_mib, 1)}
    if device == "cuda":
        import torch

        report["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return report


def _worker_main(conn, runner_class: Type, runner_args: Dict, threads: int, device: str, log_path: str):
    """Entry point of a worker process: build one runner, then serve the parent's commands."""
    # Everything the worker (and libraries it loads) prints goes to its log file.
    log = open(log_path, "w", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    try:
        import torch

        torch.set_num_threads(threads)
        import detectron2  # noqa: F401  (imports counted in the baseline, as a user's process has them)

        import semidetr  # noqa: F401

        for module in getattr(runner_class, "BASELINE_IMPORTS", ()):  # the runner's library, as for ours
            importlib.import_module(module)
        baseline = rss_now_mib()
        runner = runner_class(device=device, **runner_args)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        conn.send(("ok", runner.info()))
        while True:
            command, argument = conn.recv()
            if command == "stop":
                conn.send(("ok", None))
                break
            if command == "step":
                sync(device)
                start = time.perf_counter()
                runner.step()
                sync(device)
                conn.send(("ok", time.perf_counter() - start))
            elif command == "memory":
                conn.send(("ok", _memory_report(baseline, device)))
            elif command == "profile":
                conn.send(("ok", runner.profile(argument)))
            elif command == "metrics":
                conn.send(("ok", runner.metrics()))
            else:
                raise ValueError(f"unknown command {command!r}")
    except BaseException:  # report anything (even KeyboardInterrupt) to the parent, then exit
        traceback.print_exc()
        try:
            conn.send(("error", traceback.format_exc()))
        except (BrokenPipeError, OSError):
            pass
    finally:
        log.flush()


class Worker:
    """A runner in its own process (spawned: a fresh interpreter, so peaks are its own).

    A runner is a class built in the worker as ``runner_class(device=..., **runner_args)`` with methods
    info(), step(), metrics() (and profile(iterations) where profiled); its optional BASELINE_IMPORTS
    are imported before the baseline memory is read."""

    def __init__(self, label: str, runner_class: Type, runner_args: Dict, args, log_dir: str):
        self.label = label
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.log_path = os.path.join(log_dir, f"{label}.log")
        # Not a daemon: the semi-supervised trainer's data loader starts processes of its own.
        self.process = ctx.Process(target=_worker_main, name=label,
                                   args=(child, runner_class, runner_args, args.threads, args.device, self.log_path))
        self.process.start()
        child.close()
        self.info = None

    def _receive(self):
        try:
            status, value = self.conn.recv()
        except EOFError:
            self.process.join(5)
            raise WorkerError(f"worker {self.label} died (exit code {self.process.exitcode}); see {self.log_path}")
        if status == "error":
            raise WorkerError(f"worker {self.label} failed:\n{value}")
        return value

    def wait_ready(self):
        self.info = self._receive()
        return self.info

    def call(self, command: str, argument=None):
        self.conn.send((command, argument))
        return self._receive()

    def close(self):
        if self.process.is_alive():
            try:
                self.call("stop")
            except (WorkerError, OSError):
                pass
            self.process.join(30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(10)


def start_workers(specs: Sequence[Tuple[str, Type, Dict]], args, log_dir: str) -> List[Worker]:
    """Start every worker at once (their imports overlap), then wait until all have built their model.

    `specs`: (label, runner class, runner keyword arguments) per worker."""
    workers = [Worker(label, runner_class, runner_args, args, log_dir) for label, runner_class, runner_args in specs]
    try:
        for worker in workers:
            worker.wait_ready()
    except BaseException:
        for worker in workers:
            worker.close()
        raise
    return workers


def alternate_steps(workers: Sequence[Worker], warmup: int, repeat: int, progress: str) -> Dict[str, List[float]]:
    """Rounds of one step per worker (A B A B ...); the first `warmup` rounds are discarded."""
    times = {w.label: [] for w in workers}
    for round_index in range(warmup + repeat):
        this_round = {}
        for worker in workers:
            this_round[worker.label] = worker.call("step")
            if round_index >= warmup:
                times[worker.label].append(this_round[worker.label])
        kind = "warm-up" if round_index < warmup else "timed"
        print(f"  [{progress}] round {round_index + 1}/{warmup + repeat} ({kind}): "
              + ", ".join(f"{label} {seconds:.2f}s" for label, seconds in this_round.items()), flush=True)
    return times


def timing_summary(times: List[float], images_per_step: int) -> Dict:
    median = statistics.median(times)
    return {"median_s": round(median, 4), "min_s": round(min(times), 4), "max_s": round(max(times), 4),
            "images_per_s": round(images_per_step / median, 3), "n": len(times),
            "times_s": [round(t, 4) for t in times]}



def parameter_info(model) -> Dict:
    return {"parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
            "trainable_parameters_m": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 3)}
