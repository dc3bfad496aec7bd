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
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import OrderedDict, defaultdict
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# detectron2's import-time uses of torch.jit.script are deprecated in recent torch: not ours to fix.
warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
TRANSFORMERS_HINT = "SEMIDETR_EXTRAS=benchmark bash tools/setup_env.sh"
GOALS = {
    "train_ratio_max": 0.8,  # our Deformable DETR training step <= 0.8 x the transformers step
    "infer_speedup_min": 1.25,  # our inference images/s >= 1.25 x theirs
    "semi_ratio_max": 1.6,  # Semi-DETR iteration <= 1.6 x the supervised iteration
    "matching_share_max": 0.05,  # matching + assignment + pseudo labels + GMM <= 5% of an iteration
    "semi_memory_ratio_max": 1.5,  # Semi-DETR peak memory <= 1.5 x supervised
}


# ----------------------------------------------------------------------------------------------------
# Matched detector configurations
@dataclass(frozen=True)
class DetectorSize:
    """One matched configuration: every field is set identically in both implementations."""

    name: str
    depth: int  # ResNet depth (18: basic blocks, 50: bottlenecks), FrozenBN, stem + res2 frozen
    d_model: int
    heads: int
    ffn: int
    enc_layers: int
    dec_layers: int
    queries: int
    levels: int  # res3, res4, res5 + (levels - 3) stride-2 convolutions
    points: int  # sampling points per head and level, encoder and decoder
    height: int
    width: int
    batch: int
    num_classes: int
    targets_per_image: int
    dn_number: int  # our DINO only (denoising budget)
    dropout: float = 0.1  # Deformable DETR's: residual, attention and activation dropout, both models

    def describe(self) -> str:
        return (f"R-{self.depth} (FrozenBN), d_model {self.d_model}, {self.heads} heads, FFN {self.ffn}, "
                f"{self.enc_layers}+{self.dec_layers} layers, {self.queries} queries, {self.levels} levels, "
                f"{self.points} points, two-stage + box refinement, {self.height}x{self.width} images, "
                f"batch {self.batch}, {self.num_classes} classes, {self.targets_per_image} targets/image")


SIZES = {
    # Our CPU configs' transformer (configs/quick_schedules/Base-DINO-tiny-cpu.yaml) at ~256 px.
    "tiny": DetectorSize("tiny", depth=18, d_model=128, heads=8, ffn=512, enc_layers=2, dec_layers=3, queries=100,
                         levels=4, points=4, height=256, width=320, batch=4, num_classes=20, targets_per_image=8,
                         dn_number=50),
    # The paper-scale Deformable DETR transformer (configs/Base-DeformableDETR-R50.yaml) at a CPU-sized input.
    "mid": DetectorSize("mid", depth=50, d_model=256, heads=8, ffn=1024, enc_layers=6, dec_layers=6, queries=300,
                        levels=4, points=4, height=480, width=640, batch=2, num_classes=80, targets_per_image=8,
                        dn_number=100),
    # Smoke tests only (seconds per step): not a meaningful comparison.
    "micro": DetectorSize("micro", depth=18, d_model=32, heads=4, ffn=64, enc_layers=1, dec_layers=1, queries=20,
                          levels=4, points=2, height=96, width=128, batch=2, num_classes=3, targets_per_image=3,
                          dn_number=6),
}

MATCHING_NOTES = [
    "Backbone: both ResNets use frozen BatchNorm everywhere with the stem and res2/stage 1 frozen "
    "(ours MODEL.RESNETS.NORM FrozenBN, FREEZE_AT 2, STRIDE_IN_1X1 False = transformers' bottleneck). "
    "transformers builds the ResNet from ResNetConfig (use_timm_backbone=False, "
    "use_pretrained_backbone=False); its trainable-stage filter matches 'stage.1' while ResNetBackbone's "
    "parameters are named 'encoder.stages.1', which would freeze the whole backbone, so the benchmark "
    "makes stages 1-3 (res3-res5) trainable as intended (the same parameters as ours).",
    "Same in both: d_model, heads, FFN width, encoder/decoder layers, feature levels (3x3 stride-2 extra "
    "level, GroupNorm input projections), sampling points, queries = two-stage proposals, iterative box "
    "refinement with one head per layer, sine position embedding (temperature 10000), dropout on "
    "residual, attention and activation, auxiliary losses on every decoder layer, focal loss + L1 + GIoU "
    "with Hungarian matching, AdamW (lr 1e-4, weight decay 1e-4) on the trainable parameters, no "
    "gradient clipping.",
    "Not matched (by design of each implementation): ours also trains the two-stage encoder proposals "
    "(Deformable DETR's class-agnostic proposal loss with a Hungarian matching over every encoder "
    "position), which transformers' loss omits; transformers' proposal head predicts every class and "
    "ranks by class 0, ours predicts one objectness logit; transformers also computes a cardinality "
    "error and checks every encoder layer's output for non-finite values.",
    "Inputs: identical images and targets; transformers receives already normalised float pixels (its "
    "image processor runs outside the timed step), ours normalises its uint8 images inside the step.",
    "Inference: both keep the top 100 (query, class) pairs per image (transformers: threshold 0, "
    "top_k 100) and scale boxes to pixels.",
    "Our DINO (beside, not matched to transformers): the same sizes with DINO's own settings - mixed "
    "query selection, look-forward-twice, shared heads, no dropout, contrastive denoising (dn_number "
    "below) - it does more work per step.",
]


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


def _sync(device: str) -> None:
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


def _worker_main(conn, runner_name: str, runner_args: Dict, threads: int, device: str, log_path: str):
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

        if runner_name == "hf_deformable_detr":
            import transformers  # noqa: F401
        baseline = rss_now_mib()
        runner = RUNNERS[runner_name](device=device, **runner_args)
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
                _sync(device)
                start = time.perf_counter()
                runner.step()
                _sync(device)
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
    """A runner in its own process (spawned: a fresh interpreter, so peaks are its own)."""

    def __init__(self, label: str, runner_name: str, runner_args: Dict, args, log_dir: str):
        self.label = label
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.log_path = os.path.join(log_dir, f"{label}.log")
        # Not a daemon: the semi-supervised trainer's data loader starts processes of its own.
        self.process = ctx.Process(target=_worker_main, name=label,
                                   args=(child, runner_name, runner_args, args.threads, args.device, self.log_path))
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


def start_workers(specs: Sequence[Tuple[str, str, Dict]], args, log_dir: str) -> List[Worker]:
    """Start every worker at once (their imports overlap), then wait until all have built their model."""
    workers = [Worker(label, name, runner_args, args, log_dir) for label, name, runner_args in specs]
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


# ----------------------------------------------------------------------------------------------------
# Runners (built inside a worker)
def _synthetic_batch(size: DetectorSize, seed: int = 0):
    """uint8 RGB images (B, 3, H, W) and per-image targets (labels, normalised cxcywh boxes inside the
    image), the same for every model."""
    import torch

    from semidetr.modeling.box_ops import cxcywh_to_xyxy, xyxy_to_cxcywh

    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (size.batch, 3, size.height, size.width), dtype=torch.uint8, generator=generator)
    targets = []
    for _ in range(size.batch):
        centres = torch.rand(size.targets_per_image, 2, generator=generator) * 0.7 + 0.15
        sizes = torch.rand(size.targets_per_image, 2, generator=generator) * 0.35 + 0.05
        labels = torch.randint(0, size.num_classes, (size.targets_per_image,), generator=generator)
        boxes = xyxy_to_cxcywh(cxcywh_to_xyxy(torch.cat([centres, sizes], 1)).clamp(0.0, 1.0))
        targets.append((labels, boxes))
    return images, targets


class OurDetectorRunner:
    """Our DeformableDETR or DINO at a matched size: training step or inference."""

    def __init__(self, *, device: str, size: str, meta_architecture: str, mode: str):
        import torch
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model
        from detectron2.structures import Boxes, Instances

        from semidetr import add_semidetr_config
        from semidetr.modeling.box_ops import cxcywh_to_xyxy

        spec = SIZES[size]
        self.spec, self.mode, self.device = spec, mode, device
        cfg = get_cfg()
        add_semidetr_config(cfg)
        base = "Base-DeformableDETR-R50.yaml" if meta_architecture == "DeformableDETR" else "Base-DINO-R50.yaml"
        cfg.merge_from_file(os.path.join(REPO, "configs", base))
        cfg.MODEL.DEVICE = device
        cfg.MODEL.RESNETS.DEPTH = spec.depth
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if spec.depth in (18, 34) else 256
        cfg.MODEL.RESNETS.NORM = "FrozenBN"
        cfg.MODEL.BACKBONE.FREEZE_AT = 2
        d = cfg.MODEL.DETR
        d.NUM_CLASSES = spec.num_classes
        d.HIDDEN_DIM, d.NHEADS, d.DIM_FEEDFORWARD = spec.d_model, spec.heads, spec.ffn
        d.ENC_LAYERS, d.DEC_LAYERS, d.NUM_QUERIES = spec.enc_layers, spec.dec_layers, spec.queries
        d.NUM_FEATURE_LEVELS, d.ENC_N_POINTS, d.DEC_N_POINTS = spec.levels, spec.points, spec.points
        d.NUM_SELECT = min(100, spec.queries * spec.num_classes)
        if meta_architecture == "DeformableDETR":
            d.DROPOUT = spec.dropout
        else:
            d.DN_NUMBER = spec.dn_number
        torch.manual_seed(0)
        self.model = build_model(cfg)
        images, targets = _synthetic_batch(spec)
        self.inputs = []
        scale = torch.tensor([spec.width, spec.height] * 2, dtype=torch.float32)
        for image, (labels, boxes) in zip(images, targets):
            instances = Instances((spec.height, spec.width))
            instances.gt_boxes = Boxes(cxcywh_to_xyxy(boxes) * scale)
            instances.gt_classes = labels
            self.inputs.append({"image": image.to(device), "instances": instances.to(device),
                                "height": spec.height, "width": spec.width})
        self.optimizer = _prepare_for_mode(self.model, mode)

    def info(self) -> Dict:
        return _parameter_info(self.model)

    def step(self):
        import torch

        if self.mode == "train":
            losses = self.model(self.inputs)
            total = sum(losses.values())
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
        else:
            with torch.inference_mode():
                results = self.model(self.inputs)
            assert len(results) == self.spec.batch

    def metrics(self) -> Dict:
        return {}


class HFDeformableDetrRunner:
    """transformers' DeformableDetrForObjectDetection at a matched size (random initialisation)."""

    def __init__(self, *, device: str, size: str, mode: str):
        import torch
        from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig
        from transformers.models.deformable_detr.image_processing_deformable_detr import DeformableDetrImageProcessor

        spec = SIZES[size]
        self.spec, self.mode = spec, mode
        if spec.depth in (18, 34):
            backbone = ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], layer_type="basic",
                                    depths=[2, 2, 2, 2] if spec.depth == 18 else [3, 4, 6, 3],
                                    out_features=["stage2", "stage3", "stage4"])
        else:
            depths = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[spec.depth]
            backbone = ResNetConfig(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], layer_type="bottleneck",
                                    depths=depths, out_features=["stage2", "stage3", "stage4"])
        config = DeformableDetrConfig(
            use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone,
            num_labels=spec.num_classes, d_model=spec.d_model, encoder_layers=spec.enc_layers,
            decoder_layers=spec.dec_layers, encoder_attention_heads=spec.heads, decoder_attention_heads=spec.heads,
            encoder_ffn_dim=spec.ffn, decoder_ffn_dim=spec.ffn, num_queries=spec.queries,
            two_stage_num_proposals=spec.queries, two_stage=True, with_box_refine=True,
            num_feature_levels=spec.levels, encoder_n_points=spec.points, decoder_n_points=spec.points,
            dropout=spec.dropout, attention_dropout=spec.dropout, activation_dropout=spec.dropout,
            auxiliary_loss=True, class_cost=2, bbox_cost=5, giou_cost=2,
        )
        torch.manual_seed(0)
        self.model = DeformableDetrForObjectDetection(config)
        # transformers' trainable-stage filter looks for "stage.1".."stage.3", but ResNetBackbone names its
        # parameters "encoder.stages.N": the whole backbone would be frozen. Train stages 1-3 (res3-res5),
        # as intended and as our FREEZE_AT 2.
        for name, parameter in self.model.model.backbone.model.named_parameters():
            if any(f"stages.{stage}." in name for stage in (1, 2, 3)):
                parameter.requires_grad_(True)
        self.model.to(device)
        images, targets = _synthetic_batch(spec)
        mean = torch.tensor([123.675, 116.280, 103.530]).view(1, 3, 1, 1)
        std = torch.tensor([58.395, 57.120, 57.375]).view(1, 3, 1, 1)
        self.pixel_values = ((images.float() - mean) / std).to(device)
        self.pixel_mask = torch.ones(spec.batch, spec.height, spec.width, dtype=torch.long, device=device)
        self.labels = [{"class_labels": labels.to(device), "boxes": boxes.to(device)} for labels, boxes in targets]
        self.target_sizes = [(spec.height, spec.width)] * spec.batch
        self.processor = DeformableDetrImageProcessor()
        self.optimizer = _prepare_for_mode(self.model, mode)

    def info(self) -> Dict:
        return _parameter_info(self.model)

    def step(self):
        import torch

        if self.mode == "train":
            outputs = self.model(pixel_values=self.pixel_values, pixel_mask=self.pixel_mask, labels=self.labels)
            self.optimizer.zero_grad(set_to_none=True)
            outputs.loss.backward()
            self.optimizer.step()
        else:
            with torch.inference_mode():
                outputs = self.model(pixel_values=self.pixel_values, pixel_mask=self.pixel_mask)
                results = self.processor.post_process_object_detection(
                    outputs, threshold=0.0, target_sizes=self.target_sizes, top_k=100)
            assert len(results) == self.spec.batch

    def metrics(self) -> Dict:
        return {}


def _prepare_for_mode(model, mode: str):
    """train(): AdamW (lr 1e-4, weight decay 1e-4) over the trainable parameters, the same for both
    implementations; eval(): no optimizer."""
    import torch

    if mode != "train":
        model.eval()
        return None
    model.train()
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)


def _parameter_info(model) -> Dict:
    return {"parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
            "trainable_parameters_m": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 3)}


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
MONITORED_METRICS = ("pseudo/labels_per_image", "cpm/candidates_per_image", "cpm/selected_per_image",
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
        from semidetr.engine.config_checks import check_config
        from semidetr.data.datasets.catalog import register_datasets_from_config
        from semidetr.engine.trainer import Trainer

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
        self.trainer = Trainer(cfg)
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

        info = _parameter_info(self.trainer.models()["teacher" if self.cfg.SEMI.ENABLED else "model"])
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
                _sync(self.device)
                start = time.perf_counter()
                self.step()
                _sync(self.device)
                wall += time.perf_counter() - start
        return scope_breakdown(prof.events(), wall, iterations)


RUNNERS = {
    "ours": OurDetectorRunner,
    "hf_deformable_detr": HFDeformableDetrRunner,
    "trainer": TrainerRunner,
}


# ----------------------------------------------------------------------------------------------------
# Sections
def run_detector_section(args, log_dir: str, results: Dict) -> None:
    have_hf = transformers_version() is not None and not args.no_transformers
    if not have_hf:
        reason = ("--no-transformers" if args.no_transformers else
                  f"transformers is not installed (install it with `{TRANSFORMERS_HINT}`)")
        print(f"[benchmark] detector section: {reason}; timing our detectors only", flush=True)
        results["detector_note"] = f"transformers comparison skipped: {reason}"
    models = [("ours_deformable_detr", "ours", {"meta_architecture": "DeformableDETR"})]
    if have_hf:
        models.append(("hf_deformable_detr", "hf_deformable_detr", {}))
    models.append(("ours_dino", "ours", {"meta_architecture": "DINO"}))
    detector = results.setdefault("detector", OrderedDict())
    for size_name in args.sizes:
        spec = SIZES[size_name]
        size_result = OrderedDict(config=asdict(spec), description=spec.describe(), models=OrderedDict())
        detector[size_name] = size_result
        for mode in ("train", "infer"):
            print(f"[benchmark] detector {size_name} {mode}: starting {len(models)} workers", flush=True)
            specs = [(f"{label}-{size_name}-{mode}", runner, {"size": size_name, "mode": mode, **extra})
                     for label, runner, extra in models]
            workers = start_workers(specs, args, log_dir)
            try:
                times = alternate_steps(workers, args.warmup, args.repeat, f"{size_name} {mode}")
                for (label, _, _), worker in zip(models, workers):
                    entry = size_result["models"].setdefault(label, OrderedDict(info=worker.info))
                    entry[mode] = timing_summary(times[worker.label], spec.batch)
                    entry[mode]["memory"] = worker.call("memory")
            finally:
                for worker in workers:
                    worker.close()
        entries = size_result["models"]
        if "hf_deformable_detr" in entries:
            theirs = entries["hf_deformable_detr"]
            for label in ("ours_deformable_detr", "ours_dino"):
                ours = entries[label]
                ours["train"]["time_ratio_vs_hf"] = round(ours["train"]["median_s"] / theirs["train"]["median_s"], 3)
                ours["infer"]["speedup_vs_hf"] = round(ours["infer"]["images_per_s"] / theirs["infer"]["images_per_s"], 3)
            ours = entries["ours_deformable_detr"]
            size_result["goals"] = {
                "train_ratio": ours["train"]["time_ratio_vs_hf"],
                "train_ratio_met": ours["train"]["time_ratio_vs_hf"] <= GOALS["train_ratio_max"],
                "infer_speedup": ours["infer"]["speedup_vs_hf"],
                "infer_speedup_met": ours["infer"]["speedup_vs_hf"] >= GOALS["infer_speedup_min"],
            }


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
        specs.append((f"semi-{label}", "trainer", {"config_file": config_file, "opts": opts,
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


# ----------------------------------------------------------------------------------------------------
# Report
def _fmt_memory(memory: Dict) -> str:
    text = f"{memory['peak_rss_mib'] / 1024:.2f} GiB (+{memory['peak_rss_increase_mib'] / 1024:.2f})"
    if "cuda_max_allocated_mib" in memory:
        text = f"{memory['cuda_max_allocated_mib'] / 1024:.2f} GiB CUDA; RSS " + text
    return text


def _met(flag: bool) -> str:
    return "met" if flag else "**missed**"


def render_markdown(results: Dict) -> str:
    env = results["environment"]
    lines = ["# SemiDETR-D2 speed and memory", ""]
    lines += [f"* Command: `{env['command']}`",
              f"* Machine: {env['device_name']}, {env['cpu_count']} cores, {env['memory_gib']} GiB; "
              f"{env['platform']}",
              f"* Software: Python {env['python']}, torch {env['torch']}, transformers "
              f"{env['transformers'] or 'not installed'}; {env['threads']} threads; device {env['device']}; "
              f"code {env['git_commit']}",
              f"* Date: {env['date_utc']}; load average (1/5/15 min) at start {env['load_start']}, "
              f"at end {env['load_end']}",
              ""]
    detector = results.get("detector")
    if detector:
        lines += ["## Detector: ours vs transformers' DeformableDetrForObjectDetection", ""]
        if results.get("detector_note"):
            lines += [f"_{results['detector_note']}._", ""]
        for size_name, size in detector.items():
            spec = size["config"]
            lines += [f"### {size_name}: {size['description']}", "",
                      "| Model | Train s/step | Train img/s | Train time ours/HF | Infer s/batch | Infer img/s "
                      "| Infer img/s ours/HF | Peak RSS train (+over baseline) | Peak RSS infer (+over baseline) "
                      "| Params (trainable) |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"]
            names = {"ours_deformable_detr": "ours Deformable DETR", "hf_deformable_detr": "transformers Deformable DETR",
                     "ours_dino": f"ours DINO (dn {spec['dn_number']})"}
            for label, entry in size["models"].items():
                train, infer = entry["train"], entry["infer"]
                lines.append(
                    f"| {names[label]} | {train['median_s']:.3f} | {train['images_per_s']:.2f} | "
                    f"{train.get('time_ratio_vs_hf', '-') if label != 'hf_deformable_detr' else '1'} | "
                    f"{infer['median_s']:.3f} | {infer['images_per_s']:.2f} | "
                    f"{infer.get('speedup_vs_hf', '-') if label != 'hf_deformable_detr' else '1'} | "
                    f"{_fmt_memory(train['memory'])} | {_fmt_memory(infer['memory'])} | "
                    f"{entry['info']['parameters_m']:.1f}M ({entry['info']['trainable_parameters_m']:.1f}M) |")
            goals = size.get("goals")
            if goals:
                lines += ["", f"Goals: training step ours/HF {goals['train_ratio']:.2f} <= {GOALS['train_ratio_max']} "
                              f"{_met(goals['train_ratio_met'])}; inference img/s ours/HF {goals['infer_speedup']:.2f} "
                              f">= {GOALS['infer_speedup_min']} {_met(goals['infer_speedup_met'])}."]
            n = next(iter(size["models"].values()))["train"]["n"]
            lines += ["", f"Median of {n} alternated steps per model after warm-up; images/s = batch / median.", ""]
        lines += ["Matching of the two implementations:", ""] + [f"* {note}" for note in MATCHING_NOTES] + [""]
    semi = results.get("semi")
    if semi:
        lines += ["## Semi-supervised step (CPU configs of configs/quick_schedules on the embedded shapes data)", "",
                  f"Student images per iteration: {semi['student_images']} for every run; weights: {semi['weights']}"
                  + (f"; overrides: `{' '.join(semi['opts'])}`" if semi["opts"] else "") + ".", "",
                  "| Run | Labeled + unlabeled (teacher) images | s/it median (min) | img/s | Time vs supervised "
                  "| Peak RSS (+over baseline) | Memory vs supervised | Pseudo labels/img | CQC boxes/img |",
                  "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
        for label, entry in semi["runs"].items():
            info, metrics = entry["info"], entry["metrics"]
            lines.append(
                f"| {label}: {entry['description']} | {info['labeled_images']} + {info['unlabeled_images']} "
                f"({info['teacher_images']}) | {entry['median_s']:.3f} ({entry['min_s']:.3f}) | "
                f"{entry['images_per_s']:.2f} | {entry.get('time_ratio_vs_supervised', '-')} | "
                f"{_fmt_memory(entry['memory'])} | {entry.get('memory_ratio_vs_supervised', '-')} | "
                f"{metrics.get('pseudo/labels_per_image', '-')} | {metrics.get('cqc/boxes_per_image', '-')} |")
        n = next(iter(semi["runs"].values()))["n"]
        lines += ["", f"Median of {n} alternated iterations per run after warm-up (one iteration = hooks + "
                      "`run_step`, as in `Trainer.train`); image sizes vary per iteration (multi-scale "
                      "training), as in training.", ""]
        if semi.get("breakdown"):
            runs = list(semi["breakdown"])
            lines += ["### Profiled breakdown (exclusive ms per iteration and share of the iteration)", "",
                      "| Scope | " + " | ".join(runs) + " |", "| --- |" + " ---: |" * len(runs)]
            for scope in list(SCOPE_LABELS) + ["other"]:
                cells = []
                for run in runs:
                    row = semi["breakdown"][run]["scopes"].get(scope)
                    cells.append(f"{row['exclusive_ms']:.0f} ms ({100 * row['share']:.1f}%)" if row else "")
                if any(cells):
                    label = SCOPE_LABELS.get(scope, "other (hooks, loss weighting, metrics)")
                    lines.append(f"| {label} `{scope}` | " + " | ".join(cells) + " |")
            lines.append("| **iteration (profiled)** | " + " | ".join(
                f"{semi['breakdown'][r]['wall_ms_per_iter']:.0f} ms" for r in runs) + " |")
            lines.append("| **matching + assignment + pseudo labels + GMM** | " + " | ".join(
                f"{semi['breakdown'][r]['matching_ms']:.0f} ms ({100 * semi['breakdown'][r]['matching_share']:.1f}%)"
                for r in runs) + " |")
            iters = semi["breakdown"][runs[0]]["iterations"]
            lines += ["", f"torch.profiler over {iters} iteration(s) after the timed ones; exclusive = a scope's "
                          "time minus the scopes nested in it (the Hungarian matching and one-to-many assignment "
                          "run inside the student forward, CPM mining and the teacher decode inside the CQC "
                          "loss), so the column adds up to the iteration. The profiler slows the iteration down.", ""]
        goals = semi.get("goals")
        if goals:
            lines.append("Goals:")
            lines.append("")
            for label, goal in goals.items():
                parts = []
                if "time_ratio" in goal:
                    parts.append(f"time vs supervised {goal['time_ratio']:.2f} <= {GOALS['semi_ratio_max']} "
                                 f"{_met(goal['time_ratio_met'])}")
                    parts.append(f"peak memory vs supervised {goal['memory_ratio']:.2f} <= "
                                 f"{GOALS['semi_memory_ratio_max']} {_met(goal['memory_ratio_met'])}")
                if "matching_share" in goal:
                    parts.append(f"matching + assignment + pseudo labels + GMM {100 * goal['matching_share']:.1f}% "
                                 f"<= {100 * GOALS['matching_share_max']:.0f}% {_met(goal['matching_share_met'])}")
                lines.append(f"* {label}: " + "; ".join(parts) + ".")
            lines.append("")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------
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
