"""Detectron2 meta-architectures `DeformableDETR` and `DINO`.

Both wrap the same pieces (detectron2 backbone -> multi-scale projection -> deformable transformer ->
set criterion) and differ only in configuration; `DINO` adds contrastive denoising queries.

Training input: detectron2 dicts with "image" and "instances" (gt_boxes in the image's own pixel frame,
gt_classes). Optional keys let the semi-supervised trainer put labeled and pseudo-labeled images into
one batch (one forward pass, one DDP synchronisation):
    "loss_group": str   losses of the image's group are reported with the prefix "<group>_" ("" = none);
    "denoise":    bool  whether the image's targets also become denoising queries (default True);
    "assignment": str   "one_to_one" (Hungarian, default) or "one_to_many" (Semi-DETR stage 1) for the
                        image's group;
    "class_loss_weight": float  factor on the image's classification loss (default 1; the trainer sets 0
                        for an unlabeled image without pseudo labels that should not be trained as background);
    "cross_view_queries" (x, C) / "cross_view_boxes" (x, 4 pixel xyxy): Semi-DETR's cross-view queries
                        (embeddings from the other view's model, and this view's boxes as their positions);
    "cross_view_roi_features" (x, C, S, S) instead of "cross_view_queries": RoI features (of the other view)
                        that this model's cross-view projector embeds in its forward (the official code's CQC).

Inference: `forward` returns detectron2 `Instances` in the original image frame; `predict` returns them in
the network-input frame (the augmented view itself), which is what a teacher labelling a view needs.
"""
import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone, detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import batched_nms

from ..config import add_semidetr_config
from .box_ops import cxcywh_to_xyxy, inverse_sigmoid, xyxy_to_cxcywh
from .criterion import SetCriterion
from .cross_view import CrossViewQueryEmbedding, resolve_cqc
from .denoising import DenoisingQueries, build_self_attention_mask, prepare_contrastive_denoising
from .matcher import HungarianMatcher
from .ms_deform_attn import set_ms_deform_attn_impl
from .neck import MultiScaleProjection
from .one_to_many import build_one_to_many_assigner
from .position_encoding import PositionEmbeddingSine
from .tensor_utils import small_tensor
from .transformer import DeformableTransformer, EncoderMemory, QuerySelection

__all__ = ["DeformableDETR", "DINO", "resolve_num_classes", "resolve_loss_profile", "LOSS_PROFILES", "DetectorOutputs", "EncodedImages", "CrossViewQueries",
           "TrainingOutputs", "loss_group_prefix"]

logger = logging.getLogger(__name__)


def loss_group_prefix(group: str) -> str:
    """The prefix of the loss names of an image's "loss_group" ("" = the labeled group, no prefix)."""
    return f"{group}_" if group else ""


def resolve_num_classes(cfg) -> int:
    """MODEL.DETR.NUM_CLASSES, or (when 0) the number of classes of the first training data set."""
    if cfg.MODEL.DETR.NUM_CLASSES > 0:
        return cfg.MODEL.DETR.NUM_CLASSES
    if not cfg.DATASETS.TRAIN:
        raise ValueError("MODEL.DETR.NUM_CLASSES is 0 (take it from the data) but DATASETS.TRAIN is empty: "
                         "set MODEL.DETR.NUM_CLASSES or DATASETS.TRAIN")
    name = cfg.DATASETS.TRAIN[0]
    metadata = MetadataCatalog.get(name)
    if not metadata.get("thing_classes"):
        DatasetCatalog.get(name)  # loaders such as detectron2's COCO json one set thing_classes on load
    classes = MetadataCatalog.get(name).get("thing_classes")
    if not classes:
        raise ValueError(f"Data set {name!r} has no thing_classes in its metadata: set MODEL.DETR.NUM_CLASSES")
    return len(classes)


# The loss weights, matching costs, denoising box noise and encoder class targets that
# MODEL.DETR.LOSS_PROFILE sets (README, "Where the official code differs from the paper").
LOSS_PROFILES = {
    # DINO's published values (detrex projects/dino/configs/models/dino_r50.py:82-104); = the key defaults.
    "dino": {"CLASS_WEIGHT": 1.0, "BBOX_WEIGHT": 5.0, "GIOU_WEIGHT": 2.0, "COST_CLASS": 2.0, "COST_BBOX": 5.0,
             "COST_GIOU": 2.0, "DN_BOX_NOISE_SCALE": 1.0, "ENC_CLASS_TARGET": "class"},
    # The official Semi-DETR code as it applies them (configs/dino_detr/dino_detr_ssod_r50_coco_120k.py:30-51,
    # dense_heads/dino_detr_ssod_head.py:89): focal loss weight 2; L1 weight 5, but the head also returns the
    # L1 of the xy and of the wh coordinates as separate "loss" keys (:735-740, :797-802, :876-881) and
    # mmdet sums every key containing "loss" (mmdet/models/detectors/base.py:198-199), so L1 counts twice;
    # GIoU 2; matcher costs 2 / 5 / 2; box noise 0.4; the encoder loss labels every target class 0 (:567-574).
    # Decoder, encoder and denoising losses alike, in both stages.
    "official": {"CLASS_WEIGHT": 2.0, "BBOX_WEIGHT": 10.0, "GIOU_WEIGHT": 2.0, "COST_CLASS": 2.0,
                 "COST_BBOX": 5.0, "COST_GIOU": 2.0, "DN_BOX_NOISE_SCALE": 0.4, "ENC_CLASS_TARGET": "first_class"},
}


def resolve_loss_profile(cfg) -> Dict[str, object]:
    """The values of the keys of LOSS_PROFILES for this config: MODEL.DETR.LOSS_PROFILE's, or (profile "")
    the MODEL.DETR keys themselves. A named profile with one of its keys also changed is an error (the
    override would be silently lost)."""
    d = cfg.MODEL.DETR
    keys = LOSS_PROFILES["dino"].keys()
    if d.LOSS_PROFILE == "":
        return {key: d[key] for key in keys}
    if d.LOSS_PROFILE not in LOSS_PROFILES:
        raise ValueError(f"MODEL.DETR.LOSS_PROFILE must be '' (use the MODEL.DETR keys) or one of "
                         f"{sorted(LOSS_PROFILES)}, got {d.LOSS_PROFILE!r}")
    defaults = get_cfg()
    add_semidetr_config(defaults)
    changed = [f"MODEL.DETR.{key} ({d[key]})" for key in keys if d[key] != defaults.MODEL.DETR[key]]
    if changed:
        raise ValueError(f"MODEL.DETR.LOSS_PROFILE {d.LOSS_PROFILE!r} sets {', '.join(changed)}, which the config "
                         f"also changes: set MODEL.DETR.LOSS_PROFILE '' to use the keys, or leave them at their defaults")
    return dict(LOSS_PROFILES[d.LOSS_PROFILE])


class DetectorOutputs(dict):
    """Predictions of one forward pass, stacked over decoder layers.

    Keys: "pred_logits" (L, N, Q, K), "pred_boxes" (L, N, Q, 4) normalised cxcywh of the matching
    queries; "enc_logits"/"enc_boxes" (encoder proposals); "dn_logits"/"dn_boxes" (denoising queries,
    empty when there are none); "hidden" (L, N, Q, C) decoder features of the matching queries.
    """

    def select_images(self, indices: Tensor) -> "DetectorOutputs":
        """The outputs of a subset of the batch's images."""
        selected = DetectorOutputs()
        for key, value in self.items():
            batch_dim = 0 if key.startswith("enc_") else 1
            selected[key] = value.index_select(batch_dim, indices)
        return selected


@dataclass
class EncodedImages:
    """A batch after backbone, projection, encoder and query selection: everything decoding needs."""

    images: ImageList
    srcs: List[Tensor]  # projected multi-scale features F, per level (N, C, H_l, W_l)
    encoder: EncoderMemory  # the encoded image E
    selection: QuerySelection  # matching queries from the encoder proposals


@dataclass
class CrossViewQueries:
    """Cross-view queries of a batch, padded to the image with most: content (N, X, C), reference (N, X, 4)
    unsigmoided cxcywh, valid (N, X)."""

    content: Tensor
    reference: Tensor
    valid: Tensor

    @staticmethod
    def pad(contents: List[Tensor], boxes: List[Tensor]) -> "CrossViewQueries":
        """contents: per image (x_i, C); boxes: per image (x_i, 4) normalised cxcywh in that image."""
        content = pad_sequence(contents, batch_first=True)
        # Padded slots get a valid box (their outputs are ignored; nothing attends to them).
        padding_box = content.new_tensor([0.5, 0.5, 0.1, 0.1])
        reference = pad_sequence(boxes, batch_first=True)
        valid = pad_sequence([torch.ones(len(b), dtype=torch.bool, device=content.device) for b in boxes],
                             batch_first=True)
        reference = torch.where(valid[..., None], reference, padding_box)
        return CrossViewQueries(content, inverse_sigmoid(reference), valid)


@dataclass
class TrainingOutputs:
    """What a training forward returns besides the losses (`forward(..., return_outputs=True)`).

    outputs: predictions of the matching/denoising queries; cross_hidden: decoder features of the
    cross-view queries (L, N, X, C) or None; cross_embeddings: this model's own cross-view embeddings of
    the "cross_view_boxes" (sum x_i, C), in image order, or None."""

    outputs: "DetectorOutputs"
    cross_hidden: Optional[Tensor]
    cross_embeddings: Optional[Tensor]


@META_ARCH_REGISTRY.register()
class DeformableDETR(nn.Module):
    """Two-stage Deformable DETR with iterative box refinement (Zhu et al. 2021)."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        in_features: List[str],
        transformer: DeformableTransformer,
        criterion: SetCriterion,
        pixel_mean: Tuple[float, float, float],
        pixel_std: Tuple[float, float, float],
        num_select: int = 100,
        test_nms_thresh: float = 0.0,
        pos_temperature: float = 10000.0,
        dn_number: int = 0,
        dn_label_noise_ratio: float = 0.5,
        dn_box_noise_scale: float = 1.0,
        input_format: str = "BGR",
        cross_view_roi_size: int = 0,
        cross_view_projector: str = "mlp",
    ):
        """
        Args:
            backbone / in_features: a detectron2 backbone and the maps fed to the transformer.
            transformer: the deformable transformer (with its prediction heads).
            criterion: losses; its `num_classes` must equal the transformer's.
            pixel_mean, pixel_std: input normalisation, in `input_format` channel order.
            num_select: detections kept per image (top-k over queries x classes).
            test_nms_thresh: class-aware NMS IoU threshold at inference; 0 = NMS-free.
            dn_number, dn_label_noise_ratio, dn_box_noise_scale: contrastive denoising (0 = off).
            cross_view_roi_size: > 0 adds Semi-DETR's cross-view query embedding (RoIAlign of this size).
            cross_view_projector: its projector, "mlp" (paper) or "conv" (official code).
        """
        super().__init__()
        self.backbone = backbone
        self.in_features = list(in_features)
        d_model = transformer.d_model
        shapes = backbone.output_shape()
        missing = [f for f in self.in_features if f not in shapes]
        if missing:
            raise ValueError(f"MODEL.DETR.IN_FEATURES {missing} are not produced by the backbone "
                             f"(it produces {sorted(shapes)}); check MODEL.RESNETS.OUT_FEATURES")
        self.projection = MultiScaleProjection([shapes[f].channels for f in self.in_features], d_model,
                                               transformer.num_feature_levels)
        self.position_embedding = PositionEmbeddingSine(d_model // 2, temperature=pos_temperature)
        self.transformer = transformer
        self.criterion = criterion
        self.num_classes = transformer.num_classes
        self.num_select = num_select
        self.test_nms_thresh = test_nms_thresh
        self.input_format = input_format
        self.dn_number = dn_number
        self.dn_label_noise_ratio = dn_label_noise_ratio
        self.dn_box_noise_scale = dn_box_noise_scale
        self.label_embedding = nn.Embedding(self.num_classes, d_model) if dn_number > 0 else None
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.cross_view_embedding = None
        if cross_view_roi_size > 0:
            strides = [shapes[f].stride for f in self.in_features]
            strides += [strides[-1] * 2 ** (i + 1) for i in range(transformer.num_feature_levels - len(strides))]
            self.cross_view_embedding = CrossViewQueryEmbedding(d_model, strides, cross_view_roi_size,
                                                                cross_view_projector)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        d = cfg.MODEL.DETR
        num_classes = resolve_num_classes(cfg)
        transformer = DeformableTransformer(
            num_classes=num_classes, d_model=d.HIDDEN_DIM, nhead=d.NHEADS, num_encoder_layers=d.ENC_LAYERS,
            num_decoder_layers=d.DEC_LAYERS, dim_feedforward=d.DIM_FEEDFORWARD, dropout=d.DROPOUT,
            activation=d.ACTIVATION, num_feature_levels=d.NUM_FEATURE_LEVELS, enc_n_points=d.ENC_N_POINTS,
            dec_n_points=d.DEC_N_POINTS, num_queries=d.NUM_QUERIES, query_init=d.QUERY_INIT,
            look_forward_twice=d.LOOK_FORWARD_TWICE, share_pred_heads=d.SHARE_PRED_HEADS,
        )
        set_ms_deform_attn_impl(transformer, d.MS_DEFORM_ATTN_IMPL)
        loss = resolve_loss_profile(cfg)
        matcher = HungarianMatcher(cost_class=loss["COST_CLASS"], cost_bbox=loss["COST_BBOX"],
                                   cost_giou=loss["COST_GIOU"], focal_alpha=d.FOCAL_ALPHA, focal_gamma=d.FOCAL_GAMMA)
        shm = cfg.SEMIDETR.SHM
        one_to_many = None
        if shm.ENABLED:
            kwargs = {"alpha": shm.ALPHA, "beta": shm.BETA}
            if shm.ASSIGNER == "task_aligned":  # the Table 6 alternatives keep their own defaults
                kwargs["topk"] = shm.TOPK
            one_to_many = build_one_to_many_assigner(shm.ASSIGNER, **kwargs)
        criterion = SetCriterion(num_classes, matcher, class_weight=loss["CLASS_WEIGHT"],
                                 bbox_weight=loss["BBOX_WEIGHT"], giou_weight=loss["GIOU_WEIGHT"],
                                 focal_alpha=d.FOCAL_ALPHA, focal_gamma=d.FOCAL_GAMMA,
                                 one_to_many_assigner=one_to_many, one_to_many_gamma=shm.GAMMA,
                                 enc_class_target=loss["ENC_CLASS_TARGET"])
        return {
            "backbone": build_backbone(cfg),
            "in_features": d.IN_FEATURES,
            "transformer": transformer,
            "criterion": criterion,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "num_select": d.NUM_SELECT,
            "test_nms_thresh": d.TEST_NMS_THRESH,
            "pos_temperature": d.POS_TEMPERATURE,
            "input_format": cfg.INPUT.FORMAT,
            "cross_view_roi_size": cfg.SEMIDETR.CQC.ROI_SIZE if cfg.SEMIDETR.CQC.ENABLED else 0,
            "cross_view_projector": resolve_cqc(cfg)["projector"] if cfg.SEMIDETR.CQC.ENABLED else "mlp",
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------------------------------------
    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images)

    @staticmethod
    def padding_mask(images: ImageList) -> Tensor:
        """(N, H, W) bool, True on the padding ImageList added around each image."""
        batch_size, _, height, width = images.tensor.shape
        mask = torch.ones(batch_size, height, width, dtype=torch.bool, device=images.tensor.device)
        for i, (h, w) in enumerate(images.image_sizes):
            mask[i, :h, :w] = False
        return mask

    def prepare_targets(self, batched_inputs: List[Dict], images: ImageList) -> List[Dict[str, Tensor]]:
        """Boxes in normalised (cx, cy, w, h) of each image's own (unpadded) size, as DETR expects."""
        targets = []
        scales = small_tensor([[w, h, w, h] for h, w in images.image_sizes], torch.float32, self.device)
        for x, scale in zip(batched_inputs, scales):
            instances = x["instances"].to(self.device)
            boxes = xyxy_to_cxcywh(instances.gt_boxes.tensor.float() / scale)
            targets.append({"labels": instances.gt_classes.long(), "boxes": boxes})
        return targets

    def extract_features(self, images: ImageList) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """Backbone + projection: the multi-scale features F, their padding masks and positions."""
        features = self.backbone(images.tensor)
        srcs = self.projection([features[f] for f in self.in_features])
        image_mask = self.padding_mask(images)
        masks = [F.interpolate(image_mask[None].float(), size=src.shape[-2:])[0].bool() for src in srcs]
        pos = [self.position_embedding(mask).to(src.dtype) for src, mask in zip(srcs, masks)]
        return srcs, masks, pos

    def build_denoising(self, targets: List[Dict[str, Tensor]]) -> Optional[DenoisingQueries]:
        if self.label_embedding is None or not self.training:
            return None
        return prepare_contrastive_denoising(
            targets, dn_number=self.dn_number, label_noise_ratio=self.dn_label_noise_ratio,
            box_noise_scale=self.dn_box_noise_scale, num_classes=self.num_classes,
            label_embedding=self.label_embedding)

    def encode_images(self, images: ImageList) -> EncodedImages:
        srcs, masks, pos = self.extract_features(images)
        encoder = self.transformer.encode(srcs, masks, pos)
        return EncodedImages(images, srcs, encoder, self.transformer.select_queries(encoder))

    def forward_outputs(self, images: ImageList, dn_targets: Optional[List[Dict[str, Tensor]]] = None,
                        cross: Optional[CrossViewQueries] = None):
        """Run the network. Returns (DetectorOutputs, EncodedImages, denoising queries or None, decoder
        features of the cross-view queries or None)."""
        encoded = self.encode_images(images)
        denoising = self.build_denoising(dn_targets) if dn_targets is not None else None
        outputs, cross_hidden = self.decode_queries(
            encoded, denoising, cross.content if cross is not None else None,
            cross.reference if cross is not None else None)
        outputs["enc_logits"], outputs["enc_boxes"] = encoded.selection.enc_logits, encoded.selection.enc_boxes
        return outputs, encoded, denoising, cross_hidden

    def decode_queries(self, encoded: EncodedImages, denoising: Optional[DenoisingQueries] = None,
                       cross_content: Optional[Tensor] = None, cross_reference: Optional[Tensor] = None):
        """Decode [denoising | matching | cross-view] queries in one pass under the attention mask.

        Returns (DetectorOutputs of the matching and denoising queries, decoder hidden states of the
        cross-view queries (L, N, X, C) or None)."""
        content, reference = encoded.selection.content, encoded.selection.reference
        num_queries = content.shape[1]
        num_dn = denoising.pad_size if denoising is not None else 0
        num_cross = cross_content.shape[1] if cross_content is not None else 0
        parts_content, parts_reference = [content], [reference]
        if denoising is not None:
            parts_content.insert(0, denoising.content)
            parts_reference.insert(0, denoising.reference)
        if num_cross:
            parts_content.append(cross_content)
            parts_reference.append(cross_reference)
        mask = build_self_attention_mask(
            denoising.num_groups if denoising is not None else 0,
            denoising.max_targets if denoising is not None else 0, num_queries, num_cross, content.device)
        decoded = self.transformer.decode(encoded.encoder, torch.cat(parts_content, 1), torch.cat(parts_reference, 1),
                                          mask)

        outputs = DetectorOutputs()
        matching = slice(num_dn, num_dn + num_queries)
        outputs["pred_logits"] = decoded.logits[:, :, matching]
        outputs["pred_boxes"] = decoded.boxes[:, :, matching]
        outputs["hidden"] = decoded.hidden[:, :, matching]
        if self.label_embedding is not None and self.training:
            outputs["dn_logits"] = decoded.logits[:, :, :num_dn]
            outputs["dn_boxes"] = decoded.boxes[:, :, :num_dn]
            if denoising is None:
                # No target in the batch: the label embedding is unused; tie it to the graph with a zero so
                # DDP sees the same parameters used on every process.
                outputs["dn_logits"] = outputs["dn_logits"] + 0.0 * self.label_embedding.weight.sum()
        cross_hidden = decoded.hidden[:, :, num_dn + num_queries:] if cross_content is not None else None
        return outputs, cross_hidden

    # ------------------------------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict], return_outputs: bool = False):
        """Training: the loss dictionary (and, with return_outputs, a TrainingOutputs); inference:
        detectron2 results in the original image frame."""
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        targets = self.prepare_targets(batched_inputs, images)
        dn_targets = [t if x.get("denoise", True) else _empty_target(t) for x, t in zip(batched_inputs, targets)]
        cross, projected = self.prepare_cross_view_queries(batched_inputs, images)
        outputs, encoded, denoising, cross_hidden = self.forward_outputs(images, dn_targets, cross)
        losses = self.group_losses(batched_inputs, outputs, targets, dn_targets, denoising)
        if not return_outputs:
            return losses
        cross_embeddings = projected  # the embeddings this model made of the other view's RoI features
        if self.cross_view_embedding is not None and projected is None:
            boxes = [x["cross_view_boxes"].to(self.device) if "cross_view_boxes" in x else torch.zeros(0, 4, device=self.device)
                     for x in batched_inputs]
            cross_embeddings = self.cross_view_embedding(encoded.srcs, boxes)
        return losses, TrainingOutputs(outputs, cross_hidden, cross_embeddings)

    def prepare_cross_view_queries(self, batched_inputs: List[Dict], images: ImageList):
        """(CrossViewQueries or None, the embeddings projected here from "cross_view_roi_features" (sum x_i, C)
        in image order, or None). All RoI features of the batch go through the projector together (its
        batch norm sees the whole batch, as in the official code)."""
        given = [x.get("cross_view_queries") for x in batched_inputs]
        projected = None
        if any("cross_view_roi_features" in x for x in batched_inputs):
            rois = [x["cross_view_roi_features"].to(self.device) for x in batched_inputs
                    if "cross_view_roi_features" in x]
            projected = self.cross_view_embedding.project(torch.cat(rois))
            parts = iter(projected.split([len(r) for r in rois]))
            given = [next(parts) if "cross_view_roi_features" in x else None for x in batched_inputs]
        if all(c is None for c in given):
            return None, None
        d_model = self.transformer.d_model
        contents, boxes = [], []
        for x, content, (h, w) in zip(batched_inputs, given, images.image_sizes):
            contents.append(content.to(self.device) if content is not None
                            else torch.zeros(0, d_model, device=self.device))
            pixel_boxes = x["cross_view_boxes"].to(self.device) if content is not None \
                else torch.zeros(0, 4, device=self.device)
            boxes.append(xyxy_to_cxcywh(pixel_boxes / pixel_boxes.new_tensor([w, h, w, h])))
        return CrossViewQueries.pad(contents, boxes), projected

    def group_losses(self, batched_inputs, outputs: DetectorOutputs, targets, dn_targets, denoising) -> Dict[str, Tensor]:
        """Criterion per loss group (see module docstring), each normalised by its own target count.

        In float32 with autocast off under mixed precision (SOLVER.AMP): focal terms of small
        probabilities, GIoU of near-equal boxes and the Hungarian costs lose too many bits in bfloat16 /
        float16, and the matching should not depend on the training precision."""
        outputs = DetectorOutputs({key: value.float() for key, value in outputs.items()})
        with torch.autocast(self.device.type, enabled=False):
            return self._criterion_per_group(batched_inputs, outputs, targets, dn_targets, denoising)

    def _criterion_per_group(self, batched_inputs, outputs, targets, dn_targets, denoising) -> Dict[str, Tensor]:
        groups = [x.get("loss_group", "") for x in batched_inputs]
        losses = {}
        for group in dict.fromkeys(groups):  # first-appearance order, identical on every process
            index = [i for i, g in enumerate(groups) if g == group]
            assignments = {batched_inputs[i].get("assignment", "one_to_one") for i in index}
            if len(assignments) != 1:
                raise ValueError(f"Loss group {group!r} mixes assignments {sorted(assignments)}")
            selected = outputs
            if len(index) != len(groups):
                selected = outputs.select_images(small_tensor(index, torch.long, self.device))
            class_weights = [float(batched_inputs[i].get("class_loss_weight", 1.0)) for i in index]
            image_weights = None if all(w == 1.0 for w in class_weights) else \
                small_tensor(class_weights, torch.float32, self.device)
            group_losses = self.criterion(selected, [targets[i] for i in index], denoising,
                                          dn_targets=[dn_targets[i] for i in index], assignment=assignments.pop(),
                                          image_weights=image_weights)
            prefix = loss_group_prefix(group)
            losses.update({prefix + name: value for name, value in group_losses.items()})
        return losses

    def inference(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        results = self.predict(batched_inputs)
        processed = []
        for result, x in zip(results, batched_inputs):
            height = x.get("height", result.image_size[0])
            width = x.get("width", result.image_size[1])
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed

    def predict(self, batched_inputs: List[Dict], return_encoded: bool = False, nms_thresh: Optional[float] = None,
                clip: bool = True):
        """Detections in the network-input frame: pixel xyxy boxes of each (unpadded) input image. With
        return_encoded, also the EncodedImages (a teacher decodes cross-view queries with them later).
        nms_thresh: class-aware NMS IoU (0 = none); None = the inference setting `test_nms_thresh`. A teacher
        passes its pseudo-label NMS explicitly. clip: clip the boxes to their image."""
        images = self.preprocess_image(batched_inputs)
        outputs, encoded, _, _ = self.forward_outputs(images)
        results = self.postprocess(outputs["pred_logits"][-1], outputs["pred_boxes"][-1], images.image_sizes,
                                   self.test_nms_thresh if nms_thresh is None else nms_thresh, clip)
        return (results, encoded) if return_encoded else results

    # With NMS, the (query, class) pairs scoring above this enter NMS before the top-k (the official
    # Semi-DETR head's multiclass_nms score_thr, dino_detr_ssod_head.py:1374).
    NMS_SCORE_THRESH = 0.01

    def postprocess(self, logits: Tensor, boxes: Tensor, image_sizes, nms_thresh: float = 0.0,
                    clip: bool = True) -> List[Instances]:
        """Without NMS: the top-k (num_select) (query, class) pairs. With class-aware NMS (IoU nms_thresh):
        every pair scoring > NMS_SCORE_THRESH, NMS, then the top-k survivors - the official head's rule
        (dino_detr_ssod_head.py:1371-1395). Boxes are clipped to the image first (when `clip`)."""
        prob = logits.float().sigmoid()
        num_classes = prob.shape[-1]
        k = min(self.num_select, prob[0].numel())
        scales = small_tensor([[w, h, w, h] for h, w in image_sizes], torch.float32, boxes.device)
        all_boxes = cxcywh_to_xyxy(boxes.float()) * scales[:, None, :]
        if clip:
            limit = scales[:, None, :]
            all_boxes = torch.minimum(all_boxes.clamp(min=0), limit)
        results = []
        for i, (h, w) in enumerate(image_sizes):
            if nms_thresh > 0:
                query, label = (prob[i] > self.NMS_SCORE_THRESH).nonzero(as_tuple=True)
                score, xyxy = prob[i, query, label], all_boxes[i, query]
                keep = batched_nms(xyxy, score, label, nms_thresh)[:k]  # sorted by decreasing score
                xyxy, score, label = xyxy[keep], score[keep], label[keep]
            else:
                score, index = prob[i].flatten().topk(k)
                label = index % num_classes
                xyxy = all_boxes[i, torch.div(index, num_classes, rounding_mode="floor")]
            result = Instances((h, w))
            result.pred_boxes = Boxes(xyxy)
            result.scores = score
            result.pred_classes = label
            results.append(result)
        return results


def _empty_target(target: Dict[str, Tensor]) -> Dict[str, Tensor]:
    return {"labels": target["labels"][:0], "boxes": target["boxes"][:0]}


@META_ARCH_REGISTRY.register()
class DINO(DeformableDETR):
    """DINO (Zhang et al. 2022): Deformable DETR + contrastive denoising, mixed query selection and
    look-forward-twice (the last two are transformer options, set by the configs)."""

    @classmethod
    def from_config(cls, cfg) -> Dict:
        args = super().from_config(cfg)
        args.update(
            dn_number=cfg.MODEL.DETR.DN_NUMBER,
            dn_label_noise_ratio=cfg.MODEL.DETR.DN_LABEL_NOISE_RATIO,
            dn_box_noise_scale=resolve_loss_profile(cfg)["DN_BOX_NOISE_SCALE"],
        )
        return args
