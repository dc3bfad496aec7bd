"""tools/pseudo_label_quality.py: per-class pseudo-label counts against hand-computed cases."""
import importlib.util
import os

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("pseudo_label_quality",
                                                  os.path.join(REPO_ROOT, "tools/pseudo_label_quality.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def boxes(*xyxy):
    return torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4)


def test_counts_per_threshold_and_class(tool):
    gt_boxes = boxes([0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50])  # A (class 0), B (1), C (0)
    gt_classes = torch.tensor([0, 1, 0])
    pred_boxes = boxes([0, 0, 10, 10],    # hits A
                       [1, 0, 10, 10],    # hits A again (IoU 0.9): a duplicate is precise but recalls nothing new
                       [20, 20, 30, 30],  # on B with the wrong class: a miss
                       [20, 20, 30, 30],  # hits B
                       [60, 60, 70, 70])  # on nothing
    scores = torch.tensor([0.9, 0.5, 0.7, 0.4, 0.8])
    classes = torch.tensor([0, 0, 0, 1, 1])
    counts = tool.count_hits(pred_boxes, scores, classes, gt_boxes, gt_classes, [0.3, 0.6], num_classes=2)
    assert counts["pseudo"].tolist() == [[3, 2], [2, 1]]
    assert counts["precise"].tolist() == [[2, 1], [1, 0]]
    assert counts["recalled"].tolist() == [[1, 1], [1, 0]]
    assert counts["gt"].tolist() == [2, 1]
    assert torch.allclose(counts["best_scores"], torch.tensor([0.9, 0.4, 0.0]))

    rows = {(r["threshold"], r["class"]): r for r in tool.summarise([counts, counts], [0.3, 0.6], ["a", "b"])}
    assert rows[(0.3, "a")]["precision"] == pytest.approx(2 / 3)
    assert rows[(0.3, "a")]["recall"] == pytest.approx(1 / 2)
    assert rows[(0.3, "a")]["pseudo_per_image"] == pytest.approx(3.0)
    assert rows[(0.6, "b")]["precision"] == 0.0 and rows[(0.6, "b")]["recall"] == 0.0
    assert rows[(0.3, "a")]["best_score_median"] == pytest.approx(0.0)  # best scores of class a: 0.9, 0, 0.9, 0
    assert rows[(0.3, "b")]["best_score_median"] == pytest.approx(0.4)
    every = rows[(0.3, tool.ALL_CLASSES)]  # the sums over the classes
    assert every["pseudo_per_image"] == pytest.approx(5.0) and every["precision"] == pytest.approx(3 / 5)
    assert every["recall"] == pytest.approx(2 / 3) and every["gt_per_image"] == pytest.approx(3.0)
    assert every["best_score_median"] == pytest.approx(0.4)  # 0.9, 0.4, 0 twice
    assert rows[(0.6, tool.ALL_CLASSES)]["precision"] == pytest.approx(1 / 3)


def test_empty_predictions_and_empty_ground_truth(tool):
    no_pred = tool.count_hits(boxes(), torch.zeros(0), torch.zeros(0, dtype=torch.long), boxes([0, 0, 5, 5]),
                              torch.tensor([1]), [0.4], num_classes=2)
    no_gt = tool.count_hits(boxes([0, 0, 5, 5]), torch.tensor([0.8]), torch.tensor([0]), boxes(),
                            torch.zeros(0, dtype=torch.long), [0.4], num_classes=2)
    assert no_pred["gt"].tolist() == [0, 1] and no_pred["recalled"].tolist() == [[0, 0]]
    assert no_pred["best_scores"].tolist() == [0.0]
    assert no_gt["pseudo"].tolist() == [[1, 0]] and no_gt["precise"].tolist() == [[0, 0]]
    rows = {r["class"]: r for r in tool.summarise([no_pred, no_gt], [0.4], ["a", "b"])}
    assert rows["a"]["precision"] == 0.0 and rows["a"]["recall"] is None  # no ground truth of class a
    assert rows["b"]["precision"] is None and rows["b"]["recall"] == 0.0  # no pseudo label of class b
    assert rows[tool.ALL_CLASSES]["precision"] == 0.0 and rows[tool.ALL_CLASSES]["recall"] == 0.0


class _FakeTeacher:
    """predict() returns fixed detections in a 50x100 input frame and records how it was called."""

    def __init__(self, scores):
        self.scores = torch.tensor(scores)
        self.calls = []

    def predict(self, inputs, nms_thresh=None, clip=True):
        from detectron2.structures import Boxes, Instances

        self.calls.append({"nms_thresh": nms_thresh, "clip": clip})
        detections = Instances((50, 100))
        detections.pred_boxes = Boxes(boxes(*[[10, 10, 20, 20]] * len(self.scores)))
        detections.scores = self.scores
        detections.pred_classes = torch.zeros(len(self.scores), dtype=torch.long)
        return [detections]


@pytest.mark.parametrize("floor", [True, False])
def test_candidates_follow_the_configs_pseudo_label_rule(tool, floor):
    """The teacher is asked for the config's NMS and clipping, the mean + std floor applies when the config
    sets it, the lowest threshold cuts, and boxes are scaled to the image's original size."""
    from detectron2.config import get_cfg

    from semidetr.config import add_semidetr_config

    cfg = get_cfg()
    add_semidetr_config(cfg)
    cfg.SEMI.PSEUDO_NMS_THRESH, cfg.SEMI.PSEUDO_CLIP_BOXES, cfg.SEMI.PSEUDO_MEAN_STD_FLOOR = 0.45, False, floor
    teacher = _FakeTeacher([0.9, 0.5, 0.35, 0.3, 0.05, 0.05, 0.05, 0.05])  # mean + std ~0.59
    out = tool.pseudo_label_candidates(cfg, teacher, {"height": 100, "width": 200}, 0.3)
    assert teacher.calls == [{"nms_thresh": 0.45, "clip": False}]
    assert out.scores.tolist() == pytest.approx([0.9] if floor else [0.9, 0.5, 0.35, 0.3])
    assert out.image_size == (100, 200)
    assert out.pred_boxes.tensor[0].tolist() == [20, 20, 40, 40]
