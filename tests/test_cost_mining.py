import itertools
import math

import numpy as np
import pytest
import torch

from semidetr.modeling.matcher import pairwise_matching_cost
from semidetr.semi import cost_mining
from semidetr.semi.cost_mining import (
    PseudoLabelMiner,
    candidate_matching_costs,
    gmm_cost_threshold,
    mean_std_candidates,
)
from semidetr.semi.monitoring import cpm_precision_recall, cross_view_metrics
from semidetr.semi.query_consistency import CrossViewCandidates

WEIGHTS = dict(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, focal_alpha=0.25, focal_gamma=2.0)


def _boxes(n, generator=None):
    centre = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
    size = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
    return torch.cat([centre, size], 1)


def _cost_matrix(logits, boxes, labels, targets):
    """(Q, n) cost of one image, straight from the matcher's cost function."""
    return pairwise_matching_cost(logits[None], boxes[None], labels[None], targets[None], **WEIGHTS)[0]


# ------------------------------------------------------------------------------------------------ mean + std
def test_mean_std_on_hand_values():
    # mean 0.5, population std sqrt(0.125) = 0.354 -> threshold 0.854 keeps only 0.9
    # (the sample std, 0.408, would give 0.908 and keep nothing)
    scores = torch.tensor([0.9, 0.1, 0.2, 0.8])
    assert mean_std_candidates(scores).tolist() == [True, False, False, False]
    # two detections: mean + std is exactly the max, which is kept
    assert mean_std_candidates(torch.tensor([0.3, 0.7])).tolist() == [False, True]
    # one outlier below: mean + std = 1.18 > every score, nothing kept (the paper's rule)
    assert mean_std_candidates(torch.tensor([0.0, 1.0, 1.0, 1.0])).tolist() == [False] * 4


def test_mean_std_degenerate_inputs():
    empty = mean_std_candidates(torch.zeros(0))
    assert empty.shape == (0,) and empty.dtype == torch.bool
    assert mean_std_candidates(torch.tensor([0.05])).tolist() == [True]
    # identical scores: rounding of the mean must not drop them
    assert mean_std_candidates(torch.full((7,), 0.1)).all()


def test_mean_std_padded_batch_equals_per_image():
    images = [torch.rand(5), torch.zeros(0), torch.tensor([0.4]), torch.rand(9)]
    padded = torch.nn.utils.rnn.pad_sequence(images, batch_first=True, padding_value=0.99)
    valid = torch.nn.utils.rnn.pad_sequence([torch.ones_like(s, dtype=torch.bool) for s in images], batch_first=True)
    batch = mean_std_candidates(padded, valid)
    for i, scores in enumerate(images):
        assert batch[i, :len(scores)].tolist() == mean_std_candidates(scores).tolist()
        assert not batch[i, len(scores):].any()  # padding never selected


# ------------------------------------------------------------------------------------------------ matching costs
def test_candidate_costs_equal_brute_force_hungarian_costs():
    num_queries, num_classes = 6, 4
    counts = [3, 0, 4]
    logits = torch.randn(len(counts), num_queries, num_classes)
    boxes = torch.stack([_boxes(num_queries) for _ in counts])
    candidates = [{"labels": torch.randint(0, num_classes, (n,)), "boxes": _boxes(n)} for n in counts]
    costs = candidate_matching_costs(logits, boxes, candidates)
    assert [c.shape for c in costs] == [(n,) for n in counts]
    for image, n in enumerate(counts):
        if n == 0:
            continue
        matrix = _cost_matrix(logits[image], boxes[image], candidates[image]["labels"], candidates[image]["boxes"])
        best = min(itertools.permutations(range(num_queries), n),
                   key=lambda queries: sum(float(matrix[q, t]) for t, q in enumerate(queries)))
        expected = [float(matrix[q, t]) for t, q in enumerate(best)]
        assert costs[image].tolist() == pytest.approx(expected, rel=1e-5)


def test_more_candidates_than_queries_get_inf():
    logits = torch.randn(1, 2, 3)
    boxes = _boxes(2)[None]
    candidates = [{"labels": torch.tensor([0, 1, 2, 0]), "boxes": _boxes(4)}]
    cost = candidate_matching_costs(logits, boxes, candidates)[0]
    assert int(torch.isinf(cost).sum()) == 2 and (cost[torch.isinf(cost)] > 0).all()
    matrix = _cost_matrix(logits[0], boxes[0], candidates[0]["labels"], candidates[0]["boxes"])
    best = min(itertools.permutations(range(4), 2), key=lambda ts: float(matrix[0, ts[0]] + matrix[1, ts[1]]))
    assert torch.isfinite(cost).nonzero().flatten().sort().values.tolist() == sorted(best)


def test_no_candidates_anywhere():
    costs = candidate_matching_costs(torch.randn(2, 5, 3), _boxes(10).reshape(2, 5, 4),
                                     [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2)
    assert [c.shape for c in costs] == [(0,), (0,)]


# ------------------------------------------------------------------------------------------------ GMM threshold
def test_gmm_threshold_separates_two_clusters():
    rng = np.random.default_rng(0)
    low, high = rng.normal(1.0, 0.1, 40), rng.normal(5.0, 0.3, 60)
    costs = np.concatenate([high, low])
    threshold = gmm_cost_threshold(costs)
    assert abs(threshold - low.mean()) < 0.02
    selected = costs <= threshold
    # the reliable cluster's centre is the threshold: its lower half is kept, nothing of the other
    assert sorted(costs[selected]) == sorted(low[low <= threshold]) and not (high <= threshold).any()
    assert 10 < selected.sum() < 30 and costs.min() <= threshold


@pytest.mark.parametrize("costs, expected", [
    ([], -math.inf),
    ([math.nan, math.inf, -math.inf], -math.inf),
    ([3.5], 3.5),
    ([2.0, 2.0, 2.0], 2.0),
    ([20.0, 1.0], 1.0),
    ([1.0, 1.0, 1.0, 20.0, 20.0], 1.0),
])
def test_gmm_threshold_degenerate_inputs(costs, expected):
    threshold = gmm_cost_threshold(costs)
    assert threshold == expected and not math.isnan(threshold)


def test_gmm_threshold_ignores_non_finite_costs_and_accepts_tensors():
    rng = np.random.default_rng(1)
    costs = np.concatenate([rng.normal(-3.0, 0.2, 20), rng.normal(2.0, 0.5, 20)])
    polluted = np.concatenate([costs, [math.nan, math.inf, -math.inf]])
    assert gmm_cost_threshold(polluted) == gmm_cost_threshold(costs)
    assert gmm_cost_threshold(torch.from_numpy(polluted).float()) == gmm_cost_threshold(costs.astype(np.float32))


def test_gmm_threshold_is_order_independent():
    # two "processes" gathering in different rank orders must agree bit for bit
    rng = np.random.default_rng(2)
    rank0, rank1 = rng.gamma(2.0, 1.0, 37), rng.gamma(6.0, 1.0, 23)
    a = gmm_cost_threshold(np.concatenate([rank0, rank1]))
    b = gmm_cost_threshold(np.concatenate([rank1, rank0]))
    c = gmm_cost_threshold(rng.permutation(np.concatenate([rank0, rank1])))
    assert a == b == c


# ------------------------------------------------------------------------------------------------ the miner
def _teacher_case():
    """Two images, 8 detections each. Per image, the first 4 detections score 0.9 and pass mean + std;
    the student predicts detections 0 and 1 of each image exactly and is far from 2 and 3."""
    scores = torch.tensor([0.9, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1])
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    boxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2], [0.8, 0.2, 0.1, 0.2], [0.2, 0.8, 0.2, 0.1],
                          [0.5, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1], [0.3, 0.5, 0.1, 0.1], [0.6, 0.6, 0.1, 0.1]])
    num_queries, num_classes = 10, 3
    student_logits = torch.full((2, num_queries, num_classes), -8.0)
    student_boxes = torch.tensor([0.5, 0.5, 0.02, 0.02]).repeat(2, num_queries, 1)
    for image in range(2):
        # exact, confident predictions of detections 0, 1 and of the non-candidate 4 (which must stay out)
        for query, det in enumerate([0, 1, 4]):
            student_boxes[image, query] = boxes[det]
            student_logits[image, query, labels[det]] = 8.0
    return [scores, scores.clone()], [labels, labels.clone()], [boxes, boxes.clone()], student_logits, student_boxes


def _mine(miner, scores, labels, boxes, logits=None, pred_boxes=None):
    """The trainer's two steps: the miner's candidates, then its selection among them.
    Returns (candidate masks over the detections, MinedSelection over the candidates)."""
    candidates = miner.candidates(scores)
    selection = miner.select([l[c] for l, c in zip(labels, candidates)], [b[c] for b, c in zip(boxes, candidates)],
                             logits, pred_boxes)
    return candidates, selection


def test_gmm_miner_keeps_the_low_cost_candidates():
    scores, labels, boxes, logits, pred_boxes = _teacher_case()
    candidates, result = _mine(PseudoLabelMiner("gmm", gather=False), scores, labels, boxes, logits, pred_boxes)
    assert [c.tolist() for c in candidates] == [[True] * 4 + [False] * 4] * 2  # mean + std
    assert [k.tolist() for k in result.keep] == [[True, True, False, False]] * 2
    assert result.keep[0].dtype == torch.bool and result.method == "gmm"
    costs = candidate_matching_costs(logits, pred_boxes, [{"labels": l[:4], "boxes": b[:4]}
                                                          for l, b in zip(labels, boxes)])
    assert result.threshold == gmm_cost_threshold(torch.cat(costs))
    # What the step logs of this selection (the candidate boxes' frame does not matter here).
    kept_boxes = [b[c] for b, c in zip(boxes, candidates)]
    cqc_candidates = CrossViewCandidates(kept_boxes, kept_boxes, [l[c] for l, c in zip(labels, candidates)],
                                         [s[c] for s, c in zip(scores, candidates)], None, [(1, 1)] * 2, [(1, 1)] * 2)
    metrics = cross_view_metrics(cqc_candidates, result, [{}, {}])
    assert metrics["cpm/candidates_per_image"] == 4.0 and metrics["cqc/boxes_per_image"] == 4.0
    assert float(metrics["cqc/selected_per_image"]) == 2.0
    assert metrics["cpm/cost_threshold"] == result.threshold


def test_score_based_methods_on_a_hand_case():
    scores = [torch.tensor([0.95, 0.5, 0.41, 0.4, 0.39, 0.1, 0.05, 0.9, 0.3, 0.2, 0.15, 0.12]), torch.zeros(0)]
    labels = [torch.zeros(12, dtype=torch.long), torch.zeros(0, dtype=torch.long)]
    boxes = [_boxes(12), torch.zeros(0, 4)]
    # The score rules choose at the candidate step and keep every candidate at the selection step.
    fixed, fixed_selection = _mine(PseudoLabelMiner("fixed"), scores, labels, boxes)
    assert fixed[0].tolist() == [True, True, True, True, False, False, False, True, False, False, False, False]
    assert fixed_selection.threshold == 0.4 and fixed[1].shape == (0,)
    assert [k.tolist() for k in fixed_selection.keep] == [[True] * 5, []]
    topk, _ = _mine(PseudoLabelMiner("topk", topk=9), scores, labels, boxes)
    assert topk[0].tolist() == [True] * 5 + [False, False, True, True, True, True, False]
    assert _mine(PseudoLabelMiner("topk", topk=20), scores, labels, boxes)[0][0].all()  # fewer than K: all
    mean_std, mean_std_selection = _mine(PseudoLabelMiner("mean_std"), scores, labels, boxes)
    assert mean_std[0].tolist() == mean_std_candidates(scores[0]).tolist()
    assert mean_std[0].tolist() == [True, False, False, False, False, False, False, True] + [False] * 4
    assert mean_std_selection.threshold is None and int(torch.cat(mean_std_selection.keep).sum()) == 2


def test_unknown_method_names_the_argument_and_the_methods():
    with pytest.raises(ValueError, match=r"method='otsu'.*fixed, topk, mean_std, gmm"):
        PseudoLabelMiner("otsu")


def test_precision_recall_metrics_on_a_hand_case():
    boxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1], [0.5, 0.2, 0.1, 0.1]])
    labels = torch.tensor([0, 1, 2, 0])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.1])
    # ground truth: detection 0 exactly; detection 1 shifted (IoU 0.78 >= 0.5); detection 2's box with
    # another class (no hit); a box nobody predicted; detection 3 exactly, but 3 is not selected.
    gt_boxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.525, 0.5, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1],
                             [0.1, 0.9, 0.1, 0.1], [0.5, 0.2, 0.1, 0.1]])
    gt_classes = torch.tensor([0, 1, 0, 2, 0])
    miner = PseudoLabelMiner("fixed", score_threshold=0.5)
    candidates, selection = _mine(miner, [scores], [labels], [boxes])
    metrics = cpm_precision_recall(selection.keep, [labels[candidates[0]]], [boxes[candidates[0]]], [gt_classes],
                                   [gt_boxes])
    assert metrics["cpm/precision@0.5"] == pytest.approx(2 / 3)
    assert metrics["cpm/recall@0.5"] == pytest.approx(2 / 5)


def test_gather_uses_every_process_costs_and_runs_without_candidates(monkeypatch):
    scores, labels, boxes, logits, pred_boxes = _teacher_case()
    other_rank = np.array([-50.0, -49.0, -48.0, 100.0, 101.0])  # much better boxes elsewhere
    calls = []

    def fake_all_gather(data, group=None):
        calls.append(np.asarray(data).copy())
        return [other_rank, data]

    monkeypatch.setattr(cost_mining.comm, "all_gather", fake_all_gather)
    miner = PseudoLabelMiner("gmm")
    _, result = _mine(miner, scores, labels, boxes, logits, pred_boxes)
    assert len(calls) == 1 and len(calls[0]) == 8
    assert result.threshold == gmm_cost_threshold(np.concatenate([calls[0], other_rank]))
    assert result.threshold < -40 and not any(k.any() for k in result.keep)  # judged against the whole batch
    # a process without any candidate still joins the collective
    _, empty = _mine(miner, [torch.zeros(0)], [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, 4)], logits[:1],
                     pred_boxes[:1])
    assert len(calls) == 2 and len(calls[1]) == 0
    assert empty.keep[0].shape == (0,) and empty.threshold == gmm_cost_threshold(other_rank)
    _, nothing = _mine(miner, [], [], [], None, None)
    assert len(calls) == 3 and nothing.keep == []


def test_gmm_miner_survives_non_finite_student_predictions():
    scores, labels, boxes, logits, pred_boxes = _teacher_case()
    logits[1] = math.nan
    _, result = _mine(PseudoLabelMiner("gmm", gather=False), scores, labels, boxes, logits, pred_boxes)
    assert not result.keep[1].any()
    assert result.keep[0].tolist()[:2] == [True, True] and math.isfinite(result.threshold)
