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
