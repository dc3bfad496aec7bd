# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""The detector section: our DeformableDETR and DINO against Hugging Face `transformers`'
DeformableDetrForObjectDetection at matched sizes, training step and inference (see tools/benchmark.py)."""
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Dict

from .harness import GOALS, REPO, alternate_steps, parameter_info, start_workers, timing_summary, transformers_version

TRANSFORMERS_HINT = "SEMIDETR_EXTRAS=benchmark bash tools/setup_env.sh"


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
        return parameter_info(self.model)

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

    BASELINE_IMPORTS = ("transformers",)

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
        return parameter_info(self.model)

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


# ----------------------------------------------------------------------------------------------------
# Section
def run_detector_section(args, log_dir: str, results: Dict) -> None:
    have_hf = transformers_version() is not None and not args.no_transformers
    if not have_hf:
        reason = ("--no-transformers" if args.no_transformers else
                  f"transformers is not installed (install it with `{TRANSFORMERS_HINT}`)")
        print(f"[benchmark] detector section: {reason}; timing our detectors only", flush=True)
        results["detector_note"] = f"transformers comparison skipped: {reason}"
    models = [("ours_deformable_detr", OurDetectorRunner, {"meta_architecture": "DeformableDETR"})]
    if have_hf:
        models.append(("hf_deformable_detr", HFDeformableDetrRunner, {}))
    models.append(("ours_dino", OurDetectorRunner, {"meta_architecture": "DINO"}))
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
