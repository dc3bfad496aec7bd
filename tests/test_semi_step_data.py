"""The semi-supervised step (`SemiTrainer.run_step`) on what the README's "What happens when..." table
promises for it: the data metrics of the unlabeled stream are logged where the README names them, and an
unlabeled image without pseudo labels is trained as background or left out of the unsupervised loss
(SEMI.IMAGES_WITHOUT_PSEUDO_LABELS) while the other images of its batch keep their pseudo labels."""
import json
import os

import numpy as np
import pytest
import torch
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from PIL import Image
from torch import nn

from conftest import REPO_ROOT, micro_config_args
from helpers import synthetic_input, tiny_detector_cfg
from semidetr.data.mappers import mapper_stats
from semidetr.engine.defaults import setup_cfg
from semidetr.engine.semi_trainer import SemiTrainer
from semidetr.engine.train_loop import DetrTrainer
from semidetr.engine.trainer import build_trainer
from semidetr.semi.pseudo_labels import PseudoLabeler

SSOD_CONFIG = os.path.join(REPO_ROOT, "configs/quick_schedules/ssod_baseline_shapes10_cpu.yaml")


# ----------------------------------------------------------------------------------------------------
# Data metrics of a semi-supervised run
@pytest.fixture
def bad_unlabeled_set(tmp_path, unique_name):
    """An unlabeled image-info json (sizes from the json, so its files are checked for existence only when
    it is loaded) of a good image, one that cannot be decoded and one whose file has another aspect ratio
    than the json says: the last two reach the mapper, which skips them. Returns its DATASETS.REGISTER spec."""
    rng = np.random.default_rng(0)
    images = []
    for image_id, (name, shape) in enumerate([("good.png", (96, 128)), ("corrupt.png", None),
                                              ("other_aspect.png", (40, 200))]):
        path = tmp_path / name
        if shape is None:
            path.write_bytes(b"not a png")
        else:
            Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)
        images.append({"id": image_id, "file_name": name, "height": 96, "width": 128})
    json_file = tmp_path / "unlabeled.json"
    json_file.write_text(json.dumps({"images": images, "categories": []}))
    name = unique_name("semi_data_unl")
    return name, f"{name}=coco_unlabeled:{json_file}:{tmp_path}"


def test_semi_step_logs_the_unlabeled_streams_skipped_images_as_data_metrics(
        micro_shapes, bad_unlabeled_set, tmp_path, monkeypatch):
    """README: an image that cannot be decoded (or whose size differs from its annotation) during training
    is skipped and counted in the metrics (`data/skipped_unreadable`, `data/skipped_size_mismatch`). In a
    semi-supervised run the unlabeled stream's skips are counted too: one step over all three unlabeled
    images (1 labeled + 3 unlabeled) logs the process's counters, which that step's unlabeled batch raised."""
    name, spec = bad_unlabeled_set
    # The counters are logged every DATA_METRICS_PERIOD iterations: every iteration here.
    monkeypatch.setattr(DetrTrainer, "DATA_METRICS_PERIOD", 1)
    opts = micro_config_args(
        [*micro_shapes, spec], tmp_path, "DATASETS.TRAIN", "('micro_train.1@25',)", "DATASETS.TRAIN_UNLABELED",
        f"('{name}',)", "SOLVER.IMS_PER_BATCH", "4", "SEMI.SAMPLE_RATIO", "(1, 3)", "SEMI.MONITOR_UNLABELED_GT",
        "False", "SEMI.VIS_PERIOD", "0", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "1")
    cfg = setup_cfg(default_argument_parser().parse_args(["--config-file", SSOD_CONFIG, *opts]))
    before = mapper_stats()
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    after = mapper_stats()
    logged = {name: history.values()[-1] for name, history in trainer.storage.histories().items()
              if name.startswith("data/")}
    for counter in ("skipped_unreadable", "skipped_size_mismatch"):
        assert after[counter] > before[counter], counter  # the unlabeled batch hit the bad image
        # Logged at iteration 0, with the count that includes the unlabeled batch (mapped after the labeled one).
        assert logged[f"data/{counter}"] == (after[counter], 0), counter


# ----------------------------------------------------------------------------------------------------
# An unlabeled image without pseudo labels next to one with pseudo labels, through run_step
class _FixedTeacher(nn.Module):
    """Detects two boxes (score 0.9) on the first weak view and one box below tau_s (0.1) on the others."""

    def predict(self, views, return_encoded=False, nms_thresh=None, clip=True):
        results = []
        for index, view in enumerate(views):
            r = Instances(tuple(view["image"].shape[-2:]))
            r.pred_boxes = Boxes(torch.tensor([[4.0, 4, 30, 40], [34, 10, 60, 56]]))
            r.scores = torch.tensor([0.9, 0.9] if index == 0 else [0.1, 0.1])
            r.pred_classes = torch.tensor([0, 2])
            results.append(r)
        return results, None


def _view(image):
    return {"image": image, "transform_matrix": torch.eye(3), "height": 64, "width": 64}


def _unsupervised_step(policy: str, second_image_seed: int):
    """Losses of one SemiTrainer step of the tiny DINO (seed 0) on 1 labeled image + 2 unlabeled images,
    the first with two pseudo labels, the second (pixels drawn with `second_image_seed`) with none."""
    cfg = tiny_detector_cfg()
    torch.manual_seed(0)
    student = build_model(cfg).train()
    labeled = [synthetic_input(64, 64, 2, seed=1)]
    first = synthetic_input(64, 64, 0, seed=2)["image"]
    second = synthetic_input(64, 64, 0, seed=second_image_seed)["image"]
    unlabeled = [{"weak": _view(image), "strong": _view(image)} for image in (first, second)]
    trainer = SemiTrainer(student, _FixedTeacher(), iter(lambda: (labeled, unlabeled), None),
                          torch.optim.SGD(student.parameters(), lr=0.0), pseudo_labeler=PseudoLabeler(0.4),
                          unsup_weight=1.0, pseudo_nms_thresh=0.0, images_without_pseudo_labels=policy)
    with EventStorage(0) as storage:
        torch.manual_seed(0)  # the same denoising noise in every call
        trainer.run_step()
    return {name: value for name, (value, _) in storage.latest().items()}


@pytest.fixture(scope="module")
def unsupervised_steps():
    return {key: _unsupervised_step(*key) for key in (("ignore", 3), ("ignore", 4), ("background", 3))}


def _unsup(metrics, term=""):
    return {k: v for k, v in metrics.items() if k.startswith("unsup_loss_" + term)}


def test_image_without_pseudo_labels_is_background_or_left_out_of_the_unsupervised_loss(unsupervised_steps):
    """SEMI.IMAGES_WITHOUT_PSEUDO_LABELS through SemiTrainer.run_step, on a batch where the first unlabeled
    image has two pseudo labels and the second none. "ignore": the unsupervised losses do not depend on the
    second image at all (other pixels, the same losses), and the first image is still trained (class
    losses > 0). "background" (official): the second image's queries are trained as background, which adds
    to the unsupervised class losses; its box losses are 0 either way, so those of the two policies are the
    same."""
    for metrics in unsupervised_steps.values():
        assert metrics["pseudo/labels_per_image"] == 1.0  # 2 pseudo labels on 2 images, all on the first
    ignore_a, ignore_b = unsupervised_steps["ignore", 3], unsupervised_steps["ignore", 4]
    background_a = unsupervised_steps["background", 3]
    assert _unsup(ignore_a) == pytest.approx(_unsup(ignore_b), rel=1e-6)
    for name in ("unsup_loss_class", "unsup_loss_class_aux", "unsup_loss_class_enc"):
        assert ignore_a[name] > 0, name
        assert background_a[name] > ignore_a[name], name
    for term in ("bbox", "giou"):
        assert _unsup(background_a, term) == pytest.approx(_unsup(ignore_a, term), rel=1e-6), term
        assert background_a[f"unsup_loss_{term}"] > 0, term
    # The labeled image's losses are those of its own group whatever the unlabeled images hold.
    supervised = {k: v for k, v in background_a.items() if k.startswith("loss_")}
    assert {k: ignore_b[k] for k in supervised} == pytest.approx(supervised, rel=1e-6)
