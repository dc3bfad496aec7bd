# Copyright (c) SemiDETR-D2 contributors. Licensed under the Apache License 2.0.
"""Configuration keys of SemiDETR-D2.

`add_semidetr_config(cfg)` extends detectron2's default yacs config. Every key is commented with its
meaning, its default and where the default comes from (paper, official code, DINO/Deformable DETR).
Keys that already exist in detectron2 (MODEL.RESNETS.*, INPUT.MIN_SIZE_TRAIN, SOLVER.*, ...) keep their
detectron2 meaning and are only documented where this project relies on them.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_semidetr_config"]


def add_semidetr_config(cfg: CN) -> None:
    """Add every SemiDETR-D2 key to `cfg` (in place)."""
    _add_detr_config(cfg)
    _add_solver_config(cfg)
    _add_input_config(cfg)
    _add_dataset_config(cfg)
    _add_semi_config(cfg)
    _add_semidetr_config(cfg)
    _add_gpu_config(cfg)


def _add_detr_config(cfg: CN) -> None:
    # ---------------------------------------------------------------------------------------------
    # The DETR-family detector (meta-architectures "DINO" and "DeformableDETR").
    # Defaults are DINO-4scale R-50 (Zhang et al. 2022); configs/DeformableDETR overrides what differs.
    # ---------------------------------------------------------------------------------------------
    cfg.MODEL.DETR = CN()
    # Number of foreground classes. 0 = take it from the training data set's metadata
    # (len(MetadataCatalog.get(DATASETS.TRAIN[0]).thing_classes)); there is no built-in class count.
    cfg.MODEL.DETR.NUM_CLASSES = 0
    # Backbone feature maps fed to the transformer, from fine to coarse.
    cfg.MODEL.DETR.IN_FEATURES = ["res3", "res4", "res5"]
    # Number of feature levels seen by the transformer. Levels beyond len(IN_FEATURES) are made by
    # stride-2 3x3 convolutions on the coarsest backbone map (DINO-4scale: 3 backbone maps + 1 extra).
    cfg.MODEL.DETR.NUM_FEATURE_LEVELS = 4
    # Transformer width, attention heads, FFN width, dropout and activation.
    cfg.MODEL.DETR.HIDDEN_DIM = 256
    cfg.MODEL.DETR.NHEADS = 8
    cfg.MODEL.DETR.DIM_FEEDFORWARD = 2048  # DINO 2048; Deformable DETR 1024
    cfg.MODEL.DETR.DROPOUT = 0.0  # DINO 0.0; Deformable DETR 0.1
    cfg.MODEL.DETR.ACTIVATION = "relu"
    # Encoder and decoder depth.
    cfg.MODEL.DETR.ENC_LAYERS = 6
    cfg.MODEL.DETR.DEC_LAYERS = 6
    # Sampling points per head and level in the encoder / decoder deformable attention.
    cfg.MODEL.DETR.ENC_N_POINTS = 4
    cfg.MODEL.DETR.DEC_N_POINTS = 4
    # Number of matching (detection) queries: DINO 900, Deformable DETR 300.
    cfg.MODEL.DETR.NUM_QUERIES = 900
    # How the two-stage query selection initialises the decoder queries:
    #   "mixed"    (DINO): positions = top-k encoder proposals, content = learnable embeddings;
    #   "proposal" (Deformable DETR two-stage): content and a fixed positional query both come from
    #              an embedding of the top-k encoder proposals.
    cfg.MODEL.DETR.QUERY_INIT = "mixed"
    # DINO's look-forward-twice box update (the layer-l box loss also updates layer l-1's box head).
    cfg.MODEL.DETR.LOOK_FORWARD_TWICE = True
    # Share the class/box prediction heads across decoder layers (DINO: True; Deformable DETR: False).
    cfg.MODEL.DETR.SHARE_PRED_HEADS = True
    # Temperature of the sine positional embedding of the feature maps (DINO-4scale: 20;
    # Deformable DETR: 10000).
    cfg.MODEL.DETR.POS_TEMPERATURE = 20.0
    # Detections kept per image at inference: top-k over (queries x classes) sigmoid scores.
    # DINO: 300, Deformable DETR: 100.
    cfg.MODEL.DETR.NUM_SELECT = 300
    # Class-aware NMS IoU threshold applied at inference when NMS is on (a model trained with
    # one-to-many assignment produces duplicates, see SEMIDETR.SHM). 0 disables NMS entirely.
    cfg.MODEL.DETR.TEST_NMS_THRESH = 0.0

    # Loss profile: one switch for the loss weights, matching costs, denoising box noise and encoder class
    # targets below (CLASS_WEIGHT, BBOX_WEIGHT, GIOU_WEIGHT, COST_CLASS, COST_BBOX, COST_GIOU,
    # DN_BOX_NOISE_SCALE, ENC_CLASS_TARGET), resolved in one place (modeling/detector.py LOSS_PROFILES):
    #   "official": the official Semi-DETR code as it applies them: class 2, L1 10 (its head returns the
    #               L1 term twice, as the xy and wh parts, and mmdet sums every "loss" key), GIoU 2,
    #               costs 2 / 5 / 2, box noise 0.4, encoder targets all class 0 (the Semi-DETR configs);
    #   "dino":     DINO's published values: class 1, L1 5, GIoU 2, costs 2 / 5 / 2, box noise 1.0,
    #               encoder targets of their own class (= the key defaults);
    #   "":         the keys themselves (Deformable DETR configs).
    # With a named profile, the keys it sets must stay at their defaults (else an error at build time).
    cfg.MODEL.DETR.LOSS_PROFILE = ""
    # Loss weights (DETR criterion), on the decoder, encoder and denoising losses alike. DINO: class 1,
    # L1 5, GIoU 2. Deformable DETR: class 2.
    cfg.MODEL.DETR.CLASS_WEIGHT = 1.0
    cfg.MODEL.DETR.BBOX_WEIGHT = 5.0
    cfg.MODEL.DETR.GIOU_WEIGHT = 2.0
    # Sigmoid focal loss parameters of the classification loss and of the matching cost.
    cfg.MODEL.DETR.FOCAL_ALPHA = 0.25
    cfg.MODEL.DETR.FOCAL_GAMMA = 2.0
    # Hungarian matcher costs (DINO: class 2.0, L1 5.0, GIoU 2.0).
    cfg.MODEL.DETR.COST_CLASS = 2.0
    cfg.MODEL.DETR.COST_BBOX = 5.0
    cfg.MODEL.DETR.COST_GIOU = 2.0
    # Class of every target in the encoder proposals' loss and matching (mixed query selection):
    # "class" (DINO: the target's own class) or "first_class" (official Semi-DETR code, after mmdet's
    # two-stage heads: all targets are class 0, so the first logit learns objectness). Class-agnostic
    # proposals (QUERY_INIT "proposal", one logit) are the same under both.
    cfg.MODEL.DETR.ENC_CLASS_TARGET = "class"

    # Contrastive denoising (DINO CDN). DN_NUMBER is the budget of denoising queries per image
    # (groups = DN_NUMBER // max targets in the batch, each with a positive and a negative copy of
    # every target); 0 disables denoising (Deformable DETR).
    cfg.MODEL.DETR.DN_NUMBER = 100
    # Probability scale of label flipping: a label is replaced by a random class with
    # probability DN_LABEL_NOISE_RATIO * 0.5 (DINO).
    cfg.MODEL.DETR.DN_LABEL_NOISE_RATIO = 0.5
    # Box noise scale (lambda): positives are jittered by < lambda * half the box size, negatives by
    # between lambda and 2 lambda. DINO 1.0; the official Semi-DETR head 0.4 (LOSS_PROFILE "official").
    cfg.MODEL.DETR.DN_BOX_NOISE_SCALE = 1.0


def _add_solver_config(cfg: CN) -> None:
    # Optimizer: "ADAMW" (DINO and the official Semi-DETR code: AdamW, lr 1e-4, weight decay 1e-4),
    # "ADAM" (the paper's text: Adam, lr 1e-3) or "SGD".
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # Learning-rate multiplier of the backbone parameters (DETR family: 0.1).
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # Learning-rate multiplier of the deformable attention's sampling-offset projections (Deformable
    # DETR, DINO and the official Semi-DETR code: 0.1).
    cfg.SOLVER.SAMPLING_OFFSETS_MULTIPLIER = 0.1
    # Gradient clipping: detectron2's SOLVER.CLIP_GRADIENTS keys; CLIP_TYPE "full_model" clips the
    # norm of all gradients together (DETR/DINO: max norm 0.1), "value"/"norm" are detectron2's
    # per-parameter modes.
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.1
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
    # Non-finite losses/gradients: the step is skipped (optimizer, scheduler and EMA teacher untouched)
    # and logged; training stops with an error after this many skipped steps in a row.
    cfg.SOLVER.MAX_NONFINITE_STEPS = 5
    # Save checkpoints atomically (temporary file + rename), so a process killed while saving leaves
    # the previous checkpoint loadable.
    cfg.SOLVER.ATOMIC_CHECKPOINTS = True


def _add_input_config(cfg: CN) -> None:
    # ---------------------------------------------------------------------------------------------
    # Views. The labeled view, the teacher's weak view and the student's strong view each draw their
    # own shortest-edge resize from detectron2's INPUT.MIN_SIZE_TRAIN (with
    # INPUT.MIN_SIZE_TRAIN_SAMPLING "range" or "choice", capped by INPUT.MAX_SIZE_TRAIN) and their own
    # horizontal flip with probability INPUT.AUG.FLIP_PROB (detectron2's INPUT.RANDOM_FLIP is not read).
    # Test images use INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST. Paper-scale defaults follow the official code
    # (SoftTeacher's pipeline): shortest edge in [400, 1200], longest <= 1333.
    # ---------------------------------------------------------------------------------------------
    cfg.INPUT.AUG = CN()
    # Probability of the horizontal flip of each view.
    cfg.INPUT.AUG.FLIP_PROB = 0.5
    # Colour operations; one of them, chosen uniformly, is applied to labeled images and strong views.
    # Names: identity, autocontrast, equalize, solarize, color, contrast, brightness, sharpness,
    # posterize (SoftTeacher's list).
    cfg.INPUT.AUG.COLOR_OPS = [
        "identity", "autocontrast", "equalize", "solarize", "color",
        "contrast", "brightness", "sharpness", "posterize",
    ]
    # Apply one colour operation to labeled images (official: yes).
    cfg.INPUT.AUG.LABELED_COLOR = True
    # Magnitude range m of the colour operations, drawn uniformly per image: enhancement factors
    # (color, contrast, brightness, sharpness) 1 +- 0.9 m, solarize threshold 256 - 256 m, posterize to
    # 8 - round(4 m) bits; autocontrast and equalize ignore m.
    cfg.INPUT.AUG.COLOR_MAGNITUDE = (0.0, 1.0)
    # Geometric operations of the strong view; one of them is applied. Names: translate_x,
    # translate_y, rotate, shear (shear in x then in y, as the official code).
    cfg.INPUT.AUG.GEOMETRIC_OPS = ["translate_x", "translate_y", "rotate", "shear"]
    # Keep the strong view's geometric operations box-exact: only the translations of GEOMETRIC_OPS
    # (with the resize and flip of every view), no rotate / shear, whose mapped boxes (the bounding box of
    # the box's four corners, as in the official code) are larger than the objects' tight boxes - for round
    # objects much larger (measured: BENCHMARKS.md, "Box accuracy of the strong view"). Default False: the
    # official pipeline (base_dino_detr_ssod_coco.py:95-106).
    cfg.INPUT.AUG.BOX_EXACT_GEOMETRY = False
    # Translation range as a fraction of the image size (official: 0.1).
    cfg.INPUT.AUG.TRANSLATE_FRACTION = 0.1
    # Rotation range in degrees (official: 30).
    cfg.INPUT.AUG.ROTATE_DEGREES = 30.0
    # Shear range in degrees (official: 30).
    cfg.INPUT.AUG.SHEAR_DEGREES = 30.0
    # Random erasing on the strong view (filled with grey 125): number of rectangles (inclusive range;
    # the official np.random.randint(1, 5) draws 1 to 4), side length as a fraction of the image side.
    # ERASE_SQUARED: one fraction for both sides, so the rectangle has the image's aspect ratio
    # (SoftTeacher's "squared"); False draws the height fraction independently.
    cfg.INPUT.AUG.ERASE_COUNT = (1, 4)
    cfg.INPUT.AUG.ERASE_SIZE = (0.0, 0.2)
    cfg.INPUT.AUG.ERASE_SQUARED = True
    # Boxes mapped into a view that end up smaller than this many pixels (width or height) after
    # clipping are dropped (and counted).
    cfg.INPUT.AUG.MIN_BOX_SIZE = 1.0


def _add_dataset_config(cfg: CN) -> None:
    # Unlabeled training data sets (semi-supervised training only); DATASETS.TRAIN are the labeled ones.
    cfg.DATASETS.TRAIN_UNLABELED = ()
    # Data sets to register before training, for data that is not under a built-in name. Each entry is
    # "NAME=coco:JSON_FILE:IMAGE_ROOT" (labeled COCO json), "NAME=coco_unlabeled:JSON_FILE:IMAGE_ROOT"
    # (an image-info json without annotations), "NAME=voc:ROOT:SPLIT[:CLASS1,CLASS2,...]" (Pascal VOC
    # layout; classes read from the XML files when not given) or "NAME=folder:IMAGE_DIR" (a plain folder
    # of unlabeled images). Relative paths are resolved against DETECTRON2_DATASETS (default
    # ./datasets). Splits such as "NAME.1@10" / "NAME.1@10-unlabeled" are then available by name.
    # See datasets/README.md.
    cfg.DATASETS.REGISTER = []


def _add_semi_config(cfg: CN) -> None:
    # ---------------------------------------------------------------------------------------------
    # Teacher-student semi-supervised training (SemiTrainer).
    # ---------------------------------------------------------------------------------------------
    cfg.SEMI = CN()
    # Train with DATASETS.TRAIN (labeled) + DATASETS.TRAIN_UNLABELED through the SemiTrainer.
    cfg.SEMI.ENABLED = False
    # labeled : unlabeled images in each process's batch. SOLVER.IMS_PER_BATCH is the total over all
    # processes (detectron2 convention), split in this ratio (official: 1:4, 5 images per GPU).
    cfg.SEMI.SAMPLE_RATIO = (1, 4)
    # Teacher score threshold tau_s for pseudo labels (paper: 0.4).
    cfg.SEMI.PSEUDO_SCORE_THRESH = 0.4
    # Pseudo labels must also score >= the mean + std of their image's detections (after NMS). Default on:
    # the official code filters every image's detections by mean + std first (dino_detr_ssod.py:918-939)
    # and takes the pseudo labels of the detection loss among them (:336-343); an image with few, all
    # confident detections can then keep fewer than tau_s alone would. The paper: tau_s only (False).
    cfg.SEMI.PSEUDO_MEAN_STD_FLOOR = True
    # Weight w_u of the unsupervised loss (paper: 4 for COCO-Partial and VOC, 2 for COCO-Full).
    cfg.SEMI.UNSUP_LOSS_WEIGHT = 4.0
    # EMA momentum m of the teacher: teacher = d * teacher + (1 - d) * student with
    # d = min(m, 1 - 1 / (iter + 1)) (paper: 0.999).
    cfg.SEMI.EMA_MOMENTUM = 0.999
    # The warm-up d = min(m, 1 - 1 / (iter + 1)) (official). Set False when both models start from a
    # trained (e.g. supervised) checkpoint: with warm-up the teacher is a copy of the student for the
    # first ~1 / (1 - m) iterations, so the student's first noisy steps on pseudo labels overwrite the
    # trained teacher (measured: BENCHMARKS.md section 4).
    cfg.SEMI.EMA_WARMUP = True
    # Training stages ("one_to_many", "one_to_one"; see SEMIDETR.SHM) in which pseudo labels also become
    # denoising (CDN) queries; labeled images always do. [] = denoising on labeled images only. Default:
    # the official code, which drops the denoising losses of pseudo-labeled images in the one-to-many
    # stage (dino_detr_ssod_head.py:550-555, `in_warm_up and is_pseudo_label`); without SHM every
    # iteration is one-to-one, so the SSOD baseline keeps them. The paper does not say:
    # ["one_to_many", "one_to_one"] keeps them throughout.
    cfg.SEMI.PSEUDO_LABEL_DENOISING = ["one_to_one"]
    # Class-aware NMS IoU threshold of the teacher's detections that become pseudo labels (0 = none),
    # passed to `teacher.predict` (evaluation NMS never applies to pseudo labels). With NMS every
    # (query, class) pair scoring > 0.01 enters NMS and the MODEL.DETR.NUM_SELECT best survivors are kept,
    # then score >= tau_s. Default 0.6: the official rule for every semi-supervised model, in both stages
    # (`for_pseudo_label=True`, dino_detr_ssod.py:904-906 -> dino_detr_ssod_head.py:1371-1395); the SSOD
    # baseline rows use it too, so that Table 4's rows differ only in their component. The paper has none.
    cfg.SEMI.PSEUDO_NMS_THRESH = 0.6
    # Clip the teacher's boxes to the weak view (before NMS and before they are mapped into the strong
    # view), as the official head clamps every box to the image (dino_detr_ssod_head.py:1383-1384). An
    # unclipped box reaching past the weak view would cover, after a translation, part of the strong
    # view's fill instead of the image.
    cfg.SEMI.PSEUDO_CLIP_BOXES = True
    # What an unlabeled image without pseudo labels (no teacher box >= tau_s) contributes:
    #   "background": every query is trained as background (the official code: the DINO loss with no
    #                 targets); while the teacher is weak this pushes down the scores of real objects;
    #   "ignore":     nothing (classification weight 0; its box losses are zero anyway).
    cfg.SEMI.IMAGES_WITHOUT_PSEUDO_LABELS = "background"
    # Load the ground truth of the unlabeled images for monitoring only (pseudo-label precision and
    # recall at IoU 0.5 in the metrics). It never reaches a loss; turning it on is logged. A set without
    # ground truth (a plain folder) is not monitored, with one warning; the others still are.
    cfg.SEMI.MONITOR_UNLABELED_GT = False
    # Every this many iterations write a PNG of weak/strong views with their pseudo boxes (0: never).
    cfg.SEMI.VIS_PERIOD = 0
    # Models scored by periodic evaluation (metric prefixes "teacher/" and "student/").
    cfg.SEMI.EVAL_MODELS = ["teacher", "student"]
    # The model scored by --eval-only: "teacher" (default) or "student".
    cfg.SEMI.EVAL_ONLY_MODEL = "teacher"


def _add_semidetr_config(cfg: CN) -> None:
    # ---------------------------------------------------------------------------------------------
    # Semi-DETR's components (on top of SEMI). Each is switchable, so every row of the paper's
    # ablations (Tables 4-8) is a config.
    # ---------------------------------------------------------------------------------------------
    cfg.SEMIDETR = CN()

    # Stage-wise Hybrid Matching (Sec. 3.3): one-to-many assignment for the first O2M_ITERS iterations,
    # then one-to-one Hungarian matching. The current stage is trainer state, saved in checkpoints;
    # evaluation reads it from there.
    cfg.SEMIDETR.SHM = CN()
    cfg.SEMIDETR.SHM.ENABLED = False
    # T1: iterations trained with one-to-many assignment (paper: 60k COCO-Partial, 180k COCO-Full, 40k
    # VOC). A model stopped before T1 (or with T1 >= SOLVER.MAX_ITER, Table 7's last column) predicts
    # duplicates and is evaluated with class-aware NMS (TEST_NMS_THRESH); after the switch it is NMS-free.
    cfg.SEMIDETR.SHM.O2M_ITERS = 60000
    # One-to-many assigner: "task_aligned" (the paper: top-k by s^ALPHA * IoU^BETA), or the Table 6
    # alternatives "max_iou", "atss", "simota".
    cfg.SEMIDETR.SHM.ASSIGNER = "task_aligned"
    # Positives per target (official code: 13), and the exponents of the alignment metric (TOOD: 1, 6).
    cfg.SEMIDETR.SHM.TOPK = 13
    cfg.SEMIDETR.SHM.ALPHA = 1.0
    cfg.SEMIDETR.SHM.BETA = 6.0
    # Focusing parameter gamma of the stage-1 classification loss (eq. 4).
    cfg.SEMIDETR.SHM.GAMMA = 2.0
    # One-to-many assignment for labeled images too (official code: yes); pseudo-labeled images always.
    cfg.SEMIDETR.SHM.APPLY_TO_LABELED = True
    # Class-aware NMS IoU threshold of evaluation while the model is in the one-to-many stage (evaluation
    # only: the teacher's pseudo labels use SEMI.PSEUDO_NMS_THRESH). The official code evaluates a
    # one-to-many model with the same NMS as its pseudo labels, IoU 0.6 (dino_detr_ssod_head.py:1371-1373).
    cfg.SEMIDETR.SHM.TEST_NMS_THRESH = 0.6

    # Cross-view Query Consistency (Sec. 3.4): RoIAlign features of pseudo boxes -> projector -> cross-view
    # queries decoded under an attention mask; consistency between the decoded embeddings of the two views.
    cfg.SEMIDETR.CQC = CN()
    cfg.SEMIDETR.CQC.ENABLED = False
    # How CQC is built; every key below left at its "variant's" value follows it (modeling/cross_view.py,
    # CQC_VARIANTS):
    #   "official" (default: the code behind the paper's numbers, detr_ssod/models/dino_detr_ssod.py): one
    #       projector (the student's, trained through the student's decoding) embeds the teacher's
    #       weak-view RoI features; the student decodes that embedding at the strong-view boxes, the teacher
    #       at the weak-view boxes without gradient; loss 10 * MSE of the L2-normalised embeddings
    #       (averaged over channels too) per decoder layer, multiplied by w_u; one-to-many stage only;
    #       candidates: CPM-kept or score >= tau_s; projector "conv".
    #   "paper" (eq. 9-11): each model embeds its own view's boxes and the other decodes them; loss
    #       1 - cos with w_c = 1 throughout training on the CPM-kept boxes; projector "mlp".
    cfg.SEMIDETR.CQC.VARIANT = "official"
    # w_c of eq. 13; < 0 = the variant's (official 10, paper 1).
    cfg.SEMIDETR.CQC.LOSS_WEIGHT = -1.0
    # "" = the variant's. "cosine": 1 - cos (eq. 11); "normalized_mse": 2 - 2 cos;
    # "official_mse": MSE of the L2-normalised embeddings averaged over channels, (2 - 2 cos) / C, with the
    # official code's zero-weight placeholder of each image without a candidate in the average.
    cfg.SEMIDETR.CQC.LOSS = ""
    # Stages with the consistency loss; [] = the variant's (official ["one_to_many"]: the loss weights are
    # zeroed after the warm-up, dino_detr_ssod.py:469-470; paper: both).
    cfg.SEMIDETR.CQC.STAGES = []
    # Boxes in the loss among the CPM candidates; "" = the variant's. "mined": those CPM keeps (paper);
    # "mined_or_score": those CPM keeps or with score >= SEMI.PSEUDO_SCORE_THRESH (official,
    # dino_detr_ssod.py:332-348).
    cfg.SEMIDETR.CQC.CANDIDATES = ""
    # Projector of the RoI features; "" = the variant's. "mlp": 2-layer MLP (paper, eq. 9); "conv": the
    # official Projector (2 x conv3x3-BN-ReLU, FC-BN-ReLU, FC-ReLU) with mmdet's RoI level rule.
    cfg.SEMIDETR.CQC.PROJECTOR = ""
    # RoIAlign output size (aligned, on the projected multi-scale features; official 7).
    cfg.SEMIDETR.CQC.ROI_SIZE = 7
    # "paper" variant only: let the consistency loss reach the student's c_s through the (frozen) teacher
    # decoder. Without it the teacher branch is a pure stop-gradient target and the student's projector
    # never receives a gradient (so it stays at its initialisation). The official structure has no such
    # path (its one embedding trains through the student's decoding).
    cfg.SEMIDETR.CQC.GRAD_THROUGH_TEACHER = True

    # Cost-based Pseudo Label Mining (Sec. 3.5): which teacher boxes feed CQC.
    cfg.SEMIDETR.CPM = CN()
    # "gmm" (the paper: mean+std candidates, Hungarian matching cost against the student, 2-component
    # GMM over the batch's costs, keep costs up to the reliable component's mean), or the Table 5
    # alternatives "fixed" (score >= SCORE_THRESH), "topk" (TOPK best scores per image), "mean_std".
    cfg.SEMIDETR.CPM.METHOD = "gmm"
    cfg.SEMIDETR.CPM.SCORE_THRESH = 0.4
    cfg.SEMIDETR.CPM.TOPK = 9
    # Matching cost weights of eq. 12 (lambda1 focal class, lambda2 GIoU, lambda3 L1).
    cfg.SEMIDETR.CPM.COST_CLASS = 2.0
    cfg.SEMIDETR.CPM.COST_GIOU = 2.0
    cfg.SEMIDETR.CPM.COST_BBOX = 5.0


def _add_gpu_config(cfg: CN) -> None:
    # ---------------------------------------------------------------------------------------------
    # Mixed precision and the deformable-attention implementation (README "GPU").
    # ---------------------------------------------------------------------------------------------
    # Mixed-precision training: detectron2's SOLVER.AMP.ENABLED (default False) switches autocast on
    # for the forward passes of a step (the supervised step; in semi-supervised training the teacher's
    # inference, the student and the cross-view decoding alike); losses, matching costs, the GMM of
    # cost-based mining and the box arithmetic stay in float32. The autocast dtype:
    #   "bfloat16" float32's range, no loss scaling (GPUs with bf16: Ampere and later; CPUs);
    #   "float16"  with a gradient scaler (torch.amp.GradScaler) for GPUs without bf16 (V100, T4);
    #              steps whose scaled gradients overflow are skipped and the scale lowered, as the
    #              non-finite-step handling does (SOLVER.MAX_NONFINITE_STEPS counts them only once
    #              the scale has fallen below 1).
    cfg.SOLVER.AMP.DTYPE = "bfloat16"
    # Multi-scale deformable attention:
    #   "auto"    the fused Triton kernel on CUDA when Triton can be imported (it ships with the CUDA
    #             builds of torch), the PyTorch (grid_sample) path otherwise;
    #   "triton"  always the fused kernel (an error where it cannot run);
    #   "pytorch" always the PyTorch path.
    # The choice is logged once per device.
    cfg.MODEL.DETR.MS_DEFORM_ATTN_IMPL = "auto"
