import itertools

import pytest
import torch

from semidetr.modeling.matcher import HungarianMatcher, pad_targets, pairwise_matching_cost


def _targets(counts, num_classes=4):
    targets = []
    for n in counts:
        centre = torch.rand(n, 2) * 0.6 + 0.2
        size = torch.rand(n, 2) * 0.3 + 0.05
        targets.append({"labels": torch.randint(0, num_classes, (n,)), "boxes": torch.cat([centre, size], 1)})
    return targets


def _predictions(layers, batch, queries, num_classes=4):
    logits = torch.randn(layers, batch, queries, num_classes)
    boxes = torch.cat([torch.rand(layers, batch, queries, 2) * 0.6 + 0.2,
                       torch.rand(layers, batch, queries, 2) * 0.3 + 0.05], -1)
    return logits, boxes


def _pairs(assignment, layer):
    keep = assignment.layer == layer
    return sorted(zip(assignment.image[keep].tolist(), assignment.query[keep].tolist(), assignment.target[keep].tolist()))


def test_batched_matching_equals_per_image_matching():
    matcher = HungarianMatcher()
    counts = [3, 0, 5, 1]
    targets = _targets(counts)
    logits, boxes = _predictions(2, 4, 12)
    batched = matcher(logits, boxes, targets)
    offsets = [0, 3, 3, 8]
    for layer in range(2):
        expected = []
        for image, n in enumerate(counts):
            single = matcher(logits[layer, image:image + 1], boxes[layer, image:image + 1], [targets[image]])
            expected += [(image, q, t + offsets[image]) for q, t in zip(single.query.tolist(), single.target.tolist())]
        assert _pairs(batched, layer) == sorted(expected)
    # every target matched exactly once per layer, by distinct queries
    assert len(batched.layer) == 2 * sum(counts)


def test_matching_minimises_the_cost_by_brute_force():
    matcher = HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0)
    targets = _targets([3])
    logits, boxes = _predictions(1, 1, 5)
    result = matcher(logits, boxes, targets)
    labels, tboxes, _ = pad_targets(targets, "cpu")
    cost = pairwise_matching_cost(logits, boxes, labels, tboxes, cost_class=2.0, cost_bbox=5.0, cost_giou=2.0,
                                  focal_alpha=0.25, focal_gamma=2.0)[0, 0]
    best = min(sum(cost[q, t] for t, q in enumerate(perm)) for perm in itertools.permutations(range(5), 3))
    chosen = sum(cost[q, t] for q, t in zip(result.query.tolist(), result.target.tolist()))
    assert chosen == pytest.approx(float(best), rel=1e-5)


def test_empty_targets_give_empty_assignment():
    matcher = HungarianMatcher()
    logits, boxes = _predictions(3, 2, 6)
    result = matcher(logits, boxes, _targets([0, 0]))
    assert result.query.numel() == 0 and result.weight.numel() == 0


def test_non_finite_predictions_do_not_crash_the_solver():
    matcher = HungarianMatcher()
    logits, boxes = _predictions(1, 1, 6)
    logits[0, 0, 2] = float("nan")
    boxes[0, 0, 3] = float("nan")
    result = matcher(logits, boxes, _targets([2]))
    assert result.query.numel() == 2


def test_class_cost_prefers_confident_correct_class():
    matcher = HungarianMatcher(cost_class=1.0, cost_bbox=0.0, cost_giou=0.0)
    logits = torch.full((1, 2, 3), -5.0)
    logits[0, 1, 2] = 5.0  # query 1 is confident about class 2
    boxes = torch.full((1, 2, 4), 0.5)
    result = matcher(logits, boxes, [{"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}])
    assert result.query.tolist() == [1]


def test_all_zero_costs_rejected():
    with pytest.raises(ValueError, match="COST"):
        HungarianMatcher(0, 0, 0)
