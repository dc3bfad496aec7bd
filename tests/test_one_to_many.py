"""One-to-many assigners and stage-1 losses of Stage-wise Hybrid Matching (Semi-DETR eq. 3-5).

The hand-computed cases use "strips": boxes spanning y in [0.3, 0.7] (height 0.4), so the IoU of two of
them is the IoU of their x-intervals.
"""
import math
import statistics

import pytest
import torch

from semidetr.modeling.box_ops import batched_box_iou, cxcywh_to_xyxy
from semidetr.modeling.matcher import Assignment
from semidetr.modeling.one_to_many import (
    ATSSOneToManyAssigner,
    MaxIoUOneToManyAssigner,
    SimOTAOneToManyAssigner,
    TaskAlignedOneToManyAssigner,
    build_one_to_many_assigner,
    one_to_many_losses,
    one_to_many_normalizer,
)

ASSIGNER_NAMES = ["task_aligned", "max_iou", "atss", "simota"]
EPS = 1e-7  # TOOD's guard in m_hat = m / (max m + eps) * max IoU


def _strip(x0, x1):
    """cxcywh of the box [x0, x1] x [0.3, 0.7]."""
    return [(x0 + x1) / 2, 0.5, x1 - x0, 0.4]


def _centred_strip(centre, width):
    return _strip(centre - width / 2, centre + width / 2)


def _logit(p):
    return math.log(p / (1 - p))


def _interval_iou(a, b):
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / ((a[1] - a[0]) + (b[1] - b[0]) - inter)


def _predictions(query_boxes, query_probs):
    """(1, 1, Q, K) logits and (1, 1, Q, 4) boxes for one layer and one image."""
    logits = torch.tensor([[_logit(p) for p in probs] for probs in query_probs])
    return logits[None, None], torch.tensor(query_boxes)[None, None]


def _target(boxes, labels):
    return {"labels": torch.tensor(labels), "boxes": torch.tensor(boxes)}


def _positives(assignment: Assignment):
    """{(layer, image, query): (target, weight)}."""
    keys = zip(assignment.layer.tolist(), assignment.image.tolist(), assignment.query.tolist())
    return {key: (t, w) for key, t, w in zip(keys, assignment.target.tolist(), assignment.weight.tolist())}


def _query_to_target(assignment: Assignment):
    return {query: target for (_, _, query), (target, _) in _positives(assignment).items()}


def _random_batch(layers, counts, queries, num_classes=4):
    logits = torch.randn(layers, len(counts), queries, num_classes) * 2
    boxes = torch.cat([torch.rand(layers, len(counts), queries, 2) * 0.6 + 0.2,
                       torch.rand(layers, len(counts), queries, 2) * 0.3 + 0.1], -1)
    targets = []
    for n in counts:
        # Targets near the predictions so that every assigner finds positives.
        centre = torch.rand(n, 2) * 0.5 + 0.25
        size = torch.rand(n, 2) * 0.3 + 0.1
        targets.append({"labels": torch.randint(0, num_classes, (n,)), "boxes": torch.cat([centre, size], 1)})
    return logits, boxes, targets


def _build(name):
    # Small k and a wide SimOTA centre region, so that the random cases below have several positives.
    kwargs = {"task_aligned": {"topk": 4}, "atss": {"topk": 5}, "simota": {"center_radius": 0.1}}
    return build_one_to_many_assigner(name, **kwargs.get(name, {}))


# ---------------------------------------------------------------------------------------------------
# Task-aligned assigner (the paper's)
# ---------------------------------------------------------------------------------------------------

def test_task_aligned_hand_computed():
    # Targets: T0 = [0.0, 0.4] class 0, T1 = [0.2, 0.7] class 1.
    # IoU(q, T0), IoU(q, T1): q0 = [0, 0.16]: 0.4, 0 | q1 = [0.1, 0.5]: 0.6, 0.5 | q2 = [0, 0.1]: 0.25, 0
    # | q3 = [0.8, 1.0]: 0, 0.
    probs = [(0.9, 0.1), (0.05, 0.8), (0.9, 0.5), (0.6, 0.6)]
    logits, boxes = _predictions([_strip(0.0, 0.16), _strip(0.1, 0.5), _strip(0.0, 0.1), _strip(0.8, 1.0)], probs)
    targets = [_target([_strip(0.0, 0.4), _strip(0.2, 0.7)], [0, 1])]
    # m = s * u^6:
    m_t0 = [0.9 * 0.4 ** 6, 0.05 * 0.6 ** 6, 0.9 * 0.25 ** 6, 0.0]  # top-2: q0 (0.00369), q1 (0.00233)
    m_t1 = [0.0, 0.8 * 0.5 ** 6, 0.0, 0.0]  # top-2: q1 and a query with m = 0 (not positive)
    assert m_t1[1] > m_t0[1]  # q1 is better aligned with T1 ... but has the higher IoU with T0 -> T0
    assignment = TaskAlignedOneToManyAssigner(topk=2, alpha=1.0, beta=6.0)(logits, boxes, targets)
    positives = _positives(assignment)
    assert sorted(positives) == [(0, 0, 0), (0, 0, 1)]
    assert positives[(0, 0, 0)][0] == 0 and positives[(0, 0, 1)][0] == 0
    # m_hat = m / max_{T0's positives} m * max_{T0's positives} IoU; the maxima come from different queries.
    max_m, max_iou = m_t0[0], 0.6
    assert positives[(0, 0, 0)][1] == pytest.approx(m_t0[0] / (max_m + EPS) * max_iou, rel=1e-5)
    assert positives[(0, 0, 1)][1] == pytest.approx(m_t0[1] / (max_m + EPS) * max_iou, rel=1e-5)


def test_task_aligned_alpha_and_beta_enter_the_metric():
    # One target [0.3, 0.7]; q0: IoU 0.9, score 0.2 | q1: IoU 0.5, score 0.9. topk=1 keeps the larger m:
    # beta = 6: 0.2 * 0.9^6 = 0.106 > 0.9 * 0.5^6 = 0.014 -> q0; beta = 1: 0.18 < 0.45 -> q1.
    logits, boxes = _predictions([_centred_strip(0.5, 0.36), _centred_strip(0.5, 0.2)], [(0.2,), (0.9,)])
    targets = [_target([_strip(0.3, 0.7)], [0])]
    assert list(_query_to_target(TaskAlignedOneToManyAssigner(topk=1, beta=6.0)(logits, boxes, targets))) == [0]
    assert list(_query_to_target(TaskAlignedOneToManyAssigner(topk=1, beta=1.0)(logits, boxes, targets))) == [1]


def test_task_aligned_k_larger_than_the_number_of_queries():
    # Three queries inside the target, topk 13 > Q = 3: all of them are positive.
    logits, boxes = _predictions([_centred_strip(0.5, w) for w in (0.36, 0.2, 0.12)], [(0.5,)] * 3)
    assignment = TaskAlignedOneToManyAssigner(topk=13)(logits, boxes, [_target([_strip(0.3, 0.7)], [0])])
    assert sorted(_query_to_target(assignment)) == [0, 1, 2]
    # m_hat of the best-aligned query (IoU 0.9) is the target's best IoU.
    assert max(assignment.weight.tolist()) == pytest.approx(0.9, rel=1e-5)


# ---------------------------------------------------------------------------------------------------
# Properties shared by all assigners
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ASSIGNER_NAMES)
def test_batched_assignment_equals_per_layer_and_image(name):
    assigner = _build(name)
    counts = [3, 0, 4]  # the middle image has no targets
    logits, boxes, targets = _random_batch(2, counts, 40)
    batched = _positives(assigner(logits, boxes, targets))
    expected = {}
    offsets = [0, 3, 3]
    for layer in range(2):
        for image in range(3):
            # Without the leading layer dimension (as the matcher accepts too).
            single = assigner(logits[layer, image:image + 1], boxes[layer, image:image + 1], [targets[image]])
            assert single.layer.eq(0).all() and single.image.eq(0).all()
            for (_, _, query), (target, weight) in _positives(single).items():
                expected[(layer, image, query)] = (target + offsets[image], weight)
    assert len(expected) >= 6  # the case is not vacuous
    assert batched.keys() == expected.keys()
    assert not any(image == 1 for _, image, _ in batched)
    for key, (target, weight) in expected.items():
        assert batched[key][0] == target
        assert batched[key][1] == pytest.approx(weight, rel=1e-5)


@pytest.mark.parametrize("name", ASSIGNER_NAMES)
def test_soft_targets_are_tood_normalised(name):
    """Reference loop: m_hat = m / (max m + eps) * max IoU over each (layer, image, target)'s positives."""
    assigner = _build(name)
    counts = [2, 3]
    logits, boxes, targets = _random_batch(2, counts, 40)
    assignment = assigner(logits, boxes, targets)
    labels = torch.cat([t["labels"] for t in targets])
    target_boxes = torch.cat([t["boxes"] for t in targets])
    groups = {}
    for (layer, image, query), (target, _) in _positives(assignment).items():
        score = logits[layer, image, query, labels[target]].sigmoid().item()
        iou = batched_box_iou(cxcywh_to_xyxy(boxes[layer, image, query][None]),
                              cxcywh_to_xyxy(target_boxes[target][None]))[0, 0].item()
        groups.setdefault((layer, target), []).append(((layer, image, query), score * iou ** 6, iou))
    assert any(len(group) > 1 for group in groups.values())  # normalisation is not trivial
    weights = _positives(assignment)
    for group in groups.values():
        max_m = max(m for _, m, _ in group)
        max_iou = max(iou for _, _, iou in group)
        for key, m, _ in group:
            assert weights[key][1] == pytest.approx(m / (max_m + EPS) * max_iou, rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("name", ASSIGNER_NAMES)
def test_batch_without_targets_gives_an_empty_assignment(name):
    logits, boxes, _ = _random_batch(2, [0, 0], 6)
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
    assignment = _build(name)(logits, boxes, empty)
    assert assignment.layer.numel() == assignment.weight.numel() == 0


@pytest.mark.parametrize("name", ASSIGNER_NAMES)
def test_fewer_queries_than_k_and_determinism(name):
    assigner = build_one_to_many_assigner(name)  # default k (13, 9, 10 IoUs) > Q = 2
    logits, boxes, targets = _random_batch(3, [2, 1], 2)
    first, second = assigner(logits, boxes, targets), assigner(logits, boxes, targets)
    for field in ("layer", "image", "query", "target", "weight"):
        assert torch.equal(getattr(first, field), getattr(second, field))
    # At most one target per (layer, image, query).
    keys = list(zip(first.layer.tolist(), first.image.tolist(), first.query.tolist()))
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("name", ASSIGNER_NAMES)
def test_non_finite_predictions_do_not_crash(name):
    logits, boxes, targets = _random_batch(1, [2], 6)
    boxes[0, 0, 1] = float("nan")
    logits[0, 0, 2] = float("nan")
    assignment = _build(name)(logits, boxes, targets)
    assert 1 not in assignment.query.tolist()


def test_builder_names_and_unknown_name():
    assert isinstance(build_one_to_many_assigner("task_aligned"), TaskAlignedOneToManyAssigner)
    assert isinstance(build_one_to_many_assigner("max_iou"), MaxIoUOneToManyAssigner)
    assert isinstance(build_one_to_many_assigner("atss"), ATSSOneToManyAssigner)
    assert isinstance(build_one_to_many_assigner("simota"), SimOTAOneToManyAssigner)
    assert build_one_to_many_assigner("task_aligned", topk=5).topk == 5
    with pytest.raises(ValueError, match=r"'hungarian'.*task_aligned, max_iou, atss, simota"):
        build_one_to_many_assigner("hungarian")


# ---------------------------------------------------------------------------------------------------
# Alternatives of Table 6
# ---------------------------------------------------------------------------------------------------

def test_max_iou_threshold_low_quality_match_and_conflicts():
    t0, t1, t2, t3, t4 = (0.2, 0.6), (0.5, 0.9), (0.92, 0.99), (0.2, 0.55), (0.0, 0.05)
    queries = [(0.2, 0.6), (0.25, 0.6), (0.4, 0.9), (0.1, 0.35), (0.85, 0.95)]
    iou = [[_interval_iou(q, t) for t in (t0, t1, t2, t3, t4)] for q in queries]
    # q0: 1.0 with T0 and 0.875 with T3, q1: 0.875 with T0 and 0.75 with T3 -> T0 (highest IoU);
    # q2: 0.8 with T1; q3: 0.3 with T0 (below 0.5, not T0's best) -> negative;
    # q4: 0.21 with T2 (< 0.5, but T2's best query) -> T2. T3's best query q0 went to T0; T4 overlaps nothing.
    assert iou[0][3] >= 0.5 and iou[1][3] >= 0.5 and iou[3][0] < 0.5 and iou[4][2] < 0.5
    logits, boxes = _predictions([_strip(*q) for q in queries], [(0.5,)] * 5)
    targets = [_target([_strip(*t) for t in (t0, t1, t2, t3, t4)], [0] * 5)]
    assignment = MaxIoUOneToManyAssigner(pos_iou=0.5)(logits, boxes, targets)
    assert _query_to_target(assignment) == {0: 0, 1: 0, 2: 1, 4: 2}


def test_max_iou_threshold_is_configurable():
    logits, boxes = _predictions([_centred_strip(0.5, 0.36), _centred_strip(0.5, 0.24)], [(0.5,)] * 2)
    targets = [_target([_strip(0.3, 0.7)], [0])]  # IoUs 0.9 and 0.6
    assert sorted(_query_to_target(MaxIoUOneToManyAssigner(pos_iou=0.5)(logits, boxes, targets))) == [0, 1]
    assert sorted(_query_to_target(MaxIoUOneToManyAssigner(pos_iou=0.7)(logits, boxes, targets))) == [0]


def test_atss_candidates_and_mean_plus_std_threshold():
    # Target [0.3, 0.7]; query centres (x) and IoUs: a, d, e at 0.5 (IoU 0.05, 0.3, 0.75), b, c at 0.51 / 0.49
    # (IoU 0.05); f at 0.6 (IoU 0.6) is the 6th closest, not among the k = 5 candidates.
    queries = [(0.5, 0.02), (0.51, 0.02), (0.49, 0.02), (0.5, 0.12), (0.5, 0.3), (0.6, 0.4)]
    ious = [w / 0.4 for _, w in queries[:5]] + [_interval_iou((0.4, 0.8), (0.3, 0.7))]
    candidate_ious = ious[:5]
    threshold = statistics.mean(candidate_ious) + statistics.stdev(candidate_ious)  # 0.24 + 0.305
    assert ious[3] > statistics.mean(candidate_ious) and ious[3] < threshold < ious[4]
    assert ious[5] > threshold  # high enough, but not a candidate
    logits, boxes = _predictions([_centred_strip(c, w) for c, w in queries], [(0.5,)] * 6)
    assignment = ATSSOneToManyAssigner(topk=5)(logits, boxes, [_target([_strip(0.3, 0.7)], [0])])
    assert _query_to_target(assignment) == {4: 0}


def test_atss_requires_the_query_centre_inside_the_target():
    # k = 3 candidates: two tiny boxes at the centre (IoU 0.05) and a wide box, centred at 0.72 (outside
    # [0.3, 0.7], IoU 0.463) in image 0 and at 0.68 (inside, IoU 0.5) in image 1. Both pass mean + std.
    for wide_centre, wide_iou in ((0.72, 0.38 / 0.82), (0.68, 0.5)):
        assert wide_iou >= statistics.mean([0.05, 0.05, wide_iou]) + statistics.stdev([0.05, 0.05, wide_iou])
    logits = torch.zeros(1, 2, 3, 1)
    boxes = torch.tensor([[[_centred_strip(0.5, 0.02), _centred_strip(0.5, 0.02), _centred_strip(c, 0.8)]
                           for c in (0.72, 0.68)]])
    targets = [_target([_strip(0.3, 0.7)], [0]), _target([_strip(0.3, 0.7)], [0])]
    assignment = ATSSOneToManyAssigner(topk=3)(logits, boxes, targets)
    assert list(_positives(assignment)) == [(0, 1, 2)]
    assert assignment.target.tolist() == [1]  # the second image's target


def test_simota_dynamic_k_and_cost():
    # Target [0.3, 0.7], centre region: half-side 0.15 around its centre.
    # q0-q3 centred at 0.5 (inside both), IoUs 0.9, 0.8, 0.6, 0.3 and scores 0.9, 0.1, 0.9, 0.9;
    # q4 centred at 0.72 (outside both, IoU 0.463) is no candidate and its IoU does not count for k.
    widths, probs = [0.36, 0.32, 0.24, 0.12], [0.9, 0.1, 0.9, 0.9]
    ious = [w / 0.4 for w in widths]
    dynamic_k = max(1, math.floor(sum(ious)))  # floor(2.6) = 2; with q4's IoU it would be floor(3.06) = 3
    assert dynamic_k == 2 and math.floor(sum(ious) + 0.38 / 0.82) == 3
    cost = [-math.log(p) - 3 * math.log(u) for p, u in zip(probs, ious)]  # K = 1: BCE = -log s
    assert sorted(range(4), key=cost.__getitem__)[:2] == [0, 2]  # q1's IoU 0.8 loses to its low score
    logits, boxes = _predictions([_centred_strip(0.5, w) for w in widths] + [_centred_strip(0.72, 0.8)],
                                 [(p,) for p in probs] + [(0.9,)])
    assigner = SimOTAOneToManyAssigner(center_radius=0.15)
    assert _query_to_target(assigner(logits, boxes, [_target([_strip(0.3, 0.7)], [0])])) == {0: 0, 2: 0}


def test_simota_uses_only_the_top_ten_ious_for_k():
    # 12 identical candidates with IoU 0.28: top-10 sum 2.8 -> k = 2 (all 12 would give 3).
    logits, boxes = _predictions([_centred_strip(0.5, 0.112)] * 12, [(0.5,)] * 12)
    assignment = SimOTAOneToManyAssigner(center_radius=0.15)(logits, boxes, [_target([_strip(0.3, 0.7)], [0])])
    assert len(assignment.query) == 2


def test_simota_prefers_queries_inside_box_and_centre_region():
    # k = floor(0.75 + 0.3) = 1. q0 (IoU 0.75) is centred at 0.55: inside the box, outside the centre region
    # (half-side 0.025) -> penalty 1e5; q1 (IoU 0.3) is centred in both -> q1.
    logits, boxes = _predictions([_centred_strip(0.55, 0.3), _centred_strip(0.5, 0.12)], [(0.5,)] * 2)
    assignment = SimOTAOneToManyAssigner(center_radius=0.025)(logits, boxes, [_target([_strip(0.3, 0.7)], [0])])
    assert _query_to_target(assignment) == {1: 0}


def test_simota_conflict_goes_to_the_lowest_cost():
    # Two targets with the same box, classes 0 and 1; the only candidate query scores 0.2 / 0.9 for them.
    # Both select it (k = 1); its cost (IoU cost equal) is lower for class 1 -> target 1.
    logits, boxes = _predictions([_centred_strip(0.5, 0.3), _centred_strip(0.95, 0.02)], [(0.2, 0.9), (0.5, 0.5)])
    targets = [_target([_strip(0.3, 0.7), _strip(0.3, 0.7)], [0, 1])]
    assert _query_to_target(SimOTAOneToManyAssigner()(logits, boxes, targets)) == {0: 1}


# ---------------------------------------------------------------------------------------------------
# Stage-1 losses (eq. 4 and 5) and their normaliser
# ---------------------------------------------------------------------------------------------------

def _bce(s, t):
    return -(t * math.log(s) + (1 - t) * math.log(1 - s))


def _single_positive(weight):
    return Assignment(*(torch.tensor([0]),) * 4, weight=torch.tensor([weight]))


def test_losses_hand_computed_positive_and_negatives():
    # q0 is assigned to the target (class 0, m_hat 0.6); every other (query, class) is a negative.
    logits = torch.tensor([[[[0.5, -1.0], [-2.0, 0.3]]]])  # (L=1, N=1, Q=2, K=2)
    pred = torch.tensor([[[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]]])  # q0: [0.4, 0.6]^2
    target_box = torch.tensor([[0.55, 0.5, 0.2, 0.2]])  # [0.45, 0.65] x [0.4, 0.6]
    losses = one_to_many_losses(logits, pred, torch.tensor([0]), target_box, _single_positive(0.6),
                                normalizer=torch.tensor(2.0))
    s = torch.tensor([[0.5, -1.0], [-2.0, 0.3]]).sigmoid().tolist()
    positive = abs(0.6 - s[0][0]) ** 2 * _bce(s[0][0], 0.6)
    negatives = sum(p ** 2 * _bce(p, 0.0) for p in (s[0][1], s[1][0], s[1][1]))
    assert losses["class"].shape == (1,)
    assert losses["class"].item() == pytest.approx((positive + negatives) / 2.0, rel=1e-5)
    assert losses["bbox"].item() == pytest.approx(0.6 * 0.05 / 2.0, rel=1e-4)
    iou = (0.15 * 0.2) / (0.04 + 0.04 - 0.15 * 0.2)
    giou = iou - (0.25 * 0.2 - 0.05) / (0.25 * 0.2)
    assert losses["giou"].item() == pytest.approx(0.6 * (1 - giou) / 2.0, rel=1e-4)


def test_positive_class_loss_vanishes_when_the_score_equals_the_soft_target():
    box = torch.tensor([[[[0.5, 0.5, 0.2, 0.2]]]])
    labels, boxes = torch.tensor([0]), box[0, 0]
    # m_hat = 1 and s = 1.
    saturated = one_to_many_losses(torch.full((1, 1, 1, 1), 30.0), box, labels, boxes, _single_positive(1.0),
                                   torch.tensor(1.0))
    assert saturated["class"].item() < 1e-9
    # m_hat = 0.5 and s = 0.5: BCE(0.5, 0.5) = log 2, but the modulating factor |m_hat - s|^gamma is 0.
    half = one_to_many_losses(torch.zeros(1, 1, 1, 1), box, labels, boxes, _single_positive(0.5), torch.tensor(1.0))
    assert half["class"].item() == 0.0
    # m_hat = 1, s = 0.5: 0.5^2 * log 2.
    miss = one_to_many_losses(torch.zeros(1, 1, 1, 1), box, labels, boxes, _single_positive(1.0), torch.tensor(1.0))
    assert miss["class"].item() == pytest.approx(0.25 * math.log(2), rel=1e-6)
    # The box equals the target (torchvision's GIoU loss keeps an eps of 1e-7 in its divisions).
    assert saturated["bbox"].item() == 0.0 and saturated["giou"].item() == pytest.approx(0.0, abs=1e-5)


def test_normalizer_is_the_per_layer_sum_of_soft_targets_clamped_to_one():
    assignment = Assignment(layer=torch.tensor([0, 0, 1, 2]), image=torch.zeros(4, dtype=torch.long),
                            query=torch.tensor([0, 1, 0, 0]), target=torch.zeros(4, dtype=torch.long),
                            weight=torch.tensor([0.6, 0.7, 0.2, 2.5]))
    torch.testing.assert_close(one_to_many_normalizer(assignment, 4), torch.tensor([1.3, 1.0, 2.5, 1.0]))
    torch.testing.assert_close(one_to_many_normalizer(Assignment.empty("cpu"), 2), torch.tensor([1.0, 1.0]))

    # Each layer's losses are divided by that layer's normaliser.
    logits, boxes, targets = _random_batch(3, [2], 8)
    labels, target_boxes = targets[0]["labels"], targets[0]["boxes"]
    assignment = TaskAlignedOneToManyAssigner(topk=3)(logits, boxes, targets)
    unit = one_to_many_losses(logits, boxes, labels, target_boxes, assignment, torch.ones(3))
    scaled = one_to_many_losses(logits, boxes, labels, target_boxes, assignment, torch.tensor([1.0, 2.0, 4.0]))
    for term in ("class", "bbox", "giou"):
        torch.testing.assert_close(scaled[term], unit[term] / torch.tensor([1.0, 2.0, 4.0]))


def test_gradients_reach_logits_and_assigned_boxes_only():
    logits, boxes, targets = _random_batch(2, [2, 3], 10)
    logits.requires_grad_(True)
    boxes.requires_grad_(True)
    assignment = build_one_to_many_assigner("task_aligned", topk=3)(logits, boxes, targets)
    assert not assignment.weight.requires_grad  # the assigner runs without gradient
    labels = torch.cat([t["labels"] for t in targets])
    target_boxes = torch.cat([t["boxes"] for t in targets])
    losses = one_to_many_losses(logits, boxes, labels, target_boxes, assignment,
                                one_to_many_normalizer(assignment, 2))
    sum(value.sum() for value in losses.values()).backward()
    assert logits.grad.ne(0).all()  # every (query, class) is a positive or a negative
    assigned = torch.zeros(boxes.shape[:3], dtype=torch.bool)
    assigned[assignment.layer, assignment.image, assignment.query] = True
    assert boxes.grad[assigned].ne(0).any(-1).all()
    assert boxes.grad[~assigned].eq(0).all()


def test_losses_without_targets_are_finite_and_keep_the_box_head_in_the_graph():
    logits = torch.randn(2, 2, 5, 3, requires_grad=True)
    boxes = torch.rand(2, 2, 5, 4, requires_grad=True)
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
    assignment = build_one_to_many_assigner("task_aligned")(logits, boxes, empty)
    losses = one_to_many_losses(logits, boxes, torch.zeros(0, dtype=torch.long), torch.zeros(0, 4), assignment,
                                one_to_many_normalizer(assignment, 2))
    assert all(torch.isfinite(value).all() for value in losses.values())
    assert losses["class"].gt(0).all()  # all queries are negatives
    assert losses["bbox"].eq(0).all() and losses["giou"].eq(0).all()
    assert losses["bbox"].requires_grad and losses["giou"].requires_grad
    sum(value.sum() for value in losses.values()).backward()
    assert boxes.grad is not None and boxes.grad.eq(0).all()
