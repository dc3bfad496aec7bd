"""EMA arithmetic, pseudo-label mapping, the consistency loss and cross-view embeddings."""
import math

import pytest
import torch
from detectron2.structures import Boxes, Instances
from torch import nn

from semidetr.modeling.cross_view import CrossViewQueryEmbedding
from semidetr.semi.ema import EmaUpdater, ema_decay
from semidetr.semi.monitoring import match_at_iou, pseudo_label_metrics
from semidetr.semi.pseudo_labels import PseudoLabeler
from semidetr.semi.query_consistency import consistency_loss


class _Net(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.norm = nn.BatchNorm1d(2)
        with torch.no_grad():
            self.linear.weight.fill_(value)
            self.norm.running_mean.fill_(value)
            self.norm.num_batches_tracked.fill_(int(value))


def test_ema_decay_schedule():
    assert ema_decay(0.999, 0) == 0.0  # first update copies the student
    assert ema_decay(0.999, 9) == pytest.approx(0.9)
    assert ema_decay(0.999, 100000) == 0.999
    assert ema_decay(0.999, 0, warmup=False) == 0.999  # a teacher from a trained checkpoint keeps its weights
    assert ema_decay(0.995, 9, warmup=False) == 0.995


def test_ema_update_arithmetic():
    teacher, student = _Net(1.0), _Net(3.0)
    updater = EmaUpdater(teacher, student)
    updater.update(0.75)
    # parameters and floating buffers: 0.75 * 1 + 0.25 * 3 = 1.5; integer buffers copied
    assert torch.allclose(teacher.linear.weight, torch.full((2, 2), 1.5))
    assert torch.allclose(teacher.norm.running_mean, torch.full((2,), 1.5))
    assert teacher.norm.num_batches_tracked.item() == 3
    updater.update(0.0)
    assert torch.equal(teacher.linear.weight, student.linear.weight)
    student.linear.weight.data.fill_(7.0)
    updater.copy_student()
    assert torch.equal(teacher.linear.weight, student.linear.weight)


def test_ema_refuses_different_architectures():
    with pytest.raises(ValueError, match="differ"):
        EmaUpdater(_Net(1.0), nn.Linear(2, 2))


def _view(matrix, size=(100, 200)):
    return {"transform_matrix": torch.tensor(matrix, dtype=torch.float32), "image": torch.zeros(3, *size)}


def test_pseudo_labels_score_filter_and_weak_to_strong_mapping():
    predictions = Instances((100, 200))
    predictions.pred_boxes = Boxes(torch.tensor([[10.0, 10, 30, 40], [50, 50, 60, 60], [0, 0, 5, 5]]))
    predictions.scores = torch.tensor([0.9, 0.3, 0.5])
    predictions.pred_classes = torch.tensor([1, 0, 2])
    weak = _view([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    strong = _view([[-2, 0, 400], [0, 2, 0], [0, 0, 1]], size=(200, 400))  # 2x scale then horizontal flip
    batch = PseudoLabeler(0.4, min_box_size=12.0)([predictions], [weak], [strong])
    labels = batch.strong[0]
    # box 2 (score 0.3) filtered; box 3 becomes 10x10 < 12 px and is dropped by the mapping
    assert labels.gt_classes.tolist() == [1]
    torch.testing.assert_close(labels.gt_boxes.tensor, torch.tensor([[340.0, 20, 380, 80]]))
    assert pseudo_label_metrics(batch, [strong])["pseudo/dropped_by_mapping"] == 1.0
    assert batch.kept[0].tolist() == [True, False]


def test_pseudo_label_threshold_is_validated():
    with pytest.raises(ValueError, match=r"score_threshold=1\.0"):
        PseudoLabeler(1.0)


def test_match_at_iou_counts():
    pred = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    gt = torch.tensor([[0.0, 0, 10, 11], [50, 50, 60, 60]])
    hits = match_at_iou(pred, torch.tensor([0, 0, 1]), gt, torch.tensor([0, 0]))
    assert hits == (1, 1)  # the third box overlaps but has the wrong class


def test_consistency_loss_values():
    student = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [3.0, 0.0]]])  # (L=2, M=2, C=2)
    teacher = torch.tensor([[[2.0, 0.0], [1.0, 0.0]], [[-1.0, -1.0], [0.0, 1.0]]])
    # cosines: layer 0: 1, 0; layer 1: -1, 0 -> per box, (1 - cos) summed over layers: 0 + 2, 1 + 1 -> mean 2
    assert consistency_loss(student, teacher, "cosine").item() == pytest.approx(2.0)
    assert consistency_loss(student, teacher, "normalized_mse").item() == pytest.approx(4.0)
    normalized = nn.functional.normalize
    expected = ((normalized(student, dim=-1) - normalized(teacher, dim=-1)) ** 2).sum(-1).sum(0).mean()
    assert consistency_loss(student, teacher, "normalized_mse").item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="kind='l2'"):
        consistency_loss(student, teacher, "l2")


def test_consistency_loss_without_boxes_is_zero_in_the_graph():
    student = torch.zeros(3, 0, 4, requires_grad=True)
    loss = consistency_loss(student, torch.zeros(3, 0, 4))
    assert loss.item() == 0.0 and not math.isnan(loss.item())
    loss.backward()
    assert student.grad is not None


def test_consistency_loss_gradient_pulls_embeddings_together():
    student = torch.tensor([[[1.0, 0.2]]], requires_grad=True)
    teacher = torch.tensor([[[0.0, 1.0]]])
    consistency_loss(student, teacher).backward()
    moved = student.detach() - 0.1 * student.grad
    assert nn.functional.cosine_similarity(moved, teacher, dim=-1) > nn.functional.cosine_similarity(student, teacher, dim=-1)


def test_cross_view_embedding_gives_one_embedding_per_box_and_trains_every_parameter():
    embed = CrossViewQueryEmbedding(8, strides=[8, 16, 32, 64], roi_size=7)
    features = [torch.randn(2, 8, 64 // s * 8, 64 // s * 8) for s in (8, 16, 32, 64)]
    boxes = [torch.tensor([[0.0, 0, 20, 20], [10, 10, 500, 500]]), torch.zeros(0, 4)]
    out = embed(features, boxes)
    assert out.shape == (2, 8)
    out.sum().backward()
    assert all(p.grad is not None for p in embed.parameters())
    empty = embed(features, [torch.zeros(0, 4), torch.zeros(0, 4)])
    assert empty.shape == (0, 8)
